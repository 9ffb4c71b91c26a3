"""`instructkit spec run | label | agree` and `instructkit ai-label`.

  instructkit spec run --spec s.yaml --model M [--baseline M0] [--prompts P] [--json report.json]
  instructkit spec run --spec s.yaml --endpoint http://127.0.0.1:8000 --model-name sft [--baseline sft0]
  instructkit spec label --spec s.yaml --model M --prompts P --k 4 --out rankings.jsonl [--world W]
  instructkit spec agree ours.jsonl theirs.jsonl
  instructkit ai-label --judge DIR_or_URL --principles c.yaml (--in samples.jsonl | --model M --prompts P --k 4..9)
                       --out rankings.jsonl [--world W]

Exit codes: 0 ok, 1 the spec's gate failed (a regression beyond the threshold, or a check below its
min_pass_rate), 2 bad input (the message names file, line and key)."""
from __future__ import annotations

import argparse
import sys
import time

from instructkit.errors import InputError

EXIT_GATE = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a bad flag is an input error (exit 2, one line), not a usage dump
        raise InputError(f"{self.prog}: {message}")


def _model_flags(p: argparse.ArgumentParser, *, required_prompts: bool) -> None:
    p.add_argument("--model", default="", help="model directory (or, with --endpoint, a served model's name)")
    p.add_argument("--endpoint", default="", help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000 "
                                                  "(`instructkit serve`)")
    p.add_argument("--model-name", default="", help="with --endpoint: the served model to use (default: the only one)")
    p.add_argument("--prompts", default="", required=required_prompts,
                   help="prompts JSONL" + ("" if required_prompts else
                                           " (overrides the spec's top-level `prompts:` file)"))
    p.add_argument("--template", default="plain", choices=("plain", "chat"),
                   help="plain: prompts as is (/v1/completions); chat: the chat template (/v1/chat/completions)")
    p.add_argument("--system", default="", help="system message in chat mode")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = $OMP_NUM_THREADS or all cores")


def _spec_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="instructkit spec", description="behaviour specs: run | label | agree")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="pass rates per check and workflow; --baseline gates a regression (exit 1)")
    r.add_argument("--spec", required=True, help="spec YAML")
    _model_flags(r, required_prompts=False)
    r.add_argument("--baseline", default="", help="the previous model version (directory, or served name with --endpoint)")
    r.add_argument("--threshold", type=float, default=None,
                   help="largest allowed drop in a check's pass rate (0-1); default: the spec's `threshold`")
    r.add_argument("--samples", type=int, default=1, help="responses per prompt")
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (reproducible gates)")
    r.add_argument("--show-failures", type=int, default=3, help="failing examples printed per check")
    r.add_argument("--json", default="", help="also write the full report (every response) to this file")

    lab = sub.add_parser("label", help="K samples per prompt ranked by the spec's score -> K-way ranking records")
    lab.add_argument("--spec", required=True, help="spec YAML")
    _model_flags(lab, required_prompts=True)
    lab.add_argument("--k", default="4", help="responses per prompt: an int, or a range A..B drawn per prompt")
    lab.add_argument("--temperatures", default="1.0", help="comma-separated; responses cycle through them")
    lab.add_argument("--limit", type=int, default=0, help="only the first N prompts (0 = all)")
    lab.add_argument("--keep-ties", action="store_true",
                     help="also write prompts whose responses all tie (no check applies, or all score the same)")
    lab.add_argument("--world", default="", help="sandbox world: report agreement with its held-out panel and gold")
    lab.add_argument("--out", required=True, help="rankings JSONL to write")

    ag = sub.add_parser("agree", help="pairwise agreement between two ranking files on the items both ranked")
    ag.add_argument("ours", help="rankings JSONL (e.g. from spec label or ai-label)")
    ag.add_argument("theirs", help="rankings JSONL (e.g. people's, from `label export`, or `world label`)")
    return ap


def _threads(n: int) -> None:
    from instructkit.models import set_threads
    set_threads(n)


def _open(args, name: str):
    from instructkit.feedback_ai.backends import open_model

    if args.endpoint:
        name = name or args.model_name
    return open_model(name, endpoint=args.endpoint, template=args.template, system=args.system,
                      batch_size=args.batch_size)


def _positive(value: int, flag: str) -> None:
    if value < 1:
        raise InputError("expected an integer >= 1", field=flag)


def cmd_run(args) -> int:
    from instructkit.feedback_ai.spec import load_spec

    _positive(args.samples, "--samples")
    _positive(args.max_new_tokens, "--max-new-tokens")
    if args.temperature < 0:
        raise InputError("expected a temperature >= 0", field="--temperature")
    spec = load_spec(args.spec, args.prompts or None)
    if args.threshold is not None:
        if not 0 <= args.threshold <= 1:
            raise InputError("expected a drop between 0 and 1 (0.05 = 5 points)", field="--threshold")
        spec.threshold = args.threshold
    from instructkit.data.jsonl import write_json
    from instructkit.feedback_ai.run import format_report, gate, run_spec, spec_prompts
    from instructkit.generation import SamplingParams

    n_prompts = len(spec_prompts(spec))  # reads and checks every prompt file before any model loads
    _threads(args.threads)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    t0 = time.time()
    reports = []
    for name in ([args.model, args.baseline] if args.baseline else [args.model]):
        model = _open(args, name)
        reports.append(run_spec(spec, model, samples=args.samples, params=params, seed=args.seed,
                                max_failures=max(args.show_failures, 3)))
        del model
    report, baseline = reports[0], (reports[1] if len(reports) > 1 else None)
    failures = gate(spec, report, baseline)
    print(format_report(spec, report, baseline, failures, args.show_failures))
    print(f"({n_prompts} prompts x {args.samples} sample(s) x {len(reports)} model(s) in {time.time() - t0:.1f} s)")
    if args.json:
        write_json(args.json, {"report": report, "baseline": baseline,
                               "gate": {"passed": not failures, "threshold": spec.threshold,
                                        "failures": [{"check": f.check, "message": f.message} for f in failures]}})
    return EXIT_GATE if failures else 0


def _read_prompt_records(path: str, limit: int) -> list[dict]:
    from instructkit.data.jsonl import iter_json_lines
    from instructkit.data.records import parse_prompt

    recs = [parse_prompt(obj, path, line).to_json() for line, obj in iter_json_lines(path)]
    return recs[:limit] if limit > 0 else recs


def _sample(args, recs: list[dict]) -> list[list[str]]:
    from instructkit.feedback_ai.run import draw_ks, sample_k
    from instructkit.sandbox.cli import parse_k, parse_temperatures

    k = parse_k(args.k)
    temps = parse_temperatures(args.temperatures)
    _threads(args.threads)
    model = _open(args, args.model)
    prompts = [r["prompt"] for r in recs]
    return sample_k(model, prompts, draw_ks(len(prompts), k, args.seed), temps, args.max_new_tokens, args.seed)


def _meta(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("prompt", "completions", "ranks", "labeler", "likert", "flags",
                                                        "not_rankable", "scores")}


def _write_rankings(out: str, records: list[dict], keep_ties: bool) -> tuple[int, int]:
    from instructkit.data.jsonl import write_jsonl

    kept = [r for r in records if keep_ties or len(set(r["ranks"])) > 1]
    if not kept:
        raise InputError("every prompt's responses tie (no check applies, or all score the same): nothing to "
                         "write (pass --keep-ties to write them anyway)", field="--out")
    write_jsonl(out, kept)
    return len(kept), len(records) - len(kept)


def _report_agreement(world_dir: str, records: list[dict], who: str, seed: int) -> dict:
    from instructkit.feedback_ai.agreement import format_sandbox_agreement, sandbox_agreement
    from instructkit.sandbox.world import World

    a = sandbox_agreement(World.load(world_dir), records, seed=seed)
    print(format_sandbox_agreement(a, who))
    return a


def cmd_label(args) -> int:
    from instructkit.data.jsonl import write_json
    from instructkit.feedback_ai.run import spec_rankings
    from instructkit.feedback_ai.spec import load_spec

    spec = load_spec(args.spec, args.prompts)
    recs = _read_prompt_records(args.prompts, args.limit)
    if args.world:
        from instructkit.sandbox.world import World
        World.load(args.world)  # fail before sampling
    t0 = time.time()
    comps = _sample(args, recs)
    records = spec_rankings(spec, [r["prompt"] for r in recs], comps, [_meta(r) for r in recs])
    n, skipped = _write_rankings(args.out, records, args.keep_ties)
    pairs = sum(1 for r in records[:n] for a in r["ranks"] for b in r["ranks"] if a < b)
    print(f"spec label: {n} prompts ranked by spec {spec.name!r} ({sum(map(len, comps))} responses, {pairs} "
          f"ordered pairs) -> {args.out}; {skipped} prompt(s) skipped because all responses tie "
          f"({time.time() - t0:.1f} s)")
    if args.world:
        a = _report_agreement(args.world, [r for r in records if len(set(r["ranks"])) > 1], f"spec:{spec.name}",
                              args.seed)
        write_json(args.out + ".summary.json", {"labeler": f"spec:{spec.name}", "records": n,
                                                "skipped_all_ties": skipped, "agreement": a})
    return 0


def cmd_agree(args) -> int:
    from instructkit import data as datalib
    from instructkit.feedback_ai.agreement import compare

    ours = [r.to_json() for r in datalib.load(args.ours, "ranking")]
    theirs = [r.to_json() for r in datalib.load(args.theirs, "ranking")]
    c = compare(ours, theirs)
    if not c["items"]:
        raise InputError(f"no item of {args.ours} is in {args.theirs} (items match by prompt and completions)",
                         path=args.theirs)
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    print(f"{c['items']} items in both ({len(ours)} and {len(theirs)} in the files), {c['pairs']} output pairs")
    print(f"pairwise agreement (orders: better / worse / tie): {pct(c['agreement'])}")
    print(f"on the {c['strict_pairs']} pairs {args.theirs} strictly orders, the same order: "
          f"{pct(c['strict_accuracy'])} (chance 50%)")
    return 0


def spec_main(argv: list[str] | None = None) -> int:
    args = _spec_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return {"run": cmd_run, "label": cmd_label, "agree": cmd_agree}[args.cmd](args)


# ---------------------------------------------------------------------------- ai-label

def _ai_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="instructkit ai-label",
                 description="RLAIF / Constitutional AI: a judge model ranks K responses against written principles")
    ap.add_argument("--judge", required=True, help="judge: a model directory, or an OpenAI-compatible URL "
                                                   "(URL#NAME picks a served model)")
    ap.add_argument("--judge-model", default="", help="with a URL judge: the served model's name (default: the only one)")
    ap.add_argument("--principles", "--constitution", dest="principles", required=True,
                    help="constitution YAML: a list of principles (or {name, template, verdicts, principles})")
    ap.add_argument("--in", dest="input", default="",
                    help="records {prompt, completions[, ranks]} to rank; their ranks, if any, are the reference for "
                         "the agreement figure")
    _model_flags(ap, required_prompts=False)
    ap.add_argument("--k", default="4..9", help="with --model: responses per prompt, an int or a range A..B")
    ap.add_argument("--temperatures", default="1.0", help="with --model: comma-separated sampling temperatures")
    ap.add_argument("--limit", type=int, default=0, help="only the first N prompts or records (0 = all)")
    ap.add_argument("--judge-samples", type=int, default=8, help="URL judge: verdicts sampled per judging prompt")
    ap.add_argument("--judge-batch-size", type=int, default=32, help="local judge: sequences per forward pass")
    ap.add_argument("--cache", default="", help="verdict cache directory (default $INSTRUCTKIT_CACHE/ai_judge or "
                                                "~/.cache/instructkit/ai_judge)")
    ap.add_argument("--no-cache", action="store_true", help="judge everything again and store nothing")
    ap.add_argument("--keep-ties", action="store_true", help="also write prompts whose responses all tie")
    ap.add_argument("--world", default="", help="sandbox world: report agreement with its held-out panel and gold")
    ap.add_argument("--out", required=True, help="rankings JSONL to write")
    return ap


def _read_samples(path: str, limit: int) -> tuple[list[dict], list[dict] | None]:
    """Records to rank, and the reference rankings when every record carries ranks."""
    from instructkit.data.jsonl import iter_json_lines
    from instructkit.data.records import parse_ranking

    items, refs = [], []
    for line, obj in iter_json_lines(path):
        has_ranks = "ranks" in obj or "chosen" in obj or "scores" in obj
        rec = parse_ranking(obj if has_ranks else {**obj, "not_rankable": True}, path, line)
        items.append({"prompt": rec.prompt, "completions": rec.completions, **rec.meta})
        refs.append(rec.to_json() if has_ranks and not rec.not_rankable else None)
        if limit > 0 and len(items) >= limit:
            break
    return items, (refs if all(r is not None for r in refs) else None)


def ai_label_main(argv: list[str] | None = None) -> int:
    from instructkit.data.jsonl import write_json
    from instructkit.feedback_ai.agreement import compare
    from instructkit.feedback_ai.judge import AILabeler, VerdictCache, default_cache_dir, load_constitution, open_judge

    args = _ai_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.input) == bool(args.model or args.endpoint):
        raise InputError("give either --in FILE (responses to rank) or --model/--endpoint with --prompts (to sample "
                         "them)", field="--in")
    if not args.input and not args.prompts:
        raise InputError("--model needs --prompts", field="--prompts")
    _positive(args.judge_samples, "--judge-samples")
    constitution = load_constitution(args.principles)
    if args.world:
        from instructkit.sandbox.world import World
        World.load(args.world)  # fail before any work
    if args.input:
        items, refs = _read_samples(args.input, args.limit)
    else:
        items, refs = _read_prompt_records(args.prompts, args.limit), None
    _threads(args.threads)
    judge = open_judge(args.judge, args.judge_model, args.judge_samples, args.judge_batch_size)
    t0 = time.time()
    if not args.input:
        comps = _sample(args, items)
        items = [{**r, "completions": c} for r, c in zip(items, comps)]
    cache = None if args.no_cache else VerdictCache(args.cache or default_cache_dir(), judge.id)
    labeler = AILabeler(judge, constitution, cache)
    records = labeler.rank([r["prompt"] for r in items], [r["completions"] for r in items], [_meta(r) for r in items])
    n, skipped = _write_rankings(args.out, records, args.keep_ties)
    k = sum(len(r["completions"]) for r in items)
    print(f"ai-label: {n} prompts ({k} responses x {len(constitution.principles)} principles) ranked by "
          f"{labeler.labeler} with judge {args.judge} -> {args.out}; {labeler.stats['judged']} verdicts judged, "
          f"{labeler.stats['cached']} from the cache; {skipped} all-tie prompt(s) skipped ({time.time() - t0:.1f} s)")
    summary = {"labeler": labeler.labeler, "judge": args.judge, "records": n, "skipped_all_ties": skipped,
               **labeler.stats}
    if refs is not None:
        c = compare(records, refs)
        summary["vs_input"] = c
        pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
        print(f"agreement with the input's ranks: {pct(c['agreement'])} pairwise over {c['pairs']} pairs; "
              f"{pct(c['strict_accuracy'])} of {c['strict_pairs']} strictly ordered pairs (chance 50%)")
    if args.world:
        summary["agreement"] = _report_agreement(args.world, records, labeler.labeler, args.seed)
    write_json(args.out + ".summary.json", summary)
    return 0
