"""The demo pipeline (configs/demo.yaml) end to end at tiny size: every stage through `instructkit
pipeline`, PPO and PPO-ptx side by side in child processes, skipping of complete stages, `--from`,
and the report opened in a real Chromium (every plot loads, the claims table is there)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from instructkit.pipeline import default_demo_config, load_pipeline, run_pipeline
from instructkit.run import is_complete

sys.path.insert(0, str(Path(__file__).parent))
from browser import chromium_browser, screenshot  # noqa: E402,F401

TINY = {
    "world": {"size": "tiny"},
    "pretrain": {"init": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64}, "tokenizer": {"vocab_size": 400},
                 "seq_len": 64, "max_steps": 40, "batch_size": 8, "threads": 1, "save_every": 20},
    "sft": {"epochs": 2, "batch_size": 16, "threads": 1, "select": {"n_prompts": 8}},
    "world_report": {"n": 20, "rank_prompts": 10},
    "rankings": {"k": "4..5"},
    "rm": {"threads": 1, "batch_size": 16},
    "ppo": {"episodes": 32, "rollout_batch": 16, "minibatch": 8, "eval_every": 1, "eval_n": 8, "require_gate": False},
    "ppo_ptx": {"episodes": 32, "rollout_batch": 16, "minibatch": 8, "eval_every": 1, "eval_n": 8,
                "ptx_seq_len": 32, "require_gate": False},
    "dpo": {"batch_size": 16},
    "bon": {"n": 4, "threads": 1},
    "eval": {"n_prompts": 30, "threads": 1},
}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "run"
    run_pipeline(str(default_demo_config()), overrides={"out": str(root), "stage_args": TINY})
    return root


def test_every_stage_completes(demo_run):
    _, stages = load_pipeline(str(default_demo_config()), {"out": str(demo_run), "stage_args": TINY})
    for s in stages:
        p = Path(s.out)
        assert p.exists(), s.name
        if p.is_dir() and s.command.split()[0] not in ("world",):
            assert is_complete(p), s.name
    summary = json.loads((demo_run / "summary.json").read_text())
    models = summary["eval"]["models"]
    assert set(models) == {"base", "sft", "sft_t0.3", "ppo", "ppo_ptx", "dpo", "oracle"}
    assert models["oracle"]["sandbox"]["task_success"] == 1.0
    ppo_ptx = next(c["this_run"] for c in summary["claims"] if c["claim"].startswith("PPO-ptx preferred"))
    assert "ceiling (an oracle answering every prompt right)" in ppo_ptx
    assert "<table id='by-task'>" in (demo_run / "report.html").read_text()
    for m in ("ppo", "ppo_ptx", "base"):
        w = models[m]["win_rate"]
        assert 0 <= w["low"] <= w["rate"] <= w["high"] <= 1 and w["n"] == 30
    assert len(summary["claims"]) >= 9


def test_rerun_skips_and_from_redoes(demo_run, capsys):
    run_pipeline(str(default_demo_config()), overrides={"out": str(demo_run), "stage_args": TINY})
    out = capsys.readouterr().out
    assert out.count("complete, skipped") >= 10
    before = (demo_run / "eval" / "instructkit.json").stat().st_mtime
    run_pipeline(str(default_demo_config()), from_stage="eval", overrides={"out": str(demo_run), "stage_args": TINY})
    assert (demo_run / "eval" / "instructkit.json").stat().st_mtime > before
    assert "complete, skipped" in capsys.readouterr().out  # the stages before eval were not redone


def test_report_in_chromium(demo_run, chromium_browser):
    page = chromium_browser.new_page()
    page.goto((demo_run / "report.html").as_uri())
    images = page.locator("img")
    assert images.count() >= 4
    for i in range(images.count()):
        assert page.evaluate("img => img.complete && img.naturalWidth > 0", images.nth(i).element_handle())
    rows = page.locator("#claims tr")
    assert rows.count() >= 10  # header + claims
    assert "Closed-domain hallucination" in page.locator("#claims").inner_text()
    assert page.locator("#samples tr").count() >= 2
    shot = screenshot(page, "demo-report")
    assert shot.exists() and shot.stat().st_size > 10_000
    page.close()
