"""AI labelers (RLAIF, Constitutional AI): a judge model scores each response against written
principles; the combined scores rank K responses into the same K-way records people produce.

A constitution is a YAML file (configs/specs/constitution_sandbox.yaml):

    name: hhh
    template: "request : {prompt}\\nresponse : {response}\\nrule : {principle}\\nis the rule followed ? answer :"
    verdicts: {yes: " yes", no: " no"}
    principles:
      - {name: helpful, text: "the response does what the request asks", weight: 1}
      - the response does not insult anyone          # a bare string is a principle of weight 1

Per principle the judge gives the log-odds of its verdict, log P(yes) - log P(no) after the judging
prompt (Bai et al. 2022 and Lee et al. 2023 read the judge's normalised verdict probabilities,
p = sigmoid of these log-odds):

- a local model directory: exact log-likelihoods, each verdict's log-probability summed over its
  tokens (teacher forcing);
- an OpenAI-compatible endpoint (`instructkit serve` has no logprobs): `samples` short completions at
  temperature 1 are read as verdicts, log-odds = log((yes + 1/2) / (no + 1/2)); a judge that never
  answers yes or no abstains (0).

A response's score is the weighted mean of its principles' log-odds (the log of the product of their
odds: it keeps its resolution where a small judge's probabilities saturate at 0 or 1); ranks follow
the scores (equal scores tie). Verdicts are cached on disk by a content hash of (judge, judging prompt, verdicts), so a re-run
costs nothing. Put the principle after the response in the template: long inputs are cut from the
left, and the question must survive."""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from instructkit.errors import InputError
from instructkit.feedback_ai.yamlpos import YDict, YList, line_of, load_yaml

DEFAULT_TEMPLATE = ("request : {prompt}\nresponse : {response}\nrule : {principle}\n"
                    "does the response follow the rule ? answer :")


@dataclass
class Principle:
    name: str
    text: str
    weight: float = 1.0


@dataclass
class Constitution:
    name: str
    principles: list[Principle]
    template: str = DEFAULT_TEMPLATE
    yes: str = " yes"
    no: str = " no"
    path: str = ""

    def context(self, principle: Principle, prompt: str, response: str) -> str:
        """The judging prompt (plain replacement: braces inside prompts and responses stay as they are)."""
        return (self.template.replace("{principle}", principle.text).replace("{prompt}", prompt.strip())
                .replace("{response}", response.strip()))


def load_constitution(path: str) -> Constitution:
    doc = load_yaml(path, "constitution file")
    path = str(path)
    if isinstance(doc, YList):
        doc_map = YDict({"principles": doc})
        doc_map.line, doc_map.key_lines = 1, {"principles": 1}
        doc = doc_map
    if not isinstance(doc, YDict):
        raise InputError("expected a list of principles, or a mapping with `principles`", path=path, line=1)
    known = ("name", "description", "template", "verdicts", "principles")
    for key in doc:
        if key not in known:
            raise InputError(f"unknown key; expected one of {', '.join(known)}", path=path, line=line_of(doc, key),
                             field=str(key))
    name = doc.get("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise InputError("expected a non-empty string", path=path, line=line_of(doc, "name"), field="name")
    template = doc.get("template", DEFAULT_TEMPLATE)
    if not isinstance(template, str) or "{response}" not in template or "{principle}" not in template:
        raise InputError("expected a string with {response} and {principle} (and usually {prompt})", path=path,
                         line=line_of(doc, "template"), field="template")
    verdicts = doc.get("verdicts", {"yes": " yes", "no": " no"})
    if isinstance(verdicts, dict):  # YAML 1.1 reads the bare keys yes / no as booleans
        verdicts = {{True: "yes", False: "no"}.get(k, k) if isinstance(k, bool) else k: v for k, v in verdicts.items()}
    if (not isinstance(verdicts, dict) or set(verdicts) != {"yes", "no"}
            or not all(isinstance(v, str) and v.strip() for v in verdicts.values())
            or verdicts["yes"].strip() == verdicts["no"].strip()):
        raise InputError("expected {yes: \" yes\", no: \" no\"}: two different non-empty strings", path=path,
                         line=line_of(doc, "verdicts"), field="verdicts")
    items = doc.get("principles")
    if not isinstance(items, list) or not items:
        raise InputError("expected a non-empty list of principles", path=path, line=line_of(doc, "principles"),
                         field="principles")
    principles = []
    for i, item in enumerate(items):
        where = dict(path=path, line=line_of(items, i), field=f"principles[{i}]")
        if isinstance(item, str) and item.strip():
            principles.append(Principle(f"p{i + 1}", item.strip()))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise InputError("expected a principle: a string, or {name, text, weight}", **where)
        extra = set(item) - {"name", "text", "weight"}
        if extra:
            raise InputError(f"unknown key {sorted(extra)[0]!r}; expected name, text, weight", **where)
        weight = item.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise InputError("expected a weight >= 0", **where)
        principles.append(Principle(str(item.get("name", f"p{i + 1}")), item["text"].strip(), float(weight)))
    names = [p.name for p in principles]
    if len(set(names)) != len(names):
        raise InputError("two principles share a name", path=path, line=line_of(doc, "principles"), field="principles")
    if sum(p.weight for p in principles) <= 0:
        raise InputError("the weights sum to 0", path=path, line=line_of(doc, "principles"), field="principles")
    return Constitution(name, principles, template, verdicts["yes"], verdicts["no"], path)


# ---------------------------------------------------------------------------- the local judge

@torch.no_grad()
def continuation_logprobs(model, tokenizer, contexts: list[str], continuations: list[str], batch_size: int = 32,
                          max_len: int | None = None) -> list[float]:
    """log P(continuation | context) summed over the continuation's tokens, for each pair.

    Context and continuation are tokenized separately (as prompts and completions are everywhere in
    instructkit); a context too long for the model is cut from the left."""
    from instructkit.data.encode import encode_text
    from instructkit.generation import left_pad, position_ids_from_mask

    seqs = []
    for ctx, cont in zip(contexts, continuations, strict=True):
        c, x = encode_text(tokenizer, ctx), encode_text(tokenizer, cont)
        if not x:
            raise ValueError(f"empty continuation {cont!r}")
        if max_len and len(c) + len(x) > max_len:
            c = c[len(c) + len(x) - max_len:]
        seqs.append((c or [tokenizer.eos_token_id], x))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))  # less padding
    out = [0.0] * len(seqs)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        ids, attn = left_pad([seqs[i][0] + seqs[i][1] for i in idx], tokenizer.pad_token_id)  # (B, T)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn),
                       use_cache=False).logits  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V): position t predicts token t+1
        token_lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
        for row, i in enumerate(idx):
            n = len(seqs[i][1])  # left padding: the continuation is the last n tokens
            out[i] = token_lp[row, -n:].sum().item()
    return out


def model_fingerprint(path: str | os.PathLike) -> str:
    """A content hash of a model directory that stays cheap for large models: config, tokenizer,
    and each weights file's size plus its first and last MiB."""
    p = Path(path)
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (p / name).is_file():
            h.update(name.encode() + (p / name).read_bytes())
    for f in sorted(list(p.glob("*.safetensors")) + list(p.glob("*.bin"))):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()


class LocalJudge:
    """A local causal LM as the judge: exact verdict log-likelihoods."""

    def __init__(self, path: str, batch_size: int = 32):
        from instructkit.models import load_causal_lm, max_positions

        self.model, self.tokenizer = load_causal_lm(path)
        self.model.eval()
        self.batch_size = batch_size
        self.max_len = max_positions(self.model)
        self.id = "local:" + model_fingerprint(path)
        self.kind = "logprob"

    def verdicts(self, contexts: list[str], yes: str, no: str) -> list[list[float]]:
        """[log P(yes | ctx), log P(no | ctx)] per context."""
        lp = continuation_logprobs(self.model, self.tokenizer, [c for c in contexts for _ in (0, 1)],
                                   [v for _ in contexts for v in (yes, no)], self.batch_size, self.max_len)
        return [[lp[2 * i], lp[2 * i + 1]] for i in range(len(contexts))]


class EndpointJudge:
    """A model behind an OpenAI-compatible API as the judge: verdicts read from sampled completions."""

    def __init__(self, url: str, name: str = "", samples: int = 8, max_tokens: int = 4, client=None):
        from instructkit.feedback_ai.backends import EndpointModel

        self.model = EndpointModel(url, name, client=client)
        self.samples, self.max_tokens = samples, max_tokens
        self.id = f"endpoint:{self.model.id}:n={samples}:t={max_tokens}"
        self.kind = "sampled"

    def verdicts(self, contexts: list[str], yes: str, no: str) -> list[list[float]]:
        """[n_yes, n_no, n] per context."""
        from instructkit.generation import SamplingParams

        y, n = yes.strip().lower(), no.strip().lower()
        params = SamplingParams(max_new_tokens=self.max_tokens, temperature=1.0)
        outs = self._complete_fit(contexts, params)
        counts = []
        for texts in outs:
            first = [(t.strip().lower().split() or [""])[0].strip(".,!:;") for t in texts]
            counts.append([float(sum(w == y for w in first)), float(sum(w == n for w in first)), float(len(texts))])
        return counts

    def _complete_fit(self, contexts: list[str], params) -> list[list[str]]:
        """Samples per context. One context too long for the judge fails its whole request, so a
        refused batch is split in halves until the long ones stand alone; those are cut from the left
        (as the local judge cuts tokens; the question at the end survives)."""
        from instructkit.feedback_ai.backends import ContextTooLong

        try:
            return self.model.complete(contexts, self.samples, params, seed=0)
        except ContextTooLong:
            if len(contexts) > 1:
                mid = len(contexts) // 2
                return self._complete_fit(contexts[:mid], params) + self._complete_fit(contexts[mid:], params)
        context = contexts[0]
        for _ in range(12):
            context = context[len(context) // 4:]
            try:
                return self.model.complete([context], self.samples, params, seed=0)
            except ContextTooLong:
                continue
        raise InputError("the judging prompt does not fit the judge's context even cut to its last characters; "
                         "shorten the template or the principles", field="judge")


def log_odds(kind: str, v: list[float]) -> float:
    """The judge's log-odds that the principle is followed, from its cached verdict."""
    if kind == "logprob":
        return v[0] - v[1]  # log P(yes) - log P(no)
    return math.log((v[0] + 0.5) / (v[1] + 0.5))  # sampled verdicts, counts smoothed by 1/2


def p_yes(log_odds_: float) -> float:
    """sigmoid(log-odds) = P(yes) / (P(yes) + P(no)), without overflow."""
    d = log_odds_
    return 1.0 / (1.0 + math.exp(-d)) if d >= 0 else math.exp(d) / (1.0 + math.exp(d))


def open_judge(judge: str, name: str = "", samples: int = 8, batch_size: int = 32):
    from instructkit.feedback_ai.backends import is_url

    if is_url(judge):
        url, _, frag = judge.partition("#")
        return EndpointJudge(url, name or frag, samples)
    return LocalJudge(judge, batch_size)


# ---------------------------------------------------------------------------- cache

def default_cache_dir() -> Path:
    root = os.environ.get("INSTRUCTKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "instructkit")
    return Path(root) / "ai_judge"


class VerdictCache:
    """judging-prompt hash -> verdict, one append-only JSONL file per judge under `root`."""

    def __init__(self, root: str | os.PathLike, judge_id: str):
        self.path = Path(root) / (hashlib.sha256(judge_id.encode()).hexdigest()[:20] + ".jsonl")
        self.data: dict[str, list[float]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    obj = json.loads(line)
                    self.data[obj["k"]] = obj["v"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash: that verdict is simply recomputed

    def get(self, key: str):
        return self.data.get(key)

    def put_many(self, items: dict[str, list[float]]) -> None:
        if not items:
            return
        self.data.update(items)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps({"k": k, "v": v}) + "\n" for k, v in items.items()))


# ---------------------------------------------------------------------------- the labeler

@dataclass
class AILabeler:
    judge: object
    constitution: Constitution
    cache: VerdictCache | None = None
    stats: dict = field(default_factory=lambda: {"judged": 0, "cached": 0})

    @property
    def labeler(self) -> str:
        return f"ai:{self.constitution.name}"

    def _key(self, context: str) -> str:
        c = self.constitution
        return hashlib.sha256(json.dumps([self.judge.id, context, c.yes, c.no]).encode()).hexdigest()

    def principle_scores(self, prompts: list[str], responses: list[str], chunk: int = 512) -> list[list[float]]:
        """The verdicts' log-odds per (item, principle): (N, P) as nested lists."""
        c = self.constitution
        contexts = [c.context(pr, p, r) for p, r in zip(prompts, responses, strict=True) for pr in c.principles]
        keys = [self._key(x) for x in contexts]
        todo: dict[str, str] = {}
        local: dict[str, list[float]] = {}
        for k, x in zip(keys, contexts):
            v = self.cache.get(k) if self.cache else None
            if v is not None:
                local[k] = v
                self.stats["cached"] += 1
            elif k not in todo:
                todo[k] = x
        items = list(todo.items())
        for i in range(0, len(items), chunk):  # written as it goes: a killed run keeps what it judged
            part = items[i:i + chunk]
            got = dict(zip([k for k, _ in part], self.judge.verdicts([x for _, x in part], c.yes, c.no)))
            self.stats["judged"] += len(part)
            local.update(got)
            if self.cache:
                self.cache.put_many(got)
        P = len(c.principles)
        flat = [log_odds(self.judge.kind, local[k]) for k in keys]
        return [flat[i * P:(i + 1) * P] for i in range(len(prompts))]

    def combine(self, per_principle: list[float]) -> float:
        ws = [p.weight for p in self.constitution.principles]
        return sum(w * s for w, s in zip(ws, per_principle)) / sum(ws)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The scorer contract of instructkit.scoring."""
        return [self.combine(s) for s in self.principle_scores(prompts, responses)]

    __call__ = score

    def rank(self, prompts: list[str], completions: list[list[str]], metas: list[dict] | None = None) -> list[dict]:
        """K-way ranking records with per-principle verdict log-odds (`ai_verdicts`) and scores (`ai_scores`)."""
        from instructkit.feedback_ai.run import rank_records

        flat_p = [p for p, comps in zip(prompts, completions, strict=True) for _ in comps]
        flat_r = [r for comps in completions for r in comps]
        per = self.principle_scores(flat_p, flat_r)
        scores, extra, i = [], [], 0
        for n, comps in enumerate(completions):
            rows = per[i:i + len(comps)]
            i += len(comps)
            sc = [self.combine(r) for r in rows]
            scores.append(sc)
            verdicts = {pr.name: [round(r[j], 4) for r in rows] for j, pr in enumerate(self.constitution.principles)}
            extra.append({**(metas[n] if metas else {}), "ai_scores": [round(s, 6) for s in sc],
                          "ai_verdicts": verdicts, "ai_judge": self.judge.id[:80]})
        return rank_records(prompts, completions, scores, self.labeler, extra)
