"""The server's sampler and filter layer without HTTP: step-wise decoding against `generate`, per-row
settings, stop/hold-back text handling, and filter rules."""
from __future__ import annotations

import json
import threading

import pytest
import torch

from instructkit.config import ModelInit
from instructkit.errors import InputError
from instructkit.generation import SamplingParams, filter_logits, generate, left_pad
from instructkit.models import new_model, train_tokenizer
from instructkit.serve.decode import BatchDecoder, filter_logits_per_row
from instructkit.serve.engine import Delta, Engine, Finished, Job, Row, _held_suffix
from instructkit.serve.filters import FilterRule, FilterSet

TEXTS = ["the cat is red.", "the dog is blue.", "hello world, how are you?", "one two three four five"] * 10


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 300)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, tok):
    return new_model(ModelInit(family=request.param, d_model=32, n_layers=2, n_heads=2, max_len=128), tok, seed=0).eval()


def _decode_all(decoder: BatchDecoder, B: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(B)]
    while (stepped := decoder.step()) is not None:
        for r, t in zip(*stepped):
            out[r].append(t)
    return out


def _decoder(model, tok, prompts, *, temperature, top_p=1.0, top_k=0, budget, uniform):
    ids, mask = left_pad([tok(p)["input_ids"] for p in prompts], tok.pad_token_id)
    B = len(prompts)
    as_t = lambda v, dt: torch.as_tensor(v if isinstance(v, list) else [v] * B, dtype=dt)  # noqa: E731
    return BatchDecoder(model, ids, mask, temperature=as_t(temperature, torch.float), top_p=as_t(top_p, torch.float),
                        top_k=as_t(top_k, torch.long), budget=as_t(budget, torch.long), uniform=uniform,
                        eos_token_id=tok.eos_token_id)


@pytest.mark.parametrize("params", [SamplingParams(16, 1.0, 0.9, 0), SamplingParams(16, 0.7, 1.0, 5), SamplingParams(16, 0.0)],
                         ids=["top_p", "top_k", "greedy"])
def test_decoder_matches_generate(model, tok, params):
    """Same settings for every row and uniforms drawn as `generate` draws them -> the same tokens."""
    prompts = ["the cat", "hello world, how", "one"]
    ids, mask = left_pad([tok(p)["input_ids"] for p in prompts], tok.pad_token_id)
    ref = generate(model, ids, mask, params, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                   generator=torch.Generator().manual_seed(3))
    expected = [[t for t, m in zip(row, mk) if m] for row, mk in zip(ref.response_ids.tolist(), ref.response_mask.tolist())]
    uniform = torch.rand((3, 16), generator=torch.Generator().manual_seed(3))
    got = _decode_all(_decoder(model, tok, prompts, temperature=params.temperature, top_p=params.top_p,
                               top_k=params.top_k, budget=16, uniform=uniform), 3)
    assert got == expected


def test_rows_do_not_depend_on_their_batch(model, tok):
    """A row's tokens depend on its prompt, settings and uniforms only, not on its neighbours."""
    u = torch.rand((4, 12), generator=torch.Generator().manual_seed(0))
    alone = _decode_all(_decoder(model, tok, ["the dog"], temperature=0.8, top_p=0.9, budget=12, uniform=u[1:2]), 1)[0]
    mixed = _decode_all(_decoder(model, tok, ["one two three four", "the dog", "hello", "the"], temperature=[1.0, 0.8, 0.0, 1.5],
                                 top_p=[1.0, 0.9, 1.0, 0.5], top_k=[3, 0, 0, 0], budget=[12, 12, 3, 7], uniform=u), 4)
    assert mixed[1] == alone
    assert len(mixed[2]) <= 3 and len(mixed[3]) <= 7  # per-row budgets


def test_finish_drops_a_row(model, tok):
    d = _decoder(model, tok, ["the cat", "the dog"], temperature=1.0, budget=10, uniform=torch.rand((2, 10)))
    rows, _ = d.step()
    assert rows == [0, 1]
    d.finish([0])
    rows, _ = d.step()
    assert rows == [1]


def test_filter_logits_per_row_matches_generation():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    settings = [(0, 0.9), (5, 1.0), (7, 0.5)]
    got = filter_logits_per_row(logits, torch.tensor([k for k, _ in settings]), torch.tensor([p for _, p in settings]))
    for i, (k, p) in enumerate(settings):
        assert torch.equal(torch.isinf(got[i]), torch.isinf(filter_logits(logits[i : i + 1], k, p)[0]))


def test_held_suffix():
    assert _held_suffix("hello wor", ["world"]) == 3
    assert _held_suffix("hello", ["\n\n"]) == 0
    assert _held_suffix("a\n", ["\n\n"]) == 1
    assert _held_suffix("say Dar", ["darn"]) == 3  # words are held back case-insensitively
    assert _held_suffix("say darn", ["darn"]) == 4  # a whole word too: it may still grow ("darnit")


class _FakeTok:
    """Token i is the character chr(i): makes the text side of the engine easy to drive."""
    eos_token_id, pad_token_id = 0, 1

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class _ScriptedModel:
    """Not used for compute: the engine test below replaces the decoder with a scripted one."""


def _run_engine_with_script(monkeypatch, script: dict[int, str], job: Job) -> list:
    """Run one job through Engine._run with a decoder that emits `script[row]` character by character."""
    import instructkit.serve.engine as engine_mod

    class Scripted:
        def __init__(self, *a, **kw):
            self.t, self.done = 0, set()

        def finish(self, rows):
            self.done.update(rows)

        def step(self):
            live = [r for r in script if r not in self.done and self.t < len(script[r])]
            if not live:
                return None
            out = (live, [ord(script[r][self.t]) for r in live])
            self.t += 1
            return out

    monkeypatch.setattr(engine_mod, "BatchDecoder", Scripted)
    events: list = []
    job.emit = events.extend
    eng = Engine({"m": (torch.nn.Linear(1, 1), _FakeTok())})
    eng._run([job])
    return events


def _rows(n: int, max_tokens: int = 50) -> list[Row]:
    return [Row([5], max_tokens, 1.0, 1.0, 0, torch.zeros(max_tokens)) for _ in range(n)]


def test_engine_trims_stop_sequences_and_never_streams_them(monkeypatch):
    job = Job("m", _rows(2), stop=["END", "\n\n"], holdback=["END", "\n\n"])
    events = _run_engine_with_script(monkeypatch, {0: "abc EN dEND more", 1: "xy\nz\n\nq"}, job)
    deltas = {0: "", 1: ""}
    fins = {}
    for ev in events:
        if isinstance(ev, Delta):
            deltas[ev.row] += ev.text
        elif isinstance(ev, Finished):
            fins[ev.row] = ev
    assert fins[0].text == deltas[0] == "abc EN d" and fins[0].reason == "stop"
    assert fins[1].text == deltas[1] == "xy\nz" and fins[1].reason == "stop"


def test_engine_length_and_eos(monkeypatch):
    job = Job("m", _rows(2, max_tokens=4))
    events = _run_engine_with_script(monkeypatch, {0: "abcdefg", 1: "ab\x00"}, job)
    fins = {ev.row: ev for ev in events if isinstance(ev, Finished)}
    assert (fins[0].text, fins[0].reason, fins[0].tokens) == ("abcd", "length", 4)
    assert (fins[1].text, fins[1].reason, fins[1].tokens) == ("ab", "stop", 3)  # EOS counts as a token


def test_engine_blocks_a_word_before_any_of_it_is_sent(monkeypatch):
    filters = FilterSet([FilterRule("bad", "words", words=["darn"], target="output")])
    job = Job("m", _rows(1), holdback=filters.holdback_words, early_check=filters.early_output_check())
    events = _run_engine_with_script(monkeypatch, {0: "oh darnit, darn it all"}, job)
    sent = "".join(ev.text for ev in events if isinstance(ev, Delta))
    fin = [ev for ev in events if isinstance(ev, Finished)][0]
    assert fin.reason == "content_filter" and fin.filter_hit.rule == "bad"
    assert sent == "oh darnit, " and "darn " not in sent  # "darnit" is not the word "darn"
    # a blocked word at the very end: held back while decoding, and never flushed
    job = Job("m", _rows(1), holdback=filters.holdback_words, early_check=filters.early_output_check())
    events = _run_engine_with_script(monkeypatch, {0: "well, Darn"}, job)
    assert "".join(ev.text for ev in events if isinstance(ev, Delta)) == "well, "
    assert [ev.reason for ev in events if isinstance(ev, Finished)] == ["content_filter"]


def test_a_cancelled_job_stops_costing_compute(monkeypatch):
    """When the client leaves (the handler sets `cancelled`), its rows end before the next step."""
    job = Job("m", _rows(1))
    import instructkit.serve.engine as engine_mod

    steps = []

    class Counting:
        def __init__(self, *a, **kw):
            self.done = set()

        def finish(self, rows):
            self.done.update(rows)

        def step(self):
            if 0 in self.done or len(steps) >= 40:
                return None
            steps.append(1)
            return [0], [ord("a")]

    monkeypatch.setattr(engine_mod, "BatchDecoder", Counting)
    events: list = []

    def emit(evs):
        events.extend(evs)
        if len(steps) == 3:
            job.cancelled.set()
    job.emit = emit
    Engine({"m": (torch.nn.Linear(1, 1), _FakeTok())})._run([job])
    assert len(steps) == 3
    assert isinstance(events[-1], Finished)  # the row is closed, not left dangling


def test_the_queue_is_bounded():
    from instructkit.serve.engine import QueueFull

    eng = Engine({}, max_queued_rows=3)
    eng.submit(Job("m", _rows(2)))
    with pytest.raises(QueueFull):
        eng.submit(Job("m", _rows(2)))


def test_engine_serves_concurrent_jobs_in_one_batch(tok):
    model = new_model(ModelInit(family="gpt2", d_model=32, n_layers=2, n_heads=2, max_len=64), tok, seed=0).eval()
    eng = Engine({"m": (model, tok)}, batch_wait_ms=50)
    done = threading.Event()
    results: dict[int, list] = {i: [] for i in range(6)}

    def emitter(i):
        def emit(events):
            results[i].extend(events)
            if sum(isinstance(e, Finished) for r in results.values() for e in r) == 6:
                done.set()
        return emit
    for i in range(6):
        eng.submit(Job("m", [Row(tok("the cat")["input_ids"], 8, 1.0, 1.0, 0, torch.rand(8))], emit=emitter(i)))
    eng.start()
    try:
        assert done.wait(30)
    finally:
        eng.stop()
    assert eng.stats.batches == 1 and eng.stats.max_batch_jobs == 6


# ----------------------------------------------------------------------------- filters


def test_word_and_regex_rules():
    fs = FilterSet([FilterRule("w", "words", words=["Darn", "heck"]),
                    FilterRule("email", "regex", pattern=r"[\w.]+@[\w.]+", target="output", action="annotate")])
    assert [h.rule for h in fs.check_prompt("well DARN it")] == ["w"]
    assert fs.check_prompt("darnit") == []  # whole words only
    assert fs.check_prompt("mail me at a@b.c") == []  # the regex rule looks at outputs only
    [hits] = fs.check_outputs(["p"], ["write to a@b.c, heck"])
    assert {(h.rule, h.action) for h in hits} == {("w", "block"), ("email", "annotate")}
    assert "a@b.c" in next(h.reason for h in hits if h.rule == "email")


def test_score_rule_uses_a_scorer_spec():
    from instructkit.scoring import register

    @register("servetest-len")
    def _factory(arg):
        return lambda prompts, responses: [float(len(r)) for r in responses]

    fs = FilterSet([FilterRule("short", "score", scorer="servetest-len:x", threshold=3, flag_when="below", target="output")])
    hits = fs.check_outputs(["p", "p"], ["ok", "long enough"])
    assert [len(h) for h in hits] == [1, 0]
    assert "scored 2" in hits[0][0].reason and "below the threshold 3" in hits[0][0].reason
    assert fs.blocks_output_by_score


def test_rules_load_from_yaml_and_bad_rules_are_input_errors(tmp_path):
    good = tmp_path / "filters.yaml"
    good.write_text("rules:\n  - {name: w, kind: words, words: [zebra], target: prompt}\n"
                    "  - {name: r, kind: regex, pattern: '\\d{3}', action: annotate}\n")
    fs = FilterSet.load(good)
    assert [r.name for r in fs.rules] == ["w", "r"]
    bad = tmp_path / "bad.json"
    for rules, message in [([{"name": "r", "kind": "regex", "pattern": "("}], "bad regular expression"),
                           ([{"name": "w", "kind": "words", "words": []}], "non-empty 'words'"),
                           ([{"name": "x", "kind": "words", "words": ["a"], "colour": 1}], "unknown field"),
                           ([{"name": "s", "kind": "score", "scorer": "nope:x"}], "expected one of")]:
        bad.write_text(json.dumps(rules))
        with pytest.raises(InputError, match=message):
            FilterSet.load(bad)
