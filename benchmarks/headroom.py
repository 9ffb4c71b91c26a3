"""How far above SFT can optimising a reward go in this world, and how much of that does the reward
model see? Best-of-n picked by the hidden gold utility (what a perfect reward model would pick) and
by the trained RM, each judged by the held-out panel against an independent SFT sample.

    python benchmarks/headroom.py [--run runs/demo] [--n 16] [--n-prompts 600] [--json OUT]

For every n in 1, 2, 4, ... N it prints the panel's win rate (95% Wilson interval; ties half) and the
mean gold utility of the gold pick and of the RM pick, and the KL bound of best-of-n,
log n - (n-1)/n. Read it as a ceiling: PPO against this RM rarely beats the RM pick at n = 4-16
(the KL bound there, 0.6-2.0 nats, is where PPO runs), and an RM better than this one is worth at
most the gold-pick column. Sandbox runs only (the gold utility and the panel live in the world)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("INSTRUCTKIT_QUIET", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo", help="a sandbox pipeline run (world/, sft/, rm/)")
    ap.add_argument("--policy", default="", help="the model sampled (default RUN/sft)")
    ap.add_argument("--rm", default="", help="the reward model that picks (default RUN/rm)")
    ap.add_argument("--prompts", default="", help="held-out prompts (default RUN/world/prompts/eval.jsonl)")
    ap.add_argument("--n", type=int, default=16, help="largest n (samples per prompt besides the baseline's)")
    ap.add_argument("--n-prompts", type=int, default=600)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the figures here")
    a = ap.parse_args()
    if a.n < 1 or a.n_prompts < 1:
        print("headroom: --n and --n-prompts must be at least 1", file=sys.stderr)
        return 2
    run = Path(a.run)
    policy, rm_dir = a.policy or str(run / "sft"), a.rm or str(run / "rm")
    prompts_path = a.prompts or str(run / "world" / "prompts" / "eval.jsonl")
    for label, p in (("world", run / "world"), ("policy", Path(policy)), ("rm", Path(rm_dir)),
                     ("prompts", Path(prompts_path))):
        if not p.exists():
            print(f"headroom: {label} not found: {p}", file=sys.stderr)
            return 2

    import torch

    from instructkit import data as datalib
    from instructkit.config import TemplateConfig
    from instructkit.data.encode import render_prompt
    from instructkit.evaluate.run import compare
    from instructkit.evaluate.stats import win_rate
    from instructkit.generation import SamplingParams, generate_texts
    from instructkit.models import load_causal_lm
    from instructkit.reward import RewardScorer
    from instructkit.sandbox.world import World

    torch.set_num_threads(a.threads)
    t0 = time.time()
    world = World.load(str(run / "world"))
    prompts = [r.prompt for r in datalib.load(prompts_path, "prompt")][: a.n_prompts]
    model, tok = load_causal_lm(policy)
    model.eval()
    rendered = [render_prompt(p, tok, TemplateConfig()) for p in prompts]
    params = SamplingParams(max_new_tokens=a.max_new_tokens, temperature=a.temperature)
    # seed 0 is the baseline sample; seeds 1..N the candidates (independent draws for every prompt)
    baseline = generate_texts(model, tok, rendered, params, seed=a.seed * 1000)
    samples = []
    for k in range(1, a.n + 1):
        samples.append(generate_texts(model, tok, rendered, params, seed=a.seed * 1000 + k))
        print(f"headroom: sampled {k}/{a.n} x {len(prompts)} prompts ({time.time() - t0:.0f} s)", file=sys.stderr)
    rm = RewardScorer.load(rm_dir)
    rm_scores = torch.tensor([rm.score(prompts, s) for s in samples])  # (N, P)
    gold = torch.tensor([[world.utility(p, x) for p, x in zip(prompts, s)] for s in samples])
    cols = torch.arange(len(prompts))

    def judged(pick: torch.Tensor) -> tuple[dict, float]:
        texts = [samples[int(pick[i])][i] for i in range(len(prompts))]
        return win_rate(compare("panel", world, prompts, texts, baseline, a.seed)), float(gold[pick, cols].mean())

    rows = []
    n = 1
    while n <= a.n:
        by_gold, gold_g = judged(gold[:n].argmax(0))
        by_rm, gold_r = judged(rm_scores[:n].argmax(0))
        rows.append({"n": n, "kl_bound": math.log(n) - (n - 1) / n, "gold_pick": {"win_rate": by_gold, "gold": gold_g},
                     "rm_pick": {"win_rate": by_rm, "gold": gold_r}})
        n *= 2
    base_gold = float(torch.tensor([world.utility(p, x) for p, x in zip(prompts, baseline)]).mean())

    def pct(w: dict) -> str:
        return f"{w['rate']:6.1%} [{w['low']:.1%}, {w['high']:.1%}]"

    print(f"\nheadroom: best-of-n of {policy} on {len(prompts)} held-out prompts, judged by the held-out panel "
          f"against one more sample (its gold {base_gold:.3f}); picked by the gold utility or by {rm_dir}")
    print(f"  {'n':>3} {'KL bound':>8}   {'gold pick: win rate':>28} {'gold':>6}   {'RM pick: win rate':>28} {'gold':>6}")
    for r in rows:
        g, m = r["gold_pick"], r["rm_pick"]
        print(f"  {r['n']:>3} {r['kl_bound']:8.2f}   {pct(g['win_rate']):>28} {g['gold']:6.3f}   "
              f"{pct(m['win_rate']):>28} {m['gold']:6.3f}")
    print(f"headroom: {time.time() - t0:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"policy": policy, "rm": rm_dir, "prompts": prompts_path,
                                            "n_prompts": len(prompts), "baseline_gold": base_gold, "rows": rows},
                                           indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
