"""Stage `eval`: sample every model on held-out prompts and report, per model and per task category,
the win rate against the baseline with a 95% interval (ties count half), the mean 1-7 Likert score,
the Table 3 metadata rates, the sandbox's behaviour rates and the alignment tax. A base model can be
prompted few-shot (`fewshot: {NAME: K}`, evaluate/fewshot.py), as the paper's GPT-3 baselines were."""
from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path

import torch

from instructkit import data as datalib
from instructkit.config import EvalConfig
from instructkit.data.encode import encode_text, pack_texts, render_prompt
from instructkit.data.jsonl import write_json, write_jsonl
from instructkit.errors import InputError
from instructkit.evaluate.fewshot import cut_answer, fewshot_prompt, pick_shots
from instructkit.evaluate.stats import mean_interval, win_rate
from instructkit.models import load_causal_lm, set_threads
from instructkit.run import RunDir


def parse_models(specs: list[str]) -> dict[str, tuple[str, float | None]]:
    out = {}
    for s in specs:
        name, sep, rest = s.partition("=")
        if not sep or not name or not rest:
            raise InputError(f"expected NAME=DIR or NAME=DIR@T, got {s!r}", field="models")
        path, at, temp = rest.rpartition("@") if "@" in rest else (rest, "", "")
        try:
            t = float(temp) if at else None
        except ValueError:
            raise InputError(f"bad temperature in {s!r}", field="models") from None
        out[name] = (path if at else rest, t)
    return out


def compare(judge: str, world, prompts, a: list[str], b: list[str], seed: int) -> list[float]:
    """Per-prompt outcome of A vs B: 1 A better, 0.5 tie, 0 B better."""
    if judge == "panel":
        from instructkit.sandbox.labelers import pool
        panel = pool("heldout")
        rng = random.Random(f"instructkit-eval/{seed}")
        out = []
        for p, x, y in zip(prompts, a, b):
            if x == y:
                out.append(0.5)
                continue
            ranks = panel[rng.randrange(len(panel))].rank(world, p, [x, y], rng)
            out.append(0.5 if ranks[0] == ranks[1] else float(ranks[0] < ranks[1]))
        return out
    if judge == "gold":
        ua = [world.utility(p, x) for p, x in zip(prompts, a)]
        ub = [world.utility(p, y) for p, y in zip(prompts, b)]
    elif judge.startswith("rm:"):
        from instructkit.scoring import get_scorer
        score = get_scorer(judge)
        ua, ub = score(prompts, a), score(prompts, b)
    else:
        raise InputError(f"unknown judge {judge!r} (panel | gold | rm:DIR | human:FILE)", field="judge")
    return [0.5 if x == y else float(x > y) for x, y in zip(ua, ub)]


ORACLE = "oracle"


def oracle_answers(world, records, path: str) -> list[str]:
    """The sandbox oracle's answer to each prompt record; a prompt that is not one of the world's
    tasks has no right answer to give: an error naming its line."""
    from instructkit.data.jsonl import iter_json_lines
    from instructkit.sandbox.writers import oracle_response
    out = []
    for r, (line, _) in zip(records, iter_json_lines(path)):
        task = world.parse(r.prompt)
        if task is None:
            raise InputError("not a task of the sandbox world, so the oracle has no right answer for it (oracle=false "
                             "evaluates without it)", path=path, line=line, field="prompt")
        out.append(oracle_response(task, world.kb, r.prompt))
    return out


def human_outcomes(path: str, a_name: str, b_name: str) -> list[float]:
    """Outcomes from labeling-app comparison records: {"prompt","completions":[x,y],"ranks","models":[..]}."""
    out = []
    for r in datalib.load(path, "ranking"):
        models = r.meta.get("models")
        if not isinstance(models, list) or len(models) != 2 or set(models) != {a_name, b_name}:
            continue
        ia = models.index(a_name)
        ra, rb = r.ranks[ia], r.ranks[1 - ia]
        out.append(0.5 if ra == rb else float(ra < rb))
    return out


@torch.no_grad()
def heldout_loss(model, tok, texts: list[str], seq_len: int = 96, max_blocks: int = 256) -> float:
    blocks = pack_texts([encode_text(tok, t) for t in texts], tok.eos_token_id, seq_len)[:max_blocks]
    total, count = 0.0, 0
    for i in range(0, len(blocks), 32):
        b = blocks[i:i + 32]
        total += model(input_ids=b, labels=b, use_cache=False).loss.item() * b.numel()
        count += b.numel()
    return total / max(1, count)


def run(cfg: EvalConfig) -> dict:
    from instructkit.generation import SamplingParams, generate_texts

    set_threads(cfg.threads)
    for name in ("models", "baseline", "prompts"):
        if not getattr(cfg, name):
            raise InputError("missing required field", field=name)
    specs = parse_models(cfg.models)
    if cfg.oracle and ORACLE in specs:
        raise InputError(f"{ORACLE!r} names the sandbox oracle (oracle=true): call the model something else",
                         field="models")
    names = [*specs, *([ORACLE] if cfg.oracle else [])]
    if cfg.baseline not in names:
        raise InputError(f"baseline {cfg.baseline!r} is not one of the models ({', '.join(names)})", field="baseline")
    for name, k in cfg.fewshot.items():
        if name not in specs:
            raise InputError(f"{name!r} is not one of the models ({', '.join(specs)})", field=f"fewshot.{name}")
        if k < 1:
            raise InputError(f"expected at least 1 shot, got {k}", field=f"fewshot.{name}")
    if cfg.fewshot and not (cfg.fewshot_data or cfg.world):
        raise InputError("few-shot models need demonstrations: set fewshot_data or world", field="fewshot_data")
    if cfg.judge in ("panel", "gold") and not cfg.world:
        raise InputError(f"judge={cfg.judge} needs a sandbox world", field="world")
    if cfg.oracle and not cfg.world:
        raise InputError("the oracle answers a sandbox world's prompts: set world", field="oracle")
    records = datalib.load(cfg.prompts, "prompt")
    if cfg.n_prompts:
        records = records[: cfg.n_prompts]
    prompts = [r.prompt for r in records]
    world = None
    if cfg.world:
        from instructkit.sandbox.world import World
        world = World.load(cfg.world)
    human_file = cfg.judge[len("human:"):] if cfg.judge.startswith("human:") else None
    oracle = oracle_answers(world, records, cfg.prompts) if cfg.oracle else None
    demos_path = (cfg.fewshot_data or str(Path(cfg.world) / "demonstrations.jsonl")) if cfg.fewshot else ""
    demos = [(d.prompt, d.completion) for d in datalib.load(demos_path, "demonstration")
             if d.messages is None] if demos_path else []
    rundir = RunDir(cfg.out, "eval", cfg, {"prompts": cfg.prompts, "fewshot_data": demos_path,
                                           **{f"model.{k}": v[0] for k, v in specs.items()}})
    rundir.start()

    t0 = time.time()
    samples: dict[str, list[str]] = {}
    tax: dict[str, dict] = {}
    heldout = [r["text"] for r in world.records("corpus/heldout.jsonl")] if world is not None and cfg.alignment_tax else []
    probes = world.records("corpus/fewshot.jsonl") if world is not None and cfg.alignment_tax else []
    shots_used: dict[str, float] = {}
    for name, (path, temp) in specs.items():
        model, tok = load_causal_lm(path)
        model.eval()
        t = cfg.temperature if temp is None else temp
        k = cfg.fewshot.get(name, 0)
        if k:  # the answer-key format the base model read in pretraining; no template
            budget = getattr(model.config, "max_position_embeddings", 0) - cfg.max_new_tokens
            built = [fewshot_prompt(p, pick_shots(p, demos, k, cfg.seed), lambda x: len(encode_text(tok, x)), budget)
                     for p in prompts]
            rendered = [text for text, _ in built]
            shots_used[name] = sum(n for _, n in built) / max(1, len(built))
        else:
            rendered = [render_prompt(p, tok, cfg.template) for p in prompts]
        samples[name] = generate_texts(model, tok, rendered, SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=t),
                                       batch_size=cfg.batch_size, seed=cfg.seed)
        if k and cfg.fewshot_cut:
            samples[name] = [cut_answer(s) for s in samples[name]]
        same = next((n for n, (q, _) in specs.items() if n in tax and q == path), None)
        if same:  # the same checkpoint under another name (bare and few-shot): the same tax
            tax[name] = tax[same]
        elif heldout:
            from instructkit.sandbox.metrics import fewshot_accuracy
            greedy = lambda ps: generate_texts(model, tok, ps, SamplingParams(max_new_tokens=24, temperature=0.0),  # noqa: E731
                                               batch_size=cfg.batch_size)
            tax[name] = {"heldout_pretrain_loss": heldout_loss(model, tok, heldout),
                         "fewshot_accuracy": fewshot_accuracy(probes, greedy)}
        shots = f", few-shot: {shots_used[name]:.1f} of {k} shots on average" if k else ""
        print(f"eval: sampled {name} ({path}, T={t}{shots}) on {len(prompts)} prompts")

    if oracle is not None:
        samples[ORACLE] = oracle
        print(f"eval: {ORACLE}: a right answer to each of the {len(prompts)} prompts (sandbox/writers.py: oracle_response)")

    tasks = [r.meta.get("task", "all") for r in records]
    results: dict[str, dict] = {}
    for name in names:
        path, temp = specs.get(name, ("sandbox:oracle", None))
        res: dict = {"path": path, "temperature": None if name == ORACLE else temp or cfg.temperature,
                     "mean_words": sum(len(s.split()) for s in samples[name]) / max(1, len(prompts))}
        if name in shots_used:
            res["fewshot"] = {"k": cfg.fewshot[name], "mean_shots": shots_used[name]}
        if name != cfg.baseline:
            outcomes = (human_outcomes(human_file, name, cfg.baseline) if human_file else
                        compare(cfg.judge, world, prompts, samples[name], samples[cfg.baseline], cfg.seed))
            res["win_rate"] = win_rate(outcomes)
            if not human_file:
                by_task = defaultdict(list)
                for t, o in zip(tasks, outcomes):
                    by_task[t].append(o)
                res["win_rate_by_task"] = {t: win_rate(v) for t, v in sorted(by_task.items())}
        if world is not None:
            from instructkit.sandbox import metrics as M
            from instructkit.sandbox.labelers import pool
            pairs = list(zip(prompts, samples[name]))
            res["sandbox"] = M.summarize(world, pairs)
            panel = pool("heldout")
            rng = random.Random(f"instructkit-likert/{cfg.seed}")
            likert = [panel[rng.randrange(len(panel))].likert(world, p, [s], rng)[0] for p, s in pairs]
            res["likert"] = mean_interval(likert)
            res["gold_utility"] = mean_interval([world.utility(p, s) for p, s in pairs])
        if name in tax:
            res["alignment_tax"] = tax[name]
        results[name] = res

    write_jsonl(rundir.out / "samples.jsonl",
                [{"prompt": p, "task": t, **{n: samples[n][i] for n in names}} for i, (p, t) in enumerate(zip(prompts, tasks))])
    write_json(rundir.out / "eval.json", {"baseline": cfg.baseline, "judge": cfg.judge, "n_prompts": len(prompts),
                                          "models": results})
    print_table(results, cfg.baseline, cfg.judge)
    rundir.finish({"seconds": time.time() - t0})
    return results


def print_table(results: dict, baseline: str, judge: str) -> None:
    print(f"\neval: win rate vs {baseline} (judge: {judge}), 95% interval; ties count half")
    header = f"  {'model':<14} {'win rate':>22} {'gold':>7} {'likert':>6} {'worksheet':>9} {'halluc':>7} {'insult':>7} {'harmful':>7} {'words':>6}"
    print(header)
    for name, r in results.items():
        wr = r.get("win_rate")
        wr_s = f"{wr['rate']:.1%} [{wr['low']:.1%}, {wr['high']:.1%}]" if wr else "(baseline)"
        s = r.get("sandbox", {})
        ins = s.get("insult_rate", {})
        row = (f"  {name:<14} {wr_s:>22} {r.get('gold_utility', {}).get('mean', float('nan')):7.3f} "
               f"{r.get('likert', {}).get('mean', float('nan')):6.2f} {s.get('continue_worksheet', float('nan')):9.1%} "
               f"{s.get('hallucination', float('nan')):7.1%} {ins.get('all', float('nan')) if isinstance(ins, dict) else ins:7.1%} "
               f"{s.get('harmful_compliance', float('nan')):7.1%} {r['mean_words']:6.1f}")
        print(row)
