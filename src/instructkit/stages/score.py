"""Command `score`: a reward model's normalised score for every {"prompt","completion"} record.

    instructkit score RM_DIR --input samples.jsonl --out scored.jsonl

Each input record is written back unchanged plus `score` (and `score_raw` with raw=true), in
input order, atomically. Every record is validated before any scoring."""
from __future__ import annotations

import time
from pathlib import Path

from instructkit.config import ScoreConfig
from instructkit.data.jsonl import iter_json_lines, write_jsonl
from instructkit.data.records import parse_demonstration
from instructkit.errors import InputError


def run(cfg: ScoreConfig) -> dict:
    from instructkit.models import set_threads
    from instructkit.reward import RewardScorer, encode_response, normalize, score_sequences

    set_threads(cfg.threads)
    for name in ("model", "input", "out"):
        if not getattr(cfg, name):
            raise InputError("missing required field", field=name)
    if Path(cfg.out).is_dir():
        raise InputError("expected a file path for the output, found a directory", path=cfg.out, field="out")
    if cfg.batch_size < 1:
        raise InputError("expected an integer >= 1", field="batch_size")
    objs, demos = [], []
    for line, obj in iter_json_lines(cfg.input):
        demos.append(parse_demonstration(obj, cfg.input, line))
        objs.append(obj)
    rm = RewardScorer.load(cfg.model)
    t0 = time.time()
    max_len, eos = int(rm.meta["max_len"]), bool(rm.meta.get("append_eos", True))
    seqs = [encode_response(rm.tokenizer, rm.render(d.prompt, d.messages[:-1] if d.messages else None), d.completion,
                            max_len, eos)[0] for d in demos]
    raw = score_sequences(rm.model, seqs, rm.tokenizer.pad_token_id, cfg.batch_size)
    scores = normalize(raw, rm.meta)
    out = []
    for obj, s, r in zip(objs, scores, raw):
        rec = {**obj, "score": s}
        if cfg.raw:
            rec["score_raw"] = r
        out.append(rec)
    write_jsonl(cfg.out, out)
    secs = time.time() - t0
    mean = sum(scores) / len(scores)
    print(f"score: {len(out)} records scored in {secs:.1f}s (mean {mean:.4g}, "
          f"normalisation {rm.meta['normalization'].get('kind', 'none')}) -> {cfg.out}")
    return {"n": len(out), "mean": mean, "seconds": secs}
