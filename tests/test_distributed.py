"""Every training stage under `torchrun --nproc-per-node 2` (CPU, gloo) against the same stage in one
process: with the same global batch the loss curves agree (1e-4), only rank 0 writes, a run killed
in one process resumes in two, and an FSDP2 run saves a checkpoint `from_pretrained` loads.

One torchrun launch runs all the 2-process stages (each child imports torch and transformers, the
slow part); this file is also that launch's script (see `driver`). The 1-process references run in
the test process. The tiny model is conftest's `tiny_base_model` (GPT-2, d_model 32, 2 layers)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SFT_STEPS = 8  # 16 demonstrations in batches of 5 (the last of each epoch holds 1: one rank idles), 2 epochs


def _rm_distributed() -> bool:
    from instructkit.stages import rm
    return hasattr(rm, "D")  # the stage imports instructkit.distributed once it runs under torchrun


RM = _rm_distributed()
STAGES_2P = ("pretrain", "sft", "sft_resumed", "sft_fsdp", "dpo", *(("rm",) if RM else ()), "ppo")
needs_rm = pytest.mark.skipif(not RM, reason="stages/rm.py is not distributed yet")


# ----------------------------------------------------------------------------- the torchrun side

def driver(plan_file: str) -> None:
    """Run each argv of the plan with instructkit.cli.main in this torchrun child, recording every
    write this process makes under the plan's root (an audit hook sees open-for-write, mkdir, rename,
    remove). The record goes to ROOT/audit/rank{R}.json at the end."""
    plan = json.loads(Path(plan_file).read_text())
    root = os.path.realpath(plan["root"])
    writes, recording = [], [True]

    def under_root(p) -> bool:
        return isinstance(p, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(p)).startswith(root)

    def hook(event, args):
        if not recording[0]:
            return
        if event == "open":
            path, mode, flags = args
            write = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
                (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if write and under_root(path):
                writes.append([event, os.fsdecode(path)])
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.rename") and under_root(args[0]):
            writes.append([event, os.fsdecode(args[0])])

    sys.addaudithook(hook)
    from instructkit import distributed as D
    from instructkit.cli import main

    codes = {}
    for name, argv in plan["runs"]:
        t0 = time.time()
        codes[name] = [main(argv), round(time.time() - t0, 1)]
    recording[0] = False
    audit = Path(root) / "audit"
    audit.mkdir(exist_ok=True)
    (audit / f"rank{D.rank()}.json").write_text(json.dumps({"writes": writes, "codes": codes}))


if __name__ == "__main__":
    driver(sys.argv[1])
    raise SystemExit(0)


# ----------------------------------------------------------------------------- data and argv

WRONG = ["cat", "dog", "red", "blue"]


def _rankings(demos: Path, out: Path) -> Path:
    """K-way rankings on the copy task: the right copy first, then a swapped and a truncated one
    (K = 3 for even records, K = 2 for odd ones)."""
    rows = []
    for i, line in enumerate(demos.read_text().splitlines()):
        d = json.loads(line)
        a, b = d["completion"].split()
        if i % 2 == 0:
            rows.append({"prompt": d["prompt"], "completions": [f"{a} {b}", f"{b} {a}", a], "ranks": [1, 2, 3]})
        else:
            rows.append({"prompt": d["prompt"], "completions": [f"{a} {b}", WRONG[i % 4]], "ranks": [1, 2]})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _prompts(demos: Path, out: Path) -> Path:
    out.write_text("".join(json.dumps({"prompt": json.loads(l)["prompt"]}) + "\n" for l in demos.read_text().splitlines()))
    return out


def pretrain_argv(corpus, out, *extra):
    from conftest import pretrain_argv as argv
    return [*argv(corpus, out, steps=6), "log_every=1", "save_every=3", *extra]


def sft_argv(base, demos, out, *extra):
    return ["sft", f"model={base}", f"data.train={demos}", f"out={out}", "epochs=2", "batch_size=5", "optim.lr=3e-3",
            "dropout=0.0", "log_every=1", "save_every=2", "threads=1", "data.max_len=48", *extra]


def dpo_argv(base, ranks, out, cache, *extra):
    return ["dpo", f"model={base}", f"data.train={ranks}", f"out={out}", "epochs=2", "batch_size=5", "optim.lr=1e-3",
            "optim.warmup_steps=0", "beta=0.5", "log_every=1", "save_every=3", "threads=1", f"ref_cache={cache}",
            *extra]


def rm_argv(base, ranks, out, *extra):
    return ["rm", f"model={base}", f"data.train={ranks}", f"out={out}", "epochs=2", "batch_size=5", "optim.lr=3e-3",
            "data.val_fraction=0.1", "log_every=1", "save_every=3", "threads=1", *extra]


def ppo_argv(base, rm, prompts, corpus, out, *extra):
    return ["ppo", f"policy={base}", f"reward_model={rm}", f"prompts={prompts}", f"out={out}", "episodes=40",
            "rollout_batch=8", "minibatch=4", "ppo_epochs=2", "max_new_tokens=8", "lr=3e-4", "value_lr=3e-4",
            "warmup_iterations=1", "select=last", "require_gate=false", "missing_eos_penalty=0",
            "ptx_coef=0.5", f"ptx_data={corpus}", "ptx_per_episode=0.5", "ptx_seq_len=32", "save_every=2",
            "threads=1", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def _files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*")}


# ----------------------------------------------------------------------------- the runs (once per module)

@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_base_model, tiny_demos, tiny_corpus):
    """1-process references in this process, then every 2-process run in one torchrun launch."""
    from conftest import subprocess_env
    from instructkit.cli import main
    from instructkit.stages import sft as sft_stage

    root = tmp_path_factory.mktemp("dist")
    one, two = root / "one", root / "two"
    one.mkdir()
    two.mkdir()
    ranks, prompts = _rankings(tiny_demos, root / "rankings.jsonl"), _prompts(tiny_demos, root / "prompts.jsonl")
    base = tiny_base_model
    t0 = time.time()
    assert main(pretrain_argv(tiny_corpus, one / "pretrain")) == 0
    assert main(sft_argv(base, tiny_demos, one / "sft")) == 0
    assert main(dpo_argv(base, ranks, one / "dpo", one / "cache")) == 0
    assert main(rm_argv(base, ranks, one / "rm")) == 0
    assert main(ppo_argv(base, one / "rm", prompts, tiny_corpus, one / "ppo")) == 0

    # a 1-process SFT run killed after step 5 (its last checkpoint: step 4); the 2-process launch resumes it
    real, calls = sft_stage.collate_right, []

    def killed_at_step_5(*a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **kw)
    sft_stage.collate_right = killed_at_step_5
    try:
        assert main(sft_argv(base, tiny_demos, two / "sft_resumed")) == 130
    finally:
        sft_stage.collate_right = real
    assert (two / "sft_resumed" / "checkpoint" / "state.pt").exists()
    one_seconds = time.time() - t0

    plan = {"root": str(two), "runs": [
        ["pretrain", pretrain_argv(tiny_corpus, two / "pretrain", "dist.micro_batch_size=3")],
        ["sft", sft_argv(base, tiny_demos, two / "sft", "dist.micro_batch_size=2")],
        ["sft_resumed", sft_argv(base, tiny_demos, two / "sft_resumed")],
        ["sft_fsdp", sft_argv(base, tiny_demos, two / "sft_fsdp", "dist.strategy=fsdp")],
        ["dpo", dpo_argv(base, ranks, two / "dpo", two / "cache")],
        *([["rm", rm_argv(base, ranks, two / "rm", "micro_batch_size=2")]] if RM else []),
        # the same reward model as the 1-process run, so that only PPO's own distribution differs
        ["ppo", ppo_argv(base, one / "rm", prompts, tiny_corpus, two / "ppo")],
    ]}
    plan["runs"] = [[n, [str(a) for a in argv]] for n, argv in plan["runs"]]
    (root / "plan.json").write_text(json.dumps(plan))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), __file__, str(root / "plan.json")]
    t0 = time.time()
    proc = subprocess.run(cmd, env={**subprocess_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    (root / "torchrun.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"see {root / 'torchrun.log'}\n" + proc.stderr[-3000:]
    audit = {r: json.loads((two / "audit" / f"rank{r}.json").read_text()) for r in (0, 1)}
    print(f"1-process runs {one_seconds:.0f}s; torchrun launch {time.time() - t0:.0f}s: "
          + ", ".join(f"{k} {v[1]}s" for k, v in audit[0]["codes"].items()))
    return {"one": one, "two": two, "audit": audit, "stdout": proc.stdout}


def _same_curve(a: list[dict], b: list[dict], keys: tuple[str, ...], steps: int = 5) -> None:
    assert len(a) >= steps and len(b) >= steps
    for ra, rb in zip(a[:steps], b[:steps]):
        assert ra["step"] == rb["step"]
        for k in keys:
            assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-4), (ra["step"], k, ra[k], rb[k])


# ----------------------------------------------------------------------------- tests

def test_every_run_succeeded_and_only_rank_0_wrote(runs):
    for r in (0, 1):
        assert {k: v[0] for k, v in runs["audit"][r]["codes"].items()} == {s: 0 for s in STAGES_2P}
    assert runs["audit"][1]["writes"] == [], runs["audit"][1]["writes"][:10]
    assert runs["audit"][0]["writes"]  # the audit does see rank 0's writes
    assert runs["stdout"].count("sft: done") == 3  # one log per run: rank 1 prints nothing


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo", pytest.param("rm", marks=needs_rm), "ppo"])
def test_output_directory_matches_one_process(runs, stage):
    one, two = runs["one"] / stage, runs["two"] / stage
    assert _files(two) == _files(one)
    assert json.loads((two / "instructkit.json").read_text())["complete"] is True
    steps = [r["step"] for r in _log(two)]
    assert steps == [r["step"] for r in _log(one)] and steps == sorted(set(steps))  # one line per logged step


def test_pretrain_two_processes_same_loss_curve(runs):
    _same_curve(_log(runs["one"] / "pretrain"), _log(runs["two"] / "pretrain"), ("loss", "grad_norm"), steps=6)


def test_sft_two_processes_same_loss_curve(runs):
    a, b = _log(runs["one"] / "sft"), _log(runs["two"] / "sft")  # b: 2 processes, micro-batches of 2
    assert len(a) == SFT_STEPS
    _same_curve(a, b, ("loss", "grad_norm", "lr"), steps=SFT_STEPS)


def test_dpo_two_processes_same_loss_curve(runs):
    # (not reward_accuracy: at step 1 policy = reference, and margins of +-1e-7 decide it)
    _same_curve(_log(runs["one"] / "dpo"), _log(runs["two"] / "dpo"),
                ("loss", "reward_margin", "logps_chosen", "logps_rejected", "grad_norm"))


@needs_rm
def test_rm_two_processes_same_loss_curve(runs):
    _same_curve(_log(runs["one"] / "rm"), _log(runs["two"] / "rm"), ("loss", "accuracy", "margin", "grad_norm"))


def test_ppo_two_processes_same_curves(runs):
    # same rollouts (each rank samples its rows with the 1-process random numbers), global whitening/KL
    a, b = _log(runs["one"] / "ppo"), _log(runs["two"] / "ppo")
    _same_curve(a, b, ("reward_rm", "kl", "kl_coef", "response_length", "pg_loss", "vf_loss", "ptx_loss",
                       "entropy", "clipfrac", "approx_kl", "explained_variance"))


def test_run_killed_in_one_process_resumes_in_two(runs):
    from safetensors.torch import load_file

    a, b = _log(runs["one"] / "sft"), _log(runs["two"] / "sft_resumed")
    _same_curve(a, b, ("loss", "grad_norm"), steps=SFT_STEPS)
    wa = load_file(runs["one"] / "sft" / "model.safetensors")
    wb = load_file(runs["two"] / "sft_resumed" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-4, rtol=0)


def test_fsdp_sft_checkpoint_loads_with_from_pretrained(runs):
    from transformers import AutoModelForCausalLM

    out = runs["two"] / "sft_fsdp"
    assert json.loads((out / "instructkit.json").read_text())["config"]["dist"]["strategy"] == "fsdp"
    _same_curve(_log(runs["one"] / "sft"), _log(out), ("loss", "grad_norm"))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    reference = AutoModelForCausalLM.from_pretrained(str(runs["one"] / "sft"))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-3, rtol=0)
