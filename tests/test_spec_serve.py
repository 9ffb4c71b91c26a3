"""Specs and AI labelers against `instructkit serve` over HTTP (uvicorn on 127.0.0.1, in a thread):
`spec run --endpoint` with its baseline gate, `ai-label` with a served judge producing K-way records
that `instructkit rm` trains on, agreement with the sandbox panel, the verdict cache (a re-run sends
no request), and the HTTP client's retries with backoff."""
from __future__ import annotations

import json
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from instructkit import data as datalib  # noqa: E402
from instructkit.cli import main  # noqa: E402
from instructkit.errors import InputError  # noqa: E402
from instructkit.feedback_ai.backends import EndpointModel, HTTPClient  # noqa: E402
from instructkit.generation import SamplingParams  # noqa: E402
from instructkit.serve import ServeConfig  # noqa: E402
from instructkit.serve.server import BackgroundServer, Server, create_app, load_models  # noqa: E402
from test_spec_run import PROMPTS, build_tiny_model  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from instructkit.sandbox.world import World

    root = tmp_path_factory.mktemp("specserve")
    v1, v2 = build_tiny_model(root / "v1", seed=0), build_tiny_model(root / "v2", seed=1, steps=10)
    # a judge that has seen verdicts: after "answer :" it says yes or no
    judge = build_tiny_model(root / "judge", seed=2, sentences=[f"the {w} is red . is the rule followed ? answer : {v}"
                                                                for w in ("cat", "dog", "sun") for v in ("yes", "no")])
    World.build("tiny", 0).save(root / "world")
    cfg = ServeConfig(model=str(v1), name="v1", models=[f"v2={v2}", f"judge={judge}"])
    server = Server(cfg, models=load_models(cfg))
    with BackgroundServer(create_app(server)) as url:
        yield {"url": url, "root": root, "v1": str(v1), "world": root / "world", "server": server}


def test_spec_run_against_the_server_gates_a_regression(served, tmp_path, capsys):
    url = served["url"]
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    refs = [s[0] for s in EndpointModel(url, "v1").complete(PROMPTS[:5], 1, greedy)]
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(f"""
        name: served
        workflows:
          replies:
            prompts: {json.dumps([{"prompt": p, "reference": r} for p, r in zip(PROMPTS[:5], refs)])}
            checks:
              same_as_v1: {{equals_reference: true}}
              short: {{max_words: 8}}
    """))
    base = ["spec", "run", "--spec", str(spec), "--endpoint", url, "--max-new-tokens", "12"]
    assert main(base + ["--model-name", "v1", "--baseline", "v1"]) == 0
    out = capsys.readouterr().out
    assert f"spec served: {url}#v1 vs baseline {url}#v1" in out and "gate: passed" in out
    report = tmp_path / "r.json"
    assert main(base + ["--model-name", "v2", "--baseline", "v1", "--json", str(report)]) == 1
    assert "GATE FAIL replies/same_as_v1" in capsys.readouterr().out
    full = json.loads(report.read_text())
    assert full["baseline"]["checks"]["replies/same_as_v1"]["pass_rate"] == 1.0
    # the server answers as the local model does: the same greedy responses
    local = tmp_path / "local.json"
    assert main(["spec", "run", "--spec", str(spec), "--model", served["v1"], "--max-new-tokens", "12",
                 "--threads", "1", "--json", str(local)]) == 0
    assert json.loads(local.read_text())["report"]["checks"]["replies/same_as_v1"]["pass_rate"] == 1.0
    capsys.readouterr()
    assert main(base + ["--model-name", "nope"]) == 2  # the server's 404 is an input error


def test_ai_label_with_a_served_judge_trains_an_rm_and_reports_agreement(served, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INSTRUCTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("INSTRUCTKIT_QUIET", "1")
    world = served["world"]
    out = tmp_path / "ai.jsonl"
    args = ["ai-label", "--judge", served["url"] + "#judge", "--principles",
            str(Path(__file__).resolve().parents[1] / "configs" / "specs" / "constitution_sandbox.yaml"),
            "--endpoint", served["url"], "--model-name", "v2", "--prompts", str(world / "prompts" / "rm.jsonl"),
            "--limit", "12", "--k", "4", "--max-new-tokens", "10", "--judge-samples", "4", "--world", str(world),
            "--out", str(out), "--keep-ties"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ranked by ai:sandbox-hhh" in printed and "vs held-out panel" in printed and "vs gold ordering" in printed
    recs = datalib.load(out, "ranking")
    assert len(recs) == 12 and all(r.k == 4 and r.labeler == "ai:sandbox-hhh" for r in recs)
    assert sum(len(r.pairs()) for r in recs) > 0  # the verdicts differ: responses are ordered
    assert set(recs[0].meta["ai_verdicts"]) == {"helpful", "honest", "harmless"}
    summary = json.loads(Path(str(out) + ".summary.json").read_text())
    assert summary["judged"] > 0 and summary["agreement"]["vs_panel"]["items"] == 12
    # judged once: the same command again sends no judging request (the cache), samples aside
    stats = served["server"].engine.stats
    rows_before = stats.rows
    judge_only = [a for a in args]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"prompt": r.prompt, "completions": r.completions}) + "\n" for r in recs))
    i = judge_only.index("--endpoint")
    judge_only[i:i + 6] = ["--in", str(samples)]  # same responses, read from a file this time
    assert main(judge_only) == 0
    assert json.loads(Path(str(out) + ".summary.json").read_text())["judged"] == 0
    assert stats.rows == rows_before
    # the records are the contract's: the reward-model stage trains on them
    rm_out = tmp_path / "rm"
    assert main(["rm", f"model={served['v1']}", f"data.train={out}", f"out={rm_out}", "batch_size=4", "threads=1",
                 "data.val_fraction=0"]) == 0
    assert json.loads((rm_out / "instructkit.json").read_text())["complete"]


class Flaky:
    """A stand-in server: answers `fail` times with `status`, then with a completion."""

    def __init__(self, fail: int, status: int):
        self.calls = 0
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                me.calls += 1
                if me.calls <= fail:
                    body, code = json.dumps({"error": {"message": "busy"}}).encode(), status
                else:
                    body, code = json.dumps({"choices": [{"index": 0, "text": " yes"}]}).encode(), 200
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_http_client_retries_with_backoff_then_gives_up():
    waits = []
    flaky = Flaky(fail=2, status=503)
    try:
        client = HTTPClient(flaky.url, retries=3, backoff=0.5, sleep=waits.append)
        model = EndpointModel(flaky.url, "judge", client=client)
        assert model.complete(["q"], 1, SamplingParams(max_new_tokens=2)) == [[" yes"]]
        assert flaky.calls == 3 and client.requests == 3
        assert len(waits) == 2 and 0.5 <= waits[0] <= 0.625 and 1.0 <= waits[1] <= 1.25  # exponential
    finally:
        flaky.close()
    bad = Flaky(fail=5, status=400)  # a client error is not retried
    try:
        with pytest.raises(InputError, match="HTTP 400: busy"):
            HTTPClient(bad.url, retries=3, sleep=waits.append).request("/v1/completions", {})
        assert bad.calls == 1
    finally:
        bad.close()
    dead = HTTPClient("http://127.0.0.1:9", retries=2, sleep=lambda s: None, timeout=2)
    with pytest.raises(InputError, match="no answer after 3 attempts"):
        dead.request("/v1/models")


def test_endpoint_judge_splits_out_and_cuts_prompts_too_long_for_the_judge():
    from instructkit.feedback_ai.backends import ContextTooLong
    from instructkit.feedback_ai.judge import EndpointJudge

    sent = []

    class Model:  # a judge whose context holds 40 characters; says yes to contexts ending in "?"
        id = "fake"

        def complete(self, contexts, n, params, seed=0):
            sent.append(len(contexts))
            if any(len(c) > 40 for c in contexts):
                raise ContextTooLong("too long")
            return [[" yes" if c.endswith("?") else " no , sorry"] * n for c in contexts]
    judge = EndpointJudge.__new__(EndpointJudge)
    judge.model, judge.samples, judge.max_tokens, judge.kind = Model(), 2, 4, "sampled"
    contexts = ["short ?", "x" * 100 + " ok ?", "fine", "also short ?"]
    assert judge.verdicts(contexts, " yes", " no") == [[2.0, 0.0, 2.0], [2.0, 0.0, 2.0], [0.0, 2.0, 2.0],
                                                       [2.0, 0.0, 2.0]]
    assert sent[0] == 4 and sent[1:3] == [2, 1]  # the batch is halved until the long prompt stands alone
