"""Stage `report`: one self-contained HTML page (PNG plots inline) and summary.json for a pipeline
run, with a table of every InstructGPT claim next to the figure this run measured."""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from instructkit.config import ReportConfig
from instructkit.data.jsonl import atomic_open, write_json
from instructkit.errors import InputError
from instructkit.evaluate.stats import bon_curve, fit_bon, fit_rl, rl_curve


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def _interval(w) -> str:
    return "n/a" if not w else f"{w['rate']:.1%} [{w['low']:.1%}, {w['high']:.1%}]"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "n/a"


def claims_table(summary: dict) -> list[tuple[str, str, str]]:
    """(claim, paper figure, this run's figure) for every claim of SANDBOX.md's table."""
    models = summary.get("eval", {}).get("models", {})
    get = lambda m, *keys: _dig(models.get(m, {}), keys)  # noqa: E731
    rows = []
    rows.append(("Base model continues the prompt instead of following it",
                 "qualitative (GPT-3 often continues the list of instructions)",
                 f"continue-the-worksheet: base {_pct(get('base', 'sandbox', 'continue_worksheet'))}, "
                 f"SFT {_pct(get('sft', 'sandbox', 'continue_worksheet'))}, PPO-ptx {_pct(get('ppo_ptx', 'sandbox', 'continue_worksheet'))}"))
    rows.append(("Small aligned model preferred to a much larger base model",
                 "1.3B InstructGPT preferred to 175B GPT-3; at the same size (175B) 85 ± 3% vs GPT-3, "
                 "71 ± 4% vs few-shot GPT-3",
                 _headline(summary.get("headline"))))
    ceiling = get("oracle", "win_rate")  # eval's oracle=true: a right answer to every prompt
    for m, label in (("ppo_ptx", "PPO-ptx"), ("ppo", "PPO"), ("sft_t0.3", "SFT at T=0.3"), ("dpo", "DPO")):
        if m in models and models[m].get("win_rate"):
            rows.append((f"{label} preferred to SFT (held-out panel)", "InstructGPT preferred to SFT at every size (Fig. 1)",
                         f"{label} vs SFT: {_interval(models[m]['win_rate'])}, gold utility {get(m, 'gold_utility', 'mean') or float('nan'):.3f} "
                         f"vs SFT {get('sft', 'gold_utility', 'mean') or float('nan'):.3f}"
                         + (f"; ceiling (an oracle answering every prompt right) {_interval(ceiling)}, gold "
                            f"{get('oracle', 'gold_utility', 'mean') or float('nan'):.3f}" if ceiling and m == "ppo_ptx" else "")))
    rows.append(("Closed-domain hallucination falls", "41% (GPT-3) -> 21% (InstructGPT)",
                 f"base {_pct(get('base', 'sandbox', 'hallucination'))}, SFT {_pct(get('sft', 'sandbox', 'hallucination'))}, "
                 f"PPO {_pct(get('ppo', 'sandbox', 'hallucination'))}, PPO-ptx {_pct(get('ppo_ptx', 'sandbox', 'hallucination'))}"))
    rows.append(("More truthful (correct or 'unknown' on closed-book questions)", "about twice as often truthful on TruthfulQA",
                 ", ".join(f"{m} {_pct(get(m, 'sandbox', 'truthfulness', 'all'))}" for m in ("base", "sft", "ppo", "ppo_ptx") if m in models)))
    rows.append(("Less toxic when asked to be respectful", "~25% fewer toxic outputs than GPT-3 when instructed",
                 "; ".join(f"{m}: plain {_pct(get(m, 'sandbox', 'insult_rate', 'plain'))}, respectful {_pct(get(m, 'sandbox', 'insult_rate', 'respectful'))}"
                           for m in ("base", "sft", "ppo_ptx") if m in models)))
    rows.append(("Complies less with harmful requests", "InstructGPT still complies often (paper §4.2); refusals trained in later",
                 ", ".join(f"{m} {_pct(get(m, 'sandbox', 'harmful_compliance'))}" for m in ("base", "sft", "ppo", "ppo_ptx") if m in models)))
    tax = {m: get(m, "alignment_tax") for m in ("base", "sft", "ppo", "ppo_ptx") if get(m, "alignment_tax")}
    rows.append(("Alignment tax on held-out pretraining data; PPO-ptx recovers most of it",
                 "PPO regresses on public NLP tasks; PPO-ptx mixes pretraining gradients and recovers most",
                 "; ".join(f"{m}: held-out loss {t['heldout_pretrain_loss']:.3f}, few-shot {_pct(t['fewshot_accuracy'])}" for m, t in tax.items()) or "n/a"))
    oo = summary.get("overoptimisation", {})
    rows.append(("Reward over-optimisation (Gao et al.)", "gold rises then falls with sqrt(KL) while the proxy keeps rising",
                 "; ".join(f"{k}: gold fit a={v['a']:.3f}, b={v['b']:.3f}" for k, v in oo.items() if isinstance(v, dict) and "a" in v) or "n/a"))
    agree = summary.get("labelers", {})
    rm = summary.get("rm", {})
    rows.append(("Labeler agreement and RM accuracy", "72.6 ± 1.5% training labelers, 77.3 ± 1.3% held-out; RM 69.6-72.4%",
                 f"training pool {_pct(agree.get('train'))}, held-out panel {_pct(agree.get('heldout'))}; "
                 f"RM held-out accuracy {_pct(rm.get('val_accuracy'))} "
                 f"({_ratio(rm.get('val_accuracy'), agree.get('train'))} of the training pool's agreement), "
                 f"vs the gold ordering {_pct(rm.get('val_gold_accuracy'))}"))
    return rows


def _headline(head: dict | None) -> str:
    """The policy's win rate vs the larger base, few-shot (`win_rate`) and bare (`win_rate_bare`; files
    written before session 11 call it `win_rate_prompted`), then vs its own base (`same_size`), then
    what a perfect policy would win against the same few-shot samples (`ceiling`)."""
    if not head or not head.get("win_rate"):
        return "measured by `make bench` (headline size), not in the demo"
    pol, base = head.get("policy", {}), head.get("base", {})
    sizes = (f"{pol.get('name', 'policy')} ({pol['params'] / 1e6:.2f}M) vs a {base['params'] / pol['params']:.1f}x "
             f"larger base ({base['params'] / 1e6:.2f}M): " if pol.get("params") and base.get("params") else "")
    text = f"{sizes}{_interval(head['win_rate'])} vs few-shot ({head.get('shots', '?')} shots)"
    bare = head.get("win_rate_bare") or head.get("win_rate_prompted")
    if bare:
        text += f", {_interval(bare)} vs bare"
    same = head.get("same_size")
    if same and same.get("win_rate"):
        text += f"; vs its own base: {_interval(same['win_rate'])} few-shot"
        if same.get("win_rate_bare"):
            text += f", {_interval(same['win_rate_bare'])} bare"
    ceiling = (head.get("ceiling") or {}).get("win_rate")
    if ceiling:
        text += f"; ceiling (an oracle answering every prompt right) {_interval(ceiling)} vs few-shot"
    return text


def _dig(d, keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def build_summary(cfg: ReportConfig) -> dict:
    root = Path(cfg.run)
    summary: dict = {"run": str(root)}
    ev = root / cfg.eval / "eval.json"
    if ev.exists():
        summary["eval"] = json.loads(ev.read_text())
    for name in cfg.stages:
        meta = root / name / "instructkit.json"
        if meta.exists():
            summary.setdefault("stages", {})[name] = json.loads(meta.read_text()).get("metrics", {})
    rm_meta = root / "rm" / "instructkit.json"
    if rm_meta.exists():
        summary["rm"] = json.loads(rm_meta.read_text()).get("metrics", {})
    wr = root / cfg.world_report
    if wr.exists():
        w = json.loads(wr.read_text())
        summary["labelers"] = {"train": _dig(w, ["agreement", "train", "agreement"]),
                               "heldout": _dig(w, ["agreement", "heldout", "agreement"])}
        summary["world_report"] = w
    head = root / cfg.headline
    if cfg.headline and head.exists():
        summary["headline"] = json.loads(head.read_text())
    bon = Path(str(root / cfg.bon) + ".summary.json")
    if bon.exists():
        summary["bon"] = json.loads(bon.read_text())
    summary["overoptimisation"] = _overopt(summary, root, cfg)
    rounds = _rounds(root)
    if rounds:
        summary["rounds"] = rounds
    return summary


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _policy_metrics(root: Path, path: str) -> dict:
    """A PPO stage's metrics by the path another stage recorded (relative to where it ran, or by name under ROOT)."""
    for d in (Path(path), root / Path(path).name):
        meta = _read_json(d / "instructkit.json")
        if meta:
            return meta.get("metrics", {})
    return {}


def _head_to_head(root: Path, r: int) -> tuple[dict, Path | None]:
    """The eval of round r against round r-1 as its baseline (round_r/eval or another, e.g. eval_rounds)."""
    for ev_file in sorted([*root.glob(f"round_{r}/eval/eval.json"), *root.glob("*/eval.json")]):
        ev = _read_json(ev_file)
        if ev.get("baseline") == f"round{r - 1}" and (ev.get("models", {}).get(f"round{r}") or {}).get("win_rate"):
            return ev, ev_file.parent
    return {}, None


def _rounds(root: Path, n_samples: int = 6) -> list[dict]:
    """Iterated RLHF (a pipeline's `rounds:`): per round, its RM's gates and held-out accuracies, its
    policy's KL and held-out gold, its eval's win rates, its win rate against the previous round and
    decoded samples of both. Round 1 is ROOT/rm and the policy round 2 continued from; round R is
    ROOT/round_R/{rm,policy,eval}."""
    later = sorted((int(d.name[6:]), d) for d in root.glob("round_*") if d.is_dir() and d.name[6:].isdigit())
    if not later:
        return []
    out = []
    for r, d in [(1, root), *later]:
        meta = _read_json(d / "rm" / "instructkit.json")
        row = {"round": r, "gates": meta.get("gates", {}),
               **{k: meta.get("metrics", {}).get(k) for k in ("val_accuracy", "val_gold_accuracy")}}
        if r == 1:
            first = _read_json(later[0][1] / "policy" / "instructkit.json")
            inputs = first.get("inputs", {})
            path = (inputs.get("policy") or inputs.get("model") or {}).get("path")  # PPO's policy, a direct method's model
            policy = _policy_metrics(root, path) if path else {}
        else:
            policy = _read_json(d / "policy" / "instructkit.json").get("metrics", {})
        if policy:
            row["policy"] = {k: policy.get(k) for k in ("kl", "kl_coef", "eval_score", "reward_gold", "selected_iteration")}
        ev = _read_json(d / "eval" / "eval.json") if r > 1 else {}
        if ev:
            row["eval"] = {"baseline": ev.get("baseline"),
                           "win_rate": {m: v["win_rate"] for m, v in ev.get("models", {}).items() if v.get("win_rate")}}
        if r > 1:
            h2h, where = _head_to_head(root, r)
            if h2h:
                row["vs_previous"] = {"win_rate": h2h["models"][f"round{r}"]["win_rate"], "eval": where.name
                                      if where.parent == root else str(where.relative_to(root))}
            seen, picked = set(), []
            for s in _read_jsonl(d / "eval" / "samples.jsonl") or (_read_jsonl(where / "samples.jsonl") if where else []):
                if f"round{r}" in s and f"round{r - 1}" in s and s.get("task") not in seen:
                    seen.add(s.get("task"))
                    picked.append({k: s[k] for k in ("prompt", "task", f"round{r - 1}", f"round{r}") if k in s})
            if picked:
                row["samples"] = picked[:n_samples]
        out.append(row)
    return out


def rounds_table(rounds: list[dict]) -> list[tuple[str, str, str, str, str, str, str]]:
    """(round, RM best-of-K gain, RM held-out accuracy (vs gold), the previous RM and this one on the
    newest policy's held-out samples, policy KL and held-out gold, eval win rates, win rate against
    the previous round) per round."""
    rows = []
    for r in rounds:
        g = r["gates"]
        gain = f"{g['bon_gain']:+.4f} (K {g.get('bon_n', '?')}, {g.get('judge', '?')})" if "bon_gain" in g else "n/a"
        acc = f"{_pct(r.get('val_accuracy'))} (gold {_pct(r.get('val_gold_accuracy'))})"
        p = r.get("policy") or {}
        kl = "n/a" if p.get("kl") is None else f"KL {p['kl']:.2f} (coef {p.get('kl_coef')})" + (
            f", held-out gold {p['eval_score']:.3f}" if p.get("eval_score") is not None else "")
        ev = r.get("eval")
        wins = "; ".join(f"{m} vs {ev['baseline']}: {_interval(w)}" for m, w in ev["win_rate"].items()) if ev else "n/a"
        lt = g.get("latest")
        newest = "n/a" if not lt else (
            f"{_pct(lt['previous_accuracy'])} -> {_pct(lt['accuracy'])}" +
            (f" (gold {_pct(lt['previous_gold_accuracy'])} -> {_pct(lt['gold_accuracy'])})" if "gold_accuracy" in lt else "") +
            f", best-of-K gain {lt['previous_bon_gain']:+.4f} -> {lt['bon_gain']:+.4f}; {lt['n_pairs']} pairs")
        prev = r.get("vs_previous")
        vs = f"{_interval(prev['win_rate'])} ({prev['eval']})" if prev else "n/a"
        rows.append((str(r["round"]), gain, acc, newest, kl, wins, vs))
    return rows


def _overopt(summary: dict, root: Path, cfg: ReportConfig) -> dict:
    out = {}
    curve = summary.get("bon", {}).get("curve")
    if curve:
        ns = sorted(curve, key=int)
        d = [math.sqrt(curve[n]["kl_bound"]) for n in ns]
        g0 = curve[ns[0]]["gold"]
        a, b = fit_bon(d, [curve[n]["gold"] - g0 for n in ns])
        out["bon"] = {"a": a, "b": b, "d": d, "gold": [curve[n]["gold"] for n in ns], "rm": [curve[n]["rm"] for n in ns]}
    for name in cfg.ppo:
        rows = [r for r in _read_jsonl(root / name / "metrics.jsonl") if "reward_gold" in r and "kl" in r]
        if len(rows) >= 3:
            d = [math.sqrt(max(r["kl"], 0.0)) for r in rows]
            g0 = rows[0]["reward_gold"]
            a, b = fit_rl(d, [r["reward_gold"] - g0 for r in rows])
            out[name] = {"a": a, "b": b, "d": d, "gold": [r["reward_gold"] for r in rows], "rm": [r["reward_rm"] for r in rows]}
    return out


def plots(summary: dict, root: Path, cfg: ReportConfig) -> list[tuple[str, str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    # training curves per stage
    curves = [(n, _read_jsonl(root / n / "metrics.jsonl")) for n in cfg.stages]
    curves = [(n, rows) for n, rows in curves if rows]
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3), squeeze=False)
        for ax, (n, rows) in zip(axes[0], curves):
            key = next((k for k in ("loss", "reward_rm") if k in rows[0]), None)
            if key:
                ax.plot([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r], lw=1)
            ax.set_title(f"{n}: {key}")
            ax.set_xlabel("step")
        figs.append(("Training curves", _png(fig)))
    # reward and KL over PPO
    ppo_rows = [(n, _read_jsonl(root / n / "metrics.jsonl")) for n in cfg.ppo]
    ppo_rows = [(n, r) for n, r in ppo_rows if r]
    if ppo_rows:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3))
        for n, rows in ppo_rows:
            it = [r["step"] for r in rows]
            axes[0].plot(it, [r.get("reward_rm") for r in rows], label=n)
            axes[1].plot(it, [r.get("reward_gold", float("nan")) for r in rows], label=n)
            axes[2].plot(it, [r.get("kl") for r in rows], label=n)
        for ax, t in zip(axes, ("RM reward", "gold utility", "KL to SFT (nats)")):
            ax.set_title(t)
            ax.set_xlabel("iteration")
            ax.legend(fontsize=7)
        figs.append(("PPO: reward and KL", _png(fig)))
    # win rates with intervals
    models = summary.get("eval", {}).get("models", {})
    wr = [(m, r["win_rate"]) for m, r in models.items() if r.get("win_rate")]
    if wr:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(wr)))
        ys = range(len(wr))
        ax.barh(list(ys), [w["rate"] for _, w in wr],
                xerr=[[w["rate"] - w["low"] for _, w in wr], [w["high"] - w["rate"] for _, w in wr]], capsize=3,
                color=["silver" if m == "oracle" else "tab:blue" for m, _ in wr])  # the oracle: the ceiling, not a model
        ax.set_yticks(list(ys), [m for m, _ in wr])
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_title(f"win rate vs {summary['eval'].get('baseline')} (95% interval)")
        figs.append(("Win rates", _png(fig)))
    # over-optimisation
    oo = summary.get("overoptimisation", {})
    if oo:
        fig, axes = plt.subplots(1, len(oo), figsize=(4 * len(oo), 3), squeeze=False)
        for ax, (name, v) in zip(axes[0], oo.items()):
            import numpy as np
            d = np.array(v["d"])
            ax.plot(d, v["gold"], "o", ms=3, label="gold")
            ax2 = ax.twinx()
            ax2.plot(d, v["rm"], "x", ms=3, color="tab:orange", label="RM (proxy)")
            grid = np.linspace(max(1e-3, d.min()), d.max(), 50)
            fit = bon_curve(grid, v["a"], v["b"]) if name == "bon" else rl_curve(grid, v["a"], v["b"])
            ax.plot(grid, fit + v["gold"][0], "-", lw=1, label="Gao et al. fit")
            ax.set_title(f"{name}: gold and proxy vs sqrt(KL)")
            ax.set_xlabel("sqrt(KL)")
            ax.legend(fontsize=7, loc="lower left")
        figs.append(("Reward over-optimisation", _png(fig)))
    return figs


def task_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Per task category: each model's win rate against the eval's baseline with its interval and,
    in a sandbox eval, its task success there; the baseline's column has only its task success.
    (column names, rows), each row starting with its category; empty when no categories were judged."""
    ev = summary.get("eval", {})
    models, baseline = ev.get("models", {}), ev.get("baseline")
    names = [m for m, r in models.items() if r.get("win_rate_by_task")]
    if not names:
        return [], []
    cols = ([baseline] if baseline in models else []) + names
    rows = []
    for t in sorted({t for m in names for t in models[m]["win_rate_by_task"]}):
        row = [t]
        for m in cols:
            w = models[m].get("win_rate_by_task", {}).get(t)
            ok = _dig(models[m], ["sandbox", "task_success_by_task", t])
            parts = ([f"{w['rate']:.0%} [{w['low']:.0%}, {w['high']:.0%}]"] if w else []) + \
                    ([f"task ok {ok:.0%}"] if ok is not None else [])
            row.append("; ".join(parts) or "n/a")
        rows.append(row)
    return cols, rows


def render(summary: dict, figs, samples: list[dict], rows) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>instructkit report</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;width:100%;font-size:14px}td,th{border:1px solid #ccc;padding:4px 6px;"
             "vertical-align:top;text-align:left}th{background:#f3f3f3}img{max-width:100%}pre{white-space:pre-wrap;margin:0}",
             "</style></head><body><h1>instructkit report</h1>",
             f"<p>Run: <code>{esc(summary.get('run', ''))}</code>. Every figure below was measured in this run.</p>",
             "<h2>Paper figure vs this run</h2><table id='claims'><tr><th>claim</th><th>paper</th><th>this run</th></tr>"]
    parts += [f"<tr><td>{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td></tr>" for a, b, c in rows]
    parts.append("</table>")
    if summary.get("rounds"):
        parts.append("<h2>Rounds</h2><table id='rounds'><tr><th>round</th><th>RM best-of-K gain (gate)</th>"
                     "<th>RM held-out accuracy</th><th>on the previous policy's samples: previous RM -> this RM</th>"
                     "<th>policy KL to its reference</th><th>eval win rates</th>"
                     "<th>vs the previous round</th></tr>")
        parts += [f"<tr>{''.join(f'<td>{esc(c)}</td>' for c in row)}</tr>" for row in rounds_table(summary["rounds"])]
        parts.append("</table>")
        for r in summary["rounds"]:
            if r.get("samples"):
                a, b = f"round{r['round'] - 1}", f"round{r['round']}"
                parts.append(f"<h3>Round {r['round']} vs round {r['round'] - 1}: samples</h3><table class='round-samples'>"
                             f"<tr><th>prompt</th><th>{a}</th><th>{b}</th></tr>")
                parts += [f"<tr><td><pre>{esc(s['prompt'])}</pre></td><td><pre>{esc(s.get(a, ''))}</pre></td>"
                          f"<td><pre>{esc(s.get(b, ''))}</pre></td></tr>" for s in r["samples"]]
                parts.append("</table>")
    for title, png in figs:
        parts.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{png}'>")
    cols, cats = task_table(summary)
    if cats:
        parts.append(f"<h2>Win rate vs {esc(str(summary['eval'].get('baseline')))} by task category (95% interval; "
                     "task success)</h2><table id='by-task'><tr><th>category</th>"
                     + "".join(f"<th>{esc(n)}</th>" for n in cols) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in cats]
        parts.append("</table>")
    if samples:
        names = [k for k in samples[0] if k not in ("prompt", "task")]
        parts.append("<h2>Samples side by side</h2><table id='samples'><tr><th>prompt</th>" +
                     "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>")
        for s in samples:
            parts.append(f"<tr><td><pre>{esc(s['prompt'])}</pre></td>" +
                         "".join(f"<td><pre>{esc(s[n])}</pre></td>" for n in names) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def run(cfg: ReportConfig) -> dict:
    if not cfg.run:
        raise InputError("missing required field", field="run")
    root = Path(cfg.run)
    if not root.is_dir():
        raise InputError("run directory does not exist", path=str(root))
    summary = build_summary(cfg)
    rows = claims_table(summary)
    summary["claims"] = [{"claim": a, "paper": b, "this_run": c} for a, b, c in rows]
    samples = _read_jsonl(root / cfg.eval / "samples.jsonl")
    by_task: dict[str, dict] = {}
    for s in samples:
        by_task.setdefault(s.get("task", "?"), s)
    figs = plots(summary, root, cfg)
    out = Path(cfg.out or root / "report.html")
    with atomic_open(out) as f:
        f.write(render(summary, figs, list(by_task.values())[: cfg.samples], rows))
    write_json(out.with_name("summary.json"), summary)
    print(f"\nreport: {out}  (summary: {out.with_name('summary.json')})\n")
    width = 46
    for a, b, c in rows:
        print(f"  {a[:width]:<{width}} | paper: {b}")
        print(f"  {'':<{width}} | run:   {c}")
    for r, gain, acc, newest, kl, wins, vs in rounds_table(summary.get("rounds", [])):
        print(f"  round {r}: RM best-of-K gain {gain}, held-out accuracy {acc}" +
              (f"; on the previous policy's samples {newest}" if newest != "n/a" else "") +
              f"; policy {kl}; {wins}; vs the previous round {vs}")
    return summary
