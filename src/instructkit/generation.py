"""Sampling from a causal LM: the rollouts of PPO (InstructGPT sec. 3.5) and every evaluation.

`generate` works with any Hugging Face causal LM given left-padded prompts. At the sandbox's
sizes (a ~0.5M-parameter policy, batch 64) a decoding step costs little compute and a lot of
fixed overhead, so the loop is built to do as little per step as possible:

- the KV cache is preallocated for the whole generation and written in place (transformers'
  DynamicCache concatenates, i.e. copies the whole cache into fresh memory, at every step);
- rows that have emitted EOS leave the batch at once: the still-active rows are swapped into
  the holes they leave (only the moved rows are copied), so a finished answer stops costing
  compute and the active batch is always a prefix `[:k]` of every buffer;
- one random number per (row, step) is drawn up front and a token is sampled by inverting the
  CDF (several times cheaper than torch.multinomial on CPU), so each row's sample depends only
  on the seed and its own logits, not on which other rows are still running;
- the only host sync per step is the count of rows that just emitted EOS;
- GPT-2 and Llama / Qwen2 models (the sandbox's) skip model.forward altogether: `decoders.GPT2Decoder`
  and `decoders.LlamaDecoder` replay the same math as plain tensor ops, since at these sizes
  transformers' per-call Python costs more than the arithmetic. Every other architecture (and
  a variant those decoders do not replay exactly) runs through model.forward with the same cache.

Shapes: B = prompts, P = padded prompt length, N = max_new_tokens, V = vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from instructkit.decoders import fast_decoder
from instructkit.models import cache_arg

Tensor = torch.Tensor

__all__ = [
    "SamplingParams",
    "Generation",
    "left_pad",
    "position_ids_from_mask",
    "filter_logits",
    "sample_from_logits",
    "generate",
    "generate_texts",
]


@dataclass
class SamplingParams:
    """How each next token is chosen. The defaults are plain sampling, as in PPO rollouts."""

    max_new_tokens: int = 32
    """Length budget N of every response, in tokens (EOS included)."""
    temperature: float = 1.0
    """Logits are divided by it before the softmax; 0 means greedy decoding (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p; 1 = off."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 = off. Applied before top_p, as in transformers."""
    stop_at_eos: bool = True
    """A row stops (and stops costing compute) after its first EOS; False always generates N tokens."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass
class Generation:
    """The output of `generate`. All tensors are on the prompts' device."""

    sequences: Tensor
    """(B, P + N) the prompts as given (left-padded) followed by response_ids."""
    response_ids: Tensor
    """(B, N) generated tokens; pad_token_id after the first EOS (the EOS itself is kept)."""
    response_mask: Tensor
    """(B, N) 1 for real response tokens, up to and including the first EOS; 0 after it."""
    logprobs: Tensor | None
    """(B, N) log-prob of each generated token under softmax(logits / temperature), 0 where masked."""
    ended_with_eos: Tensor
    """(B,) bool: the response's last real token is EOS (False if it ran out of budget)."""


# ----------------------------------------------------------------------------- padding


def left_pad(token_lists: list[list[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists into (input_ids, attention_mask), both (B, P) long.

    Left padding keeps every prompt's last token in the last column, which is where generation
    continues from."""
    width = max((len(t) for t in token_lists), default=0)
    input_ids = torch.full((len(token_lists), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        if tokens:
            input_ids[i, width - len(tokens) :] = torch.as_tensor(tokens, dtype=torch.long)
            attention_mask[i, width - len(tokens) :] = 1
    return input_ids, attention_mask


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """(B, T) positions that skip left padding: cumsum(mask) - 1, clamped at 0 on the padding.

    A prompt's first real token gets position 0 however much padding precedes it, so a
    left-padded row sees the same positions as the unpadded prompt would."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


# ----------------------------------------------------------------------------- sampling


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """(B, V) logits with every token outside the top-k and the nucleus (top-p) set to -inf.

    top_k = 0 and top_p = 1 leave the logits untouched (the same tensor is returned)."""
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token once the tokens ranked above it already cover top_p (the first always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_from_logits(logits: Tensor, uniform: Tensor) -> Tensor:
    """(B,) one token per row drawn from softmax(logits) by inverting its CDF at `uniform` (B,).

    `uniform` holds draws from U[0, 1). Tokens with probability 0 (logit -inf) are never chosen.
    The CDF is accumulated in float64 so the tail of a large vocabulary keeps its mass."""
    cdf = logits.softmax(-1).cumsum(-1, dtype=torch.float64)  # (B, V)
    # scaling by the total makes u < cdf[-1] exactly, so the search never runs off the end
    u = (uniform.to(torch.float64) * cdf[:, -1]).unsqueeze(-1)  # (B, 1)
    # first index with cdf > u: its own probability is > 0, so filtered tokens are unreachable
    return torch.searchsorted(cdf, u, right=True).view(-1)


# ----------------------------------------------------------------------------- KV cache


class _KVStore:
    """Preallocated key/value buffers for a whole generation, written in place.

    Buffers of one shape share a single (slots, B, H, P + N, D) tensor, so moving a row is one
    index_select + index_copy_ for the whole cache whatever the number of layers. The buffers
    start uninitialised: every position is written before it is read, or zeroed by its writer
    (a masked position must still hold finite numbers: 0 * nan is nan in p @ V).

    On CPU the memory of the last generation is kept (up to `SPARE_BYTES`) and reused by the
    next: a fresh allocation of this size is page-faulted in 4 KiB at a time on first touch,
    which costs a tiny model several percent of its sampling time."""

    SPARE_BYTES = 64 * 2**20
    _spare: dict[tuple, Tensor] = {}  # (dtype, device) -> flat memory left by a finished generation

    def __init__(self, slots: int, capacity: int):
        self.slots, self.capacity = slots, capacity
        self.tensors: list[Tensor] = []
        self._flat: list[Tensor] = []
        self._free: dict[tuple, tuple[Tensor, int]] = {}

    def new(self, batch: int, heads: int, head_dim: int, like: Tensor, count: int = 1) -> Tensor:
        """`count` fresh (B, H, P + N, D) buffers, as one (count, B, H, P + N, D) tensor."""
        key = (batch, heads, head_dim, like.dtype, like.device)
        tensor, used = self._free.get(key, (None, 0))
        if tensor is None or used + count > tensor.shape[0]:
            shape = (max(self.slots, count), batch, heads, self.capacity, head_dim)
            numel = math.prod(shape)
            flat = self._spare.pop((like.dtype, like.device), None)
            if flat is None or flat.numel() < numel:
                flat = torch.empty(numel, dtype=like.dtype, device=like.device)
            tensor, used = flat[:numel].view(shape), 0
            self.tensors.append(tensor)
            self._flat.append(flat)
        self._free[key] = (tensor, used + count)
        return tensor[used : used + count]

    def swap_rows(self, holes: Tensor, movers: Tensor) -> None:
        """Copy batch rows `movers` into rows `holes` in every buffer."""
        for tensor in self.tensors:
            tensor.index_copy_(1, holes, tensor.index_select(1, movers))

    def release(self) -> None:
        """Hand the memory to the next generation (CPU only; the CUDA allocator already caches)."""
        for flat in self._flat:
            key = (flat.dtype, flat.device)
            spare = self._spare.get(key)
            fits = flat.device.type == "cpu" and flat.numel() * flat.element_size() <= self.SPARE_BYTES
            if fits and (spare is None or spare.numel() < flat.numel()):
                self._spare[key] = flat
        self.tensors, self._flat, self._free = [], [], {}


class _InPlaceLayer(DynamicLayer):
    """A transformers full-attention cache layer backed by a `_KVStore` instead of torch.cat.

    transformers' DynamicLayer concatenates at every step, copying the whole cache into fresh
    memory. Here `update` writes the new keys and values into the active rows `[:k]` of a
    preallocated buffer and returns views of its filled part."""

    def __init__(self, store: _KVStore):
        super().__init__()
        self.store = store
        self.length = 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b = key_states.shape[0]
        self._k = self.store.new(b, key_states.shape[1], key_states.shape[-1], key_states)[0]
        self._v = self.store.new(b, value_states.shape[1], value_states.shape[-1], value_states)[0]
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        k, start = key_states.shape[0], self.length
        end = start + key_states.shape[-2]
        self._k[:k, :, start:end] = key_states
        self._v[:k, :, start:end] = value_states
        self.length = end
        self.keys, self.values = self._k[:k, :, :end], self._v[:k, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def batch_select_indices(self, indices: Tensor) -> None:
        raise NotImplementedError("rows of an _InPlaceLayer move only through _KVStore.swap_rows")


def _make_cache(model, capacity: int) -> tuple[DynamicCache, _KVStore]:
    """A DynamicCache for `model` whose full-attention layers are `_InPlaceLayer`s, and their store.

    Other layer kinds (sliding windows, linear attention) keep transformers' own classes."""
    cache = DynamicCache(config=model.config)
    store = _KVStore(2 * len(cache.layers), capacity)
    cache.layers = [_InPlaceLayer(store) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache, store


def _compact(store: _KVStore, cache: DynamicCache | None, row_state: list[Tensor], done: Tensor, k_new: int):
    """Drop the rows `done` (k,) bool from the active prefix `[:k]` of every buffer, keeping k_new.

    Active rows sitting beyond the new end move into the holes the finished rows leave, so only
    as many rows are copied as have finished. Returns the (k_new,) order of the surviving rows
    (None if no row moved), to apply to per-step tensors of length k."""
    holes = done[:k_new].nonzero().view(-1)  # finished rows inside the new prefix
    order = None
    if holes.numel():
        movers = (~done[k_new:]).nonzero().view(-1) + k_new  # active rows beyond it, as many
        store.swap_rows(holes, movers)
        for x in row_state:
            x.index_copy_(0, holes, x.index_select(0, movers))
        order = torch.arange(k_new, device=done.device)
        order[holes] = movers
    if cache is not None:  # layers transformers manages itself select their rows the usual way
        for layer in cache.layers:
            if not isinstance(layer, _InPlaceLayer) and layer.is_initialized:
                layer.batch_select_indices(order if order is not None else torch.arange(k_new, device=done.device))
    return order


# ----------------------------------------------------------------------------- generation


@torch.no_grad()
def generate(
    model,
    input_ids: Tensor,
    attention_mask: Tensor,
    params: SamplingParams,
    *,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    return_logprobs: bool = False,
    fast_path: bool = True,
) -> Generation:
    """Generate up to `params.max_new_tokens` tokens after each left-padded prompt.

    model: any transformers causal LM. It runs in eval mode; modules found in training mode are
        switched back afterwards, and nothing else about the model changes.
    input_ids, attention_mask: (B, P), left-padded; every row needs at least one real token.
    generator: makes sampling deterministic; the same generator state gives the same output.
    return_logprobs: also return the log-prob of every generated token.
    fast_path: decode GPT-2, Llama and Qwen2 models with a hand-written step (same math, no
        model.forward overhead; see `FastDecoder`). False, or any other architecture, calls
        model.forward.

    The returned logprobs are log_softmax(logits / temperature) at the chosen token (temperature 1
    when greedy), computed BEFORE top-k / top-p filtering, i.e. under the unfiltered, tempered
    distribution. That is the distribution PPO's ratio and KL need (the policy's forward pass
    recomputes exactly this); with filtering on they are not the log-probs of the sampler.
    """
    B, P = input_ids.shape
    N = params.max_new_tokens
    device = input_ids.device
    response_t = torch.full((N, B), pad_token_id, dtype=torch.long, device=device)  # (N, B): step t fills row t
    logprobs_t = torch.zeros((N, B), device=device) if return_logprobs else None
    if N > 0 and B > 0:
        # eval mode (no dropout) while sampling; modules in training mode are put back afterwards
        in_training = [m for m in model.modules() if m.training]
        for m in in_training:
            m.training = False
        try:
            with torch.inference_mode():
                args = (params, eos_token_id, generator, fast_path, response_t, logprobs_t)
                _decode(model, input_ids, attention_mask, *args)
        finally:
            for m in in_training:
                m.training = True
    # clone outside inference mode so callers may use the results in autograd (e.g. as PPO's old logprobs)
    response_ids = response_t.t().clone()  # (B, N)
    if params.stop_at_eos:
        is_eos = response_ids == eos_token_id
        after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
        response_mask = (~after_eos).long()
        response_ids = response_ids.masked_fill(after_eos, pad_token_id)
    else:
        response_mask = torch.ones_like(response_ids)
    lengths = response_mask.sum(-1)  # (B,)
    if N > 0:
        last = response_ids.gather(-1, (lengths - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
        ended_with_eos = (last == eos_token_id) & (lengths > 0)
    else:
        ended_with_eos = torch.zeros(B, dtype=torch.bool, device=device)
    logprobs = None if logprobs_t is None else logprobs_t.t().clone() * response_mask
    return Generation(
        sequences=torch.cat([input_ids, response_ids], dim=-1),
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=logprobs,
        ended_with_eos=ended_with_eos,
    )


def _decode(model, input_ids, attention_mask, params, eos_token_id, generator, fast_path, response_t, logprobs_t):
    """The decoding loop of `generate`: fills response_t / logprobs_t (N, B) in place."""
    B, P = input_ids.shape
    N = params.max_new_tokens
    device = input_ids.device
    greedy = params.temperature == 0
    temperature = 1.0 if greedy else float(params.temperature)
    filtering = not greedy and (params.top_k > 0 or params.top_p < 1.0)
    # one uniform per (row, step), drawn in the caller's row order: a row's sample depends only on
    # the seed and its own logits, not on the order rows are processed or when others finish
    uniform = None if greedy else torch.rand((B, N), generator=generator, device=device)  # (B, N)
    position_ids = position_ids_from_mask(attention_mask)  # (B, P)

    # prefill: the prompts' keys and values into the preallocated cache, logits of their last token
    fast = fast_decoder(model, P + N) if fast_path else None
    if fast is not None:
        # longest prompts first, so the prefill can skip most of the padding (see FastDecoder.prefill)
        rows = attention_mask.sum(-1).argsort(descending=True, stable=True)  # original index of each row
        input_ids, attention_mask, position_ids = input_ids[rows], attention_mask[rows], position_ids[rows]
        uniform = None if uniform is None else uniform[rows]
        store, cache = _KVStore(2 * len(fast.blocks), P + N), None
        logits = fast.prefill(store, input_ids, attention_mask, position_ids)  # (B, V)
        # the additive mask sdpa takes (0 = attend, -inf = padding), built once rather than per call
        mask = torch.zeros((B, 1, 1, P + N), dtype=fast.embed.dtype, device=device)
        mask[:, 0, 0, :P].masked_fill_(attention_mask == 0, float("-inf"))
    else:
        rows = torch.arange(B, device=device)
        cache, store = _make_cache(model, P + N)
        cache_kw = cache_arg(model, cache)  # the cache object stays the same; rows are compacted in place
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kw,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :]  # (B, V)
        mask = torch.ones((B, P + N), dtype=attention_mask.dtype, device=device)  # the 2D mask model.forward takes
        mask[:, :P] = attention_mask

    # per-row state, reordered together whenever finished rows leave the batch
    positions = position_ids[:, -1:] + 1 + torch.arange(N, device=device)  # (B, N) position of each new token
    row_state = [x for x in (rows, positions, mask, uniform) if x is not None]
    k = B  # the active rows are [:k] of every buffer
    active_rows = rows
    for t in range(N):
        logits = logits.float()  # (k, V)
        if temperature != 1.0:
            logits = logits / temperature
        if greedy:
            token = logits.argmax(-1)
        else:
            allowed = filter_logits(logits, params.top_k, params.top_p) if filtering else logits
            token = sample_from_logits(allowed, uniform[:k, t])
        response_t[t].index_copy_(0, active_rows, token)
        if logprobs_t is not None:
            logprob = logits.log_softmax(-1).gather(-1, token.unsqueeze(-1)).view(-1)
            logprobs_t[t].index_copy_(0, active_rows, logprob)
        if t == N - 1:
            break
        if params.stop_at_eos:
            done = token == eos_token_id
            n_done = int(done.sum())  # the one host sync per step
            if n_done == k:
                break
            if n_done:  # drop them now: measured no faster to wait for several (tried 6-25% of k)
                k -= n_done
                order = _compact(store, cache, row_state, done, k)
                token = token[:k] if order is None else token[order]
                active_rows = rows[:k]
        if fast is not None:
            logits = fast(token, positions[:k, t], mask[:k, :, :, : P + t + 1])
        else:
            logits = model(
                input_ids=token.view(k, 1),
                attention_mask=mask[:k, : P + t + 1],
                position_ids=positions[:k, t : t + 1],
                **cache_kw,
                use_cache=True,
            ).logits[:, -1, :]
    store.release()


# ----------------------------------------------------------------------------- convenience


def generate_texts(
    model, tokenizer, prompts: list[str], params: SamplingParams, batch_size: int = 64, seed: int = 0
) -> list[str]:
    """Responses to `prompts` as text: the tokens before EOS, decoded with skip_special_tokens.

    Prompts are tokenized without special tokens, left-padded with tokenizer.pad_token_id (EOS if
    unset) and generated in batches of `batch_size` from one generator seeded with `seed`."""
    eos_token_id = tokenizer.eos_token_id
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    texts: list[str] = []
    for i in range(0, len(prompts), batch_size):
        token_lists = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[i : i + batch_size]]
        input_ids, attention_mask = left_pad(token_lists, pad_token_id)
        gen = generate(
            model,
            input_ids.to(device),
            attention_mask.to(device),
            params,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            generator=generator,
        )
        lengths = (gen.response_mask.sum(-1) - gen.ended_with_eos.long()).tolist()  # tokens before EOS
        for ids, n in zip(gen.response_ids.tolist(), lengths):
            texts.append(tokenizer.decode(ids[:n], skip_special_tokens=True))
    return texts
