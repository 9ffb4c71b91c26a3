"""pretrain -> sft (-> sample) end to end through the CLI, on tiny models of all four families.

Each output directory must be a Hugging Face checkpoint (safetensors, tokenizer) plus a complete
instructkit.json and metrics.jsonl; the SFT model must load with AutoModelForCausalLM, its loss on
completion tokens must fall, and only completion tokens may carry labels."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import pretrain_argv, run_cli
from instructkit import config as C
from instructkit.data import load
from instructkit.data.encode import IGNORE, collate_right, encode_demonstration
from instructkit.data.records import Demonstration
from instructkit.models import load_causal_lm, load_tokenizer
from instructkit.run import file_sha256

FAMILIES = ["gpt2", "gpt_neox", "llama", "qwen2"]


def _sft_argv(model, demos, out):
    # 16 demonstrations / batch 4 = 4 steps per epoch; 6 epochs = 24 steps, one log line each
    return ["sft", f"model={model}", f"data.train={demos}", f"out={out}", "epochs=6", "batch_size=4",
            "optim.lr=3e-3", "dropout=0.0", "log_every=1", "save_every=1000", "threads=1", "data.max_len=48"]


def _check_run_dir(out, stage, cfg_cls, argv, steps_logged, inputs):
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "instructkit.json",
            "metrics.jsonl"} <= files, files
    assert not {"checkpoint", "checkpoint.tmp", "checkpoint.old"} & files  # removed once complete
    meta = json.loads((out / "instructkit.json").read_text())
    assert meta["complete"] is True and meta["stage"] == stage
    assert meta["config"] == C.to_dict(C.load_config(cfg_cls, None, argv[1:]))
    for key, path in inputs.items():
        assert meta["inputs"][key] == {"path": str(path), "sha256": file_sha256(path)}
    assert meta["code_version"] and isinstance(meta["metrics"]["train_loss"], float)
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == steps_logged
    assert all({"loss", "lr", "grad_norm"} <= r.keys() for r in log)
    return meta, log


@torch.no_grad()
def _completion_loss(model, tok, demos) -> float:
    """Mean cross-entropy over completion tokens (+ EOS) of `demos`, eval mode, computed by hand."""
    model.eval()
    examples = [encode_demonstration(d, tok, C.TemplateConfig(), 48)[0] for d in demos]
    batch = collate_right(examples, tok.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    keep = targets != IGNORE
    return torch.nn.functional.cross_entropy(logits[:, :-1][keep], targets[keep]).item()


@pytest.mark.parametrize("family", FAMILIES)
def test_pretrain_then_sft(family, tiny_corpus, tiny_demos, tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus = tiny_corpus
    if family == "gpt_neox":  # plain text input too: documents separated by blank lines
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("\n\n".join(t.text for t in load(tiny_corpus, "text")), encoding="utf-8")
    base = tmp_path / "base"
    argv = pretrain_argv(corpus, base, family, steps=12)
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert f"pretrain: done -> {base}" in out
    _check_run_dir(base, "pretrain", C.PretrainConfig, argv, [5, 10, 12], {"data.train": corpus})

    sft = tmp_path / "sft"
    argv = _sft_argv(base, tiny_demos, sft)
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    meta, log = _check_run_dir(sft, "sft", C.SFTConfig, argv, list(range(1, 25)),
                               {"data.train": tiny_demos, "model": base})
    assert meta["metrics"]["selected_step"] == 24

    # another tool can load it
    model = AutoModelForCausalLM.from_pretrained(str(sft))
    tok = AutoTokenizer.from_pretrained(str(sft))
    assert model.config.model_type == family
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id

    # SFT moved every weight tensor, and the completion loss fell
    before, after = load_file(str(base / "model.safetensors")), load_file(str(sft / "model.safetensors"))
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"SFT left these untouched: {unchanged}"
    demos = load(tiny_demos, "demonstration")
    base_model, base_tok = load_causal_lm(base)
    loss_before = _completion_loss(base_model, base_tok, demos)
    loss_after = _completion_loss(model, tok, demos)
    assert loss_after < loss_before - 0.8, (loss_before, loss_after)  # observed: ~5.0 -> ~3.7 nats
    first, last = [r["loss"] for r in log[:4]], [r["loss"] for r in log[-4:]]
    assert sum(last) < sum(first)  # the logged training loss (first epoch vs last) fell as well


def test_sample_from_the_sft_model(tiny_base_model, tiny_demos, tmp_path, capsys):
    sft = tmp_path / "sft"
    code, _, err = run_cli(_sft_argv(tiny_base_model, tiny_demos, sft), capsys)
    assert code == 0, err
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Repeat: {w} sun\n", "id": i}) + "\n"
                               for i, w in enumerate(["cat", "dog", "red"])))
    out = tmp_path / "samples.jsonl"
    code, stdout, err = run_cli(["sample", sft, "--prompts", prompts, "--out", out, "n=2", "max_new_tokens=6",
                                 "temperature=0"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["sample"]) for r in rows] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    assert all(isinstance(r["completion"], str) for r in rows)
    assert [r["completion"] for r in rows[:3]] == [r["completion"] for r in rows[3:]]  # greedy: same twice
    assert [r["prompt"] for r in rows[:3]] == ["Repeat: cat sun\n", "Repeat: dog sun\n", "Repeat: red sun\n"]


# ---------------------------------------------------------------- labels: the prompt is masked

def test_prompt_tokens_are_masked(tiny_base_model):
    tok = load_tokenizer(tiny_base_model)
    eos = tok.eos_token_id

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    demo = Demonstration("Repeat: cat dog\n", "cat dog")
    ex, truncated = encode_demonstration(demo, tok, C.TemplateConfig(), 64)
    p, c = ids("Repeat: cat dog\n"), ids("cat dog")
    assert not truncated and len(p) > 0 and len(c) > 0
    assert ex.input_ids == p + c + [eos]
    assert ex.labels == [IGNORE] * len(p) + c + [eos]

    # chat transcript: everything before the last assistant message is prompt
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ok"}]
    ex, _ = encode_demonstration(Demonstration("", "ok", msgs), tok, C.TemplateConfig(), 64)
    p = ids("user: hi\nassistant: yo\nuser: bye\nassistant: ")
    assert ex.labels == [IGNORE] * len(p) + ids("ok") + [eos]

    # too long: the prompt loses its beginning, the completion keeps all its tokens
    c = ids("cat dog")
    ex, truncated = encode_demonstration(demo, tok, C.TemplateConfig(), len(c) + 1 + 2)
    assert truncated and ex.input_ids == ids("Repeat: cat dog\n")[-2:] + c + [eos]
    assert ex.labels == [IGNORE, IGNORE] + c + [eos]


def test_sft_loss_counts_completion_tokens_only(tiny_base_model):
    from instructkit.stages.sft import completion_loss

    model, tok = load_causal_lm(tiny_base_model)
    model.eval()
    demos = [Demonstration("Repeat: cat dog\n", "cat dog"), Demonstration("Repeat: sun\n", "sun moon far")]
    batch = collate_right([encode_demonstration(d, tok, C.TemplateConfig(), 64)[0] for d in demos], tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        n_prompt = [len(tok(d.prompt, add_special_tokens=False)["input_ids"]) for d in demos]
        n_comp = [len(tok(d.completion, add_special_tokens=False)["input_ids"]) + 1 for d in demos]
        # by hand: row b predicts its completion tokens from positions n_prompt-1 ... n_prompt+n_comp-2
        terms = []
        for b in range(2):
            for t in range(n_prompt[b] - 1, n_prompt[b] + n_comp[b] - 1):
                target = batch["input_ids"][b, t + 1]
                terms.append(-torch.log_softmax(logits[b, t], -1)[target])
        expected = torch.stack(terms).mean()
        assert len(terms) == sum(n_comp)
        assert torch.allclose(completion_loss(model, batch), expected, atol=1e-5)
        assert torch.allclose(model(**batch).loss, expected, atol=1e-5)
