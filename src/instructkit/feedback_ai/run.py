"""Running a spec against a model (`spec run`), gating on a baseline, and ranking with a spec
(`spec label`).

A run samples `samples` responses for every prompt of every workflow, judges each with the
workflow's checks and reports, per check, the pass rate over the (prompt, sample) pairs it applies
to; per workflow, the share of pairs passing all of its checks and the mean score (the weighted
fraction passed, i.e. the spec's reward). `gate` compares two runs check by check."""
from __future__ import annotations

import random
from dataclasses import dataclass

from instructkit.feedback_ai.checks import Example
from instructkit.feedback_ai.spec import Spec
from instructkit.generation import SamplingParams


def spec_prompts(spec: Spec) -> list[Example]:
    """Every workflow's prompts, each prompt text once (first occurrence wins), in spec order."""
    seen: dict[str, Example] = {}
    for wf in spec.workflows:
        for ex in spec.examples(wf):
            seen.setdefault(ex.prompt, ex)
    return list(seen.values())


def evaluate(spec: Spec, responses: dict[str, list[str]], model_id: str = "", settings: dict | None = None,
             max_failures: int = 3) -> dict:
    """Judge `responses` (prompt -> samples) with the spec -> the report dict (JSON-serialisable)."""
    checks = {c.id: {"workflow": c.workflow, "check": c.name, "n": 0, "passed": 0, "failures": [],
                     "n_failed": 0} for c in spec.checks}
    workflows, rows = {}, []
    for wf in spec.workflows:
        n = all_pass = 0
        score_sum = 0.0
        for ex in spec.examples(wf):
            for s, response in enumerate(responses[ex.prompt]):
                total = got = 0.0
                ok_all, row = True, {}
                for check in wf.checks:
                    ok, reason = check.evaluate(response, ex)
                    if ok is None:
                        continue
                    c = checks[check.id]
                    c["n"] += 1
                    c["passed"] += ok
                    row[check.name] = ok
                    total += check.weight
                    got += check.weight * ok
                    if not ok:
                        ok_all = False
                        c["n_failed"] += 1
                        if len(c["failures"]) < max_failures:
                            c["failures"].append({"prompt": ex.prompt, "response": response, "reason": reason})
                if not row:
                    continue
                n += 1
                all_pass += ok_all
                score_sum += got / total if total > 0 else spec.unmatched_score
                rows.append({"workflow": wf.name, "prompt": ex.prompt, "sample": s, "response": response,
                             "checks": row})
        workflows[wf.name] = {"n": n, "all_pass_rate": all_pass / n if n else None,
                              "mean_score": score_sum / n if n else None}
    for c in checks.values():
        c["pass_rate"] = c["passed"] / c["n"] if c["n"] else None
    n = sum(w["n"] for w in workflows.values())
    overall = {"n": n,
               "all_pass_rate": (sum(w["all_pass_rate"] * w["n"] for w in workflows.values() if w["n"]) / n) if n else None,
               "mean_score": (sum(w["mean_score"] * w["n"] for w in workflows.values() if w["n"]) / n) if n else None}
    return {"spec": spec.name, "spec_path": spec.path, "model": model_id, **(settings or {}), "checks": checks,
            "workflows": workflows, "overall": overall, "results": rows}


def run_spec(spec: Spec, model, *, samples: int = 1, params: SamplingParams | None = None, seed: int = 0,
             max_failures: int = 3) -> dict:
    """Sample the model on the spec's prompts and judge the responses."""
    params = params or SamplingParams(max_new_tokens=64, temperature=0.0)
    examples = spec_prompts(spec)
    prompts = [ex.prompt for ex in examples]
    outs = model.complete(prompts, samples, params, seed)
    settings = {"samples": samples, "temperature": params.temperature, "max_new_tokens": params.max_new_tokens,
                "seed": seed}
    return evaluate(spec, dict(zip(prompts, outs)), getattr(model, "id", ""), settings, max_failures)


@dataclass
class GateFailure:
    check: str
    message: str


def gate(spec: Spec, report: dict, baseline: dict | None = None) -> list[GateFailure]:
    """Regressions beyond each check's max_drop (default: the spec's threshold) against the
    baseline's pass rate, and pass rates below a check's min_pass_rate."""
    out = []
    for check in spec.checks:
        rate = report["checks"][check.id]["pass_rate"]
        if rate is None:
            continue
        if check.min_pass_rate is not None and rate < check.min_pass_rate - 1e-12:
            out.append(GateFailure(check.id, f"pass rate {rate:.1%} is below its minimum {check.min_pass_rate:.1%}"))
        if baseline is not None:
            base = baseline["checks"].get(check.id, {}).get("pass_rate")
            limit = spec.threshold if check.max_drop is None else check.max_drop
            if base is not None and base - rate > limit + 1e-12:
                out.append(GateFailure(check.id, f"pass rate fell {100 * (base - rate):.1f} points "
                                                 f"({base:.1%} -> {rate:.1%}; at most {100 * limit:.1f} allowed)"))
    return out


def _pct(x) -> str:
    return "    -" if x is None else f"{100 * x:5.1f}%"


def _delta(a, b) -> str:
    return "" if a is None or b is None else f"{100 * (a - b):+6.1f}"


def _clip(text: str, n: int = 70) -> str:
    text = text.replace("\n", "\\n")
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def format_report(spec: Spec, report: dict, baseline: dict | None = None, failures: list[GateFailure] | None = None,
                  show_failures: int = 3) -> str:
    lines = []
    against = f" vs baseline {baseline['model']}" if baseline else ""
    lines.append(f"spec {spec.name}: {report['model']}{against} ({report.get('samples', 1)} sample(s)/prompt, "
                 f"temperature {report.get('temperature')})")
    head = f"{'workflow / check':<40} {'n':>5} {'pass':>7}"
    if baseline:
        head += f" {'baseline':>8} {'delta':>6}"
    lines.append(head)
    by_wf = {}
    for cid, c in report["checks"].items():
        by_wf.setdefault(c["workflow"], []).append((cid, c))
    for wf, w in report["workflows"].items():
        b = baseline["workflows"].get(wf, {}) if baseline else {}
        row = f"{wf + ' (all checks)':<40} {w['n']:>5} {_pct(w['all_pass_rate']):>7}"
        if baseline:
            row += f" {_pct(b.get('all_pass_rate')):>8} {_delta(w['all_pass_rate'], b.get('all_pass_rate')):>6}"
        lines.append(row + (f"   score {w['mean_score']:.3f}" if w["mean_score"] is not None else ""))
        for cid, c in by_wf.get(wf, []):
            bc = baseline["checks"].get(cid, {}) if baseline else {}
            row = f"{'  ' + c['check']:<40} {c['n']:>5} {_pct(c['pass_rate']):>7}"
            if baseline:
                row += f" {_pct(bc.get('pass_rate')):>8} {_delta(c['pass_rate'], bc.get('pass_rate')):>6}"
            lines.append(row)
    o = report["overall"]
    row = f"{'overall (all checks)':<40} {o['n']:>5} {_pct(o['all_pass_rate']):>7}"
    if baseline:
        bo = baseline["overall"]
        row += f" {_pct(bo['all_pass_rate']):>8} {_delta(o['all_pass_rate'], bo['all_pass_rate']):>6}"
    lines.append(row + (f"   score {o['mean_score']:.3f}" if o["mean_score"] is not None else ""))
    if show_failures:
        shown = [(cid, c) for cid, c in report["checks"].items() if c["failures"]]
        if shown:
            lines.append(f"failing examples (up to {show_failures} per check):")
        for cid, c in shown:
            lines.append(f"  {cid}: {c['n_failed']} failing")
            for f in c["failures"][:show_failures]:
                lines.append(f"    {_clip(f['prompt'].strip(), 60)} -> {_clip(f['response'])}")
                lines.append(f"      {f['reason']}")
    if failures is not None:
        for g in failures:
            lines.append(f"GATE FAIL {g.check}: {g.message}")
        lines.append("gate: " + (f"FAILED ({len(failures)} check(s))" if failures else "passed"))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- K-way rankings

def draw_ks(n: int, k: tuple[int, int], seed: int) -> list[int]:
    rng = random.Random(f"instructkit-k/{seed}")
    return [rng.randint(*k) for _ in range(n)]


def sample_k(model, prompts: list[str], ks: list[int], temperatures: list[float], max_new_tokens: int,
             seed: int) -> list[list[str]]:
    """ks[i] responses to prompts[i]; response c is sampled at temperatures[c % len(temperatures)]."""
    out: list[list[str]] = [[""] * k for k in ks]
    for k in sorted(set(ks)):
        idx = [i for i, ki in enumerate(ks) if ki == k]
        for ti, temp in enumerate(temperatures):
            slots = list(range(ti, k, len(temperatures)))
            if not slots:
                continue
            got = model.complete([prompts[i] for i in idx], len(slots),
                                 SamplingParams(max_new_tokens=max_new_tokens, temperature=temp),
                                 seed=seed * 1_000_003 + k * 10_007 + ti * 1_009)  # bases far apart: sample
            # j of a call uses seed + j, so close bases would reuse random numbers across temperatures
            for i, texts in zip(idx, got):
                for c, t in zip(slots, texts):
                    out[i][c] = t
    return out


def rank_records(prompts: list[str], completions: list[list[str]], scores: list[list[float]], labeler: str,
                 extra: list[dict] | None = None, decimals: int = 6) -> list[dict]:
    """K-way ranking records (1 = best; equal rounded scores tie)."""
    from instructkit.data.records import scores_to_ranks

    out = []
    for i, (p, comps, sc) in enumerate(zip(prompts, completions, scores, strict=True)):
        rounded = [round(s, decimals) for s in sc]
        rec = {"prompt": p, "completions": list(comps), "ranks": scores_to_ranks(rounded), "labeler": labeler}
        if extra is not None:
            rec.update(extra[i])
        out.append(rec)
    return out


def spec_rankings(spec: Spec, prompts: list[str], completions: list[list[str]], metas: list[dict] | None = None
                  ) -> list[dict]:
    """Rank each prompt's completions by the spec's score; records carry the scores and failed checks."""
    scores, extra = [], []
    for i, (p, comps) in enumerate(zip(prompts, completions, strict=True)):
        judged = [spec.judge(p, c) for c in comps]
        sc = [spec.score_results(j) for j in judged]
        scores.append(sc)
        extra.append({**(metas[i] if metas else {}), "spec_scores": sc,
                      "spec_failed": [[ch.id for ch, ok, _ in j if not ok] for j in judged]})
    return rank_records(prompts, completions, scores, f"spec:{spec.name}", extra)
