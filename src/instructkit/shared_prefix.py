"""Log-probs of several completions of one prompt with the prompt run once (the forward pass of
the direct methods, `instructkit.stages.direct`).

A batch of G prompts runs through the model once with its keys/values cached; the N completions
(each owned by one prompt: `owner[n]`) then run attending to their prompt's cache, so K completions
of a prompt cost one prompt encoding, and the LM head is applied only where a completion token is
predicted. `completion_logps_full` computes the same sums by the plain route (every prompt +
completion as its own row); `instructkit.stages.direct.fast_path_ok` compares the two on each model
before training and falls back to the plain route when they disagree.

Shapes: G prompts, N completions, P / C prompt / completion tokens, D hidden size, V vocabulary."""
from __future__ import annotations

import torch

from instructkit import losses as L
from instructkit.data.encode import length_buckets, right_pad
from instructkit.models import cache_arg, output_cache

# completions per padded pass (sorted by length): sandbox K-way batches pad to their longest
# completion, several times the typical one
BUCKET_ROWS = 32


def completion_logps(model, prompts: list[list[int]], completions: list[list[int]], owner: list[int],
                     pad_id: int, bucket_rows: int = BUCKET_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over its tokens of log pi(completion | prompt) and the token count, each (N,).

    The prompts (G of them) run once; their cached keys/values are then repeated for the N
    completions, which run attending to them (gradients flow through the cache into the prompt
    pass): in one pass, or with bucket_rows > 0 sorted by length in groups of that many, each padded
    only to its own longest completion. The LM head sees only the positions that predict a
    completion token."""
    if getattr(model, "instructkit_plain_forward", False):
        return completion_logps_full(model, prompts, completions, owner, pad_id)
    dev = next(model.parameters()).device
    base = model.base_model
    prompt_ids, prompt_mask = (t.to(dev) for t in right_pad(prompts, pad_id))  # (G, P)
    plen = prompt_mask.sum(1)  # (G,)
    out = base(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True)
    n = len(completions)
    groups = length_buckets([len(c) for c in completions], bucket_rows)
    sums = torch.zeros(n, device=dev)
    counts = torch.zeros(n, dtype=torch.long, device=dev)
    for rows in groups:
        own = [owner[i] for i in rows]
        if len(groups) == 1:  # the prompts' own cache, repeated in place: (G, ...) -> (N, ...) per layer
            cache = output_cache(out)
            cache.reorder_cache(torch.tensor(own, dtype=torch.long, device=dev))
        else:
            cache = _select_cache(output_cache(out), model.config, own, dev)
        s, c = _completion_pass(model, out.last_hidden_state, prompt_mask, plen, cache,
                                [completions[i] for i in rows], own, pad_id, dev)
        idx = torch.tensor(rows, dtype=torch.long, device=dev)
        sums = sums.index_add(0, idx, s.to(sums.dtype))
        counts = counts.index_add(0, idx, c)
    return sums, counts


def _select_cache(cache, config, rows: list[int], dev):
    """A new cache holding the prompt keys/values of `rows` (one entry per completion; differentiable)."""
    from transformers import DynamicCache

    idx = torch.tensor(rows, dtype=torch.long, device=dev)
    new = DynamicCache(config=config)
    for layer, src in enumerate(cache.layers):
        new.update(src.keys.index_select(0, idx), src.values.index_select(0, idx), layer)
    return new


def _completion_pass(model, prompt_hidden, prompt_mask, plen, cache, completions, owner, pad_id, dev):
    """Log-prob sums and token counts of `completions` given their prompts' cache, each (n,)."""
    base, head = model.base_model, model.get_output_embeddings()
    comp_ids, comp_mask = (t.to(dev) for t in right_pad(completions, pad_id))  # (n, C)
    own = torch.tensor(owner, dtype=torch.long, device=dev)  # (n,)
    positions = plen[own].unsqueeze(1) + torch.arange(comp_ids.shape[1], device=dev)  # (n, C), skip the prompt's padding
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit:  # a short row's padding can run past the position table when another row is long; it is masked
        positions = positions.clamp(max=limit - 1)
    hidden = base(input_ids=comp_ids, attention_mask=torch.cat([prompt_mask[own], comp_mask], 1),
                  position_ids=positions, **cache_arg(base, cache), use_cache=True).last_hidden_state  # (n, C, D)
    first = prompt_hidden[own, plen[own] - 1]  # (n, D): the last prompt token predicts completion token 0
    predict = torch.cat([first.unsqueeze(1), hidden[:, :-1]], 1)  # (n, C, D): predict[:, j] -> comp_ids[:, j]
    real = comp_mask.bool()
    logits = head(predict[real])  # (M, V), M = real completion tokens
    token_lp = L.token_logprobs(logits.unsqueeze(0), comp_ids[real].unsqueeze(0))[0]  # (M,)
    rows = torch.arange(len(completions), device=dev).unsqueeze(1).expand_as(comp_ids)[real]  # (M,)
    sums = torch.zeros(len(completions), dtype=token_lp.dtype, device=dev).index_add(0, rows, token_lp)
    return sums, comp_mask.sum(1)


def completion_logps_full(model, prompts, completions, owner, pad_id) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as `completion_logps` by the plain route: every prompt + completion as its own
    right-padded row through the whole model. The check on the fast path, and its fallback."""
    dev = next(model.parameters()).device
    ids, mask = (t.to(dev) for t in right_pad([prompts[o] + c for o, c in zip(owner, completions)], pad_id))  # (N, T)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (N, T-1, V)
    lp = L.token_logprobs(logits, ids[:, 1:])  # (N, T-1)
    plen = torch.tensor([len(prompts[o]) for o in owner], device=dev)
    pos = torch.arange(1, ids.shape[1], device=dev)
    is_completion = (pos.unsqueeze(0) >= plen.unsqueeze(1)) & mask[:, 1:].bool()  # (N, T-1)
    return torch.where(is_completion, lp, torch.zeros_like(lp)).sum(1), is_completion.sum(1)
