"""Shared test fixtures. Tests share 2 CPU cores with other work: one torch thread, tiny models.

Session-scoped fixtures (built once per test session, read-only for the tests that use them):

- `tiny_corpus` -> Path of a JSONL file of 80 `{"text"}` pretraining documents: short templated
  sentences over a 24-word vocabulary plus "Repeat: a b\\na b" drills, deterministic (seed 0).
- `tiny_demos` -> Path of a demonstrations JSONL (16 `{"prompt", "completion"}` records of the
  copy task "Repeat: w1 w2\\n" -> "w1 w2"), learnable by a tiny model in a few dozen steps.
- `tiny_base_model` -> Path of a complete `instructkit pretrain` output directory: a GPT-2-family
  model (d_model 32, 2 layers, 2 heads, 64 positions, byte-level BPE vocabulary ~300) trained
  30 steps on `tiny_corpus`, with model.safetensors, tokenizer files, instructkit.json and
  metrics.jsonl. Copy it before changing anything in it.

Helpers (import with `from conftest import ...`):

- `TINY_MODEL`: the `key=value` overrides that size a new model like the one above.
- `pretrain_argv(corpus, out, family="gpt2", steps=30)`: the argv that built `tiny_base_model`.
- `run_cli(argv, capsys)`: run `instructkit.cli.main(argv)` in-process -> (exit code, stdout, stderr).
- `subprocess_env()`: the environment for running `python -m instructkit` in a child process.
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

# Before torch is imported anywhere: one thread (OpenMP contention on 2 shared cores), no network.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("INSTRUCTKIT_SOLO_THREADS", "1")  # tiny models: a second thread only adds overhead
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("INSTRUCTKIT_QUIET", "1")

WORDS = ["cat", "dog", "red", "blue", "sun", "moon", "tree", "rock", "fish", "bird", "star", "ship",
         "one", "two", "big", "old", "new", "hot", "cold", "fast", "slow", "up", "down", "far"]

TINY_MODEL = ["init.d_model=32", "init.n_layers=2", "init.n_heads=2", "init.max_len=64",
              "tokenizer.vocab_size=300"]


def fit_tiny_gpt2(out, seed: int, sentences: list[str], steps: int, prefix: str) -> Path:
    """A tiny GPT-2 (train_tokenizer / new_model / save_model) fitted for a few steps on `prefix +
    sentence` texts, so that its samples read as words rather than stray bytes."""
    import torch

    from instructkit.config import ModelInit
    from instructkit.models import new_model, save_model, train_tokenizer

    tok = train_tokenizer(sentences * 4, 300)
    model = new_model(ModelInit(family="gpt2", d_model=32, n_layers=2, n_heads=2, max_len=128), tok, seed=seed)
    ids = []
    for s in sentences * 6:
        ids += tok(prefix + s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    data = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = data[torch.randint(len(data), (8,), generator=g)]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    save_model(model.eval(), tok, out)
    return Path(out)


def pretrain_argv(corpus, out, family: str = "gpt2", steps: int = 30) -> list[str]:
    return ["pretrain", f"data.train={corpus}", f"out={out}", f"init.family={family}", *TINY_MODEL,
            "seq_len=32", "batch_size=8", f"max_steps={steps}", "optim.warmup_steps=3", "log_every=5",
            "save_every=1000", "threads=1"]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """`instructkit ARGV` in this process; stdout/stderr captured (and cleared) through capsys."""
    from instructkit.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", INSTRUCTKIT_QUIET="1", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    rng = random.Random(0)
    docs = []
    for i in range(80):
        if i % 2:
            a, b = rng.choice(WORDS), rng.choice(WORDS)
            docs.append(f"Repeat: {a} {b}\n{a} {b}")
        else:
            docs.append(" ".join(f"the {rng.choice(WORDS)} is {rng.choice(WORDS)}." for _ in range(6)))
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_demos(tmp_path_factory) -> Path:
    rng = random.Random(1)
    rows = []
    for _ in range(16):
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        rows.append({"prompt": f"Repeat: {a} {b}\n", "completion": f"{a} {b}"})
    path = tmp_path_factory.mktemp("demos") / "demos.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory, tiny_corpus) -> Path:
    from instructkit.cli import main

    out = tmp_path_factory.mktemp("base") / "base"
    code = main(pretrain_argv(tiny_corpus, out))
    assert code == 0, "building the tiny base model failed"
    return out
