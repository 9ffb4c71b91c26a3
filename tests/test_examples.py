"""configs/examples/ never rot: each example pipeline runs its first steps with a tiny random model
of the same family substituted for the real one and tiny data in the example's own input format."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructkit.config import ModelInit
from instructkit.models import new_model, save_model, train_tokenizer
from instructkit.pipeline import load_pipeline, run_pipeline
from instructkit.run import is_complete

EXAMPLES = Path(__file__).resolve().parents[1] / "configs" / "examples"
WORDS = "cat dog sun moon red blue tree fish bird star hello thanks please sure no yes".split()


def tiny_model(root: Path, family: str, texts: list[str]) -> Path:
    tok = train_tokenizer(texts, 300)
    model = new_model(ModelInit(family=family, d_model=32, n_layers=2, n_heads=2, max_len=128), tok, seed=0)
    save_model(model, tok, root / f"tiny-{family}")
    return root / f"tiny-{family}"


def write(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def sentence(i: int, n: int = 4) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n))


SHRINK = {  # first steps only
    "sft": {"epochs": 1, "batch_size": 4, "data": {"max_len": 64}},
    "rm": {"batch_size": 4, "data": {"max_len": 64}},
    "ppo_ptx": {"episodes": 8, "rollout_batch": 4, "minibatch": 4, "max_new_tokens": 8, "ptx_seq_len": 16,
                "eval_every": 0, "eval_n": 4,
                "require_gate": False},  # an RM of 12 pairs on a random model: its best-of-2 gain is a coin toss
    "eval": {"n_prompts": 4, "max_new_tokens": 8},
    "dpo": {"batch_size": 4, "epochs": 1, "data": {"max_len": 64}, "select": {"by": "last"}},
    "orpo": {"batch_size": 4, "epochs": 1, "data": {"max_len": 64}},
}


def hh(i: int) -> dict:
    prompt = f"\n\nHuman: {sentence(i)}?\n\nAssistant:"
    return {"chosen": prompt + f" {sentence(i + 1)}", "rejected": prompt + f" {sentence(i + 2, 2)}"}


def test_example_configs_exist_and_document_their_command():
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        first = f.read_text().splitlines()[0]
        assert first.startswith("# instructkit pipeline configs/examples/" + f.name), f
        load_pipeline(str(f))  # parses, every {reference} resolves


def test_gpt2_hh_rm_ppo_ptx(tmp_path):
    train = write(tmp_path / "hh_train.jsonl", [hh(i) for i in range(12)])
    test = write(tmp_path / "hh_test.jsonl", [hh(i + 50) for i in range(6)])
    text = write(tmp_path / "pretrain.jsonl", [{"text": sentence(i, 12)} for i in range(20)])
    model = tiny_model(tmp_path, "gpt2", [hh(i)["chosen"] for i in range(12)] + [sentence(i, 12) for i in range(20)])
    root = run_pipeline(str(EXAMPLES / "gpt2_hh_rm_ppo_ptx.yaml"), overrides={
        "out": str(tmp_path / "run"), "vars": {"model": str(model), "hh_train": train, "hh_test": test,
                                               "pretrain_text": text}, "stage_args": SHRINK})
    for stage in ("sft", "rm", "ppo_ptx", "eval"):
        assert is_complete(Path(root) / stage), stage
    assert json.loads((Path(root) / "eval" / "eval.json").read_text())["models"]["ppo_ptx"]["win_rate"]["n"] == 4


def test_pythia_ratings_dpo(tmp_path):
    def rating(i):
        return {"prompt": f"{sentence(i)} ?\n", "completions": [sentence(i + k, 3) for k in range(4)],
                "scores": [4, 1, 3, 3]}
    ratings = write(tmp_path / "ratings.jsonl", [rating(i) for i in range(10)])
    test = write(tmp_path / "ratings_test.jsonl", [rating(i + 40) for i in range(4)])
    model = tiny_model(tmp_path, "gpt_neox", [sentence(i, 10) for i in range(40)])
    root = run_pipeline(str(EXAMPLES / "pythia_ratings_dpo.yaml"), overrides={
        "out": str(tmp_path / "run"), "vars": {"model": str(model), "ratings": ratings, "ratings_test": test},
        "stage_args": SHRINK})
    for stage in ("dpo", "rm", "eval"):
        assert is_complete(Path(root) / stage), stage


def test_qwen2_chat_sft_orpo(tmp_path):
    chats = write(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": sentence(i)},
                                                           {"role": "assistant", "content": sentence(i + 1)}]}
                                             for i in range(10)])
    pairs = write(tmp_path / "pairs.jsonl", [{"prompt": sentence(i), "chosen": sentence(i + 1),
                                              "rejected": sentence(i + 3, 2)} for i in range(10)])
    model = tiny_model(tmp_path, "qwen2", [sentence(i, 10) for i in range(40)] + ["user: assistant: system:"])
    root = run_pipeline(str(EXAMPLES / "qwen2_chat_sft_orpo.yaml"), overrides={
        "out": str(tmp_path / "run"), "vars": {"model": str(model), "chats": chats, "pairs": pairs},
        "stage_args": SHRINK})
    for stage in ("sft", "orpo"):
        assert is_complete(Path(root) / stage), stage
