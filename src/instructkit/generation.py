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
- GPT-2 and Llama / Qwen2 models (the sandbox's) skip model.forward altogether: `_GPT2Decoder`
  and `_LlamaDecoder` replay the same math as plain tensor ops, since at these sizes
  transformers' per-call Python costs more than the arithmetic. Every other architecture (and
  a variant those decoders do not replay exactly) runs through model.forward with the same cache.

Shapes: B = prompts, P = padded prompt length, N = max_new_tokens, V = vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

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
        model.forward overhead; see `_FastDecoder`). False, or any other architecture, calls
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
    fast = _fast_decoder(model, P + N) if fast_path else None
    if fast is not None:
        # longest prompts first, so the prefill can skip most of the padding (see _FastDecoder.prefill)
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


def _gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's gelu_new, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3).

    On large tensors it is computed as the identical x * sigmoid(2u): torch's CPU tanh is several
    times slower than its sigmoid. Both agree with transformers' gelu_new to ~1e-7."""
    if x.numel() < 16384:
        return F.gelu(x, approximate="tanh")
    c = math.sqrt(8.0 / math.pi)
    two_u = (x * x).mul_(0.044715 * c).add_(c).mul_(x)
    return two_u.sigmoid_().mul_(x)


class _FastDecoder:
    """A causal LM's forward pass as plain tensor ops on its own weights: what the families share.

    At the sandbox's sizes model.forward spends most of a decoding step in Python (module
    calls, output classes, mask construction): at batch 1-4, ~3x the time of the same math
    issued directly. A subclass replays one architecture's layer math (`_embed`, `_attn_in`,
    `_attn_out`, `_logits`); this class runs it for the prefill and for each decoding step on a
    `_KVStore`, and does the attention. Numerically a decoder differs from model.forward only by
    float rounding, and the prefill skips padding (see `prefill`). `build` returns None for a
    model the subclass cannot replay exactly; that model takes the model.forward path."""

    BMM_MIN_ROWS = 128  # decoding attention by baddbmm + bmm from this many (row, head) pairs, sdpa below

    # set by a subclass's __init__
    embed: Tensor  # (V, C) token embeddings; the cache takes their dtype and device
    blocks: list  # per layer: (attention scaling, the layer's weights in the subclass's own layout)
    heads: int
    kv_heads: int  # fewer than `heads` with grouped-query attention; the cache holds only these
    head_dim: int
    kv: Tensor | None = None  # (layers, 2, B, Hkv, P + N, D), set by prefill
    length = 0  # tokens in the cache

    @classmethod
    def build(cls, model, capacity: int) -> "_FastDecoder | None":
        """The decoder for `model` generating up to `capacity` tokens in all (prompt + response),
        or None unless the subclass replays this model exactly."""
        raise NotImplementedError

    def _embed(self, ids: Tensor, positions: Tensor) -> tuple[Tensor, object]:
        """(k, q) tokens at (k, q) positions -> (k * q, C) hidden states, and whatever `_attn_in`
        needs to know of the positions."""
        raise NotImplementedError

    def _attn_in(self, block, h: Tensor, pos, k: int, q: int) -> tuple[Tensor, Tensor, Tensor]:
        """(k * q, C) hidden states -> the layer's queries (k, H, q, D), keys and values (k, Hkv, q, D)."""
        raise NotImplementedError

    def _attn_out(self, block, h: Tensor, attn: Tensor) -> Tensor:
        """The rest of the layer: (k * q, H * D) attention output and the residual stream -> new (k * q, C)."""
        raise NotImplementedError

    def _logits(self, h: Tensor) -> Tensor:
        """(k, C) last hidden states -> (k, V) logits."""
        raise NotImplementedError

    def prefill(self, store: _KVStore, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        """(B, P) left-padded prompts, longest first -> (B, V) logits of each prompt's last token.

        Rows are run in up to 4 groups of similar length, each only as wide as its longest
        prompt: with left padding a shorter group's tokens sit in the last columns, and the
        columns before them are zeroed and masked."""
        B, P = input_ids.shape
        self.kv = store.new(B, self.kv_heads, self.head_dim, self.embed, count=2 * len(self.blocks))
        self.kv = self.kv.view(len(self.blocks), 2, *self.kv.shape[1:])
        lengths = attention_mask.sum(-1).tolist()
        n_groups = min(4, -(-B // 16))
        starts = sorted({B * g // n_groups for g in range(n_groups)})
        causal = torch.ones((P, P), dtype=torch.bool, device=input_ids.device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=input_ids.device)
        last = []
        for a, b in zip(starts, starts[1:] + [B]):
            w = max(1, lengths[a])  # the group's widest prompt
            # a token attends to earlier real tokens; padding also to itself, so that no softmax
            # row is empty (an all-masked row gives nan, and 0 * nan is still nan in p @ V)
            real = attention_mask[a:b, P - w :].bool()[:, None, :]  # (k, 1, w)
            mask = (causal[:w, :w] & real) | eye[:w, :w]  # (k, w, w)
            if w < P:
                self.kv[:, :, a:b, :, : P - w].zero_()
            h, pos = self._embed(input_ids[a:b, P - w :], position_ids[a:b, P - w :])
            last.append(self._blocks(h, pos, a, b, P - w, P, w, mask.unsqueeze(1), last_only=True))  # (k, C)
        self.length = P
        return self._logits(torch.cat(last))  # (B, V)

    def __call__(self, token: Tensor, position: Tensor, mask: Tensor) -> Tensor:
        """One decoding step for the active rows [:k]. token, position: (k,); mask: (k, 1, 1, L + 1)
        additive (0 = attend, -inf = not). Returns (k, V) logits."""
        k, end = token.shape[0], self.length + 1
        h, pos = self._embed(token.view(k, 1), position.view(k, 1))
        h = self._blocks(h, pos, 0, k, 0, end, 1, mask)
        self.length = end
        return self._logits(h)

    def _blocks(self, h: Tensor, pos, a: int, b: int, start: int, end: int, q: int, mask: Tensor, last_only=False):
        """The transformer blocks on (k * q, C) hidden states of rows [a, b), whose q new tokens
        go to cache columns [end - q, end) and attend to columns [start, end).

        last_only: the last block still caches all q keys and values but computes the output of
        the last token only, (k, C): all a prefill needs (a quarter of a 4-layer prefill saved)."""
        k = b - a
        bias = None
        if q == 1 and k * self.heads >= self.BMM_MIN_ROWS:  # (k * Hkv, 1, L) the additive mask, per kv head
            bias = mask.expand(k, self.kv_heads, 1, end - start).reshape(k * self.kv_heads, 1, end - start)
        last_block = len(self.blocks) - 1
        for i, (kv, (scaling, block)) in enumerate(zip(self.kv, self.blocks)):
            query, key, value = self._attn_in(block, h, pos, k, q)
            kv[0, a:b, :, end - q : end] = key
            kv[1, a:b, :, end - q : end] = value
            keys, values = kv[0, a:b, :, start:end], kv[1, a:b, :, start:end]  # (k, Hkv, L, D)
            if last_only and i == last_block and q > 1:
                query, mask, h, q = query[:, :, -1:], mask[..., -1:, :], h.view(k, q, -1)[:, -1], 1
            h = self._attn_out(block, h, self._attend(query, keys, values, mask, bias, scaling))
        return h

    def _attend(self, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor, bias: Tensor | None, scaling):
        """Attention of (k, H, q, D) queries to (k, Hkv, L, D) cached keys and values -> (k * q, H * D).

        Query head j reads key/value head j // (H / Hkv), as transformers' repeat_kv has it."""
        k, heads, q, head_dim = query.shape
        groups = heads // self.kv_heads
        if q == 1:
            # the query heads sharing a key/value head become that head's queries: grouped-query
            # attention without copying the cache (the mask is the same for every query of a row)
            query = query.reshape(k, self.kv_heads, groups, head_dim)
        elif groups > 1:
            keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
        if bias is not None:  # one token per row: two batched matmuls beat sdpa's kernel
            n = k * self.kv_heads
            keys_t = keys.reshape(n, -1, head_dim).transpose(1, 2)  # (k * Hkv, D, L)
            scores = torch.baddbmm(bias, query.reshape(n, groups, head_dim), keys_t, alpha=scaling)
            return torch.bmm(scores.softmax(-1), values.reshape(n, -1, head_dim)).view(k, heads * head_dim)
        attn = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling)
        return attn.reshape(k, -1) if q == 1 else attn.transpose(1, 2).reshape(k * q, -1)


class _GPT2Decoder(_FastDecoder):
    """GPT2LMHeadModel's math: learned positions, LayerNorm, fused qkv (Conv1D weights), GELU MLP.

    gelu_new is computed by `_gelu_tanh` (the same function to ~1e-7)."""

    _ACTIVATIONS = {"gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh, "gelu": F.gelu, "relu": F.relu}

    @classmethod
    def build(cls, model, capacity: int) -> "_GPT2Decoder | None":
        config = model.config
        supported = (
            type(model).__name__ == "GPT2LMHeadModel"
            and getattr(config, "model_type", None) == "gpt2"
            and not getattr(config, "add_cross_attention", False)
            and config.activation_function in cls._ACTIVATIONS
        )
        return cls(model) if supported else None

    def __init__(self, model):
        tf = model.transformer
        self.act = self._ACTIVATIONS[model.config.activation_function]
        self.embed, self.wpe, self.lm_head = tf.wte.weight, tf.wpe.weight, model.lm_head.weight
        self.ln_f = (tf.ln_f.weight, tf.ln_f.bias, tf.ln_f.eps)
        self.width = tf.embed_dim
        self.heads, self.head_dim = tf.h[0].attn.num_heads, tf.h[0].attn.head_dim
        self.kv_heads = self.heads
        self.blocks = [
            (
                blk.attn.scaling,
                (
                    (blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps),
                    (blk.attn.c_attn.weight, blk.attn.c_attn.bias, blk.attn.c_proj.weight, blk.attn.c_proj.bias),
                    (blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps),
                    (blk.mlp.c_fc.weight, blk.mlp.c_fc.bias, blk.mlp.c_proj.weight, blk.mlp.c_proj.bias),
                ),
            )
            for blk in tf.h
        ]

    def _embed(self, ids: Tensor, positions: Tensor) -> tuple[Tensor, None]:
        h = F.embedding(ids, self.embed) + F.embedding(positions, self.wpe)
        return h.view(-1, self.width), None

    def _attn_in(self, block, h: Tensor, pos, k: int, q: int) -> tuple[Tensor, Tensor, Tensor]:
        ln_1, (w_qkv, b_qkv, _, _), _, _ = block
        x = F.layer_norm(h, (self.width,), *ln_1)
        qkv = torch.addmm(b_qkv, x, w_qkv).view(k, q, 3, self.heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, k, H, q, D)
        return qkv[0], qkv[1], qkv[2]

    def _attn_out(self, block, h: Tensor, attn: Tensor) -> Tensor:
        _, (_, _, w_o, b_o), ln_2, (w_fc, b_fc, w_proj, b_proj) = block
        h = torch.addmm(b_o, attn, w_o) + h
        x = F.layer_norm(h, (self.width,), *ln_2)
        return torch.addmm(b_proj, self.act(torch.addmm(b_fc, x, w_fc)), w_proj) + h

    def _logits(self, h: Tensor) -> Tensor:
        return F.linear(F.layer_norm(h, (self.width,), *self.ln_f), self.lm_head)


def _fused_linear(*linears) -> tuple[Tensor, Tensor | None]:
    """One (sum of outs, in) weight and bias for several nn.Linear reading the same input: one
    matmul instead of several (a missing bias among present ones counts as zeros)."""
    weight = torch.cat([lin.weight for lin in linears])
    if all(lin.bias is None for lin in linears):
        return weight, None
    zeros = [torch.zeros(lin.out_features, dtype=weight.dtype, device=weight.device) for lin in linears]
    return weight, torch.cat([z if lin.bias is None else lin.bias for lin, z in zip(linears, zeros)])


class _LlamaDecoder(_FastDecoder):
    """LlamaForCausalLM's and Qwen2ForCausalLM's math (Qwen2 is Llama with q/k/v biases):
    RMSNorm, rotary positions, grouped-query attention, SiLU-gated MLP.

    q/k/v and gate/up are each fused into one matmul; rotate_half(x) * sin is computed as
    x.roll(D / 2) * (-sin, sin) on the halves, the same products without building rotate_half.
    Only fp32 models: RMSNorm normalises in fp32 whatever the model's dtype, which a half-precision
    replay would not reproduce exactly."""

    _MODEL_TYPES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}

    @classmethod
    def build(cls, model, capacity: int) -> "_LlamaDecoder | None":
        config = model.config
        if cls._MODEL_TYPES.get(type(model).__name__) != getattr(config, "model_type", None):
            return None
        window = getattr(config, "sliding_window", None)
        # a sliding window that holds the whole generation changes nothing; a shorter one would
        layers_ok = all(
            kind == "full_attention" or (kind == "sliding_attention" and window is not None and window >= capacity)
            for kind in getattr(config, "layer_types", None) or ["full_attention"]
        )
        supported = (
            layers_ok
            and config.hidden_act == "silu"
            and getattr(model.model.rotary_emb, "rope_type", None) == "default"
            and model.model.embed_tokens.weight.dtype == torch.float32
        )
        return cls(model, capacity) if supported else None

    def __init__(self, model, capacity: int):
        base, config = model.model, model.config
        attn = base.layers[0].self_attn
        self.embed, self.lm_head = base.embed_tokens.weight, model.lm_head.weight
        self.width, self.head_dim = config.hidden_size, attn.head_dim
        self.heads, self.kv_heads = attn.q_proj.out_features // self.head_dim, attn.k_proj.out_features // self.head_dim
        self.norm = (base.norm.weight, base.norm.variance_epsilon)
        # cos and sin of every position the generation can reach, from the model's own rotary module
        # (its first argument only sets their dtype and device)
        positions = torch.arange(capacity, device=self.embed.device)
        cos, sin = base.rotary_emb(self.embed, positions.unsqueeze(0))  # (1, capacity, D) each
        half = self.head_dim // 2
        self.cos, self.sin = cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], -1)
        self.blocks = [
            (
                layer.self_attn.scaling,
                (
                    (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                    _fused_linear(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                    (layer.self_attn.o_proj.weight, layer.self_attn.o_proj.bias),
                    (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
                    _fused_linear(layer.mlp.gate_proj, layer.mlp.up_proj),
                    (layer.mlp.down_proj.weight, layer.mlp.down_proj.bias),
                ),
            )
            for layer in base.layers[: config.num_hidden_layers]
        ]

    def _embed(self, ids: Tensor, positions: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        rope = (F.embedding(positions, self.cos).unsqueeze(2), F.embedding(positions, self.sin).unsqueeze(2))
        return F.embedding(ids, self.embed).view(-1, self.width), rope  # rope: (k, q, 1, D) each

    def _attn_in(self, block, h: Tensor, pos, k: int, q: int) -> tuple[Tensor, Tensor, Tensor]:
        norm_1, (w_qkv, b_qkv) = block[:2]
        x = F.rms_norm(h, (self.width,), *norm_1)
        qkv = F.linear(x, w_qkv, b_qkv).view(k, q, -1, self.head_dim)  # (k, q, H + 2 Hkv, D)
        cos, sin = pos
        rotated = self.heads + self.kv_heads  # queries and keys, not values
        qk = qkv[:, :, :rotated]
        qk = (qk * cos).addcmul_(qk.roll(self.head_dim // 2, -1), sin).transpose(1, 2)  # (k, H + Hkv, q, D)
        return qk[:, : self.heads], qk[:, self.heads :], qkv[:, :, rotated:].transpose(1, 2)

    def _attn_out(self, block, h: Tensor, attn: Tensor) -> Tensor:
        (w_o, b_o), norm_2, (w_gate_up, b_gate_up), (w_down, b_down) = block[2:]
        h = F.linear(attn, w_o, b_o) + h
        gate, up = F.linear(F.rms_norm(h, (self.width,), *norm_2), w_gate_up, b_gate_up).chunk(2, -1)
        return F.linear(F.silu(gate).mul_(up), w_down, b_down) + h

    def _logits(self, h: Tensor) -> Tensor:
        return F.linear(F.rms_norm(h, (self.width,), *self.norm), self.lm_head)


_DECODERS = (_GPT2Decoder, _LlamaDecoder)


def _fast_decoder(model, capacity: int) -> _FastDecoder | None:
    """The first hand-written decoder that replays `model`, or None (model.forward it is)."""
    return next((d for d in (cls.build(model, capacity) for cls in _DECODERS) if d is not None), None)


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
