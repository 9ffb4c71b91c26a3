"""Command `import`: convert public data (HH-RLHF, TRL, ratings) into contract records.

    instructkit import hh --in hh_train.jsonl --out rankings.jsonl
    instructkit import trl-pairs --in prefs.jsonl --out pairs.jsonl
    instructkit import ratings --in rated.jsonl --out rankings.jsonl

The input streams through line by line and the output is written atomically: on the first bad
record the command stops with file, line and field, and no output file exists. With
skip_invalid=true records that do not fit the format are counted and reported instead."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from instructkit.config import F
from instructkit.data.importers import IMPORTERS, check_contract
from instructkit.data.jsonl import atomic_open, iter_json_lines
from instructkit.errors import InputError


@dataclass
class ImportConfig:
    """Convert public data into contract records: `instructkit import FORMAT --in FILE --out FILE`."""
    format: str = F("", "input format (required): hh | trl-pairs | trl-completions | ratings")
    input: str = F("", "input JSONL file (required; flag --in or --input)")
    out: str = F("", "output JSONL file (required), written atomically")
    to: Literal["pairs", "demonstrations"] = F(
        "pairs", "hh and trl-pairs: write pair records, or the chosen responses as demonstrations")
    style: Literal["text", "messages"] = F(
        "text", "text: prompts as plain text; messages: pairs also carry the prompt as a `messages` list of "
                "{role, content} turns, demonstrations are written in their `messages` form")
    skip_invalid: bool = F(False, "skip records that do not fit the format (counted and reported, with reasons) "
                                  "instead of stopping at the first; malformed JSON always stops")


def run(cfg: ImportConfig) -> dict:
    if cfg.format not in IMPORTERS:
        raise InputError(f"expected one of {list(IMPORTERS)}, got {cfg.format!r}", field="format")
    for name in ("input", "out"):
        if not getattr(cfg, name):
            raise InputError("missing required field", field=name)
    if Path(cfg.out).is_dir():
        raise InputError("expected a file path for the output, found a directory", path=cfg.out)
    convert = IMPORTERS[cfg.format]
    kinds: Counter = Counter()
    skipped: Counter = Counter()
    first_kind = None
    with atomic_open(cfg.out) as f:  # removed again if anything below raises
        for line, obj in iter_json_lines(cfg.input):
            try:
                kind, record = convert(obj, cfg.input, line, to=cfg.to, style=cfg.style)
                if first_kind is not None and kind != first_kind:
                    raise InputError(f"would be a {kind} record, but earlier records were {first_kind} "
                                     "records (one kind per output file)", path=cfg.input, line=line,
                                     field="label" if "unpaired" in (kind, first_kind) else None)
                check_contract(kind, record, cfg.input, line)
            except InputError as e:
                if not cfg.skip_invalid:
                    raise
                skipped[f"field '{e.field}': {e.message}" if e.field else e.message] += 1
                continue
            first_kind = kind
            kinds[kind] += 1
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if not kinds:
            raise InputError(f"no record could be imported ({sum(skipped.values())} skipped)", path=cfg.input)
    n = sum(kinds.values())
    print(f"import {cfg.format}: {n} {first_kind} records -> {cfg.out}")
    if skipped:
        print(f"import {cfg.format}: skipped {sum(skipped.values())} invalid records:")
        for reason, count in skipped.most_common():
            print(f"  {count:>6}  {reason}")
    return {"records": n, "kind": first_kind, "skipped": sum(skipped.values()), "reasons": dict(skipped)}
