"""World build: determinism, speed, file formats, prompt-set hygiene, the CLI."""
import time

import pytest

from instructkit.data.jsonl import iter_json_lines, read_records
from instructkit.data.records import parse_demonstration, parse_prompt, parse_text
from instructkit.errors import InputError
from instructkit.sandbox import tasks as T
from instructkit.sandbox import writers as Wr
from instructkit.sandbox.cli import main as world_main
from instructkit.sandbox.world import FILES, World


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    World.build("tiny", 7).save(root)
    return root


def test_same_seed_same_bytes_and_different_seed_differs(tiny, tmp_path):
    World.build("tiny", 7).save(tmp_path / "again")
    World.build("tiny", 8).save(tmp_path / "other")
    for name in FILES + ("world.json",):
        assert (tiny / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    for name in ("kb.json", "corpus/train.jsonl", "demonstrations.jsonl", "prompts/eval.jsonl"):
        assert (tiny / name).read_bytes() != (tmp_path / "other" / name).read_bytes(), name


def test_tiny_build_is_fast(tmp_path):
    t0 = time.perf_counter()
    World.build("tiny", 3).save(tmp_path)
    assert time.perf_counter() - t0 < 2.0


def test_files_parse_with_the_contract_readers(tiny):
    texts = read_records(tiny / "corpus/train.jsonl", parse_text)
    assert len(texts) > 100
    read_records(tiny / "corpus/heldout.jsonl", parse_text)
    demos = read_records(tiny / "demonstrations.jsonl", parse_demonstration)
    assert all(d.meta["task"] in Wr.DEMO_FAMILIES and d.completion for d in demos)
    assert all(d.completion.count("\n") <= 1 for d in demos)  # the answer, then at most a sign-off line
    for split in ("sft_val", "rm", "ppo", "eval"):
        prompts = read_records(tiny / f"prompts/{split}.jsonl", parse_prompt)
        assert all(p.prompt.endswith("\n") and p.meta["task"] in T.FAMILIES for p in prompts)
    for _, probe in iter_json_lines(tiny / "corpus/fewshot.jsonl"):
        assert probe["prompt"].endswith("\n") and probe["answer"] and probe["task"] in T.EXACT_FAMILIES


def test_text_conventions(tiny):
    for _, obj in iter_json_lines(tiny / "corpus/train.jsonl"):
        for line in obj["text"].split("\n"):
            assert line and line == line.strip() and "  " not in line, repr(line)
    prompts = [o["prompt"] for _, o in iter_json_lines(tiny / "prompts/rm.jsonl")]
    assert all(p == p.lower() and p.count("\n") == 1 for p in prompts)


def test_prompt_sets_are_disjoint_and_eval_covers_every_family(tiny):
    sets = {}
    for name in ("demonstrations", "prompts/sft_val", "prompts/rm", "prompts/ppo", "prompts/eval"):
        sets[name] = {o["prompt"] for _, o in iter_json_lines(tiny / f"{name}.jsonl")}
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], (a, b)
    eval_tasks = {o["task"] for _, o in iter_json_lines(tiny / "prompts/eval.jsonl")}
    assert eval_tasks == set(T.FAMILIES)
    demo_tasks = {o["task"] for _, o in iter_json_lines(tiny / "demonstrations.jsonl")}
    assert demo_tasks < set(T.FAMILIES)  # room above SFT: some families have no demonstrations


def test_load_round_trip_and_judge_from_strings(tiny):
    w = World.load(tiny)
    assert w.size == "tiny" and w.seed == 7 and w.manifest["files"]
    demos = w.records("demonstrations.jsonl")
    for d in demos:
        assert w.judge(d["prompt"], "").task == d["task"]
    # the demonstrators are uneven but mostly right on the answer line; about half add a sign-off
    # line, which the gold marks down (room above SFT for the reward model)
    answers = [d["completion"].split("\n")[0] for d in demos]
    good = sum(w.judge(d["prompt"], a).correct for d, a in zip(demos, answers)) / len(demos)
    assert 0.75 < good < 1.0
    signed = [(d, a) for d, a in zip(demos, answers) if d["completion"] != a]
    assert 0.3 < len(signed) / len(demos) < 0.7
    assert all(d["completion"].split("\n")[1] in Wr.SIGN_OFFS for d, _ in signed)
    assert all(w.utility(d["prompt"], d["completion"]) < w.utility(d["prompt"], a) for d, a in signed
               if w.judge(d["prompt"], a).helpful > 0)
    # every prompt set parses back to its family
    for r in w.prompts("eval"):
        assert w.parse(r["prompt"]).family == r["task"]


def test_oracle_answers_every_family_right_and_the_same_each_time(tiny):
    w = World.load(tiny)
    prompts = [r["prompt"] for r in w.prompts("eval")]
    answers = [Wr.oracle_response(w.parse(p), w.kb, p) for p in prompts]
    assert {w.parse(p).family for p in prompts} == set(T.FAMILIES)
    bad = [(p, a) for p, a in zip(prompts, answers) if not w.judge(p, a).correct]
    assert not bad, bad[:3]
    assert answers == [Wr.oracle_response(w.parse(p), w.kb, p) for p in prompts]
    # the plainest phrasing: one line, no sign-off, never the careful demonstrator's full sentence
    assert all("\n" not in a for a in answers)
    count = next(p for p in prompts if w.parse(p).family == "count")
    assert Wr.oracle_response(w.parse(count), w.kb, count) == str(len(w.parse(count).params["items"]))


def test_load_errors(tmp_path):
    with pytest.raises(InputError):
        World.load(tmp_path)
    with pytest.raises(InputError):
        World.build("huge", 0)


def test_cli_build(tmp_path, capsys):
    assert world_main(["build", "--size", "tiny", "--seed", "1", "--out", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "corpus/train.jsonl" in out and "tokens" in out
    assert (tmp_path / "w" / "world.json").exists()
    # a second build of the same world is a no-op; a damaged file is rebuilt
    assert world_main(["build", "--size", "tiny", "--seed", "1", "--out", str(tmp_path / "w")]) == 0
    assert "already built" in capsys.readouterr().out
    (tmp_path / "w" / "kb.json").write_text("{}")
    assert world_main(["build", "--size", "tiny", "--seed", "1", "--out", str(tmp_path / "w")]) == 0
    assert "already built" not in capsys.readouterr().out
    assert World.load(tmp_path / "w").kb.cities
    with pytest.raises(InputError):
        world_main(["build", "--size", "enormous", "--out", str(tmp_path / "x")])
    with pytest.raises(InputError):
        world_main(["label", "--world", str(tmp_path / "w")])  # missing flags
