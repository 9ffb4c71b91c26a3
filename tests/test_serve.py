"""`instructkit serve` driven by the official `openai` client against a uvicorn server on 127.0.0.1:
completions, chat, streaming, n > 1, stop sequences, seeds, OpenAI-format errors, size limits,
16 concurrent streaming clients, the filter layer, the playground's hand-off to the labeling app,
the CLI, and the playground page in a real Chromium."""
from __future__ import annotations

import http.client
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from browser import chromium_browser, screenshot  # noqa: E402,F401  (tests/browser.py: Debian's Chromium)
from instructkit.serve import ServeConfig  # noqa: E402
from instructkit.serve.filters import FilterRule, FilterSet  # noqa: E402
from instructkit.serve.server import BackgroundServer, Server, create_app, load_models  # noqa: E402

SENTENCES = ["the cat is red.", "the dog is blue.", "a bird can sing.", "the sun is hot.", "my fish is old.",
             "the moon is far.", "one tree is big.", "a ship is slow."]


from conftest import fit_tiny_gpt2  # noqa: E402


def build_tiny_model(out: Path, seed: int, steps: int = 80) -> Path:
    """A tiny random GPT-2 (train_tokenizer / new_model / save_model), fitted for a few steps on a
    handful of sentences so that its samples read as words rather than stray bytes."""
    return fit_tiny_gpt2(out, seed, SENTENCES, steps, prefix=" ")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    return {"alpha": build_tiny_model(root / "alpha", seed=0), "beta": build_tiny_model(root / "beta", seed=1, steps=25)}


@pytest.fixture(scope="module")
def models(model_dirs):
    cfg = ServeConfig(model=str(model_dirs["alpha"]), name="alpha", models=[f"beta={model_dirs['beta']}"])
    return load_models(cfg)


class LabelStub:
    """Stands in for the labeling app's comparison endpoint: records what it is sent."""

    def __init__(self):
        self.received: list[tuple[str, dict, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.received.append((self.path, body, self.headers.get("Authorization", "")))
                answer = json.dumps({"prompts_added": 1, "outputs": 2}).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *a):
                pass
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/projects/playground/outputs"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def label_stub():
    stub = LabelStub()
    yield stub
    stub.close()


def _serve(models, filters=None, **cfg):
    server = Server(ServeConfig(**cfg), models=models, filters=filters or FilterSet())
    return server, BackgroundServer(create_app(server))


@pytest.fixture(scope="module")
def server(models, label_stub):
    srv, bg = _serve(models, label_url=label_stub.url, label_token="sekrit", max_body_bytes=64 * 1024)
    with bg as url:
        srv.url = url
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


# ----------------------------------------------------------------------------- the API


def test_models(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["alpha", "beta"]
    assert client.models.retrieve("beta").owned_by == "instructkit"


def test_completion(client, models):
    r = client.completions.create(model="alpha", prompt="the cat", max_tokens=12, seed=1)
    assert r.object == "text_completion" and r.model == "alpha" and len(r.choices) == 1
    c = r.choices[0]
    assert isinstance(c.text, str) and c.finish_reason in ("stop", "length")
    n_prompt = len(models["alpha"].tokenizer("the cat", add_special_tokens=False)["input_ids"])
    assert r.usage.prompt_tokens == n_prompt and 1 <= r.usage.completion_tokens <= 12


def test_chat_uses_the_chat_template(client, models):
    r = client.chat.completions.create(model="alpha", messages=[{"role": "system", "content": "be brief"},
                                                                 {"role": "user", "content": "the dog"}],
                                       max_tokens=10, seed=2)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    tok = models["alpha"].tokenizer
    rendered = tok.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": "the dog"}],
                                       tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("assistant: ")
    assert r.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])


def test_seeded_requests_reproduce_and_seeds_differ(client):
    ask = lambda seed: [c.text for c in client.completions.create(  # noqa: E731
        model="beta", prompt="the", max_tokens=16, n=3, temperature=1.2, seed=seed).choices]
    first = ask(7)
    assert ask(7) == first
    assert ask(8) != first
    assert len(set(first)) > 1  # n = 3 samples of one prompt are not copies of one another


def test_n_and_several_prompts(client, models):
    r = client.completions.create(model="alpha", prompt=["the cat", "a bird"], max_tokens=6, n=2, seed=3)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    tok = models["alpha"].tokenizer
    # each prompt counted once, not once per choice
    assert r.usage.prompt_tokens == sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in ["the cat", "a bird"])
    greedy = client.completions.create(model="alpha", prompt="the cat", max_tokens=6, n=2, temperature=0)
    assert greedy.choices[0].text == greedy.choices[1].text


def test_streaming_equals_the_same_request_unstreamed(client):
    kw = dict(model="alpha", prompt="the dog", max_tokens=20, n=2, seed=11)
    whole = client.completions.create(**kw)
    pieces, reasons, usage = {0: "", 1: ""}, {}, None
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            pieces[c.index] += c.text
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert [pieces[0], pieces[1]] == [c.text for c in whole.choices]
    assert [reasons[0], reasons[1]] == [c.finish_reason for c in whole.choices]
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_chat_streaming(client):
    kw = dict(model="beta", messages=[{"role": "user", "content": "hi"}], max_tokens=12, seed=5)
    whole = client.chat.completions.create(**kw).choices[0]
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.message.content
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason


def test_stop_sequences_are_trimmed_also_when_streaming(client):
    for seed in range(4, 40):  # an output long enough to cut
        kw = dict(model="alpha", prompt="the", max_tokens=40, seed=seed, temperature=1.0)
        full = client.completions.create(**kw).choices[0].text
        if len(full) >= 8:
            break
    stop = full[len(full) // 2 : len(full) // 2 + 2]  # a stop sequence that occurs in this very output
    cut = full[: full.find(stop)]
    r = client.completions.create(stop=[stop, "never-seen"], **kw).choices[0]
    assert (r.text, r.finish_reason) == (cut, "stop")
    streamed = "".join(c.choices[0].text for c in client.completions.create(stop=stop, stream=True, **kw) if c.choices)
    assert streamed == cut
    chat = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "x"}], max_tokens=30,
                                          seed=4, stop="e")
    assert "e" not in chat.choices[0].message.content


def test_echo(client):
    r = client.completions.create(model="alpha", prompt="the cat", max_tokens=4, seed=1, echo=True)
    assert r.choices[0].text.startswith("the cat")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, status, param, words", [
    (dict(model="gpt-4", prompt="x"), 404, "model", "does not exist"),
    (dict(model="alpha", prompt="x", max_tokens=-5), 400, "max_tokens", "greater than or equal to 1"),
    (dict(model="alpha", prompt="x", temperature=2.5), 400, "temperature", "less than or equal to 2"),
    (dict(model="alpha", prompt="x", top_p=1.5), 400, "top_p", "less than or equal to 1"),
    (dict(model="alpha", prompt="x", n=0), 400, "n", "greater than or equal to 1"),
    (dict(model="alpha", prompt="x", n=99), 400, "n", "at most 16"),
    (dict(model="alpha", prompt="x", stop=["a", "b", "c", "d", "e"]), 400, "stop", "at most 4"),
    (dict(model="alpha", prompt="x", max_tokens=500), 400, "max_tokens", "maximum context length is 128"),
    (dict(model="alpha", prompt="x", logprobs=2), 400, "logprobs", "not supported"),
    (dict(model="alpha", prompt="x", extra_body={"colour": "red"}), 400, "colour", "Unrecognized request argument"),
    (dict(model="alpha", prompt="x" * 70_000), 413, None, "Request body too large"),
])
def test_bad_requests_get_openai_errors(client, kwargs, status, param, words):
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(**kwargs)
    e = info.value
    assert e.status_code == status
    assert e.param == param and e.type == "invalid_request_error"
    assert words in e.message


def _raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"null")
    conn.close()
    return resp.status, data


def test_malformed_json_unknown_routes_and_bad_chat(server):
    status, body = _raw(server.url, "POST", "/v1/completions", b'{"model": "alpha", "prompt": ')
    assert status == 400 and body["error"]["code"] == "invalid_json" and "could not parse the JSON" in body["error"]["message"]
    status, body = _raw(server.url, "POST", "/v1/chat/completions", b'["not", "an", "object"]')
    assert status == 400 and "must be a JSON object" in body["error"]["message"]
    status, body = _raw(server.url, "POST", "/v1/chat/completions", json.dumps({"model": "alpha", "messages": []}).encode())
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = _raw(server.url, "POST", "/v1/chat/completions", json.dumps({"model": "alpha"}).encode())
    assert status == 400 and body["error"]["message"] == "Missing required parameter: 'messages'."
    status, body = _raw(server.url, "GET", "/v1/nothing-here")
    assert status == 404 and set(body["error"]) >= {"message", "type", "param", "code"}
    status, body = _raw(server.url, "GET", "/v1/completions")
    assert status == 405 and "not allowed" in body["error"]["message"]
    status, body = _raw(server.url, "POST", "/v1/completions", b"{}", {"Content-Length": "99999999"})
    assert status == 413


# ----------------------------------------------------------------------------- concurrency


def test_16_concurrent_streaming_clients_all_complete(server, client):
    """16 streams at once: each completes, and its text is what the same seeded request gives alone."""
    def one(i: int):
        c = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        text, reason, deadline = "", None, time.monotonic() + 60
        for chunk in c.completions.create(model="alpha", prompt=SENTENCES[i % 8][:7], max_tokens=24, seed=100 + i,
                                          stream=True, temperature=0.9):
            assert time.monotonic() < deadline
            for ch in chunk.choices:
                text += ch.text
                reason = ch.finish_reason or reason
        return text, reason

    batches_before = server.engine.stats.batches
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16), timeout=90))
    assert all(reason in ("stop", "length") for _, reason in results)
    stats = server.engine.stats
    assert stats.max_batch_jobs > 1 and stats.batches - batches_before < 16  # requests really shared batches
    for i, (text, reason) in enumerate(results):
        alone = client.completions.create(model="alpha", prompt=SENTENCES[i % 8][:7], max_tokens=24, seed=100 + i,
                                          temperature=0.9).choices[0]
        assert (text, reason) == (alone.text, alone.finish_reason)


# ----------------------------------------------------------------------------- the filter layer


@pytest.fixture(scope="module")
def constant_scorer():
    from instructkit.scoring import register

    @register("servetest-const")
    def _factory(arg):
        return lambda prompts, responses: [float(arg)] * len(responses)
    return "servetest-const"


def test_filters_block_prompts_and_annotate_outputs(models, constant_scorer):
    rules = [FilterRule("banned", "words", words=["zebra"], target="prompt"),
             FilterRule("letters", "regex", pattern="[a-z]", target="output", action="annotate"),
             FilterRule("rm", "score", scorer=f"{constant_scorer}:0.5", threshold=1.0, target="both", action="annotate")]
    _, bg = _serve(models, FilterSet(rules))
    with bg as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            c.completions.create(model="alpha", prompt="a Zebra is", max_tokens=5)
        assert info.value.code == "content_filter" and "banned" in info.value.message
        assert info.value.body["instructkit_filter"][0]["rule"] == "banned"
        r = c.completions.create(model="alpha", prompt="the cat", max_tokens=12, seed=1)
        assert r.model_extra["instructkit_filter"][0]["rule"] == "rm"  # the prompt's annotation
        hits = r.choices[0].model_extra["instructkit_filter"]
        assert {h["rule"] for h in hits} == {"letters", "rm"} and all(h["action"] == "annotate" for h in hits)
        assert "scored 0.5" in next(h["reason"] for h in hits if h["rule"] == "rm")
        assert r.choices[0].finish_reason != "content_filter" and r.choices[0].text


def test_filters_block_outputs_also_when_streaming(models, constant_scorer):
    _, bg = _serve(models, FilterSet([FilterRule("letters", "regex", pattern="[a-z]", target="output")]))
    with bg as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        r = c.completions.create(model="alpha", prompt="the cat", max_tokens=12, seed=1).choices[0]
        assert (r.text, r.finish_reason) == ("", "content_filter")
        assert r.model_extra["instructkit_filter"][0]["reason"].startswith("the output matched pattern /[a-z]/")
        chunks = list(c.completions.create(model="alpha", prompt="the cat", max_tokens=12, seed=1, stream=True))
        assert not re.search("[a-z]", "".join(ch.choices[0].text for ch in chunks))
        assert chunks[-1].choices[0].finish_reason == "content_filter"
    # a blocking score rule holds the stream back until the whole output has been scored
    _, bg = _serve(models, FilterSet([FilterRule("rm", "score", scorer=f"{constant_scorer}:-2", threshold=0.0,
                                                 target="output")]))
    with bg as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        chunks = list(c.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=8, seed=1, stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ""
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        assert "below the threshold 0" in chunks[-1].choices[0].model_extra["instructkit_filter"][0]["reason"]


# ----------------------------------------------------------------------------- playground hand-off


def test_playground_posts_comparisons_to_the_labeling_app(server, label_stub):
    record = {"prompt": "the cat", "completions": ["is red.", "is old."], "models": ["alpha", "beta"],
              "sampling": {"temperature": 0.7}}
    status, body = _raw(server.url, "POST", "/playground/compare", json.dumps(record).encode())
    assert status == 200 and body["status"] == 201
    path, sent, auth = label_stub.received[-1]
    assert path == "/api/projects/playground/outputs" and auth == "Bearer sekrit"
    assert {k: sent[k] for k in ("prompt", "completions", "models")} == {k: record[k] for k in ("prompt", "completions", "models")}
    status, body = _raw(server.url, "POST", "/playground/compare", json.dumps({**record, "completions": ["one"]}).encode())
    assert status == 400 and body["error"]["param"] == "completions"


def test_playground_reports_an_unreachable_labeling_app(models):
    _, bg = _serve(models, label_url="http://127.0.0.1:9/nothing")
    with bg as url:
        record = {"prompt": "p", "completions": ["a", "b"], "models": ["alpha", "beta"]}
        status, body = _raw(url, "POST", "/playground/compare", json.dumps(record).encode())
        assert status == 502 and "Could not reach the labeling app" in body["error"]["message"]
    _, bg = _serve(models)
    with bg as url:
        status, body = _raw(url, "POST", "/playground/compare", json.dumps(record).encode())
        assert status == 503 and "--label-url" in body["error"]["message"]


def test_playground_makes_a_comparison_task_in_the_labeling_app(models, tmp_path):
    """Against instructkit's own labeling app (a real one, SQLite): the pair becomes two outputs and
    a comparison task [alpha, beta] in the project that --label-url names."""
    pytest.importorskip("sqlalchemy")
    try:
        from sqlalchemy import select

        from instructkit.feedback import db as D
        from instructkit.feedback import security as S
        from instructkit.feedback.app import ServerThread
        from instructkit.feedback.app import create_app as create_label_app
    except ImportError as e:  # the app's own extra is missing
        pytest.skip(f"the labeling app is not importable: {e}")
    label_app = create_label_app(f"sqlite:///{tmp_path / 'labels.db'}")
    with label_app.state.sessions() as db:
        token = S.create_token(db, S.create_user(db, "root", "correct horse battery", "admin"))
        db.commit()
    with ServerThread(label_app) as label_url:
        status, _ = _raw(label_url, "POST", "/api/v1/projects", json.dumps({"name": "playground"}).encode(),
                         {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        assert status == 201
        _, bg = _serve(models, label_url=f"{label_url}/api/v1/projects/playground", label_token=token)
        with bg as url:
            record = {"prompt": "the cat", "completions": ["is red.", "is old."], "models": ["alpha", "beta"]}
            status, body = _raw(url, "POST", "/playground/compare", json.dumps(record).encode())
            assert status == 200, body
            assert body["response"]["tasks"] == {"created": 1}
            status, body = _raw(url, "POST", "/playground/compare",
                                json.dumps({**record, "models": ["alpha", "alpha"]}).encode())
            assert status == 400 and "two different models" in body["error"]["message"]
    with label_app.state.sessions() as db:
        task = db.scalars(select(D.Task).where(D.Task.kind == "comparison")).one()
        outputs = {o.model: o.text for o in db.scalars(select(D.Output))}
    assert task.key == "comparison:alpha|beta" and outputs == {"alpha": "is red.", "beta": "is old."}
    label_app.state.engine.dispose()


# ----------------------------------------------------------------------------- the CLI


def test_cli_serves(model_dirs, tmp_path, monkeypatch, capsys):
    """`instructkit serve DIR --port P --model NAME=DIR --filters F` end to end, in this process: only
    `uvicorn.run` is swapped for the same uvicorn server with a handle to stop it."""
    import socket

    import uvicorn

    from conftest import run_cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rules = tmp_path / "filters.yaml"
    rules.write_text("rules:\n  - {name: banned, kind: words, words: [zebra]}\n")
    running: list[uvicorn.Server] = []

    def run(app, host, port, **kw):
        running.append(uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")))
        running[0].run()
    monkeypatch.setattr(uvicorn, "run", run)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(out=run_cli(
        ["serve", model_dirs["alpha"], "--port", port, "--model", f"second={model_dirs['beta']}", "--filters", rules,
         "--max-n", "2"], capsys)))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (running and running[0].started):
            assert thread.is_alive() and time.monotonic() < deadline, result
            time.sleep(0.05)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=30)
        assert [m.id for m in c.models.list().data] == ["alpha", "second"]
        assert c.completions.create(model="second", prompt="the", max_tokens=3).choices[0].finish_reason
        with pytest.raises(openai.BadRequestError, match="banned"):
            c.completions.create(model="alpha", prompt="zebra", max_tokens=3)
        with pytest.raises(openai.BadRequestError, match="at most 2"):
            c.completions.create(model="alpha", prompt="the", max_tokens=3, n=3)
    finally:
        if running:
            running[0].should_exit = True
        thread.join(30)
    code, out, _ = result["out"]
    assert code == 0 and f"playground http://127.0.0.1:{port}/playground" in out and "1 rule(s)" in out


def test_cli_bad_arguments_are_input_errors(capsys):
    from conftest import run_cli

    code, _, err = run_cli(["serve"], capsys)
    assert code == 2 and "nothing to serve" in err
    code, _, err = run_cli(["serve", "/no/such/model"], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(["serve", "--model", "x"], capsys)
    assert code == 2 and "NAME=DIR" in err


# ----------------------------------------------------------------------------- the playground in Chromium


def test_playground_in_chromium(server, label_stub, chromium_browser):
    """Type a prompt, generate with both models side by side, send the pair to the labeling app."""
    context = chromium_browser.new_context(viewport={"width": 1200, "height": 720})
    try:
        page = context.new_page()
        page.goto(server.url + "/playground")
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        assert page.locator("#model-a").input_value() == "alpha"
        assert page.locator("#model-b").input_value() == "beta"
        page.fill("#prompt", "the dog is")
        page.fill("#temperature", "0.8")
        page.fill("#max_tokens", "24")
        page.fill("#seed", "5")
        page.click("#generate")
        page.wait_for_function("document.getElementById('meta-a').textContent.startsWith('finish_reason')"
                               " && document.getElementById('meta-b').textContent.startsWith('finish_reason')",
                               timeout=30_000)
        a, b = page.inner_text("#output-a"), page.inner_text("#output-b")
        page.click("#send")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Sent')", timeout=20_000)
        screenshot(page, "serve-playground")
    finally:
        context.close()
    _, sent, _ = label_stub.received[-1]
    assert sent["prompt"] == "the dog is" and sent["models"] == ["alpha", "beta"]
    shown = [s.strip() if not s.startswith("[empty output") else "" for s in (a, b)]
    assert [s.strip() for s in sent["completions"]] == shown
    assert sent["sampling"]["seed"] == 5 and sent["sampling"]["max_tokens"] == 24
