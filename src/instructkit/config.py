"""Configs: one dataclass per stage. The same object is the Python API, the YAML schema and the
CLI flags (`key.sub=value`). Every field carries a one-line doc (and the paper's default where
the paper has one); `describe()` turns them into `--help` text and docs/config.md."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from instructkit.errors import InputError


def F(default: Any, doc: str, **kw) -> Any:
    """A config field with its documentation. Mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)) or is_dataclass(default):
        import copy
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": doc}, **kw)
    return field(default=default, metadata={"doc": doc}, **kw)


# ---------------------------------------------------------------------------- building blocks

@dataclass
class ModelInit:
    """A model created from scratch (pretraining); ignored when `model` names a checkpoint."""
    family: Literal["gpt2", "gpt_neox", "llama", "qwen2"] = F("gpt2", "architecture family of the new model")
    d_model: int = F(96, "hidden size")
    n_layers: int = F(4, "number of transformer blocks")
    n_heads: int = F(4, "attention heads")
    d_ff: int = F(0, "MLP hidden size; 0 = 4 x d_model")
    max_len: int = F(128, "maximum sequence length (position embeddings)")
    dropout: float = F(0.0, "dropout in the new model")


@dataclass
class TokenizerConfig:
    """Load a tokenizer, or train a byte-level BPE one with `tokenizers` on the training text."""
    path: str = F("", "tokenizer directory to load; empty = train one on the pretraining text")
    vocab_size: int = F(1024, "vocabulary size when training a tokenizer")


@dataclass
class OptimConfig:
    """AdamW with warm-up then a cosine (or constant) schedule."""
    lr: float = F(3e-4, "peak learning rate")
    beta1: float = F(0.9, "Adam beta1")
    beta2: float = F(0.95, "Adam beta2 (InstructGPT: 0.95)")
    eps: float = F(1e-8, "Adam epsilon")
    weight_decay: float = F(0.0, "decoupled weight decay")
    warmup_steps: int = F(0, "linear warm-up steps (InstructGPT SFT: none)")
    schedule: Literal["cosine", "constant", "linear"] = F("cosine", "learning-rate schedule after warm-up")
    min_lr_ratio: float = F(0.1, "final LR as a fraction of peak (InstructGPT: cosine to 10%)")
    grad_clip: float = F(1.0, "clip the global gradient norm to this; 0 = off")


@dataclass
class TemplateConfig:
    """How a prompt record becomes model input text."""
    kind: Literal["plain", "chat"] = F("plain", "plain: the prompt text as is; chat: the tokenizer's chat template")
    system: str = F("", "system message prepended in chat mode (empty = none)")


@dataclass
class StageConfig:
    """Fields every stage has: where it writes and how it runs."""
    out: str = F("", "output directory (required): a Hugging Face checkpoint plus instructkit.json and metrics.jsonl")
    seed: int = F(0, "random seed for initialisation, data order and sampling")
    threads: int = F(0, "torch CPU threads; 0 = $OMP_NUM_THREADS or all cores")
    save_every: int = F(50, "write a resumable checkpoint every N optimiser steps")
    log_every: int = F(10, "log metrics every N optimiser steps")
    overwrite: bool = F(False, "start over when `out` already holds a run (complete or not)")


# ---------------------------------------------------------------------------- stage configs

@dataclass
class PretrainData:
    train: str = F("", "pretraining text: JSONL of {\"text\"} records, or a .txt file (blank-line separated)")
    val: str = F("", "held-out text for validation loss (optional)")


@dataclass
class PretrainConfig(StageConfig):
    """Causal-LM pretraining on packed sequences (the sandbox's 'internet')."""
    model: str = F("", "checkpoint directory to continue from; empty = a new model from `init`")
    init: ModelInit = F(ModelInit(), "architecture of a new model")
    tokenizer: TokenizerConfig = F(TokenizerConfig(), "tokenizer to load or train")
    data: PretrainData = F(PretrainData(), "training text")
    seq_len: int = F(96, "tokens per packed training sequence")
    batch_size: int = F(16, "sequences per optimiser step")
    max_steps: int = F(1000, "optimiser steps")
    optim: OptimConfig = F(OptimConfig(lr=3e-3, warmup_steps=50), "optimiser")
    eval_every: int = F(0, "validation loss every N steps (0 = only at the end)")


@dataclass
class SFTData:
    train: str = F("", "demonstrations JSONL: {\"prompt\",\"completion\"} or {\"messages\"}")
    val: str = F("", "validation demonstrations (optional; loss reported, see `select`)")
    max_len: int = F(128, "maximum tokens of prompt + completion; longer examples are truncated")


@dataclass
class SelectConfig:
    """Which checkpoint becomes the output. InstructGPT: SFT validation loss overfits after ~1
    epoch while quality keeps rising, so select by a score on validation prompts, not by loss."""
    by: Literal["last", "loss", "score"] = F("last", "last step, lowest validation loss, or highest scorer value")
    every: int = F(0, "evaluate for selection every N steps (0 = once per epoch)")
    scorer: str = F("", "scorer for by=score, e.g. 'sandbox:WORLD_DIR' (gold utility) or 'rm:RM_DIR'")
    prompts: str = F("", "prompts JSONL the scorer samples on")
    n_prompts: int = F(64, "how many of those prompts to sample per evaluation")
    max_new_tokens: int = F(32, "response length limit when sampling for the scorer")


@dataclass
class SFTConfig(StageConfig):
    """Supervised fine-tuning on demonstrations: cross-entropy on completion tokens only."""
    model: str = F("", "base checkpoint directory (required)")
    data: SFTData = F(SFTData(), "demonstrations")
    template: TemplateConfig = F(TemplateConfig(), "prompt template")
    epochs: int = F(16, "passes over the demonstrations (InstructGPT: 16)")
    batch_size: int = F(32, "demonstrations per optimiser step")
    dropout: float = F(0.2, "residual dropout during SFT (InstructGPT: 0.2)")
    optim: OptimConfig = F(OptimConfig(lr=1e-4), "optimiser (InstructGPT: cosine to 10%, no warm-up, beta2 0.95)")
    select: SelectConfig = F(SelectConfig(), "checkpoint selection")


# ---------------------------------------------------------------------------- loading

def _is_optional(tp) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp)


def _coerce(value: Any, tp: Any, name: str, source: str | None):
    origin = get_origin(tp)
    if _is_optional(tp):
        if value is None:
            return None
        inner = [a for a in get_args(tp) if a is not type(None)]
        return _coerce(value, inner[0], name, source)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"expected a mapping of {tp.__name__} fields", path=source, field=name)
        return _build(tp, value, name, source)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise InputError(f"expected one of {list(allowed)}, got {value!r}", path=source, field=name)
        return value
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, list):
            raise InputError("expected a list", path=source, field=name)
        return [_coerce(v, inner, f"{name}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"expected true or false, got {value!r}", path=source, field=name)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InputError(f"expected an integer, got {value!r}", path=source, field=name)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise InputError(f"expected a number, got {value!r}", path=source, field=name)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise InputError(f"expected a string, got {value!r}", path=source, field=name)
    return value


def _build(cls, values: dict, prefix: str, source: str | None):
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in values:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else key
            raise InputError(f"unknown field (known: {', '.join(sorted(names))})", path=source, field=full)
    default = cls()
    kwargs = {}
    for f in fields(cls):
        full = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in values:
            if is_dataclass(hints[f.name]) and isinstance(values[f.name], dict):
                base = to_dict(getattr(default, f.name))
                merged = _deep_merge(base, values[f.name])
                kwargs[f.name] = _build(hints[f.name], merged, full, source)
            else:
                kwargs[f.name] = _coerce(values[f.name], hints[f.name], full, source)
    return dataclasses.replace(default, **kwargs)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=1e-4' -> (['optim', 'lr'], 1e-4). The value is read as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise InputError(f"expected key=value, got {text!r}", field=text)
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise InputError(f"bad key in {text!r}", field=key)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if value is None and raw.strip().lower() not in ("null", "~", "none"):
        value = raw
    return key.split("."), value


def load_config(cls, path: str | None = None, overrides: list[str] | tuple = ()):
    """Defaults <- YAML file <- dotted overrides; unknown keys and wrong types are InputErrors."""
    values: dict = {}
    source = None
    if path:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise InputError("config file does not exist" if not p.exists() else "expected a file", path=source)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise InputError(f"malformed YAML: {getattr(e, 'problem', e)}", path=source,
                             line=mark.line + 1 if mark else None) from None
        except UnicodeDecodeError:
            raise InputError("not valid UTF-8", path=source) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError("expected a mapping at the top level", path=source)
        values = loaded
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise InputError("cannot set a sub-field of a scalar", field=".".join(keys))
        node[keys[-1]] = value
    return _build(cls, values, "", source if not overrides else (source or "command line"))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def describe(cls, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted name, type, default, doc) for every leaf field, in declaration order."""
    rows = []
    hints = get_type_hints(cls)
    default = cls()
    for f in fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if is_dataclass(tp):
            sub = describe(tp, name + ".")
            value = getattr(default, f.name)
            rows.extend((n, t, _get(value, n[len(name) + 1:]), d) for n, t, _, d in sub)
        else:
            rows.append((name, _type_name(tp), getattr(default, f.name), f.metadata.get("doc", "")))
    return rows


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    if _is_optional(tp):
        return _type_name([a for a in get_args(tp) if a is not type(None)][0]) + "?"
    return getattr(tp, "__name__", str(tp))


def help_text(cls) -> str:
    lines = [f"{cls.__doc__.strip() if cls.__doc__ else cls.__name__}", "", "fields (set as key=value or in --config YAML):"]
    for name, tp, default, doc in describe(cls):
        lines.append(f"  {name} ({tp}, default {default!r})")
        lines.append(f"      {doc}")
    return "\n".join(lines)


@dataclass
class SampleConfig(StageConfig):
    """Sample completions from a model for a prompts file (writes {"prompt","completion"} records)."""
    model: str = F("", "model directory (required)")
    prompts: str = F("", "prompts JSONL (required)")
    template: TemplateConfig = F(TemplateConfig(), "prompt template")
    n: int = F(1, "samples per prompt")
    max_new_tokens: int = F(32, "maximum new tokens per sample")
    temperature: float = F(1.0, "sampling temperature; 0 = greedy")
    top_p: float = F(1.0, "nucleus sampling threshold")
    top_k: int = F(0, "top-k filtering; 0 = off")
    batch_size: int = F(64, "prompts per sampling batch")
