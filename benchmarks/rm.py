"""Reward-model training: instructkit's K-way trainer vs TRL's RewardTrainer on the expanded pairs.

    .venv/bin/python benchmarks/rm.py [--runs 3] [--prompts 480] [--val 160]

Same K = 9 rankings (a synthetic world: completions with more "good" words, fewer "bad" words and
the prompt's topic are better; labelers rank with Gaussian noise calibrated near the paper's 73%
agreement), same model and initialisation (a sandbox-sized GPT-2, scalar head N(0, 1/sqrt(d+1))),
same token ids (TRL gets our pre-tokenized chosen/rejected ids), same number of compared pairs per
optimiser step (B prompts x C(9,2) = 36B pairs), 1 epoch, AdamW with the same betas, LR and
cosine-to-10% schedule, grad clip 1, fp32 both sides, dropout off, same threads. TRL 1.16 defaults
to bf16=True and gradient_checkpointing=True; both are turned off here (bf16 matmul is ~30x slower
on these CPUs), which is the fair comparison. Timed span: the training loop only (instructkit: the
stage's loop, reported by the stage as train_seconds; TRL: trainer.train()), after a warm-up run,
median of --runs runs, one at a time in this process. Held-out accuracy of both final models is
measured by the same code (instructkit.stages.rm_eval) on the same held-out rankings."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["INSTRUCTKIT_QUIET"] = "1"

import torch  # noqa: E402

POS = ["good", "great", "nice", "kind", "clear", "true"]
NEG = ["bad", "awful", "rude", "mean", "wrong", "ugly"]
TOPICS = ["cat", "dog", "tree", "river", "house", "sun", "moon", "ship", "bread", "stone", "bird", "road"]
FILL = ["the", "a", "is", "on", "and", "it", "was", "very", "so", "then", "of", "to", "in", "that"]
K = 9
NOISE = 1.2  # labeler noise (sd on the utility): two labelers agree on ~73% of pairs, as in the paper


# ---------------------------------------------------------------------------- the synthetic world

def _completion(rng: random.Random, topic: str) -> str:
    words = []
    for _ in range(rng.randint(4, 12)):
        x = rng.random()
        words.append(rng.choice(POS) if x < 0.15 else rng.choice(NEG) if x < 0.3 else
                     topic if x < 0.38 else rng.choice(TOPICS) if x < 0.45 else rng.choice(FILL))
    return " ".join(words)


def _utility(text: str, topic: str) -> float:
    w = text.split()
    return sum(x in POS for x in w) - sum(x in NEG for x in w) + 1.0 * (topic in w) - 0.05 * len(w)


def _ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda j: -values[j])
    ranks = [0] * len(values)
    for r, j in enumerate(order):
        ranks[j] = r + 1
    return ranks


def make_rankings(n: int, seed: int, noise: float) -> tuple[list[dict], float]:
    """K = 9 rankings with gold orderings; returns (records, pairwise agreement of two labelers)."""
    rng = random.Random(seed)
    recs, agree, pairs = [], 0, 0
    for _ in range(n):
        topic = rng.choice(TOPICS)
        cs = [_completion(rng, topic) for _ in range(K)]
        u = [_utility(c, topic) for c in cs]
        a = _ranks([x + rng.gauss(0, noise) for x in u])
        b = _ranks([x + rng.gauss(0, noise) for x in u])  # a second labeler, only to measure agreement
        for i in range(K):
            for j in range(i + 1, K):
                agree += (a[i] < a[j]) == (b[i] < b[j])
                pairs += 1
        distinct = sorted(set(u), reverse=True)
        recs.append({"prompt": f"write about the {topic} :", "completions": cs, "ranks": a,
                     "gold_ranks": [distinct.index(x) + 1 for x in u], "task": "topic"})
    return recs, agree / pairs


def build(workdir: Path, n_train: int, n_val: int, d_model: int, layers: int) -> dict:
    from instructkit.config import ModelInit
    from instructkit.models import new_model, save_model, train_tokenizer
    from instructkit.reward import quiet_transformers

    train, _ = make_rankings(n_train, seed=1, noise=NOISE)
    val, agreement = make_rankings(n_val, seed=2, noise=NOISE)
    for name, recs in (("train", train), ("val", val)):
        (workdir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rng = random.Random(0)
    corpus = [_completion(rng, rng.choice(TOPICS)) for _ in range(2000)] + [f"write about the {t} :" for t in TOPICS]
    tok = train_tokenizer(corpus, vocab_size=512)
    model = new_model(ModelInit(family="gpt2", d_model=d_model, n_layers=layers, n_heads=4, max_len=64), tok, seed=0)
    with quiet_transformers():
        save_model(model, tok, workdir / "lm")
    return {"lm": str(workdir / "lm"), "train": str(workdir / "train.jsonl"), "val": str(workdir / "val.jsonl"),
            "agreement": agreement, "params": sum(p.numel() for p in model.parameters())}


# ---------------------------------------------------------------------------- the two trainers

def heldout(model, tok, world: dict, max_len: int) -> dict:
    from instructkit.stages.rm_eval import encode_rankings, evaluate, load_rankings, score_rankings

    val = load_rankings(world["val"])
    items, _ = encode_rankings(val, tok, SimpleNamespace(kind="plain", system=""), max_len, True)
    return evaluate(val, score_rankings(model, items, tok.pad_token_id))


def run_instructkit(world: dict, a, out: Path) -> dict:
    from instructkit.config import RMConfig, load_config
    from instructkit.reward import load_reward_model
    from instructkit.stages import rm

    cfg = load_config(RMConfig, None, [f"model={world['lm']}", f"data.train={world['train']}", f"data.val={world['val']}",
                                       f"out={out}", f"batch_size={a.batch}", f"optim.lr={a.lr}", f"threads={a.threads}",
                                       "normalize.kind=none", "save_every=100000", "log_every=100000",
                                       f"data.max_len={a.max_len}"])
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        metrics = rm.run(cfg)
        whole = time.perf_counter() - t0
    model, tok, _ = load_reward_model(out)
    return {"seconds": metrics["train_seconds"], "whole": whole, "report": heldout(model, tok, world, a.max_len),
            "steps": metrics["selected_step"]}


def run_trl(world: dict, a, out: Path) -> dict:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from instructkit.reward import create_reward_model
    from instructkit.stages.rm_eval import encode_rankings, load_rankings

    model, tok, _ = create_reward_model(world["lm"], seed=0)  # the same model and head init as instructkit's
    train = load_rankings(world["train"])
    items, _ = encode_rankings(train, tok, SimpleNamespace(kind="plain", system=""), a.max_len, True)
    chosen, rejected = [], []
    for r, it in zip(train, items):  # every ranking expanded into its C(K, 2) chosen/rejected pairs
        for w, l in r.pairs():
            chosen.append(it.seqs[w])
            rejected.append(it.seqs[l])
    ds = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    pairs_per_prompt = len(chosen) // len(train)
    args = RewardConfig(
        output_dir=str(out), per_device_train_batch_size=a.batch * pairs_per_prompt, gradient_accumulation_steps=1,
        num_train_epochs=1, learning_rate=a.lr, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95,
        adam_epsilon=1e-8, max_grad_norm=1.0, bf16=False, fp16=False, activation_checkpointing=False, gradient_checkpointing=False, use_cpu=True,
        max_length=None, disable_dropout=True, save_strategy="no", eval_strategy="no", report_to="none",
        logging_steps=100000, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        t0 = time.perf_counter()
        trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        t1 = time.perf_counter()
        result = trainer.train()
        t2 = time.perf_counter()
    assert not trainer.model.is_gradient_checkpointing and trainer.model.dtype == torch.float32
    model.eval()
    return {"seconds": t2 - t1, "whole": t2 - t0, "report": heldout(model, tok, world, a.max_len),
            "steps": result.global_step}


# ---------------------------------------------------------------------------- main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="timed runs per side after one warm-up run")
    p.add_argument("--prompts", type=int, default=480, help="training prompts (each K = 9)")
    p.add_argument("--val", type=int, default=160, help="held-out prompts")
    p.add_argument("--batch", type=int, default=16, help="prompts per optimiser step (x 36 pairs)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--d-model", type=int, default=96)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    try:
        import trl
    except ImportError:
        sys.exit("benchmarks/rm.py needs TRL: pip install -e '.[bench]'")
    import transformers

    with tempfile.TemporaryDirectory(prefix="ik-bench-rm-") as tmp:
        tmp = Path(tmp)
        world = build(tmp, a.prompts, a.val, a.d_model, a.layers)
        pairs = a.prompts * K * (K - 1) // 2
        print(f"RM benchmark: K={K} rankings, {a.prompts} training prompts ({pairs} ranked pairs), {a.val} held out; "
              f"GPT-2 d={a.d_model} x {a.layers} layers ({world['params'] / 1e6:.2f}M params, same init both sides); "
              f"1 epoch, {a.batch} prompts = {a.batch * 36} pairs per optimiser step, lr {a.lr:g} cosine to 10%, "
              f"AdamW (0.9, 0.95), grad clip 1, fp32, {a.threads} thread(s)")
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
              "TRL with bf16=False and gradient_checkpointing=False (its defaults are True/True), dropout off both sides")
        print(f"timed span: training loop only (instructkit: the stage's loop; TRL: trainer.train()); one warm-up run, "
              f"then the median of {a.runs} runs per side, one at a time", flush=True)
        results = {"instructkit": [], "trl": []}
        for i in range(a.runs + 1):
            for name, fn in (("instructkit", run_instructkit), ("trl", run_trl)):
                r = fn(world, a, tmp / f"{name}{i}")
                label = "warm-up" if i == 0 else f"run {i}"
                print(f"  {label:8} {name:12} {r['seconds']:7.2f}s loop, {r['whole']:7.2f}s incl. setup, "
                      f"{r['steps']} steps, held-out accuracy {r['report']['accuracy']:.4f}", flush=True)
                if i > 0:
                    results[name].append(r)

    def summary(rs):
        secs = [r["seconds"] for r in rs]
        return statistics.median(secs), min(secs), max(secs), rs[-1]["report"]

    ik, tr = summary(results["instructkit"]), summary(results["trl"])
    print()
    print(f"{'':28}{'loop time, median (min-max)':>30}{'held-out acc':>14}{'vs gold':>9}{'fwd rows/step':>15}")
    for name, (med, lo, hi, rep), rows in (("instructkit rm (K-way)", ik, a.batch * K),
                                           ("TRL RewardTrainer (pairs)", tr, a.batch * 36 * 2)):
        print(f"{name:28}{f'{med:.2f}s ({lo:.2f}-{hi:.2f})':>30}{rep['accuracy']:>14.4f}"
              f"{rep['gold']['accuracy']:>9.4f}{rows:>15}")
    print(f"speed-up: {tr[0] / ik[0]:.1f}x (target >= 5x); held-out accuracy {ik[3]['accuracy']:.4f} vs "
          f"{tr[3]['accuracy']:.4f} ({ik[3]['accuracy'] - tr[3]['accuracy']:+.4f}); labelers' pairwise agreement "
          f"{world['agreement']:.3f} (the ceiling): instructkit at {ik[3]['accuracy'] / world['agreement']:.2f}x, "
          f"TRL at {tr[3]['accuracy'] / world['agreement']:.2f}x")


if __name__ == "__main__":
    main()
