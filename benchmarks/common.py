"""Shared fixtures for the peer benchmarks: a small model and tokenizer built from a config (no
downloads), deterministic synthetic or sandbox data, and timing with a warm-up and a median."""
from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import torch


def median_time(fn, runs: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def spread(times: list[float]) -> str:
    return f"[{min(times):.2f}s .. {max(times):.2f}s over {len(times)} runs]"


WORDS = ("red blue green cat dog sun moon tree river stone bird fish lamp door road hill cloud rain snow "
         "one two three four five six seven eight nine ten list sort reverse count word words answer").split()


def synthetic_demos(n: int, seed: int = 0) -> list[dict]:
    """Instruction -> answer pairs with varied lengths (a stand-in for labeler demonstrations)."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        ws = [r.choice(WORDS) for _ in range(r.randint(3, 14))]
        op = r.choice(["reverse", "repeat", "sort"])
        ans = ws[::-1] if op == "reverse" else (ws if op == "repeat" else sorted(ws))
        out.append({"prompt": f"{op} the words : {' '.join(ws)}\n", "completion": " ".join(ans)})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def build_base_model(out: Path, texts: list[str], d_model: int = 128, n_layers: int = 4, n_heads: int = 4,
                     vocab_size: int = 512, seed: int = 0) -> Path:
    """A randomly initialised GPT-2 with a BPE tokenizer trained on `texts`, saved in HF format."""
    from instructkit.config import ModelInit
    from instructkit.models import new_model, save_model, train_tokenizer

    tok = train_tokenizer(texts, vocab_size)
    model = new_model(ModelInit(family="gpt2", d_model=d_model, n_layers=n_layers, n_heads=n_heads, max_len=256),
                      tok, seed=seed)
    save_model(model, tok, out)
    return out


def threads(n: int = 1) -> int:
    torch.set_num_threads(n)
    return n
