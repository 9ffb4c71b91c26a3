"""Data-parallel scaling of `instructkit sft` on this machine: tokens/s with 1 process vs 2 processes
under torchrun (DDP and FSDP2, gloo on CPU), the same model, data and global batch.

    python benchmarks/scaling.py [--n 512] [--batch 32] [--epochs 1] [--runs 1]

Each configuration runs the real command in a fresh process tree:
  1 process     python -m instructkit sft ... threads=T
  torchrun xN   python -m torch.distributed.run --nproc-per-node N -m instructkit sft ... threads=1
tokens/s is the stage's own figure (instructkit.json: training-loop tokens over loop wall time, all
processes together); "wall" is the whole command, start-up (imports, process group) included. On a
2-core machine shared with other work expect little gain from 2 processes: they compete for the
same cores as one process with 2 threads, and pay gradient all-reduces on top."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_base_model, synthetic_demos, write_jsonl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], out: Path) -> tuple[float, float, float]:
    """-> (tokens/s from instructkit.json, final train loss, wall seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "INSTRUCTKIT_QUIET": "1", "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "instructkit.json").read_text())["metrics"]
    return metrics["tokens_per_s"], metrics["train_loss"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="demonstrations")
    ap.add_argument("--batch", type=int, default=32, help="global batch (demonstrations per optimiser step)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=1, help="runs per configuration (the best is reported)")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    demos = synthetic_demos(a.n)
    data = write_jsonl(work / "demos.jsonl", demos)
    base = build_base_model(work / "base", [d["prompt"] + d["completion"] for d in demos], d_model=a.d_model,
                            n_layers=a.layers, n_heads=4)
    common = [f"model={base}", f"data.train={data}", f"epochs={a.epochs}", f"batch_size={a.batch}", "dropout=0.0",
              "save_every=100000", "log_every=1000"]
    py = [sys.executable]
    torchrun = [*py, "-m", "torch.distributed.run", "--master-addr", "127.0.0.1"]
    configs = [
        ("1 process, 1 thread", lambda o: [*py, "-m", "instructkit", "sft", *common, "threads=1", f"out={o}"]),
        ("1 process, 2 threads", lambda o: [*py, "-m", "instructkit", "sft", *common, "threads=2", f"out={o}"]),
        ("torchrun x1 (ddp)", lambda o: [*torchrun, "--nproc-per-node", "1", "--master-port", str(free_port()),
                                         "-m", "instructkit", "sft", *common, "threads=1", f"out={o}"]),
        ("torchrun x2 (ddp)", lambda o: [*torchrun, "--nproc-per-node", "2", "--master-port", str(free_port()),
                                         "-m", "instructkit", "sft", *common, "threads=1", f"out={o}"]),
        ("torchrun x2 (fsdp)", lambda o: [*torchrun, "--nproc-per-node", "2", "--master-port", str(free_port()),
                                          "-m", "instructkit", "sft", *common, "threads=1", "dist.strategy=fsdp",
                                          f"out={o}"]),
    ]
    steps = a.epochs * -(-a.n // a.batch)
    print(f"sft scaling: GPT-2 d_model {a.d_model} x {a.layers} layers, {a.n} demonstrations, global batch "
          f"{a.batch}, {steps} steps; {os.cpu_count()} CPU cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; best of {a.runs} run(s)")
    print(f"{'configuration':<22} {'tokens/s':>10} {'vs 1 process':>13} {'wall s':>8} {'train loss':>11}")
    base_tps = None
    for c, (name, cmd) in enumerate(configs):
        best = None
        for r in range(a.runs):
            out = work / f"out-{c}-{r}"
            shutil.rmtree(out, ignore_errors=True)
            res = run(cmd(out), out)
            best = res if best is None or res[0] > best[0] else best
        tps, loss, wall = best
        base_tps = base_tps or tps
        print(f"{name:<22} {tps:>10.0f} {tps / base_tps:>12.2f}x {wall:>8.1f} {loss:>11.4f}", flush=True)
    print(f"(load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())}; the same global batch everywhere, so "
          "the train losses agree to float rounding)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
