"""Loading, creating and saving models and tokenizers.

Any local `AutoModelForCausalLM` directory loads; new models are built from a small config of one of
four families (GPT-2, GPT-NeoX, Llama, Qwen2). Tokenizers are `tokenizers` byte-level BPE wrapped in
`PreTrainedTokenizerFast`. The pad token always differs from EOS: a model that pads with EOS cannot
tell "stopped" from "padding", which breaks reward placement and EOS penalties in PPO."""
from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from instructkit.errors import InputError

EOS = "<|endoftext|>"
PAD = "<|pad|>"
# A minimal chat template for tokenizers we train (real models bring their own).
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, line_start_space: bool = True):
    """Byte-level BPE trained on `texts`; decode(encode(x)) == x for any string.

    line_start_space: a word at the start of a text or of a line gets the token it has inside a line
    (" box"), not a second spelling ("box", often cut in pieces). The normaliser writes a space at the
    start of the text and after every newline that is not the last character; the decoder removes
    exactly those. A response tokenized on its own then starts with the same tokens the prompt used, so
    "copy the words : box moon" -> "box moon" is a copy of tokens, learnable by a tiny model (plain
    GPT-2 byte-level BPE, line_start_space=False, makes the first word a different token)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if line_start_space:
        # Prepend leaves the empty string empty; the ByteLevel decoder joins every token into one string
        # before the next two run, so they act on the whole text, not on each token
        tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\n(?=[\s\S])"), "\n "),
                                               normalizers.Prepend(" ")])
        tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("\n ", "\n"),
                                         decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   unk_token=None, clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    p = Path(path)
    if not p.is_dir():
        raise InputError("expected a tokenizer or model directory", path=str(p))
    try:
        tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as e:  # transformers raises many kinds here
        raise InputError(f"cannot load a tokenizer: {e}", path=str(p)) from None
    if tok.eos_token_id is None:
        raise InputError("the tokenizer has no EOS token", path=str(p))
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD})
    tok.padding_side = "left"
    return tok


def _family_config(init, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    d_ff = init.d_ff or 4 * init.d_model
    common = dict(vocab_size=vocab_size, eos_token_id=eos_id, bos_token_id=eos_id, pad_token_id=pad_id,
                  tie_word_embeddings=True)
    if init.family == "gpt2":
        return GPT2Config(n_embd=init.d_model, n_layer=init.n_layers, n_head=init.n_heads, n_inner=d_ff,
                          n_positions=init.max_len, resid_pdrop=init.dropout, embd_pdrop=init.dropout,
                          attn_pdrop=init.dropout, **common)
    if init.family == "gpt_neox":
        return GPTNeoXConfig(hidden_size=init.d_model, num_hidden_layers=init.n_layers,
                             num_attention_heads=init.n_heads, intermediate_size=d_ff,
                             max_position_embeddings=init.max_len, hidden_dropout=init.dropout,
                             attention_dropout=init.dropout, **common)
    cls = LlamaConfig if init.family == "llama" else Qwen2Config
    return cls(hidden_size=init.d_model, num_hidden_layers=init.n_layers, num_attention_heads=init.n_heads,
               num_key_value_heads=init.n_heads, intermediate_size=d_ff, max_position_embeddings=init.max_len,
               attention_dropout=init.dropout, **common)


def new_model(init, tokenizer, seed: int = 0):
    """A randomly initialised causal LM of `init.family` sized for `tokenizer`."""
    from transformers import AutoModelForCausalLM

    if init.d_model % init.n_heads:
        raise InputError(f"d_model ({init.d_model}) must be divisible by n_heads ({init.n_heads})",
                         field="init.n_heads")
    cfg = _family_config(init, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return use_fast_kernels(AutoModelForCausalLM.from_config(cfg))


def load_causal_lm(path: str | os.PathLike, *, dropout: float | None = None):
    """(model, tokenizer) from a local checkpoint directory, pad != EOS, fp32."""
    from transformers import AutoModelForCausalLM

    p = Path(path)
    if not p.is_dir():
        raise InputError("model directory does not exist" if not p.exists() else "expected a model directory",
                         path=str(p))
    if not (p / "config.json").exists():
        raise InputError("not a Hugging Face checkpoint (no config.json)", path=str(p))
    tok = load_tokenizer(p)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32)
    except Exception as e:
        raise InputError(f"cannot load a causal LM: {e}", path=str(p)) from None
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    if dropout is not None:
        set_dropout(model, dropout)
    return use_fast_kernels(model), tok


def use_fast_kernels(model: nn.Module) -> nn.Module:
    """Swap GPT-2's Python-level tanh GELU for PyTorch's fused one: the same function (max difference
    2.4e-7 in fp32), one kernel instead of seven elementwise ops (~12% of a small model's step)."""
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(module, name, GELUTanh())
    return model


@functools.cache
def _takes_cache(kind: type) -> bool:
    """Whether the model class's forward declares `cache` (asked once per class)."""
    return "cache" in inspect.signature(kind.forward).parameters


def cache_arg(model: nn.Module, cache) -> dict:
    """The key/value cache as `model.forward`'s keyword: `cache` where transformers renamed it
    (5.x; the old `past_key_values` still works there but warns and is due to go), else
    `past_key_values`. Call as `model(..., **cache_arg(model, cache))`."""
    return {"cache" if _takes_cache(type(model)) else "past_key_values": cache}


def output_cache(out):
    """The key/value cache a forward pass returned, under either name."""
    return out["cache"] if "cache" in out.keys() else out.past_key_values


def max_positions(model) -> int | None:
    """The longest sequence the model accepts (GPT-2's learned position table fails with an
    IndexError past it); None when the config does not say."""
    for name in ("max_position_embeddings", "n_positions"):
        v = getattr(model.config, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every dropout probability (modules and the config fields attention code reads)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout", "attention_dropout",
                 "classifier_dropout"):
        if hasattr(model.config, name):
            setattr(model.config, name, p)
    for m in model.modules():  # attention modules that cached the probability at init
        if hasattr(m, "attention_dropout") and isinstance(m.attention_dropout, float):
            m.attention_dropout = p


def save_model(model, tokenizer, out: str | os.PathLike) -> None:
    """Hugging Face format with safetensors weights."""
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def set_threads(n: int) -> int:
    """Set torch's CPU threads deliberately: 2 threads on a 2-core machine with another process busy
    ran 5-8x slower than 1 (OpenMP contention), so the default honours OMP_NUM_THREADS."""
    if n <= 0:
        n = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n
