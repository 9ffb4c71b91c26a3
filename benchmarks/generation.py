"""Sampling speed: instructkit.generation.generate vs transformers' model.generate.

    .venv/bin/python benchmarks/generation.py [--family gpt2|llama]

A ~0.5M-parameter GPT-2 (the sandbox policy's size; --family llama: the demo's Llama, d_ff 256) is first trained for a few hundred steps on
synthetic "prompt SEP answer EOS" sequences with 3-12 answer tokens, so that, like an SFT model,
its samples at temperature 1 stop at varied lengths well before the 32-token budget. Then both
samplers draw 32 new tokens for the same 64 left-padded prompts at temperature 1:

1. early EOS: rows stop when they emit EOS (ours drops finished rows from the batch);
2. no early stop: EOS is set to an id outside the vocabulary, so every row runs 32 tokens.

Each is timed after a warm-up as the median of several runs, on one thread, with the samplers
taking turns so that all see the same load. Our sampler is also timed with fast_path=False (the
model.forward path every model without a hand-written decoder takes), to show what the GPT-2 or
Llama decoder adds. Speed-ups
are in wall time (CPU time in brackets: less sensitive to other processes on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from instructkit.generation import SamplingParams, generate, left_pad  # noqa: E402

THREADS = 1
VOCAB = 512
PAD, EOS, SEP = 0, 1, 2  # PAD is never a training target, so the model never emits it
BATCH, MAX_NEW, RUNS = 64, 32, 15
TRAIN_STEPS, TRAIN_BATCH, LR = 300, 32, 3e-3


def sample_example(g: torch.Generator) -> tuple[list[int], list[int]]:
    """A prompt of 4-16 content tokens + SEP, and an answer of 3-12 content tokens + EOS.

    The answer copies the start of the prompt and has a random length: what the benchmark needs
    the model to learn is when to stop (copying takes longer than this short run)."""
    n_prompt = int(torch.randint(4, 17, (1,), generator=g))
    n_answer = int(torch.randint(3, 13, (1,), generator=g))
    prompt = torch.randint(3, VOCAB, (n_prompt,), generator=g).tolist()
    answer = (prompt * 3)[:n_answer]
    return prompt + [SEP], answer + [EOS]


def train(model) -> None:
    """A short SFT-like run: next-token loss on the answer and its EOS only. A fixed number of
    steps (not a time budget), so every run benchmarks the same model."""
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=TRAIN_STEPS, pct_start=0.1)
    model.train()
    t0 = time.perf_counter()
    for step in range(TRAIN_STEPS):
        examples = [sample_example(g) for _ in range(TRAIN_BATCH)]
        width = max(len(p) + len(a) for p, a in examples)
        ids = torch.full((TRAIN_BATCH, width), PAD)
        labels = torch.full((TRAIN_BATCH, width), -100)
        for i, (p, a) in enumerate(examples):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
        loss = model(input_ids=ids, attention_mask=(ids != PAD).long(), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == TRAIN_STEPS - 1:
            print(f"  train step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - t0:.1f} s)")
    model.eval()


def response_lengths(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B,) number of tokens up to and including the first EOS (all of them if none)."""
    is_eos = responses == eos_token_id
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~after).sum(-1)


def time_all(samplers: dict, eos_token_id: int, runs: int = RUNS) -> tuple[dict, dict]:
    """Median wall and CPU time of each sampler after a warm-up, rotating their order run by run
    so that all see the same load on a shared machine; and the response lengths of all runs."""
    names = list(samplers)
    for fn in samplers.values():
        fn()  # warm-up
    times = {name: {"wall": [], "cpu": []} for name in names}
    lengths = {name: [] for name in names}
    for run in range(runs):
        for name in names[run % len(names) :] + names[: run % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            responses = samplers[name]()
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
            lengths[name].append(response_lengths(responses, eos_token_id))
    stats = {name: {key: statistics.median(v) for key, v in t.items()} for name, t in times.items()}
    return stats, {name: torch.stack(v) for name, v in lengths.items()}  # (runs, B) each


def scenario(name: str, model, input_ids, attention_mask, eos_token_id: int) -> float:
    """Times both samplers (and ours without its fast path); returns the wall-time speed-up."""
    P = input_ids.shape[1]
    params = SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0)
    generator = torch.Generator().manual_seed(0)

    def ours(fast_path: bool):
        return lambda: generate(
            model, input_ids, attention_mask, params, eos_token_id=eos_token_id, pad_token_id=PAD,
            generator=generator, fast_path=fast_path,
        ).response_ids

    def theirs():
        return model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=MAX_NEW,
            eos_token_id=eos_token_id,
            pad_token_id=PAD,
        )[:, P:]

    samplers = {
        "instructkit generate": ours(True),
        "  (model.forward path)": ours(False),
        "transformers generate": theirs,
    }
    torch.manual_seed(0)
    stats, lengths = time_all(samplers, eos_token_id)
    print(f"\n{name}  (batch {BATCH}, max_new_tokens {MAX_NEW}, temperature 1, {THREADS} thread, median of {RUNS})")
    hf = stats["transformers generate"]
    for label in samplers:
        wall, cpu, n = stats[label]["wall"], stats[label]["cpu"], lengths[label].float()
        tokens = n.sum(-1).mean()  # real tokens (up to and including EOS) per call, over all runs
        line = f"  {label:<22} {wall * 1e3:6.1f} ms wall {cpu * 1e3:6.1f} ms cpu {tokens / wall:6.0f} tok/s"
        line += f"  length mean {n.mean():5.2f}, longest per call {n.max(-1).values.mean():4.1f}"
        if label != "transformers generate":
            line += f"  {hf['wall'] / wall:4.2f}x ({hf['cpu'] / cpu:4.2f}x cpu)"
        print(line)
    return hf["wall"] / stats["instructkit generate"]["wall"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=("gpt2", "llama"), default="gpt2")
    family = ap.parse_args().family
    torch.set_num_threads(THREADS)
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    ids = dict(bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
    if family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=96, n_layer=4, n_head=4, vocab_size=VOCAB, n_positions=128, **ids))
    else:
        model = LlamaForCausalLM(LlamaConfig(hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
                                             intermediate_size=256, vocab_size=VOCAB, max_position_embeddings=128,
                                             tie_word_embeddings=True, **ids))
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    name = {"gpt2": "GPT-2", "llama": "Llama"}[family]
    print(f"{name}, {n_params:.2f}M parameters, vocabulary {VOCAB}, torch threads {torch.get_num_threads()}")
    print("load average (1, 5, 15 min): %.1f %.1f %.1f on %d cores" % (*os.getloadavg(), os.cpu_count()))
    train(model)

    g = torch.Generator().manual_seed(2)
    input_ids, attention_mask = left_pad([sample_example(g)[0] for _ in range(BATCH)], PAD)
    early = scenario("early EOS", model, input_ids, attention_mask, eos_token_id=EOS)
    full = scenario("no early stop (EOS = an id outside the vocabulary)", model, input_ids, attention_mask, VOCAB)
    print(f"\nspeed-up in wall time: early EOS {early:.2f}x (target >= 3x), no early stop {full:.2f}x (target >= 1x)")
    print("load average (1, 5, 15 min): %.1f %.1f %.1f" % os.getloadavg())


if __name__ == "__main__":
    main()
