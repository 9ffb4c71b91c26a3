"""Serving throughput: requests/s and tokens/s of `instructkit serve` under a bounded concurrent load.

    .venv/bin/python benchmarks/serve.py [--model DIR] [--clients 16] [--requests 64] [--max-tokens 32]

The server runs as its own process (`python -m instructkit serve`, one torch thread) on 127.0.0.1
and a free port; the load comes from this process: `--clients` threads that send `--requests`
completions in all (a fixed number: the run ends by itself), over the loopback interface only.
Three runs, each against a fresh server:

1. batched, non-streaming: the batcher groups concurrent requests (up to 32 rows per batch);
2. batched, streaming: the same requests as server-sent events; time to first token is reported;
3. one at a time (--max-batch-rows 1), non-streaming: what batching buys.

Then the same prompts through `generation.generate_texts` in-process, batch 32, no HTTP: the
sampler's own ceiling on this machine. Without --model, a 4-layer d_model 128 GPT-2 with a BPE
vocabulary of 512 is built (random weights, EOS suppressed by `ignore_eos` so every request runs
its full --max-tokens and the token counts are comparable).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "instructkit", "serve", model, "--name", "bench", "--port", str(port),
                             "--log-level", "warning", "--threads", "1", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


def one_request(port: int, body: dict, stream: bool) -> tuple[int, float, float]:
    """-> (completion tokens, latency s, time to first token s)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    payload = dict(body, stream=stream, **({"stream_options": {"include_usage": True}} if stream else {}))
    conn.request("POST", "/v1/completions", body=json.dumps(payload), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"{resp.status}: {resp.read()[:300]!r}")
    first, tokens = None, 0
    if not stream:
        tokens = json.loads(resp.read())["usage"]["completion_tokens"]
    else:
        for line in resp:  # server-sent events, one "data: ..." line each
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            msg = json.loads(line[6:])
            if first is None and msg["choices"] and msg["choices"][0]["text"]:
                first = time.perf_counter() - t0
            if msg.get("usage"):
                tokens = msg["usage"]["completion_tokens"]
    conn.close()
    latency = time.perf_counter() - t0
    return tokens, latency, first if first is not None else latency


def load(port: int, prompts: list[str], clients: int, max_tokens: int, stream: bool) -> dict:
    bodies = [{"model": "bench", "prompt": p, "max_tokens": max_tokens, "temperature": 1.0, "seed": i, "ignore_eos": True}
              for i, p in enumerate(prompts)]
    one_request(port, dict(bodies[0], max_tokens=2), stream)  # warm-up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda b: one_request(port, b, stream), bodies, timeout=600))
    wall = time.perf_counter() - t0
    tokens = sum(r[0] for r in results)
    lat = sorted(r[1] for r in results)
    return {"requests/s": len(results) / wall, "tokens/s": tokens / wall, "tokens": tokens, "wall s": wall,
            "p50 latency s": statistics.median(lat), "p95 latency s": lat[int(0.95 * (len(lat) - 1))],
            "p50 first token s": statistics.median(r[2] for r in results)}


def build_model(out: Path) -> Path:
    from common import build_base_model, synthetic_demos

    texts = [d["prompt"] + d["completion"] for d in synthetic_demos(400)]
    build_base_model(out, texts, d_model=128, n_layers=4, n_heads=4, vocab_size=512)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: build a small GPT-2)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=64, help="requests per run (the load is bounded)")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per completion")
    args = ap.parse_args()

    import torch

    from common import synthetic_demos
    from instructkit.generation import SamplingParams, generate_texts
    from instructkit.models import load_causal_lm

    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory()
    model_dir = Path(args.model) if args.model else build_model(Path(tmp.name) / "model")
    prompts = [d["prompt"] for d in synthetic_demos(args.requests, seed=7)]
    print(f"model {model_dir}; {args.requests} requests x {args.max_tokens} tokens, {args.clients} concurrent clients, "
          f"server on 127.0.0.1 with 1 torch thread\n")

    rows = []
    for label, extra, stream in [("batched", [], False), ("batched, streaming", [], True),
                                 ("one at a time", ["--max-batch-rows", "1"], False)]:
        port = free_port()
        proc = start_server(str(model_dir), port, extra)
        try:
            rows.append((label, load(port, prompts, args.clients, args.max_tokens, stream)))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    # the sampler alone, in process: the ceiling for the server's tokens/s
    model, tok = load_causal_lm(model_dir)
    params = SamplingParams(max_new_tokens=args.max_tokens, temperature=1.0, stop_at_eos=False)
    generate_texts(model, tok, prompts[:4], SamplingParams(2), batch_size=32)
    t0 = time.perf_counter()
    generate_texts(model, tok, prompts, params, batch_size=32)
    wall = time.perf_counter() - t0
    rows.append(("generate_texts (no HTTP)", {"requests/s": len(prompts) / wall,
                                              "tokens/s": len(prompts) * args.max_tokens / wall, "wall s": wall}))

    cols = ["requests/s", "tokens/s", "wall s", "p50 latency s", "p95 latency s", "p50 first token s"]
    print(f"{'run':<26}" + "".join(f"{c:>18}" for c in cols))
    for label, r in rows:
        print(f"{label:<26}" + "".join(f"{r[c]:>18.2f}" if c in r else f"{'-':>18}" for c in cols))
    tmp.cleanup()


if __name__ == "__main__":
    main()
