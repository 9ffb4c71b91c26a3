"""Command `sample`: completions for a prompts file, with the fast sampler."""
from __future__ import annotations

import time
from pathlib import Path

from instructkit.config import SampleConfig
from instructkit.data.encode import encode_text, render_prompt
from instructkit.data.jsonl import iter_json_lines, write_jsonl
from instructkit.data.records import parse_prompt
from instructkit.errors import InputError
from instructkit.models import load_causal_lm, max_positions, set_threads


def run(cfg: SampleConfig) -> dict:
    from instructkit.generation import SamplingParams, generate_texts

    set_threads(cfg.threads)
    for name in ("model", "prompts", "out"):
        if not getattr(cfg, name):
            raise InputError("missing required field", field=name)
    if Path(cfg.out).is_dir():
        raise InputError("expected a file path for the output, found a directory", path=cfg.out)
    if cfg.temperature < 0 or not 0 < cfg.top_p <= 1 or cfg.n < 1 or cfg.max_new_tokens < 1:
        raise InputError("need temperature >= 0, 0 < top_p <= 1, n >= 1, max_new_tokens >= 1", field="temperature")
    lines, prompts = zip(*[(line, parse_prompt(obj, cfg.prompts, line)) for line, obj in iter_json_lines(cfg.prompts)])
    model, tok = load_causal_lm(cfg.model)
    model.eval()
    texts = [render_prompt(p.prompt, tok, cfg.template) for p in prompts]
    limit = max_positions(model)
    for line, text in zip(lines, texts):  # past its position limit a model fails deep inside (GPT-2: IndexError)
        n = len(encode_text(tok, text)) if limit else 0
        if limit and n + cfg.max_new_tokens > limit:
            raise InputError(f"prompt is {n} tokens; with max_new_tokens={cfg.max_new_tokens} that exceeds the "
                             f"model's {limit} positions", path=cfg.prompts, line=line, field="prompt")
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            top_k=cfg.top_k)
    t0 = time.time()
    records = []
    for k in range(cfg.n):
        outs = generate_texts(model, tok, texts, params, batch_size=cfg.batch_size, seed=cfg.seed + k)
        records.extend({**p.to_json(), "completion": o, "sample": k} for p, o in zip(prompts, outs))
    write_jsonl(cfg.out, records)
    secs = time.time() - t0
    print(f"sample: {len(records)} completions of {len(prompts)} prompts in {secs:.1f}s -> {cfg.out}")
    return {"n": len(records), "seconds": secs}
