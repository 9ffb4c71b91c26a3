"""Reward models: a causal LM with its LM head replaced by a scalar head (InstructGPT §3.5).

A reward model is a plain Hugging Face `*ForSequenceClassification` checkpoint with
`num_labels=1`, so `AutoModelForSequenceClassification.from_pretrained(dir)` loads it anywhere.
What HF cannot carry in the weights is stored in `config.json` under `instructkit_reward`:

    {"normalization": {"kind": "demonstrations", "gain": 1.0, "bias": -0.42, "n": 500, "source": ...},
     "template": {"kind": "plain", "system": ""}, "max_len": 256, "append_eos": true,
     "tokenizer_sha256": "..."}

The head of every family HF maps (GPT-2, NeoX, Llama, Qwen2) has no bias, so the normalisation
offset lives there, and every consumer applies it through one function, `normalize(raw, meta)`
(`RewardScorer.score` does it for you). The normalised reward is `gain * raw + bias`.

Input layout: rendered prompt tokens + completion tokens + EOS, tokenized separately (no merge
across the boundary, as in SFT). The score is read at the last real token: `reward_scores` finds
it from the attention mask and passes position ids that skip padding, so a row scores the same
with left padding, right padding or none. (HF's own forward reads the rightmost non-pad token,
which is right for both sides, but builds positions 0..T-1 regardless of the mask: with left
padding and absolute position embeddings (GPT-2) its scores shift. With right padding, as
`right_pad` pads, HF's forward and ours agree.)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from instructkit.data.encode import right_pad
from instructkit.errors import InputError

META_KEY = "instructkit_reward"


@contextlib.contextmanager
def quiet_transformers():
    """Silence HF's load report ("score.weight newly initialized": expected here) and its bars."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------- model

def reward_head(model) -> nn.Linear:
    """The scalar head (`score` in every HF *ForSequenceClassification of a causal LM)."""
    head = getattr(model, "score", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise InputError(f"{type(model).__name__} has no scalar `score` head (num_labels=1)")
    return head


def init_reward_head(model, seed: int) -> None:
    """InstructGPT / lm-human-preferences: head ~ N(0, std = 1/sqrt(d_model + 1)), bias 0."""
    head = reward_head(model)
    d = head.in_features
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) / math.sqrt(d + 1))
        if head.bias is not None:
            head.bias.zero_()


def max_positions(config) -> int | None:
    text = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions"):
        v = getattr(text, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def is_reward_checkpoint(path: str | os.PathLike) -> bool:
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return META_KEY in cfg or any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or [])


def create_reward_model(path: str | os.PathLike, *, seed: int = 0, dropout: float | None = None):
    """(model, tokenizer, fresh_head) from a causal-LM checkpoint (SFT or base): the LM head is
    dropped and a new scalar head initialised. A reward-model checkpoint keeps its head (iterated
    RLHF: continue training the previous round's RM). fp32, pad token != EOS."""
    from transformers import AutoModelForSequenceClassification

    from instructkit.models import load_tokenizer, set_dropout

    p = Path(path)
    if not p.is_dir():
        raise InputError("model directory does not exist" if not p.exists() else "expected a model directory",
                         path=str(p), field="model")
    if not (p / "config.json").exists():
        raise InputError("not a Hugging Face checkpoint (no config.json)", path=str(p), field="model")
    tok = load_tokenizer(p)
    fresh = not is_reward_checkpoint(p)
    try:
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(str(p), num_labels=1, dtype=torch.float32)
    except Exception as e:  # transformers raises many kinds here
        raise InputError(f"cannot load as a sequence-classification model: {e}", path=str(p), field="model") from None
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    # HF reads the score at the rightmost token != pad_token_id; pad must differ from EOS for that
    model.config.pad_token_id = tok.pad_token_id
    model.config.get_text_config().pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    if fresh:
        init_reward_head(model, seed)
    if dropout is not None:
        set_dropout(model, dropout)
    return model, tok, fresh


def load_reward_model(path: str | os.PathLike):
    """(model, tokenizer, meta) of a saved reward model, in eval mode. A plain HF
    sequence-classification checkpoint without our metadata loads with identity normalisation."""
    from transformers import AutoModelForSequenceClassification

    from instructkit.models import load_tokenizer

    p = Path(path)
    if not (p / "config.json").exists():
        raise InputError("not a reward-model directory (no config.json)", path=str(p), field="model")
    tok = load_tokenizer(p)
    try:
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(str(p), num_labels=1, dtype=torch.float32)
    except Exception as e:
        raise InputError(f"cannot load a reward model: {e}", path=str(p), field="model") from None
    reward_head(model)
    model.config.pad_token_id = tok.pad_token_id
    model.eval()
    meta = dict(getattr(model.config, META_KEY, None) or {})
    meta.setdefault("normalization", asdict(Normalization()))
    meta.setdefault("template", {"kind": "plain", "system": ""})
    meta.setdefault("max_len", max_positions(model.config) or 1024)
    meta.setdefault("append_eos", True)
    return model, tok, meta


def tokenizer_fingerprint(tok) -> str:
    """sha256 of the vocabulary and the special-token ids: equal iff token ids mean the same."""
    vocab = sorted(tok.get_vocab().items())
    special = [tok.eos_token_id, tok.pad_token_id]
    return hashlib.sha256(json.dumps([vocab, special]).encode()).hexdigest()


def check_same_tokenizer(rm_tok, policy_tok, policy_path: str, field: str = "policy") -> None:
    """The RM scores the policy's token ids, so the two must share one vocabulary."""
    a, b = rm_tok.get_vocab(), policy_tok.get_vocab()
    if a != b:
        only_rm = len(set(a) - set(b))
        only_pol = len(set(b) - set(a))
        moved = sum(1 for t in set(a) & set(b) if a[t] != b[t])
        raise InputError(f"the reward model's tokenizer differs from the policy's ({len(a)} vs {len(b)} tokens; "
                         f"{only_rm} only in the RM's, {only_pol} only in the policy's, {moved} with other ids); "
                         "initialise the RM from a model with the policy's tokenizer", path=policy_path, field=field)
    if rm_tok.eos_token_id != policy_tok.eos_token_id:
        raise InputError(f"EOS differs: RM {rm_tok.eos_token_id} vs policy {policy_tok.eos_token_id}",
                         path=policy_path, field=field)


# ---------------------------------------------------------------------------- encoding and scoring

def encode_response(tok, prompt_text: str, completion: str, max_len: int, append_eos: bool = True
                    ) -> tuple[list[int], bool]:
    """Token ids the RM reads: prompt + completion (+ EOS), prompt cut from the left first.
    Returns (ids, truncated)."""
    from instructkit.data.encode import encode_text

    p = encode_text(tok, prompt_text) if prompt_text else []
    c = (encode_text(tok, completion) if completion else []) + ([tok.eos_token_id] if append_eos else [])
    if not p and not c:
        c = [tok.eos_token_id]
    truncated = len(p) + len(c) > max_len
    if truncated:
        keep_prompt = max_len - len(c) if len(c) < max_len else min(len(p), max(1, max_len // 4))
        p = p[len(p) - keep_prompt:] if keep_prompt > 0 else []
        c = c[: max_len - len(p)]
    return p + c, truncated


def reward_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Raw scalar reward of each row at its last real token: (N, T), (N, T) -> (N,).
    Any padding side: positions count real tokens only, the read position comes from the mask."""
    mask = attention_mask.long()
    position_ids = (mask.cumsum(dim=1) - 1).clamp_min(0)  # (N, T)
    T = mask.shape[1]
    last = torch.where(mask.bool(), torch.arange(T, device=mask.device), -1).max(dim=1).values  # (N,)
    hidden = model.base_model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                              use_cache=False).last_hidden_state  # (N, T, d)
    h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last.clamp_min(0)]  # (N, d)
    return reward_head(model)(h_last).squeeze(-1).float()  # (N,)


@torch.no_grad()
def score_sequences(model, seqs: list[list[int]], pad_id: int, batch_size: int = 64) -> list[float]:
    """Raw scores of token sequences, batched by similar length (less padding), in input order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        ids, mask = right_pad([seqs[j] for j in idx], pad_id)
        for j, s in zip(idx, reward_scores(model, ids, mask).tolist()):
            out[j] = s
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------- normalisation

@dataclass
class Normalization:
    """normalised = gain * raw + bias.
    kind: demonstrations (bias so labeler demonstrations score 0 on average; InstructGPT §3.5),
    reference (gain and bias to mean 0, std 1 on reference samples; lm-human-preferences), none."""
    kind: str = "none"
    gain: float = 1.0
    bias: float = 0.0
    n: int = 0
    source: str = ""

    @classmethod
    def fit(cls, kind: str, raw: list[float], source: str = "") -> "Normalization":
        if kind == "none" or not raw:
            return cls("none", 1.0, 0.0, 0, source)
        t = torch.tensor(raw, dtype=torch.float64)
        mean = t.mean().item()
        if kind == "demonstrations":
            return cls(kind, 1.0, -mean, len(raw), source)
        if kind == "reference":
            std = t.std(unbiased=False).item() if len(raw) > 1 else 0.0
            gain = 1.0 / std if std > 1e-8 else 1.0
            return cls(kind, gain, -mean * gain, len(raw), source)
        raise ValueError(f"unknown normalization kind {kind!r}")


def normalize(raw, meta: dict):
    """THE function every consumer applies to raw RM outputs (floats, lists or tensors)."""
    norm = meta.get("normalization") or {}
    gain, bias = float(norm.get("gain", 1.0)), float(norm.get("bias", 0.0))
    if isinstance(raw, (list, tuple)):
        return [gain * float(r) + bias for r in raw]
    return raw * gain + bias


class RewardScorer:
    """A saved reward model as a function (prompts, responses) -> normalised scores.

    `prompts` are raw prompt strings: the RM's stored template renders them as in training
    (pass rendered=True for text already rendered; identical for the plain template)."""

    def __init__(self, model, tokenizer, meta: dict, path: str = ""):
        self.model, self.tokenizer, self.meta, self.path = model, tokenizer, meta, path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RewardScorer":
        model, tok, meta = load_reward_model(path)
        return cls(model, tok, meta, str(path))

    @property
    def template(self):
        from types import SimpleNamespace

        t = self.meta.get("template") or {}
        return SimpleNamespace(kind=t.get("kind", "plain"), system=t.get("system", ""))

    def render(self, prompt: str, messages: list[dict] | None = None) -> str:
        """The prompt text exactly as the RM saw it in training."""
        from instructkit.data.encode import render_prompt

        return render_prompt(prompt, self.tokenizer, self.template, messages)

    def encode(self, prompts: list[str], responses: list[str], rendered: bool = False) -> list[list[int]]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [encode_response(self.tokenizer, p if rendered else self.render(p), r, int(self.meta["max_len"]),
                                bool(self.meta.get("append_eos", True)))[0] for p, r in zip(prompts, responses)]

    def raw_score(self, prompts: list[str], responses: list[str], batch_size: int = 64,
                  rendered: bool = False) -> list[float]:
        seqs = self.encode(prompts, responses, rendered)
        return score_sequences(self.model, seqs, self.tokenizer.pad_token_id, batch_size)

    def score(self, prompts: list[str], responses: list[str], batch_size: int = 64,
              rendered: bool = False) -> list[float]:
        return normalize(self.raw_score(prompts, responses, batch_size, rendered), self.meta)

    __call__ = score
