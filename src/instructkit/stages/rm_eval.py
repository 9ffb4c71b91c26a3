"""Command `rm-eval` (and the evaluation at the end of `rm`): how well a reward model orders
held-out rankings.

Reported: pairwise accuracy over all strictly ranked pairs (score ties count 1/2), the ranking
loss, accuracy per K, per task (`task` or `category` in a record) and per labeler; calibration
(accuracy by predicted probability sigmoid(|r_w - r_l|), and the expected calibration error);
accuracy against the gold ordering when records carry `gold_ranks` (the sandbox's labelers write
them); and accuracy next to the labelers' own pairwise agreement, the ceiling (InstructGPT:
labelers 72.6%, RMs 69.6-72.4%), from `agreement=` or the records' `agreement` field.

Everything is computed on raw scores: normalisation is a positive affine map, which changes no
ordering, and the Bradley-Terry probabilities were fit on the raw scale."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from instructkit.config import RMEvalConfig
from instructkit.data.encode import render_prompt
from instructkit.data.jsonl import iter_json_lines, split_paths, write_json
from instructkit.data.records import Ranking, parse_ranking
from instructkit.errors import InputError


# ---------------------------------------------------------------------------- data

def _as_contract(obj: dict, path: str, line: int) -> dict:
    """HH-RLHF transcripts and TRL pairs without a plain-text prompt (implicit prompt, or
    conversational) go through `instructkit import`'s converters, so every format trains as is."""
    if "chosen" not in obj or "rejected" not in obj:
        return obj
    if isinstance(obj.get("prompt"), str) and isinstance(obj["chosen"], str):
        return obj
    from instructkit.data.importers import ASSISTANT, import_hh, import_trl_pair

    if "prompt" not in obj and isinstance(obj["chosen"], str) and ASSISTANT in obj["chosen"]:
        return import_hh(obj, path, line)[1]
    return import_trl_pair(obj, path, line)[1]


def load_rankings(paths: str | list[str]) -> list[Ranking]:
    """Rankings, pairs (TRL's formats, HH-RLHF transcripts) or ratings, validated, including the
    meta fields evaluation reads. Several files (a list, or comma-separated) are concatenated in
    order; an error names the file and line it is in."""
    return [r for path in split_paths(paths) for r in _load_ranking_file(path)]


def _load_ranking_file(path: str) -> list[Ranking]:
    out = []
    for line, obj in iter_json_lines(path):
        r = parse_ranking(_as_contract(obj, str(path), line), str(path), line)
        gold = r.meta.get("gold_ranks")
        if gold is not None and (not isinstance(gold, list) or len(gold) != r.k or not all(
                isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in gold)):
            raise InputError(f"expected {r.k} integers >= 1 (the gold ordering, 1 = best)", path=str(path),
                             line=line, field="gold_ranks")
        util = r.meta.get("gold_utilities")
        if util is not None and (not isinstance(util, list) or len(util) != r.k or not all(
                isinstance(u, (int, float)) and not isinstance(u, bool) for u in util)):
            raise InputError(f"expected {r.k} numbers (gold utility per completion)", path=str(path), line=line,
                             field="gold_utilities")
        agr = r.meta.get("agreement")
        if agr is not None and (isinstance(agr, bool) or not isinstance(agr, (int, float)) or not 0 <= agr <= 1):
            raise InputError("expected a number from 0 to 1 (labelers' pairwise agreement)", path=str(path),
                             line=line, field="agreement")
        for key in ("task", "category"):
            if key in r.meta and not isinstance(r.meta[key], str):
                raise InputError("expected a string", path=str(path), line=line, field=key)
        out.append(r)
    return out


def rankable(rankings: list[Ranking]) -> tuple[list[Ranking], int, int]:
    """-> (rankings with at least one ranked pair, n not_rankable, n all tied)."""
    flagged = sum(r.not_rankable for r in rankings)
    kept = [r for r in rankings if not r.not_rankable]
    tied = sum(1 for r in kept if not r.pairs())
    return [r for r in kept if r.pairs()], flagged, tied


def attach_gold(rankings: list[Ranking], spec: str) -> None:
    """Set meta["gold_ranks"] from a scorer's utilities (equal utilities tie), e.g. the sandbox's
    hidden gold utility: 'sandbox:WORLD_DIR'."""
    from instructkit.data.records import scores_to_ranks
    from instructkit.scoring import get_scorer

    scorer = get_scorer(spec)
    prompts = [r.prompt for r in rankings for _ in r.completions]
    utilities = scorer(prompts, [c for r in rankings for c in r.completions])
    i = 0
    for r in rankings:
        u = [round(float(x), 9) for x in utilities[i:i + r.k]]  # float noise must not break gold ties
        r.meta["gold_ranks"] = scores_to_ranks(u)
        r.meta["gold_utilities"] = u
        i += r.k


@dataclass
class EncodedRanking:
    seqs: list[list[int]]  # K token sequences: prompt + completion (+ EOS)
    ranks: list[int]  # K ranks, 1 = best, equal = tie


def encode_rankings(rankings: list[Ranking], tok, template, max_len: int, append_eos: bool
                    ) -> tuple[list[EncodedRanking], int]:
    """-> (encoded rankings, number of truncated sequences)."""
    from instructkit.reward import encode_response

    out, n_trunc = [], 0
    for r in rankings:
        prompt_text = render_prompt(r.prompt, tok, template)
        seqs = []
        for c in r.completions:
            ids, truncated = encode_response(tok, prompt_text, c, max_len, append_eos)
            seqs.append(ids)
            n_trunc += truncated
        out.append(EncodedRanking(seqs, list(r.ranks)))
    return out, n_trunc


def score_rankings(model, items: list[EncodedRanking], pad_id: int, batch_size: int = 64) -> list[list[float]]:
    """Raw scores, one list of K per ranking; all sequences batched together by length."""
    from instructkit.reward import score_sequences

    flat = [s for it in items for s in it.seqs]
    scores = score_sequences(model, flat, pad_id, batch_size)
    out, i = [], 0
    for it in items:
        out.append(scores[i:i + len(it.seqs)])
        i += len(it.seqs)
    return out


# ---------------------------------------------------------------------------- metrics

def _pairs(ranks: list[int]) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


class _Acc:
    def __init__(self):
        self.correct, self.n, self.prompts = 0.0, 0, 0

    def add(self, margins: list[float]):
        self.correct += sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins)
        self.n += len(margins)
        self.prompts += 1

    def as_dict(self) -> dict:
        return {"accuracy": self.correct / self.n if self.n else float("nan"), "n_pairs": self.n,
                "n_prompts": self.prompts}


def evaluate(rankings: list[Ranking], scores: list[list[float]], agreement: float = 0.0, bins: int = 5) -> dict:
    """The report (a JSON-able dict) for rankings with at least one ranked pair each."""
    overall, by_k, by_task, by_labeler = _Acc(), defaultdict(_Acc), defaultdict(_Acc), defaultdict(_Acc)
    gold_rm, gold_labels = _Acc(), _Acc()
    losses, calib = [], [[0, 0.0, 0.0] for _ in range(bins)]  # per bin: n, sum confidence, sum correct
    agreements = []
    for r, s in zip(rankings, scores):
        margins = [s[w] - s[l] for w, l in _pairs(r.ranks)]  # r_w - r_l, (P,)
        if not margins:
            continue
        overall.add(margins)
        by_k[r.k].add(margins)
        task = r.meta.get("task", r.meta.get("category"))
        if task is not None:
            by_task[task].add(margins)
        if r.labeler is not None:
            by_labeler[r.labeler].add(margins)
        # InstructGPT eq. 1, per prompt: -1/P sum log sigmoid(r_w - r_l)
        losses.append(-sum(_log_sigmoid(m) for m in margins) / len(margins))
        for m in margins:
            conf = 1.0 / (1.0 + math.exp(-abs(m)))  # P(the higher-scored completion is the better one)
            b = min(bins - 1, int((conf - 0.5) * 2 * bins))
            calib[b][0] += 1
            calib[b][1] += conf
            calib[b][2] += 1.0 if m > 0 else 0.5 if m == 0 else 0.0
        gold = r.meta.get("gold_ranks")
        if gold is not None:
            gp = _pairs(gold)
            if gp:
                gold_rm.add([s[w] - s[l] for w, l in gp])
                # the labels as a predictor of the gold order (rank 1 = best, so the margin is l - w)
                gold_labels.add([float(r.ranks[l] - r.ranks[w]) for w, l in gp])
        if isinstance(r.meta.get("agreement"), (int, float)):
            agreements.append(float(r.meta["agreement"]))

    report = {"n_prompts": overall.prompts, "n_pairs": overall.n, "accuracy": overall.as_dict()["accuracy"],
              "loss": sum(losses) / len(losses) if losses else float("nan"),
              "by_k": {str(k): a.as_dict() for k, a in sorted(by_k.items())}}
    if by_task:
        report["by_task"] = {k: a.as_dict() for k, a in sorted(by_task.items())}
    if by_labeler:
        report["by_labeler"] = {k: a.as_dict() for k, a in sorted(by_labeler.items())}
    n_total = sum(c[0] for c in calib)
    rows = []
    ece = 0.0
    for b, (n, conf, corr) in enumerate(calib):
        row = {"lo": 0.5 + b / (2 * bins), "hi": 0.5 + (b + 1) / (2 * bins), "n": n,
               "confidence": conf / n if n else None, "accuracy": corr / n if n else None}
        rows.append(row)
        if n:
            ece += n / n_total * abs(corr / n - conf / n)
    report["calibration"] = {"bins": rows, "ece": ece if n_total else float("nan")}
    if rankings:
        report["best_of_k"] = best_of_k_gain(rankings, scores)
    if gold_rm.n:
        report["gold"] = {"accuracy": gold_rm.as_dict()["accuracy"], "n_pairs": gold_rm.n,
                          "labels_accuracy": gold_labels.as_dict()["accuracy"]}
    if agreement > 0:
        ceiling = {"value": agreement, "source": "agreement="}
    elif agreements:
        ceiling = {"value": sum(agreements) / len(agreements), "source": f"records ({len(agreements)})"}
    else:
        ceiling = None
    if ceiling is not None:
        ceiling["ratio"] = report["accuracy"] / ceiling["value"] if ceiling["value"] > 0 else float("nan")
        report["agreement"] = ceiling
    return report


def best_of_k_gain(rankings: list[Ranking], scores: list[list[float]]) -> dict:
    """The PPO gate: how much better the RM's pick among a prompt's K completions is than a random
    one, by the best judge the records carry (gold utility > gold ranks > the held-out labels' ranks;
    ranks count as -rank). > 0 means best-of-n with this RM beats sampling."""
    if all("gold_utilities" in r.meta for r in rankings):
        judge, values = "gold utility", [r.meta["gold_utilities"] for r in rankings]
    elif all("gold_ranks" in r.meta for r in rankings):
        judge, values = "gold rank places", [[-g for g in r.meta["gold_ranks"]] for r in rankings]
    else:
        judge, values = "label rank places", [[-x for x in r.ranks] for r in rankings]
    gains = [v[max(range(len(s)), key=s.__getitem__)] - sum(v) / len(v) for v, s in zip(values, scores)]
    ks = sorted({r.k for r in rankings})
    return {"bon_gain": sum(gains) / len(gains), "bon_n": ks[0] if len(ks) == 1 else f"{ks[0]}..{ks[-1]}",
            "judge": judge, "n_prompts": len(gains)}


def format_report(report: dict, name: str = "rm-eval") -> str:
    def f(x):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    lines = [f"{name}: {report['n_prompts']} prompts, {report['n_pairs']} ranked pairs",
             f"  pairwise accuracy {f(report['accuracy'])}   ranking loss {f(report['loss'])}"]
    if "agreement" in report:
        a = report["agreement"]
        lines.append(f"  labelers' agreement {f(a['value'])} ({a['source']}): accuracy is {f(a['ratio'])} x the ceiling")
    if "gold" in report:
        g = report["gold"]
        lines.append(f"  vs gold ordering {f(g['accuracy'])} over {g['n_pairs']} gold pairs "
                     f"(the labels themselves: {f(g['labels_accuracy'])})")
    for key, title in (("by_k", "K"), ("by_task", "task"), ("by_labeler", "labeler")):
        if key in report and len(report[key]) > (0 if key == "by_task" else 1):
            parts = [f"{k} {f(v['accuracy'])} ({v['n_pairs']})" for k, v in report[key].items()]
            lines.append(f"  by {title}: " + ", ".join(parts))
    if "best_of_k" in report:
        b = report["best_of_k"]
        lines.append(f"  best-of-K pick by the RM vs a random completion: {b['bon_gain']:+.4f} {b['judge']} "
                     f"(K {b['bon_n']}, {b['n_prompts']} prompts)")
    cal = report["calibration"]
    parts = [f"{b['lo']:.1f}-{b['hi']:.1f}: {f(b['confidence'])}->{f(b['accuracy'])} ({b['n']})"
             for b in cal["bins"] if b["n"]]
    lines.append(f"  calibration, predicted -> observed: {'; '.join(parts)}; ECE {f(cal['ece'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command

def score_with(model_dir: str, rankings: list[Ranking], batch_size: int = 64) -> list[list[float]]:
    """Every completion's reward under a saved reward model (its own template, length and EOS)."""
    from types import SimpleNamespace

    from instructkit.reward import load_reward_model

    model, tok, meta = load_reward_model(model_dir)
    template = SimpleNamespace(**{"kind": "plain", "system": "", **meta["template"]})
    items, n_trunc = encode_rankings(rankings, tok, template, int(meta["max_len"]), bool(meta["append_eos"]))
    if n_trunc:
        print(f"rm-eval: {n_trunc} sequences truncated to {meta['max_len']} tokens")
    return score_rankings(model, items, tok.pad_token_id, batch_size)


def run(cfg: RMEvalConfig) -> dict:
    from instructkit.models import set_threads

    set_threads(cfg.threads)
    for name in ("model", "data"):
        if not getattr(cfg, name):
            raise InputError("missing required field", field=name)
    if not 0 <= cfg.agreement <= 1:
        raise InputError("expected a number from 0 to 1", field="agreement")
    if cfg.bins < 1 or cfg.batch_size < 1:
        raise InputError("expected bins >= 1 and batch_size >= 1", field="bins")
    if cfg.out and Path(cfg.out).is_dir():
        raise InputError("expected a file path for the report, found a directory", path=cfg.out, field="out")
    rankings, flagged, tied = rankable(load_rankings(cfg.data))
    if flagged or tied:
        print(f"rm-eval: skipped {flagged} not_rankable and {tied} all-tied records")
    if not rankings:
        raise InputError("no record has a ranked pair", path=cfg.data)
    if cfg.gold:
        attach_gold(rankings, cfg.gold)
    scores = score_with(cfg.model, rankings, cfg.batch_size)
    report = evaluate(rankings, scores, cfg.agreement, cfg.bins)
    report["skipped"] = {"not_rankable": flagged, "all_tied": tied}
    print(format_report(report))
    if cfg.out:
        write_json(cfg.out, report)
    return report
