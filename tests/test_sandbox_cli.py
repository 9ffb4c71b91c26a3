"""`instructkit world label` and `world report` end to end on a tiny random model."""
import json

import pytest

from instructkit.data.jsonl import read_records
from instructkit.data.records import parse_ranking
from instructkit.errors import InputError
from instructkit.sandbox.cli import main as world_main
from instructkit.sandbox.world import World


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from instructkit.config import ModelInit
    from instructkit.models import new_model, save_model, train_tokenizer

    root = tmp_path_factory.mktemp("sbx")
    world = World.build("tiny", 0)
    world.save(root / "world")
    tok = train_tokenizer((r["text"] for r in world.records("corpus/train.jsonl")), vocab_size=400)
    model = new_model(ModelInit(family="gpt2", d_model=16, n_layers=1, n_heads=2, max_len=160), tok, seed=0)
    save_model(model, tok, root / "model")
    return root


def test_label_writes_valid_k_way_rankings(setup, capsys):
    out = setup / "rankings.jsonl"
    argv = ["label", "--world", str(setup / "world"), "--model", str(setup / "model"),
            "--prompts", str(setup / "world/prompts/rm.jsonl"), "--k", "2..4", "--pool", "heldout",
            "--out", str(out), "--temperatures", "1.0,1.5", "--limit", "6", "--max-new-tokens", "6"]
    assert world_main(argv) == 0
    recs = read_records(out, parse_ranking)
    assert len(recs) == 6 and all(2 <= r.k <= 4 and r.labeler.startswith("panel-") for r in recs)
    assert all("gold_utilities" not in r.meta for r in recs)  # the gold stays hidden unless asked for
    assert "labeled 6 prompts" in capsys.readouterr().out
    assert world_main(argv + ["--gold"]) == 0
    recs = read_records(out, parse_ranking)
    assert all(len(r.meta["gold_utilities"]) == r.k for r in recs)


def test_label_passes_repeat_every_prompt_with_fresh_samples(setup, capsys):
    """--passes 2: every prompt ranked twice; pass 0 is the single-pass output, pass 1 is seed + 1's."""
    base = ["label", "--world", str(setup / "world"), "--model", str(setup / "model"),
            "--prompts", str(setup / "world/prompts/rm.jsonl"), "--k", "3", "--limit", "5", "--max-new-tokens", "6"]
    one, two, seed1 = setup / "p1.jsonl", setup / "p2.jsonl", setup / "s1.jsonl"
    assert world_main(base + ["--out", str(one)]) == 0
    assert world_main(base + ["--out", str(seed1), "--seed", "1"]) == 0
    assert world_main(base + ["--out", str(two), "--passes", "2"]) == 0
    assert "5 prompts x 2 pass(es) = 10 rankings" in capsys.readouterr().out
    lines = two.read_text().splitlines()
    assert lines == one.read_text().splitlines() + seed1.read_text().splitlines()
    # the passes in two worker processes: the same records, in pass order
    par = setup / "par.jsonl"
    assert world_main(base + ["--out", str(par), "--passes", "2", "--processes", "2"]) == 0
    assert par.read_text().splitlines() == lines
    # one pass in shards of 2 prompts (3 shards), shared by two processes: the same records as in one
    # process; shard 0 is the unsharded pass's first 2 records, later shards sample afresh
    sh1, sh2 = setup / "sh1.jsonl", setup / "sh2.jsonl"
    assert world_main(base + ["--out", str(sh1), "--shard-size", "2"]) == 0
    assert world_main(base + ["--out", str(sh2), "--shard-size", "2", "--processes", "2"]) == 0
    sharded = sh1.read_text().splitlines()
    assert sh2.read_text().splitlines() == sharded and len(sharded) == 5
    assert sharded[:2] == one.read_text().splitlines()[:2]
    assert [json.loads(x)["prompt"] for x in sharded] == [json.loads(x)["prompt"] for x in lines[:5]]
    assert sharded[2:] != one.read_text().splitlines()[2:]
    for bad in (["--passes", "0"], ["--processes", "0"], ["--shard-size", "0"]):
        with pytest.raises(InputError):
            world_main(base + ["--out", str(setup / "p0.jsonl")] + bad)
        assert not (setup / "p0.jsonl").exists()


def test_label_rejects_bad_inputs_before_sampling(setup):
    base = ["label", "--world", str(setup / "world"), "--model", str(setup / "model"), "--out", str(setup / "x.jsonl")]
    with pytest.raises(InputError):
        world_main(base + ["--prompts", str(setup / "missing.jsonl")])
    with pytest.raises(InputError):
        world_main(base + ["--prompts", str(setup / "world/prompts/rm.jsonl"), "--k", "1"])
    with pytest.raises(InputError):
        world_main(base + ["--prompts", str(setup / "world/prompts/rm.jsonl"), "--pool", "friends"])
    with pytest.raises(InputError):
        world_main(["label", "--world", str(setup), "--model", str(setup / "model"), "--out", str(setup / "x.jsonl"),
                    "--prompts", str(setup / "world/prompts/rm.jsonl")])  # not a world
    assert not (setup / "x.jsonl").exists()


def test_report_prints_every_rate(setup, capsys):
    js = setup / "report.json"
    argv = ["report", "--world", str(setup / "world"), "--base", str(setup / "model"), "--sft", str(setup / "model"),
            "--n", "15", "--rank-prompts", "4", "--max-new-tokens", "6", "--json", str(js)]
    assert world_main(argv) == 0
    out = capsys.readouterr().out
    assert "labeler agreement, training pool" in out and "base: continues the worksheet" in out
    figures = json.loads(js.read_text())
    assert set(figures) >= {"base", "sft", "agreement"}
