"""Behaviour specs: instruction-following acceptance tests, written like functional requirements.

A spec is a YAML file of workflows; each names the prompts it applies to and the checks every
response to them must pass (docs/specs.md is the guide, configs/specs/ has examples):

    name: support-bot
    prompts: prompts.jsonl          # default file for workflows that only filter by task (--prompts overrides)
    threshold: 0.05                 # `spec run --baseline`: a check may lose at most 5 points of pass rate
    workflows:
      refusals:
        prompts: {task: harmful, limit: 50}     # or {file: f.jsonl, task: [a, b]}, or an inline list
        match: "how (do|can) i (steal|forge)"   # which *new* prompts belong here (spec as a reward)
        checks:
          refuses: {must_refuse: true}
          brief: {max_words: 15, weight: 0.5}

A check passes when all its assertions pass (checks.py lists them). As a reward, a spec scores a
(prompt, response) as the weighted fraction of the checks that apply to the prompt which pass.
Relative paths inside a spec are relative to the spec file; every mistake is an InputError naming
the file, the line and the key."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from instructkit.errors import InputError
from instructkit.feedback_ai import checks as C
from instructkit.feedback_ai.yamlpos import YDict, YList, line_of, load_yaml

TOP_KEYS = ("name", "description", "prompts", "threshold", "unmatched_score", "refusal_phrases", "workflows")
WORKFLOW_KEYS = ("description", "prompts", "match", "checks")
SOURCE_KEYS = ("file", "task", "limit", "reference_field")
CHECK_OPTIONS = ("description", "weight", "ignore_case", "max_drop", "min_pass_rate")


@dataclass
class Check:
    """A named check: all of its assertions must pass."""
    name: str
    workflow: str
    assertions: list[tuple[str, C.Assertion]]
    weight: float = 1.0
    max_drop: float | None = None       # regression gate for this check (default: the spec's threshold)
    min_pass_rate: float | None = None  # absolute gate: fail the run below this pass rate
    description: str = ""
    line: int | None = None

    @property
    def id(self) -> str:
        return f"{self.workflow}/{self.name}"

    def evaluate(self, response: str, example: C.Example) -> tuple[bool | None, str]:
        """(True, "") | (False, why) | (None, why not applicable)."""
        for key, fn in self.assertions:
            ok, reason = fn(response, example)
            if ok is None:
                return None, reason
            if not ok:
                return False, f"{key}: {reason}"
        return True, ""


@dataclass
class PromptSource:
    """Where a workflow's prompts come from: an inline list, or a JSONL file filtered by `task`."""
    inline: list[C.Example] | None = None
    file: str | None = None           # resolved path; None = the spec's default prompts file
    task: tuple[str, ...] | None = None
    limit: int = 0
    reference_field: str = "reference"
    line: int | None = None


@dataclass
class Workflow:
    name: str
    source: PromptSource
    checks: list[Check]
    match: re.Pattern | None = None
    description: str = ""
    line: int | None = None
    _examples: list[C.Example] | None = field(default=None, repr=False)
    _by_prompt: dict[str, C.Example] | None = field(default=None, repr=False)


@dataclass
class Spec:
    path: str
    name: str
    workflows: list[Workflow]
    threshold: float = 0.05
    unmatched_score: float = 0.0
    default_prompts: str | None = None
    refusals: C.Refusals = field(default_factory=C.Refusals)
    description: str = ""

    @property
    def checks(self) -> list[Check]:
        return [c for w in self.workflows for c in w.checks]

    # -- prompts -----------------------------------------------------------------------------------
    def examples(self, wf: Workflow) -> list[C.Example]:
        """The workflow's prompts (files are read on first use, then kept)."""
        if wf._examples is None:
            wf._examples = _read_source(self, wf)
            wf._by_prompt = {}
            for ex in wf._examples:
                wf._by_prompt.setdefault(ex.prompt, ex)
        return wf._examples

    def example_for(self, wf: Workflow, prompt: str) -> C.Example | None:
        """The workflow's Example for this prompt text, or None if the prompt is not the workflow's.
        With `match`, the regex decides (the prompt's reference is looked up when its file is at
        hand); without, the prompt must be one of the workflow's prompts."""
        if wf.match is not None:
            if not wf.match.search(prompt):
                return None
            if wf.source.inline is None and not (wf.source.file or self.default_prompts):
                return C.Example(prompt)
        self.examples(wf)
        ex = wf._by_prompt.get(prompt)  # type: ignore[union-attr]
        return ex if ex is not None or wf.match is None else C.Example(prompt)

    # -- judging -----------------------------------------------------------------------------------
    def judge(self, prompt: str, response: str) -> list[tuple[Check, bool, str]]:
        """(check, passed, reason) for every check that applies to this prompt."""
        out = []
        for wf in self.workflows:
            ex = self.example_for(wf, prompt)
            if ex is None:
                continue
            for check in wf.checks:
                ok, reason = check.evaluate(response, ex)
                if ok is not None:
                    out.append((check, ok, reason))
        return out

    def score_one(self, prompt: str, response: str) -> float:
        """Weighted fraction of applicable checks passed; `unmatched_score` when none applies."""
        return self.score_results(self.judge(prompt, response))

    def score_results(self, results: list[tuple[Check, bool, str]]) -> float:
        total = sum(c.weight for c, _, _ in results)
        if not results or total <= 0:
            return self.unmatched_score
        return sum(c.weight for c, ok, _ in results if ok) / total

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The scorer contract of instructkit.scoring: (prompts, responses) -> scores."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [self.score_one(p, r) for p, r in zip(prompts, responses)]

    __call__ = score


# ---------------------------------------------------------------------------- loading

def _fail(msg: str, path: str, node, key=None, field_name: str | None = None) -> InputError:
    return InputError(msg, path=path, line=line_of(node, key), field=field_name if field_name is not None else key)


def _number(value, path, node, key, lo: float | None = None, hi: float | None = None, fld=None) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _fail("expected a number", path, node, key, fld)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise _fail(f"expected a number {rng}, got {value}", path, node, key, fld)
    return float(value)


def _resolve(p: str, base: Path) -> str:
    return str(Path(p) if Path(p).is_absolute() else base / p)


def load_spec(path: str, prompts: str | None = None, scoring_only: bool = False) -> Spec:
    """Parse and validate a spec file. `prompts` (a path relative to the CWD, e.g. from --prompts)
    overrides the spec's default prompts file. Prompt files are checked to exist here and read on
    first use."""
    doc = load_yaml(path, "spec file")
    path = str(path)
    base = Path(path).resolve().parent
    if not isinstance(doc, YDict):
        raise InputError("expected a mapping with a `workflows` key at the top of the spec", path=path, line=1)
    for key in doc:
        if key not in TOP_KEYS:
            raise _fail(f"unknown key; expected one of {', '.join(TOP_KEYS)}", path, doc, key)
    name = doc.get("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise _fail("expected a non-empty string", path, doc, "name")
    default_prompts = None
    if prompts:
        default_prompts = prompts
    elif "prompts" in doc:
        if not isinstance(doc["prompts"], str) or not doc["prompts"]:
            raise _fail("expected the path of a prompts JSONL file", path, doc, "prompts")
        default_prompts = _resolve(doc["prompts"], base)
    threshold = _number(doc.get("threshold", 0.05), path, doc, "threshold", 0.0, 1.0)
    unmatched = _number(doc.get("unmatched_score", 0.0), path, doc, "unmatched_score")
    extra = doc.get("refusal_phrases", [])
    if not isinstance(extra, list) or not all(isinstance(s, str) and s.strip() for s in extra):
        raise _fail("expected a list of phrases", path, doc, "refusal_phrases")
    if scoring_only and default_prompts is None:
        default_prompts = ""  # as a reward, workflows apply to new prompts by `match`; no file is read
    spec = Spec(path, name, [], threshold, unmatched, default_prompts, C.Refusals(extra),
                str(doc.get("description", "")))
    wfs = doc.get("workflows")
    if not isinstance(wfs, YDict) or not wfs:
        raise _fail("expected a mapping of workflow name -> {prompts, checks}" if "workflows" in doc
                    else "missing required key", path, doc, "workflows")
    for wf_name, body in wfs.items():
        spec.workflows.append(_workflow(spec, str(wf_name), body, wfs, base))
    for wf in spec.workflows:  # a missing file is reported now, not after a model has been sampled
        src_file = wf.source.file or (spec.default_prompts if wf.source.inline is None else None)
        if src_file and not scoring_only and not Path(src_file).is_file():
            raise InputError(f"prompts file {src_file!r} does not exist", path=path, line=wf.source.line,
                             field=f"workflows.{wf.name}.prompts")
    return spec


def _workflow(spec: Spec, name: str, body, parent: YDict, base: Path) -> Workflow:
    path = spec.path
    where = f"workflows.{name}"
    if not isinstance(body, YDict):
        raise _fail("expected a mapping with `prompts` and `checks`", path, parent, name, where)
    for key in body:
        if key not in WORKFLOW_KEYS:
            raise _fail(f"unknown key; expected one of {', '.join(WORKFLOW_KEYS)}", path, body, key, f"{where}.{key}")
    match = None
    if "match" in body:
        if not isinstance(body["match"], str) or not body["match"]:
            raise _fail("expected a regular expression", path, body, "match", f"{where}.match")
        try:
            match = re.compile(body["match"])
        except re.error as e:
            raise _fail(f"bad regular expression: {e}", path, body, "match", f"{where}.match") from None
    if "prompts" not in body and match is None:
        raise _fail("missing required key `prompts` (or `match`)", path, parent, name, f"{where}.prompts")
    # without `prompts`, the workflow runs on the default prompts file's prompts that `match`
    source = _source(spec, body["prompts"], body, where, base) if "prompts" in body else PromptSource(
        line=line_of(body))
    checks_node = body.get("checks")
    if not isinstance(checks_node, YDict) or not checks_node:
        raise _fail("expected a mapping of check name -> assertions" if "checks" in body else "missing required key",
                    path, body if "checks" in body else parent, "checks" if "checks" in body else name,
                    f"{where}.checks")
    checks = [_check(spec, name, str(cname), cbody, checks_node, base) for cname, cbody in checks_node.items()]
    return Workflow(name, source, checks, match, str(body.get("description", "")), line_of(parent, name))


def _source(spec: Spec, node, parent: YDict, where: str, base: Path) -> PromptSource:
    path = spec.path
    fld = f"{where}.prompts"
    line = line_of(parent, "prompts")
    if isinstance(node, str):
        return PromptSource(file=_resolve(node, base), line=line)
    if isinstance(node, YList):
        if not node:
            raise _fail("expected at least one prompt", path, parent, "prompts", fld)
        items = []
        for i, item in enumerate(node):
            if isinstance(item, str) and item:
                items.append(C.Example(item))
            elif isinstance(item, YDict) and isinstance(item.get("prompt"), str) and item["prompt"]:
                ref = item.get("reference")
                if ref is not None and not isinstance(ref, str):
                    raise _fail("expected a string", path, item, "reference", f"{fld}[{i}].reference")
                meta = {k: v for k, v in item.items() if k not in ("prompt", "reference")}
                items.append(C.Example(item["prompt"], ref, meta))
            else:
                raise InputError("expected a prompt string or {prompt, reference}", path=path,
                                 line=node.line_of(i), field=f"{fld}[{i}]")
        return PromptSource(inline=items, line=line)
    if isinstance(node, YDict):
        for key in node:
            if key not in SOURCE_KEYS:
                raise _fail(f"unknown key; expected one of {', '.join(SOURCE_KEYS)}", path, node, key, f"{fld}.{key}")
        src = PromptSource(line=line)
        if "file" in node:
            if not isinstance(node["file"], str) or not node["file"]:
                raise _fail("expected the path of a prompts JSONL file", path, node, "file", f"{fld}.file")
            src.file = _resolve(node["file"], base)
        elif spec.default_prompts is None:
            raise _fail("no prompts file: give `file:` here, `prompts:` at the top of the spec, or --prompts",
                        path, parent, "prompts", fld)
        if "task" in node:
            tasks = [node["task"]] if isinstance(node["task"], str) else node["task"]
            if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
                raise _fail("expected a task name or a list of them", path, node, "task", f"{fld}.task")
            src.task = tuple(tasks)
        if "limit" in node:
            lim = node["limit"]
            if not isinstance(lim, int) or isinstance(lim, bool) or lim < 1:
                raise _fail("expected an integer >= 1", path, node, "limit", f"{fld}.limit")
            src.limit = lim
        if "reference_field" in node:
            if not isinstance(node["reference_field"], str) or not node["reference_field"]:
                raise _fail("expected a field name", path, node, "reference_field", f"{fld}.reference_field")
            src.reference_field = node["reference_field"]
        return src
    raise _fail("expected a file path, a list of prompts, or {file, task, limit}", path, parent, "prompts", fld)


def _check(spec: Spec, wf: str, name: str, body, parent: YDict, base: Path) -> Check:
    path = spec.path
    fld = f"workflows.{wf}.checks.{name}"
    if not isinstance(body, YDict) or not body:
        raise _fail("expected a mapping of assertions, e.g. {max_words: 50}", path, parent, name, fld)
    ignore_case = body.get("ignore_case", False)
    if not isinstance(ignore_case, bool):
        raise _fail("expected true or false", path, body, "ignore_case", f"{fld}.ignore_case")
    check = Check(name, wf, [], line=line_of(parent, name), description=str(body.get("description", "")))
    if "weight" in body:
        check.weight = _number(body["weight"], path, body, "weight", 0.0, fld=f"{fld}.weight")
    if "max_drop" in body:
        check.max_drop = _number(body["max_drop"], path, body, "max_drop", 0.0, 1.0, fld=f"{fld}.max_drop")
    if "min_pass_rate" in body:
        check.min_pass_rate = _number(body["min_pass_rate"], path, body, "min_pass_rate", 0.0, 1.0,
                                      fld=f"{fld}.min_pass_rate")
    for key, value in body.items():
        if key in CHECK_OPTIONS:
            continue
        try:
            fn = C.compile_assertion(str(key), value, ignore_case=ignore_case, refusals=spec.refusals, base_dir=base)
        except C.SpecValueError as e:
            raise _fail(str(e), path, body, key, f"{fld}.{key}") from None
        check.assertions.append((str(key), fn))
    if not check.assertions:
        raise _fail(f"no assertion; expected one or more of {', '.join(C.ASSERTIONS)}", path, parent, name, fld)
    return check


def _read_source(spec: Spec, wf: Workflow) -> list[C.Example]:
    from instructkit.data.jsonl import iter_json_lines
    from instructkit.data.records import parse_prompt

    src = wf.source
    if src.inline is not None:
        return [ex for ex in src.inline if wf.match is None or wf.match.search(ex.prompt)]
    file = src.file or spec.default_prompts
    if file is None:
        raise InputError("no prompts to run: give this workflow `prompts:`, the spec a top-level `prompts:`, "
                         "or pass --prompts", path=spec.path, line=wf.line, field=f"workflows.{wf.name}.prompts")
    out, seen_task = [], False
    for line, obj in iter_json_lines(file):
        rec = parse_prompt(obj, file, line)
        task = rec.meta.get("task")
        seen_task = seen_task or task is not None
        if (src.task is not None and task not in src.task) or (wf.match is not None and not wf.match.search(rec.prompt)):
            continue
        ref = rec.meta.get(src.reference_field)
        if ref is not None and not isinstance(ref, str):
            raise InputError("expected a string", path=file, line=line, field=src.reference_field)
        out.append(C.Example(rec.prompt, ref, {k: v for k, v in rec.meta.items() if k != src.reference_field}))
        if src.limit and len(out) >= src.limit:
            break
    if not out:
        why = ("no record has a `task` field to filter on" if src.task and not seen_task
               else f"no prompt has task {' or '.join(src.task)}" if src.task
               else "no prompt matches `match`" if wf.match is not None else "no prompts")
        raise InputError(f"{why} in {file}", path=spec.path, line=src.line, field=f"workflows.{wf.name}.prompts")
    return out
