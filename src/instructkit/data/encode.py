"""Records -> token ids -> padded batches. Prompt templates live here."""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


def render_prompt(prompt: str, tokenizer, template, messages: list[dict] | None = None) -> str:
    """The exact text the model sees before its response."""
    if template.kind == "plain":
        if messages is not None:
            return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return prompt
    msgs = list(messages) if messages is not None else [{"role": "user", "content": prompt}]
    if template.system and (not msgs or msgs[0]["role"] != "system"):
        msgs = [{"role": "system", "content": template.system}] + msgs
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def encode_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens


def encode_demonstration(demo, tokenizer, template, max_len: int) -> tuple[Example, bool]:
    """Prompt and completion tokenized separately (no merge across the boundary), EOS appended.
    Returns (example, truncated)."""
    return encode_demonstrations([demo], tokenizer, template, max_len)[0]


def encode_demonstrations(demos, tokenizer, template, max_len: int) -> list[tuple[Example, bool]]:
    """Batch form of `encode_demonstration` (one tokenizer call for all prompts, one for all completions)."""
    prompts = [render_prompt("", tokenizer, template, d.messages[:-1]) if d.messages is not None
               else render_prompt(d.prompt, tokenizer, template) for d in demos]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if demos else []
    c_ids = tokenizer([d.completion for d in demos], add_special_tokens=False)["input_ids"] if demos else []
    return [_join(p, c + [tokenizer.eos_token_id], max_len) for p, c in zip(p_ids, c_ids)]


def _join(p: list[int], c: list[int], max_len: int) -> tuple[Example, bool]:
    truncated = len(p) + len(c) > max_len
    if truncated:
        keep_prompt = max(1, max_len - len(c)) if len(c) < max_len else max(1, max_len // 2)
        p = p[-keep_prompt:]
        c = c[: max_len - len(p)]
    return Example(p + c, [IGNORE] * len(p) + c), truncated


def length_buckets(lengths: list[int], size: int) -> list[list[int]]:
    """Indices grouped for padded passes: sorted by length, `size` per group; size 0 (or >= the
    count) = one group in input order."""
    if not size or size >= len(lengths):
        return [list(range(len(lengths)))]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i:i + size] for i in range(0, len(order), size)]


def right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (N, T) input_ids and attention_mask (training and scoring; sampling left-pads)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def collate_right(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded training batch: input_ids, attention_mask, labels (B, T)."""
    ids, mask = right_pad([e.input_ids for e in examples], pad_id)
    labels, _ = right_pad([e.labels for e in examples], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_texts(token_lists: list[list[int]], eos_id: int, seq_len: int) -> torch.Tensor:
    """Documents joined with EOS and cut into (N, seq_len) blocks; the ragged tail is dropped."""
    flat: list[int] = []
    for ids in token_lists:
        flat.extend(ids)
        flat.append(eos_id)
    n = len(flat) // seq_len
    return torch.tensor(flat[: n * seq_len], dtype=torch.long).view(n, seq_len)
