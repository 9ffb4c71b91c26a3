"""instructkit.generation on tiny random models of four families (and a sliding-window one).

References: transformers' own greedy `model.generate`, a fresh full forward pass for the
log-probs, hand-made logits for the filters and the sampler.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.utils import logging as hf_logging

from instructkit.generation import (
    Generation,
    SamplingParams,
    filter_logits,
    generate,
    generate_texts,
    left_pad,
    position_ids_from_mask,
    sample_from_logits,
)
from instructkit.models import cache_arg, output_cache

torch.set_num_threads(1)
hf_logging.set_verbosity_error()

VOCAB, PAD, N = 300, 0, 16
PROMPTS = [[5, 17, 42], [9, 8, 7, 6, 5, 4, 3, 2, 1], [100], [33, 44, 55, 66, 77], list(range(250, 262)), [12, 13]]
# a larger init than the default 0.02 makes the random models' next-token choices far from ties
COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=PAD, initializer_range=0.2)
SIZE = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, max_position_embeddings=128, **COMMON)
GQA = dict(num_attention_heads=4, num_key_value_heads=2)  # grouped-query attention: 2 key/value heads


def with_random_biases(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with every bias and norm weight random: they start at 0 and 1, where a decoder that
    dropped them, or applied them in the wrong place, would go unnoticed."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    return model


FAMILIES = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=128, **COMMON)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(num_attention_heads=2, **SIZE)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**GQA, **SIZE)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**GQA, **SIZE)),
}
# variants the fast decoders replay: Qwen2's q/k/v biases with grouped-query attention; a Llama
# like the demo's (as many key/value heads as heads, tied embeddings) with biases everywhere
VARIANTS = {
    "qwen2_bias": lambda: with_random_biases(Qwen2ForCausalLM(Qwen2Config(**GQA, **SIZE))),
    "llama_bias": lambda: with_random_biases(LlamaForCausalLM(LlamaConfig(
        num_attention_heads=4, num_key_value_heads=4, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
        **SIZE))),
}
FAST = ["gpt2", "llama", "qwen2", "qwen2_bias", "llama_bias"]  # the families with a hand-written decoder
# (family, fast_path): the hand-written decoders and the model.forward path for every family
PATHS = [(f, True) for f in FAST] + [("gpt2", False), ("gpt_neox", False), ("llama", False), ("qwen2", False)]
_models: dict[str, torch.nn.Module] = {}


def tiny_model(family: str) -> torch.nn.Module:
    if family not in _models:
        torch.manual_seed(0)
        _models[family] = {**FAMILIES, **VARIANTS}[family]().eval()
    return _models[family]


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    return left_pad(PROMPTS, PAD)


def hf_greedy(model, input_ids, attention_mask, eos: int, n: int = N) -> torch.Tensor:
    """transformers' greedy tokens, (B, n) padded with PAD if generation stopped early."""
    out = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=n, eos_token_id=eos,
        pad_token_id=PAD,
    )[:, input_ids.shape[1] :]
    return torch.nn.functional.pad(out, (0, n - out.shape[1]), value=PAD)


def eos_hit_early(model, input_ids, attention_mask) -> int:
    """A token that greedy decoding emits mid-sequence in some rows but not all: an EOS that makes
    rows finish at different steps."""
    ref = hf_greedy(model, input_ids, attention_mask, eos=VOCAB + 1)  # an EOS that never comes
    B = ref.shape[0]
    best, best_score = None, None
    for token in sorted(set(ref[:, 1 : N - 2].flatten().tolist())):
        hits = (ref[:, : N - 2] == token).any(-1).sum().item()
        score = abs(hits - B / 2)
        if 0 < hits < B and (best_score is None or score < best_score):
            best, best_score = token, score
    assert best is not None, "no token ends some rows early; change the seed or the prompts"
    return best


GREEDY = SamplingParams(max_new_tokens=N, temperature=0.0)


def run(model, params: SamplingParams, eos: int, prompt=None, seed: int | None = None, **kw) -> Generation:
    """`generate` on `prompt` ((input_ids, attention_mask); PROMPTS by default), seeded if asked."""
    input_ids, attention_mask = prompt if prompt is not None else prompts()
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return generate(
        model, input_ids, attention_mask, params, eos_token_id=eos, pad_token_id=PAD, generator=generator, **kw
    )


def upto_first_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


def full_forward_logprobs(model, gen: Generation, attention_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, N) log-probs of the response tokens under one forward pass over prompt + response."""
    P = attention_mask.shape[1]
    mask = torch.cat([attention_mask, gen.response_mask], dim=1)
    with torch.no_grad():
        logits = model(input_ids=gen.sequences, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logp = (logits[:, P - 1 : -1].float() / temperature).log_softmax(-1)
    return logp.gather(-1, gen.response_ids.unsqueeze(-1)).squeeze(-1) * gen.response_mask


# ----------------------------------------------------------------------------- padding


def test_left_pad_and_positions():
    ids, mask = left_pad([[7, 8, 9], [5], []], pad_token_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    # cumsum - 1 = [0 1 2], [-1 -1 0] -> clamped [0 0 0], [-1 -1 -1] -> [0 0 0]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 0]]


# ----------------------------------------------------------------------------- filters and sampler


def test_filter_logits_top_k_and_top_p():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    inf = float("-inf")
    assert filter_logits(logits, top_k=2).tolist() == [[inf, inf, 3.0, 4.0]]
    assert filter_logits(logits) is logits
    # probabilities 0.5, 0.3, 0.15, 0.05: the nucleus for top_p 0.75 is {0.5, 0.3}, for 0.85 adds 0.15
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    assert torch.isinf(filter_logits(probs.log(), top_p=0.75)).tolist() == [[True, False, True, False]]
    assert torch.isinf(filter_logits(probs.log(), top_p=0.85)).tolist() == [[False, False, True, False]]
    # the most likely token always survives, however small top_p
    assert torch.isinf(filter_logits(probs.log(), top_p=0.01)).tolist() == [[True, False, True, True]]
    # top-k first, then top-p on what is left: top_k=3 keeps {0.5, 0.3, 0.15}; renormalised
    # {0.526, 0.316, 0.158}, so top_p=0.8 keeps the first two
    assert torch.isinf(filter_logits(probs.log(), top_k=3, top_p=0.8)).tolist() == [[True, False, True, False]]


def test_sample_from_logits_inverts_the_cdf():
    inf = float("-inf")
    logits = torch.tensor([[inf, 0.0, inf, 0.0]] * 4)  # tokens 1 and 3, 1/2 each
    u = torch.tensor([0.0, 0.49, 0.51, 0.9999999])
    assert sample_from_logits(logits, u).tolist() == [1, 1, 3, 3]


def test_sample_from_logits_matches_the_tempered_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    for temperature in (0.5, 1.0, 2.0):
        n = 40_000
        draws = sample_from_logits((logits / temperature).expand(n, 4), torch.rand(n, generator=g))
        freq = torch.bincount(draws, minlength=4).float() / n
        expected = (logits / temperature).softmax(-1)
        assert (freq - expected).abs().max() < 0.01, (temperature, freq, expected)


def test_sampling_params_validation():
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingParams(top_k=-1)


# ----------------------------------------------------------------------------- generate vs transformers


@pytest.mark.parametrize("family,fast_path", PATHS)
def test_greedy_matches_transformers_generate(family, fast_path):
    model = tiny_model(family)
    input_ids, attention_mask = prompts()
    eos = eos_hit_early(model, input_ids, attention_mask)
    ref = hf_greedy(model, input_ids, attention_mask, eos)
    gen = run(model, GREEDY, eos, fast_path=fast_path)
    ours, theirs = gen.response_ids.tolist(), ref.tolist()
    for row_ours, row_theirs in zip(ours, theirs):
        assert upto_first_eos(row_ours, eos) == upto_first_eos(row_theirs, eos)
    ended = gen.ended_with_eos.tolist()
    assert any(ended) and not all(ended)  # rows finished at different times: compaction was exercised
    lengths = gen.response_mask.sum(-1).tolist()
    assert min(lengths) < N - 2


@pytest.mark.parametrize("family", FAST)
@pytest.mark.parametrize("bmm_min_rows", [1, 10**9])
def test_fast_path_with_many_prompt_lengths(family, bmm_min_rows, monkeypatch):
    """40 prompts of 1-25 tokens: the fast prefill runs in several length groups; decoding
    attention by batched matmuls and by sdpa. Greedy tokens are transformers' own; greedy and
    seeded samples, and their log-probs, are model.forward's, while rows finish at different steps."""
    from instructkit.decoders import FastDecoder, fast_decoder

    monkeypatch.setattr(FastDecoder, "BMM_MIN_ROWS", bmm_min_rows)
    model = tiny_model(family)
    assert fast_decoder(model, 64) is not None
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 26, (40,), generator=g).tolist()
    batch = left_pad([torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths], PAD)
    eos = eos_hit_early(model, *batch)
    ref = hf_greedy(model, *batch, eos).tolist()
    for params in (GREEDY, SamplingParams(max_new_tokens=N, temperature=0.8)):
        fast, slow = (run(model, params, eos, prompt=batch, seed=5, return_logprobs=True, fast_path=fast_path)
                      for fast_path in (True, False))
        assert torch.equal(fast.response_ids, slow.response_ids)
        assert (fast.logprobs - slow.logprobs).abs().max() < 1e-5
        ended = fast.ended_with_eos.tolist()
        assert any(ended) and not all(ended)
        if params is GREEDY:
            for row_ours, row_theirs in zip(fast.response_ids.tolist(), ref):
                assert upto_first_eos(row_ours, eos) == upto_first_eos(row_theirs, eos)


def test_fast_decoders_build_only_for_what_they_replay():
    """Anything the hand-written decoders do not replay exactly takes the model.forward path."""
    from instructkit.decoders import GPT2Decoder, LlamaDecoder, fast_decoder

    def build(cls, config, capacity=64):
        torch.manual_seed(0)
        return fast_decoder(cls(config).eval(), capacity)

    assert isinstance(fast_decoder(tiny_model("gpt2"), 64), GPT2Decoder)
    for family in ("llama", "qwen2", "qwen2_bias", "llama_bias"):
        assert isinstance(fast_decoder(tiny_model(family), 64), LlamaDecoder)
    assert fast_decoder(tiny_model("gpt_neox"), 64) is None
    scaled = dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    assert build(LlamaForCausalLM, LlamaConfig(**scaled, **GQA, **SIZE)) is None
    assert build(LlamaForCausalLM, LlamaConfig(hidden_act="gelu", **GQA, **SIZE)) is None
    assert build(MistralForCausalLM, MistralConfig(**GQA, **SIZE)) is None  # Llama-like, another class
    # Qwen2 with sliding-window layers: replayed only while the whole generation fits in the window
    window = dict(use_sliding_window=True, sliding_window=32, max_window_layers=0, **GQA, **SIZE)
    assert build(Qwen2ForCausalLM, Qwen2Config(**window), capacity=32) is not None
    assert build(Qwen2ForCausalLM, Qwen2Config(**window), capacity=33) is None
    half = LlamaForCausalLM(LlamaConfig(**GQA, **SIZE)).to(torch.bfloat16)
    assert fast_decoder(half, 64) is None


def test_sliding_window_layers_keep_their_own_cache():
    """Mistral with a 4-token window: the cache keeps transformers' sliding layers (not in place)."""
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(sliding_window=4, **GQA, **SIZE)).eval()
    input_ids, attention_mask = prompts()
    eos = eos_hit_early(model, input_ids, attention_mask)
    ref = hf_greedy(model, input_ids, attention_mask, eos).tolist()
    gen = run(model, GREEDY, eos)
    for row_ours, row_theirs in zip(gen.response_ids.tolist(), ref):
        assert upto_first_eos(row_ours, eos) == upto_first_eos(row_theirs, eos)


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "family,fast_path,bmm_min_rows", [(*path, 10**9) for path in PATHS] + [(f, True, 1) for f in FAST]
)
def test_logprobs_match_a_full_forward_pass(family, fast_path, bmm_min_rows, monkeypatch):
    """PPO's temperature consistency: the rollout's log-probs are what the policy's forward pass
    gives the same tokens at the same temperature."""
    from instructkit.decoders import FastDecoder

    monkeypatch.setattr(FastDecoder, "BMM_MIN_ROWS", bmm_min_rows)
    model = tiny_model(family)
    input_ids, attention_mask = prompts()
    eos = eos_hit_early(model, input_ids, attention_mask)
    for temperature, top_k in ((0.7, 0), (1.3, 5), (0.0, 0)):
        params = SamplingParams(max_new_tokens=N, temperature=temperature, top_k=top_k)
        gen = run(model, params, eos, seed=1, return_logprobs=True, fast_path=fast_path)
        expected = full_forward_logprobs(model, gen, attention_mask, temperature or 1.0)
        assert (gen.logprobs - expected).abs().max() < 1e-5
        assert (gen.logprobs[gen.response_mask == 0] == 0).all()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_seeded_sampling_is_reproducible(family):
    model = tiny_model(family)

    def sample(seed, **kw):
        return run(model, SamplingParams(max_new_tokens=N, stop_at_eos=False, **kw), eos=2, seed=seed).response_ids

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    greedy = sample(0, temperature=0.0)
    assert torch.equal(sample(0, top_k=1), greedy)
    assert torch.equal(sample(5, temperature=0.5, top_k=1), greedy)
    assert torch.equal(sample(7, top_p=1e-6), greedy)  # the nucleus is the argmax alone


def test_top_k_and_top_p_samples_stay_in_the_allowed_set():
    model = tiny_model("llama")
    input_ids, attention_mask = prompts()
    P = input_ids.shape[1]
    for params in (SamplingParams(N, top_k=3, stop_at_eos=False), SamplingParams(N, top_p=0.3, stop_at_eos=False)):
        gen = run(model, params, eos=2, seed=0)
        mask = torch.cat([attention_mask, gen.response_mask], dim=1)
        with torch.no_grad():
            positions = position_ids_from_mask(mask)
            logits = model(input_ids=gen.sequences, attention_mask=mask, position_ids=positions).logits
        logits = logits[:, P - 1 : -1].reshape(-1, VOCAB)  # (B * N, V) at every response position
        allowed = ~torch.isinf(filter_logits(logits, params.top_k, params.top_p))
        assert allowed.gather(-1, gen.response_ids.reshape(-1, 1)).all()


@pytest.mark.parametrize("fast_path", [True, False])
def test_early_stopping_does_not_change_what_a_row_samples(fast_path):
    """Each (row, step) has its own random number, so a row's tokens do not depend on when the
    other rows finish and leave the batch; the GPT-2 fast path samples the same tokens too."""
    model = tiny_model("gpt2")
    input_ids, attention_mask = prompts()
    eos = eos_hit_early(model, input_ids, attention_mask)

    def sample(stop_at_eos, fast):
        return run(model, SamplingParams(N, temperature=0.8, stop_at_eos=stop_at_eos), eos, seed=4, fast_path=fast)

    stopped, full = sample(True, fast_path), sample(False, fast_path)
    assert torch.equal(sample(True, not fast_path).response_ids, stopped.response_ids)
    for row_stopped, row_full in zip(stopped.response_ids.tolist(), full.response_ids.tolist()):
        assert upto_first_eos(row_stopped, eos) == upto_first_eos(row_full, eos)


# ----------------------------------------------------------------------------- the output contract


def test_masks_padding_and_ended_with_eos():
    model = tiny_model("qwen2")
    input_ids, attention_mask = prompts()
    eos = eos_hit_early(model, input_ids, attention_mask)
    gen = run(model, GREEDY, eos, return_logprobs=True)
    B, P = input_ids.shape
    assert gen.sequences.shape == (B, P + N)
    assert gen.response_ids.shape == gen.response_mask.shape == gen.logprobs.shape == (B, N)
    assert torch.equal(gen.sequences, torch.cat([input_ids, gen.response_ids], dim=1))
    for i, row in enumerate(gen.response_ids.tolist()):
        mask = gen.response_mask[i].tolist()
        if eos in row:
            first = row.index(eos)
            assert mask == [1] * (first + 1) + [0] * (N - first - 1)
            assert row[first + 1 :] == [PAD] * (N - first - 1)
            assert gen.ended_with_eos[i]
        else:
            assert mask == [1] * N and not gen.ended_with_eos[i]
    assert (gen.logprobs < 0).sum() == gen.response_mask.sum()  # every real token has a log-prob

    full = run(model, SamplingParams(N, temperature=0.0, stop_at_eos=False), eos)
    assert (full.response_mask == 1).all()
    assert torch.equal(full.ended_with_eos, full.response_ids[:, -1] == eos)


def test_outputs_are_ordinary_tensors_and_model_state_is_kept():
    model = tiny_model("gpt2")
    model.train()
    model.transformer.h[0].eval()  # a mixed state must come back as it was
    before = {name: p.clone() for name, p in model.named_parameters()}
    gen = run(model, SamplingParams(max_new_tokens=4), eos=2, return_logprobs=True)
    assert model.training and not model.transformer.h[0].training and model.transformer.h[1].training
    model.eval()
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    # usable in autograd, e.g. as PPO's old log-probs (inference-mode tensors would raise here)
    w = torch.ones(1, requires_grad=True)
    (w * gen.logprobs).sum().backward()
    assert not gen.logprobs.is_inference()


def test_zero_new_tokens():
    gen = run(tiny_model("gpt2"), SamplingParams(max_new_tokens=0), eos=2)
    assert gen.response_ids.shape == (len(PROMPTS), 0) and torch.equal(gen.sequences, prompts()[0])
    assert not gen.ended_with_eos.any()


# ----------------------------------------------------------------------------- generate_texts


def word_tokenizer(eos: int):
    """Token i <-> word "w{i}" (0 is padding); the word of token `eos` is the EOS token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", eos_token=f"w{eos}")


def test_generate_texts_decodes_the_tokens_before_eos():
    model = tiny_model("gpt2")
    texts = [" ".join(f"w{i}" for i in p) for p in PROMPTS]
    eos = eos_hit_early(model, *prompts())
    tok = word_tokenizer(eos)
    out = generate_texts(model, tok, texts, GREEDY, batch_size=4)  # two batches, padded differently
    gen = run(model, GREEDY, eos)
    special = {eos, PAD}  # decoded with skip_special_tokens: a random model may emit padding too
    expected = [" ".join(f"w{i}" for i in upto_first_eos(row, eos) if i not in special) for row in gen.response_ids.tolist()]
    assert out == expected
    assert any(len(text.split()) < N - 1 for text in out)  # some answers were cut at their EOS
    sampled = SamplingParams(max_new_tokens=N)
    assert generate_texts(model, tok, texts, sampled, seed=3) == generate_texts(model, tok, texts, sampled, seed=3)
    assert all(f"w{eos}" not in text.split() for text in generate_texts(model, tok, texts, sampled, seed=4))


# ----------------------------------------------------------------------------- the cache keyword


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_arg_is_the_keyword_the_model_reads(family):
    """transformers 5.x renamed forward's `past_key_values` to `cache` (the old name warns): the
    keyword we pass must be one the forward declares, the model must fill the cache we hand it, and
    decoding one more token from that cache must give the full pass's logits."""
    import inspect

    model = tiny_model(family)
    (name,) = cache_arg(model, None)
    assert name in inspect.signature(type(model).forward).parameters
    ids = torch.tensor([[5, 17, 42, 9]])
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(input_ids=ids[:, :3], use_cache=True, **cache_arg(model, cache))
        assert cache.get_seq_length() == 3 and output_cache(out) is cache
        step = model(input_ids=ids[:, 3:], position_ids=torch.tensor([[3]]), use_cache=True,
                     **cache_arg(model, cache)).logits[:, -1]
        full = model(input_ids=ids).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-4)
