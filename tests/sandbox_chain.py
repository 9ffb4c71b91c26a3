"""A tiny end-to-end chain on the sandbox's `tiny` world, built once per test session and shared
by the PPO, best-of-n and evaluation tests: world -> base (pretrain) -> sft -> rankings -> rm.
Import the fixture with `from sandbox_chain import tiny_chain`."""
from __future__ import annotations

from pathlib import Path

import pytest

from instructkit.cli import main

TINY_MODEL = ["tokenizer.vocab_size=400", "init.d_model=32", "init.n_layers=2", "init.n_heads=2",
              "init.max_len=128", "seq_len=64"]


def build_chain(root: Path) -> dict[str, Path]:
    w, base, sft, ranks, rm = (root / n for n in ("world", "base", "sft", "rankings.jsonl", "rm"))
    assert main(["world", "build", "--size", "tiny", "--seed", "0", "--out", str(w)]) == 0
    assert main(["pretrain", f"data.train={w}/corpus/train.jsonl", f"out={base}", "max_steps=60", *TINY_MODEL]) == 0
    assert main(["sft", f"model={base}", f"data.train={w}/demonstrations.jsonl", f"out={sft}", "epochs=3",
                 "batch_size=16", "optim.lr=1e-3", "dropout=0.0"]) == 0
    assert main(["world", "label", "--world", str(w), "--model", str(sft), "--prompts", f"{w}/prompts/rm.jsonl",
                 "--k", "4..6", "--pool", "train", "--out", str(ranks)]) == 0
    assert main(["rm", f"model={sft}", f"data.train={ranks}", f"out={rm}"]) == 0
    return {"root": root, "world": w, "base": base, "sft": sft, "rankings": ranks, "rm": rm}


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory) -> dict[str, Path]:
    return build_chain(tmp_path_factory.mktemp("chain"))
