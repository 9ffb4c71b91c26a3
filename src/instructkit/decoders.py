"""Hand-written decoders: a GPT-2, Llama or Qwen2 LM's forward pass as plain tensor ops on its own
weights, for `generation.generate`. At the sandbox's sizes model.forward spends most of a decoding
step in Python (module calls, output classes, mask construction); these replay the same math on
`generation`'s preallocated key/value store. `fast_decoder(model, capacity)` returns the one that
replays `model`, or None (model.forward it is)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # generation imports this module
    from instructkit.generation import _KVStore


def _gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's gelu_new, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3).

    On large tensors it is computed as the identical x * sigmoid(2u): torch's CPU tanh is several
    times slower than its sigmoid. Both agree with transformers' gelu_new to ~1e-7."""
    if x.numel() < 16384:
        return F.gelu(x, approximate="tanh")
    c = math.sqrt(8.0 / math.pi)
    two_u = (x * x).mul_(0.044715 * c).add_(c).mul_(x)
    return two_u.sigmoid_().mul_(x)


class FastDecoder:
    """A causal LM's forward pass as plain tensor ops on its own weights: what the families share.

    At the sandbox's sizes model.forward spends most of a decoding step in Python (module
    calls, output classes, mask construction): at batch 1-4, ~3x the time of the same math
    issued directly. A subclass replays one architecture's layer math (`_embed`, `_attn_in`,
    `_attn_out`, `_logits`); this class runs it for the prefill and for each decoding step on a
    `generation._KVStore`, and does the attention. Numerically a decoder differs from model.forward only by
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
    def build(cls, model, capacity: int) -> "FastDecoder | None":
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


class GPT2Decoder(FastDecoder):
    """GPT2LMHeadModel's math: learned positions, LayerNorm, fused qkv (Conv1D weights), GELU MLP.

    gelu_new is computed by `_gelu_tanh` (the same function to ~1e-7)."""

    _ACTIVATIONS = {"gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh, "gelu": F.gelu, "relu": F.relu}

    @classmethod
    def build(cls, model, capacity: int) -> "GPT2Decoder | None":
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


class LlamaDecoder(FastDecoder):
    """LlamaForCausalLM's and Qwen2ForCausalLM's math (Qwen2 is Llama with q/k/v biases):
    RMSNorm, rotary positions, grouped-query attention, SiLU-gated MLP.

    q/k/v and gate/up are each fused into one matmul; rotate_half(x) * sin is computed as
    x.roll(D / 2) * (-sin, sin) on the halves, the same products without building rotate_half.
    Only fp32 models: RMSNorm normalises in fp32 whatever the model's dtype, which a half-precision
    replay would not reproduce exactly."""

    _MODEL_TYPES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}

    @classmethod
    def build(cls, model, capacity: int) -> "LlamaDecoder | None":
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


_DECODERS = (GPT2Decoder, LlamaDecoder)


def fast_decoder(model, capacity: int) -> FastDecoder | None:
    """The first hand-written decoder that replays `model`, or None (model.forward it is)."""
    return next((d for d in (cls.build(model, capacity) for cls in _DECODERS) if d is not None), None)
