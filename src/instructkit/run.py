"""The boring infrastructure every stage shares: the output directory, resumable checkpoints,
metrics logging, optimiser and schedule, data order. No training logic lives here.

An output directory is complete when `instructkit.json` exists in it with "complete": true; that
file is written last. Until then the directory may hold `checkpoint/` (model, optimiser, schedule,
RNG and data position), from which rerunning the same command continues and ends where an
uninterrupted run would."""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instructkit.data.jsonl import append_jsonl, write_json
from instructkit.errors import AlreadyComplete, InputError  # noqa: F401  (AlreadyComplete re-exported)

# Fields that may differ between a killed run and its resumption.
RESUME_FREE_FIELDS = {"threads", "overwrite", "log_every", "ref_cache", "dist"}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        inside = f.relative_to(p).parts if p.is_dir() else ()  # not the absolute path: /x/checkpoint/model
        if f.name in ("metrics.jsonl",) or any(part.startswith("checkpoint") for part in inside):
            continue
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _input_record(value) -> dict:
    """{"path", "sha256"} of one input. Several files (a list) record the list and one digest over
    the files' digests in order, so a change to any of them, or to their order, changes it."""
    if isinstance(value, (list, tuple)) and len(value) != 1:
        digests = "\n".join(file_sha256(v) for v in value)
        return {"path": [str(v) for v in value], "sha256": hashlib.sha256(digests.encode()).hexdigest()}
    path = value[0] if isinstance(value, (list, tuple)) else value
    return {"path": str(path), "sha256": file_sha256(path)}


def code_version() -> str:
    from instructkit import __version__
    return __version__


def is_complete(out: str | os.PathLike) -> bool:
    meta = Path(out) / "instructkit.json"
    if not meta.exists():
        return False
    try:
        return bool(json.loads(meta.read_text()).get("complete"))
    except (json.JSONDecodeError, OSError):
        return False


class RunDir:
    """One stage's output directory."""

    def __init__(self, out: str, stage: str, cfg: Any, inputs: dict[str, str]):
        if not out:
            raise InputError("missing required field (where to write)", field="out")
        self.out = Path(out)
        self.stage = stage
        self.cfg = cfg
        self.config = asdict(cfg)
        self.inputs = {k: _input_record(v) for k, v in inputs.items() if v}
        self.ckpt = self.out / "checkpoint"
        self.metrics_path = self.out / "metrics.jsonl"
        self.started = time.time()

    # -------------------------------------------------------------- lifecycle
    def _identity(self) -> dict:
        cfg = {k: v for k, v in self.config.items() if k not in RESUME_FREE_FIELDS}
        return {"stage": self.stage, "config": cfg, "inputs": {k: v["sha256"] for k, v in self.inputs.items()}}

    def start(self) -> dict | None:
        """Create the directory, or find the checkpoint to resume from. Returns the saved state."""
        if self.out.exists() and not self.out.is_dir():
            raise InputError("output path exists and is not a directory", path=str(self.out))
        if self.cfg.overwrite and self.out.exists():
            shutil.rmtree(self.out)
        if is_complete(self.out):
            raise AlreadyComplete(str(self.out))
        run_file = self.out / "run.json"
        if run_file.exists():
            previous = json.loads(run_file.read_text())
            if previous != self._identity():
                raise InputError("holds an unfinished run with a different config or data; pass overwrite=true "
                                 "to start over", path=str(self.out))
            state_file = self.ckpt / "state.pt"
            if not state_file.exists():  # killed between save_checkpoint's two renames
                state_file = self.out / "checkpoint.old" / "state.pt"
            if state_file.exists():
                state = torch.load(state_file, map_location="cpu", weights_only=False)
                self._truncate_metrics(state["step"])
                return state
        elif self.out.exists() and any(self.out.iterdir()):
            raise InputError("output directory exists and is not empty; pass overwrite=true to replace it",
                             path=str(self.out))
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(run_file, self._identity())
        if self.metrics_path.exists():
            self.metrics_path.unlink()
        return None

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines written after the checkpoint, so a resumed log equals an uninterrupted one."""
        if not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                break  # a torn last line from the kill
        self.metrics_path.write_text("".join(l + "\n" for l in keep))

    def log(self, step: int, **metrics) -> None:
        append_jsonl(self.metrics_path, {"step": step, **{k: _plain(v) for k, v in metrics.items()}})

    def save_checkpoint(self, state: dict) -> None:
        """Atomically replace checkpoint/: write beside it, then rename."""
        tmp = self.out / "checkpoint.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        torch.save(state, tmp / "state.pt")
        old = self.out / "checkpoint.old"
        if self.ckpt.exists():
            if old.exists():  # left by a kill during the previous save; os.replace cannot overwrite it
                shutil.rmtree(old)
            os.replace(self.ckpt, old)
        os.replace(tmp, self.ckpt)
        if old.exists():
            shutil.rmtree(old)

    def finish(self, metrics: dict, extra: dict | None = None) -> None:
        """Write instructkit.json last: from here on the directory is complete."""
        meta = {
            "stage": self.stage,
            "complete": True,
            "config": self.config,
            "inputs": self.inputs,
            "code_version": code_version(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "seconds": round(time.time() - self.started, 2),
            "metrics": {k: _plain(v) for k, v in metrics.items()},
            **(extra or {}),
        }
        for name in ("checkpoint", "checkpoint.tmp", "checkpoint.old"):
            if (self.out / name).exists():
                shutil.rmtree(self.out / name)
        write_json(self.out / "instructkit.json", meta)


def _plain(v):
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    return v


# ------------------------------------------------------------------ training helpers

def make_optimizer(params, optim) -> torch.optim.Optimizer:
    # fused: one kernel for the whole update (on CPU ~4x faster than the per-tensor loop)
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=optim.lr,
                             betas=(optim.beta1, optim.beta2), eps=optim.eps, weight_decay=optim.weight_decay,
                             fused=True)


def lr_lambda(optim, total_steps: int):
    """Multiplier on the peak LR at a step: linear warm-up, then cosine/linear to min_lr_ratio."""
    warm, floor = optim.warmup_steps, optim.min_lr_ratio

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if optim.schedule == "linear":
            return 1.0 - (1.0 - floor) * progress
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def make_scheduler(optimizer, optim, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, total_steps))


def epoch_permutation(seed: int, epoch: int, n: int) -> list[int]:
    """The data order of one epoch: a function of (seed, epoch) only, so resuming needs no state."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))


def progress(total: int, initial: int = 0, desc: str = ""):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=1.0,
                disable=os.environ.get("INSTRUCTKIT_QUIET") == "1", file=sys.stderr)


def epoch_batches(seed: int, epoch: int, lengths: list[int], batch_size: int, group_by_length: bool) -> list[list[int]]:
    """The batches of one epoch, a function of (seed, epoch) only. With `group_by_length`, examples
    are shuffled, then sorted by length within windows of 16 batches, and the batches shuffled: the
    same examples per step on average, far less padding."""
    order = epoch_permutation(seed, epoch, len(lengths))
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * 16
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda j: lengths[j])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7)
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def setup_training(model, dist_cfg, optim, total_steps: int, state: dict | None):
    """The shared start of a training loop: wrap the model for torch.distributed (DDP / FSDP2, or
    nothing), then the optimiser and schedule, restored with the RNG from `state` when resuming.
    Returns (wrapped model, optimizer, scheduler)."""
    from instructkit import distributed as D

    wrapped = D.wrap(model, dist_cfg)  # before the optimiser: FSDP shards the parameters
    optimizer = make_optimizer(model.parameters(), optim)
    scheduler = make_scheduler(optimizer, optim, total_steps)
    if state:
        D.load_state_dict(wrapped, state["model"])
        D.load_optimizer_state_dict(wrapped, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
    return wrapped, optimizer, scheduler
