"""Resume after kill -9: rerunning the same command continues from the last checkpoint and ends with
the weights (within 1e-6), the log and the reported metrics of an uninterrupted run."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest
import torch

from conftest import PYTHON, pretrain_argv, run_cli, subprocess_env
from instructkit.config import SFTConfig
from instructkit.run import RunDir

SEED = 20240521  # fixes the "random" kill step, so a failure can be replayed


def _last_step(metrics) -> int:
    try:
        lines = metrics.read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, KeyError):  # not there yet, or a line half-written
        return 0


def _kill_when(proc, metrics, step, done: dict):
    """Watcher thread: SIGKILL the child as soon as its log shows `step` (no chance to clean up)."""
    while proc.poll() is None:
        if _last_step(metrics) >= step:
            os.kill(proc.pid, signal.SIGKILL)
            done["killed_at"] = _last_step(metrics)
            return
        time.sleep(0.002)


class _Forked:
    """`instructkit ARGV` in a forked child: a separate process to SIGKILL, without the ~5-15 s an
    interpreter needs to import torch and transformers again. Mimics the Popen methods used here."""

    def __init__(self, argv):
        self.returncode = None
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                from instructkit.cli import main
                code = main(argv)
            finally:
                os._exit(code)

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def communicate(self, timeout=None):
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return b"", b""


def _interrupted_then_resumed(argv, out, kill_step, uninterrupted, capsys, fork=False):
    """Start `argv` (with out=`out`) in a child, run `uninterrupted()` here meanwhile, kill the child at
    `kill_step`, then rerun the same command in this process. Returns the resumed run's stdout."""
    if fork:
        proc = _Forked([*argv, f"out={out}"])
    else:
        proc = subprocess.Popen([PYTHON, "-m", "instructkit", *argv, f"out={out}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=subprocess_env())
    done: dict = {}
    watcher = threading.Thread(target=_kill_when, args=(proc, out / "metrics.jsonl", kill_step, done))
    watcher.start()
    try:
        uninterrupted()
    finally:
        watcher.join(timeout=600)
        stderr = proc.communicate(timeout=60)[1].decode()
    assert "killed_at" in done, f"the run ended before step {kill_step} (exit {proc.returncode}): {stderr}"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "instructkit.json").exists()
    # killed mid-swap, the last checkpoint is still whole in checkpoint.old/ (RunDir.start looks there too)
    state = next(p for p in (out / "checkpoint" / "state.pt", out / "checkpoint.old" / "state.pt") if p.exists())
    saved = torch.load(state, weights_only=False)["step"]
    assert 1 <= saved <= done["killed_at"]
    code, stdout, err = run_cli([*argv, f"out={out}"], capsys)
    assert code == 0, err
    assert f"resuming from step {saved}" in stdout
    return stdout


def _assert_same_run(a, b):
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff <= 1e-6, f"resumed weights differ from the uninterrupted run's by {diff}"
    la = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == [r["step"] for r in lb]  # torn or repeated lines were dropped
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], abs=1e-6)
    ma = json.loads((a / "instructkit.json").read_text())["metrics"]
    mb = json.loads((b / "instructkit.json").read_text())["metrics"]
    assert ma["train_loss"] == pytest.approx(mb["train_loss"], abs=1e-6)


def test_sft_killed_at_a_random_step_resumes_exactly(tiny_base_model, tiny_demos, tmp_path, capsys):
    # 16 demos / batch 4 = 4 steps an epoch, 10 epochs = 40 steps; dropout 0.2 so the RNG state matters
    argv = ["sft", f"model={tiny_base_model}", f"data.train={tiny_demos}", "epochs=10", "batch_size=4",
            "optim.lr=3e-3", "dropout=0.2", "save_every=1", "log_every=1", "threads=1", "data.max_len=48"]
    kill_step = random.Random(SEED).randint(4, 30)
    print(f"killing sft at step {kill_step}")
    full, resumed = tmp_path / "full", tmp_path / "resumed"

    def uninterrupted():
        code, _, err = run_cli([*argv, f"out={full}"], capsys)
        assert code == 0, err

    _interrupted_then_resumed(argv, resumed, kill_step, uninterrupted, capsys)
    _assert_same_run(full, resumed)


def test_pretrain_killed_at_a_random_step_resumes_exactly(tiny_corpus, tmp_path, capsys):
    """As above, with the child forked from this process (the sft test already covers a fresh interpreter)."""
    argv = pretrain_argv(tiny_corpus, "UNUSED", "llama", steps=60)
    argv = [a for a in argv if not a.startswith(("out=", "save_every=", "log_every="))]
    argv += ["save_every=1", "log_every=1", "init.dropout=0.1"]
    kill_step = random.Random(SEED + 1).randint(4, 45)
    print(f"killing pretrain at step {kill_step}")
    full, resumed = tmp_path / "full", tmp_path / "resumed"

    def uninterrupted():
        code, _, err = run_cli([*argv, f"out={full}"], capsys)
        assert code == 0, err

    _interrupted_then_resumed(argv, resumed, kill_step, uninterrupted, capsys, fork=True)
    _assert_same_run(full, resumed)
    # the resumed run used the tokenizer the killed one had trained, byte for byte
    assert (full / "tokenizer.json").read_bytes() == (resumed / "tokenizer.json").read_bytes()


# ---------------------------------------------------------------- killed inside save_checkpoint

def _rundir(out):
    cfg = SFTConfig(out=str(out))
    return RunDir(str(out), "sft", cfg, {})


def test_resume_when_killed_between_the_checkpoint_renames(tmp_path):
    rd = _rundir(tmp_path / "run")
    assert rd.start() is None
    rd.save_checkpoint({"step": 3})
    # a kill after checkpoint/ became checkpoint.old but before checkpoint.tmp became checkpoint/
    os.replace(rd.ckpt, rd.out / "checkpoint.old")
    (rd.out / "checkpoint.tmp").mkdir()
    again = _rundir(tmp_path / "run")
    assert again.start() == {"step": 3}
    again.save_checkpoint({"step": 4})
    assert torch.load(again.ckpt / "state.pt", weights_only=False) == {"step": 4}


def test_save_checkpoint_after_a_kill_during_cleanup(tmp_path):
    rd = _rundir(tmp_path / "run")
    rd.start()
    rd.save_checkpoint({"step": 1})
    # a kill after the new checkpoint/ was in place but before checkpoint.old was removed
    (rd.out / "checkpoint.old").mkdir()
    (rd.out / "checkpoint.old" / "state.pt").write_bytes(b"stale")
    again = _rundir(tmp_path / "run")
    assert again.start() == {"step": 1}
    again.save_checkpoint({"step": 2})  # used to fail: os.replace onto a non-empty checkpoint.old
    assert torch.load(again.ckpt / "state.pt", weights_only=False) == {"step": 2}
    assert not (rd.out / "checkpoint.old").exists()
