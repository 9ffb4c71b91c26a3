"""Step-by-step batched decoding for the server: the sampler of `instructkit.generation`, opened up.

`generation.generate` runs a whole batch to the end and returns tensors. A server needs more:

- a token per row after every step, to stream it and to test stop sequences on the text;
- rows that the caller ends early (a stop sequence matched, a filter blocked, the client left);
- per-row settings, so that requests with different temperature / top_p / top_k / max_tokens
  share one batch: temperature is a (k, 1) divisor, top-k / top-p a per-row cut of the sorted
  logits, and each row has its own token budget;
- per-row random numbers: the (B, N) uniforms are passed in, so a request with a seed draws its
  own rows from its own generator and samples the same tokens whatever else is in the batch.

The sampling is `generate`'s: left-padded prompts with position ids that skip the padding, one
uniform per (row, step), a token drawn by inverting the CDF (`sample_from_logits`), finished rows
dropped from the batch before the next forward pass. With one setting for every row and uniforms
drawn as `generate` draws them, the tokens are the same (tests/test_serve_engine.py checks it).
The KV cache is transformers' own DynamicCache: this module uses only the public functions of
`generation`, so the two can evolve apart.

Shapes: B = rows, P = padded prompt length, N = the largest budget, V = vocabulary, k = rows
still active.
"""
from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache

from instructkit.generation import position_ids_from_mask, sample_from_logits
from instructkit.models import cache_arg


def filter_logits_per_row(logits: Tensor, top_k: Tensor, top_p: Tensor) -> Tensor:
    """(k, V) logits with tokens outside each row's top-k and nucleus set to -inf.

    top_k: (k,) long, 0 = off; top_p: (k,) float, 1 = off. Same semantics as
    `generation.filter_logits` row by row: ties with the k-th logit stay, top-k applies first."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (k, V)
    use_k = top_k > 0
    if bool(use_k.any()):
        kth = sorted_logits.gather(-1, (top_k - 1).clamp(0, logits.shape[-1] - 1).unsqueeze(-1))  # (k, 1)
        sorted_logits = sorted_logits.masked_fill(use_k.unsqueeze(-1) & (sorted_logits < kth), float("-inf"))
    probs = sorted_logits.softmax(-1)
    # the first token always stays; rows with top_p = 1 skip the cut (float cumsums can reach 1 early)
    drop_sorted = ((probs.cumsum(-1) - probs) >= top_p.unsqueeze(-1)) & (top_p < 1.0).unsqueeze(-1)
    drop_sorted |= torch.isneginf(sorted_logits)
    drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class BatchDecoder:
    """Decode left-padded prompts one step at a time: `step()` -> (rows, tokens) or None when done.

    input_ids, attention_mask: (B, P) left-padded, every row with at least one real token.
    temperature: (B,) float, 0 = greedy. top_p: (B,) in (0, 1]. top_k: (B,) long, 0 = off.
    budget: (B,) long >= 1, new tokens allowed per row (EOS included).
    ignore_eos: (B,) bool, rows that do not stop at EOS (None = every row stops).
    uniform: (B, N) draws from U[0, 1), N >= max(budget); row r's step t uses uniform[r, t].

    A row ends after it samples EOS, when its budget is spent, or when the caller passes it to
    `finish`; it leaves the batch before the next step's forward pass."""

    def __init__(self, model, input_ids: Tensor, attention_mask: Tensor, *, temperature: Tensor, top_p: Tensor,
                 top_k: Tensor, budget: Tensor, uniform: Tensor, eos_token_id: int, ignore_eos: Tensor | None = None):
        B, P = input_ids.shape
        N = int(budget.max())
        assert uniform.shape[0] == B and uniform.shape[1] >= N, (uniform.shape, B, N)
        self.model, self.eos_token_id, self.P, self.N = model, eos_token_id, P, N
        self.t = 0
        self.finished_rows: set[int] = set()

        # prefill: the prompts through the model, filling the cache
        self.cache = DynamicCache(config=model.config)
        self._cache_kw = cache_arg(model, self.cache)  # rows leave it in place: the same object throughout
        position_ids = position_ids_from_mask(attention_mask)  # (B, P)
        with torch.inference_mode():
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        **self._cache_kw, use_cache=True, logits_to_keep=1)
        self.logits = out.logits[:, -1, :]  # (B, V)

        # per-row state: index-selected together whenever finished rows leave the batch
        self.rows = torch.arange(B, device=input_ids.device)  # original index of each active row
        self.positions = position_ids[:, -1:] + 1 + torch.arange(N, device=input_ids.device)  # (B, N)
        self.mask = torch.ones((B, P + N), dtype=attention_mask.dtype, device=input_ids.device)  # (B, P + N)
        self.mask[:, :P] = attention_mask
        self.greedy = temperature <= 0
        self.temperature = torch.where(self.greedy, torch.ones_like(temperature), temperature).float().unsqueeze(-1)
        self.top_p, self.top_k, self.budget = top_p.float(), top_k.long(), budget.long()
        self.uniform = uniform[:, :N].float()
        self.stops_at_eos = torch.ones(B, dtype=torch.bool) if ignore_eos is None else ~ignore_eos.bool()
        self.last: Tensor | None = None  # (k,) tokens sampled at the previous step

    _ROW_STATE = ("rows", "positions", "mask", "greedy", "temperature", "top_p", "top_k", "budget", "uniform",
                  "stops_at_eos", "last")

    @property
    def k(self) -> int:
        return self.rows.shape[0]

    def finish(self, rows) -> None:
        """End these rows (original indices) before the next step."""
        self.finished_rows.update(int(r) for r in rows)

    @torch.inference_mode()
    def step(self) -> tuple[list[int], list[int]] | None:
        """Sample one token for every active row: (original row indices, tokens), or None if none is left."""
        t = self.t
        if self.k == 0 or t >= self.N:
            return None
        if t > 0:
            # rows that ended at the previous step leave the batch: EOS, budget spent, or finished by the caller
            done = ((self.last == self.eos_token_id) & self.stops_at_eos) | (self.budget <= t)
            if self.finished_rows:
                done |= torch.isin(self.rows, torch.tensor(sorted(self.finished_rows), device=done.device))
            if bool(done.any()):
                keep = (~done).nonzero().view(-1)
                if keep.numel() == 0:
                    self.rows = self.rows[:0]
                    return None
                self.cache.batch_select_indices(keep)
                for name in self._ROW_STATE:
                    setattr(self, name, getattr(self, name)[keep])
            # the previous step's tokens through the model: logits for this step
            self.logits = self.model(input_ids=self.last.view(-1, 1), attention_mask=self.mask[:, : self.P + t],
                                     position_ids=self.positions[:, t - 1 : t], **self._cache_kw,
                                     use_cache=True).logits[:, -1, :]
        logits = self.logits.float() / self.temperature  # (k, V)
        if bool(((self.top_p < 1.0) | (self.top_k > 0)).any()):
            logits = filter_logits_per_row(logits, self.top_k, self.top_p)
        sampled = sample_from_logits(logits, self.uniform[:, t])
        self.last = torch.where(self.greedy, logits.argmax(-1), sampled)  # (k,)
        self.t = t + 1
        return self.rows.tolist(), self.last.tolist()
