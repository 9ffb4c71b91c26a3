"""PPO throughput: episodes per second and where one iteration's time goes (rollout / scoring /
training), on a small sandbox chain built from scratch (world -> base -> SFT -> rankings -> RM).

Prints the time split of every iteration and the medians; nothing is compared with a peer here
(TRL removed PPO; see BENCHMARKS.md)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("INSTRUCTKIT_QUIET", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--rollout-batch", type=int, default=128)
    ap.add_argument("--minibatch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    from instructkit.cli import main as ik

    root = Path(tempfile.mkdtemp(prefix="bench-ppo-"))
    w, base, sft, ranks, rm, out = (root / n for n in ("world", "base", "sft", "rankings.jsonl", "rm", "ppo"))
    t0 = time.time()
    assert ik(["world", "build", "--size", "tiny", "--seed", "0", "--out", str(w)]) == 0
    assert ik(["pretrain", f"data.train={w}/corpus/train.jsonl", f"out={base}", "max_steps=150", "init.d_model=96",
               "init.n_layers=4", "init.n_heads=4", "tokenizer.vocab_size=512", "seq_len=96"]) == 0
    assert ik(["sft", f"model={base}", f"data.train={w}/demonstrations.jsonl", f"out={sft}", "epochs=6",
               "batch_size=16", "optim.lr=1e-3", "dropout=0.0"]) == 0
    assert ik(["world", "label", "--world", str(w), "--model", str(sft), "--prompts", f"{w}/prompts/rm.jsonl",
               "--k", "4", "--out", str(ranks)]) == 0
    assert ik(["rm", f"model={sft}", f"data.train={ranks}", f"out={rm}"]) == 0
    print(f"setup (world, 0.5M-parameter base, SFT, rankings, RM) in {time.time() - t0:.0f}s\n")

    t0 = time.time()
    assert ik(["ppo", f"policy={sft}", f"reward_model={rm}", f"prompts={w}/prompts/rm.jsonl", f"out={out}",
               f"episodes={a.iterations * a.rollout_batch}", f"rollout_batch={a.rollout_batch}",
               f"minibatch={a.minibatch}", "ppo_epochs=2", "eval_prompts=", "require_gate=false",
               f"threads={a.threads}", "max_new_tokens=32"]) == 0
    wall = time.time() - t0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    print(f"\nPPO, {a.iterations} iterations x {a.rollout_batch} episodes, minibatch {a.minibatch}, 2 epochs, "
          f"{a.threads} thread(s), policy/value 0.5M parameters, up to 32 new tokens")
    print(f"  {'iter':>4} {'rollout':>8} {'scoring':>8} {'training':>9} {'episodes/s':>11} {'gen share':>9} {'resp len':>8}")
    for r in rows:
        total = r["time_rollout"] + r["time_score"] + r["time_train"]
        print(f"  {r['step']:>4} {r['time_rollout']:8.2f} {r['time_score']:8.2f} {r['time_train']:9.2f} "
              f"{a.rollout_batch / total:11.1f} {r['time_rollout'] / total:9.1%} {r['response_length']:8.1f}")
    tot = [r["time_rollout"] + r["time_score"] + r["time_train"] for r in rows[1:]] or [1.0]
    gen = [r["time_rollout"] / (r["time_rollout"] + r["time_score"] + r["time_train"]) for r in rows[1:]] or [0.0]
    print(f"  median (after the first iteration): {a.rollout_batch / statistics.median(tot):.1f} episodes/s, "
          f"generation {statistics.median(gen):.1%} of the iteration; whole command {wall:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
