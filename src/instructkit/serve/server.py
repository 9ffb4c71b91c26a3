"""The FastAPI app: OpenAI's /v1 routes over the batcher, the filter layer, the playground.

A request is validated (protocol.py), its prompt checked by the filters, turned into one `Row`
per (prompt, choice) and queued for the batcher (engine.py). Its handler then waits on an
asyncio queue that the batcher thread feeds, and answers with one JSON body or, with
`stream: true`, server-sent events in OpenAI's chunk format. Finished outputs go through the
output filters before they are shown.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from instructkit.errors import InputError
from instructkit.serve.config import ServeConfig
from instructkit.serve.engine import Delta, Engine, Failed, Finished, Job, QueueFull, Row
from instructkit.serve.filters import FilterHit, FilterSet
from instructkit.serve.protocol import (APIError, ChatCompletionRequest, CompletionRequest, new_id, now, parse_body,
                                        sse, usage)


@dataclass
class ServedModel:
    name: str
    path: str
    model: object
    tokenizer: object
    context_length: int
    created: int


def context_length(model) -> int:
    c = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        if isinstance(getattr(c, name, None), int):
            return getattr(c, name)
    return 2048


def load_models(cfg: ServeConfig) -> dict[str, ServedModel]:
    """name -> ServedModel for cfg.model and every NAME=DIR in cfg.models."""
    from instructkit.models import load_causal_lm

    pairs: list[tuple[str, str]] = []
    if cfg.model:
        pairs.append((cfg.name or Path(cfg.model).resolve().name, cfg.model))
    for spec in cfg.models:
        name, eq, path = str(spec).partition("=")
        if not eq or not name or not path:
            raise InputError(f"expected NAME=DIR, got {spec!r}", field="--model")
        pairs.append((name, path))
    if not pairs:
        raise InputError("nothing to serve: give MODEL_DIR or --model NAME=DIR", field="model")
    served: dict[str, ServedModel] = {}
    for name, path in pairs:
        if name in served:
            raise InputError(f"two models are named {name!r}; pass --name or NAME=DIR to tell them apart", field="--model")
        model, tok = load_causal_lm(path)
        served[name] = ServedModel(name, str(path), model.eval(), tok, context_length(model), now())
    return served


class Server:
    """Everything a running server holds: config, models, the batcher, the filters."""

    def __init__(self, cfg: ServeConfig, models: dict[str, ServedModel] | None = None, filters: FilterSet | None = None):
        self.cfg = cfg
        self.models = models if models is not None else load_models(cfg)
        self.filters = filters if filters is not None else (FilterSet.load(cfg.filters) if cfg.filters else FilterSet())
        self.engine = Engine({n: (m.model, m.tokenizer) for n, m in self.models.items()},
                             max_batch_rows=cfg.max_batch_rows, batch_wait_ms=cfg.batch_wait_ms,
                             max_queued_rows=cfg.max_queued_rows)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # for requests without a seed
        self._rng_lock = threading.Lock()
        self.label_token = cfg.label_token or os.environ.get("INSTRUCTKIT_LABEL_TOKEN", "")

    # ------------------------------------------------------------------ request -> job

    def model_for(self, name: str) -> ServedModel:
        if name not in self.models:
            raise APIError(404, f"The model '{name}' does not exist. This server has: {sorted(self.models)}.",
                           param="model", code="model_not_found")
        return self.models[name]

    def uniforms(self, rows: int, tokens: int, seed: int | None) -> torch.Tensor:
        """(rows, tokens) U[0, 1) draws: the request's own generator when it has a seed."""
        if seed is not None:
            return torch.rand((rows, tokens), generator=torch.Generator().manual_seed(seed))
        with self._rng_lock:
            return torch.rand((rows, tokens), generator=self.generator)

    def check_limits(self, req, served: ServedModel, prompt_ids: list[list[int]], max_tokens: int | None) -> int:
        """Validate sizes against the server's limits and the context; -> the token budget."""
        cfg = self.cfg
        if req.n > cfg.max_n:
            raise APIError(400, f"Invalid 'n': at most {cfg.max_n} choices per prompt on this server (got {req.n}).",
                           param="n", code="invalid_value")
        longest = max(len(p) for p in prompt_ids)
        room = served.context_length - longest
        if room < 1:
            raise APIError(400, f"This model's maximum context length is {served.context_length} tokens, but the "
                                f"prompt has {longest} tokens.", param="messages" if isinstance(req, ChatCompletionRequest)
                           else "prompt", code="context_length_exceeded")
        if max_tokens is None:  # chat without max_tokens: what fits
            return min(room, cfg.max_tokens_limit)
        if max_tokens > cfg.max_tokens_limit:
            raise APIError(400, f"Invalid 'max_tokens': at most {cfg.max_tokens_limit} on this server (got {max_tokens}).",
                           param="max_tokens", code="invalid_value")
        if max_tokens > room:
            raise APIError(400, f"This model's maximum context length is {served.context_length} tokens. However, you "
                                f"requested {longest + max_tokens} tokens ({longest} in the prompt; {max_tokens} for the "
                                f"completion). Please reduce the prompt or max_tokens.", param="max_tokens",
                           code="context_length_exceeded")
        return max_tokens

    def make_job(self, req, served: ServedModel, prompt_ids: list[list[int]], budget: int,
                 loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> Job:
        greedy = req.temperature == 0 or req.top_p == 0
        temperature = 0.0 if greedy else req.temperature
        top_p = 1.0 if greedy else req.top_p
        uniform = self.uniforms(len(prompt_ids) * req.n, budget, req.seed)
        rows = [Row(ids, budget, temperature, top_p, req.top_k, uniform[i * req.n + j], req.ignore_eos)
                for i, ids in enumerate(prompt_ids) for j in range(req.n)]
        job = Job(served.name, rows, stop=list(req.stop), holdback=list(req.stop) + self.filters.holdback_words,
                  early_check=self.filters.early_output_check())

        def emit(events: list) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, events)
            except RuntimeError:  # the handler's event loop is gone (shutdown): nobody is listening
                job.cancelled.set()
        job.emit = emit
        return job

    async def check_prompts(self, texts: list[str]) -> list[dict]:
        """Prompt filters: block -> 400 with the hits; annotate -> the hits, for the response."""
        if not self.filters:
            return []
        hits: list[FilterHit] = []
        for t in texts:
            hits += await run_in_threadpool(self.filters.check_prompt, t)
        blocked = [h for h in hits if h.action == "block"]
        if blocked:
            raise APIError(400, "The prompt was blocked by the server's content filter: "
                                + "; ".join(f"{h.rule}: {h.reason}" for h in blocked),
                           param="prompt", code="content_filter",
                           extra={"instructkit_filter": [h.to_dict() for h in hits]})
        return [h.to_dict() for h in hits]

    async def check_output(self, prompt: str, fin: Finished) -> tuple[str, str, list[dict]]:
        """Output filters on a finished row -> (text to show, finish_reason, hits)."""
        hits = [] if fin.filter_hit is None else [fin.filter_hit]
        if self.filters:
            found = (await run_in_threadpool(self.filters.check_outputs, [prompt], [fin.text]))[0]
            hits += [h for h in found if not any(h.rule == e.rule for e in hits)]
        blocked = any(h.action == "block" for h in hits)
        return ("" if blocked else fin.text), ("content_filter" if blocked else fin.reason), [h.to_dict() for h in hits]


# ----------------------------------------------------------------------------- the app


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes (checked on Content-Length and while reading)."""
    declared = request.headers.get("content-length")
    try:
        declared_n = int(declared) if declared is not None else None
    except ValueError:
        raise APIError(400, "invalid Content-Length header", code="invalid_request") from None
    too_big = APIError(413, f"Request body too large: the limit is {limit} bytes"
                            + (f", this one has {declared_n}." if declared_n is not None else "."),
                       code="request_too_large")
    if declared_n is not None and declared_n > limit:
        raise too_big  # before reading a byte of it
    chunks, size = [], 0
    async for chunk in request.stream():  # a chunked body declares no length: count as it comes
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _completion_prompts(req: CompletionRequest, tok, cfg: ServeConfig) -> tuple[list[str], list[list[int]]]:
    """The prompt field (a string, strings, token ids or lists of them) -> (texts, token ids)."""
    p = req.prompt
    if isinstance(p, str):
        items: list = [p]
    elif p and all(isinstance(x, int) for x in p):
        items = [list(p)]
    else:
        items = list(p)
    if not items:
        raise APIError(400, "Invalid 'prompt': it must not be an empty list.", param="prompt", code="invalid_value")
    if len(items) > cfg.max_prompts:
        raise APIError(400, f"Invalid 'prompt': at most {cfg.max_prompts} prompts per request (got {len(items)}).",
                       param="prompt", code="invalid_value")
    texts, ids = [], []
    vocab = len(tok)
    for item in items:
        if isinstance(item, str):
            texts.append(item)
            ids.append(tok(item, add_special_tokens=False)["input_ids"])
        else:
            if any(not 0 <= t < vocab for t in item):
                raise APIError(400, f"Invalid 'prompt': token ids must be in [0, {vocab}).", param="prompt",
                               code="invalid_value")
            texts.append(tok.decode(item))
            ids.append(list(item))
    # an empty prompt continues from EOS (the document boundary), as OpenAI's does
    ids = [x if x else [tok.eos_token_id] for x in ids]
    return texts, ids


def _chat_prompt(req: ChatCompletionRequest, tok) -> tuple[str, str]:
    """-> (the rendered prompt the model sees, the messages' text for the filters)."""
    from types import SimpleNamespace

    from instructkit.data.encode import render_prompt

    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    template = SimpleNamespace(kind="chat" if getattr(tok, "chat_template", None) else "plain", system="")
    try:
        rendered = render_prompt("", tok, template, messages)
    except Exception as e:  # a template may reject a conversation (e.g. roles out of order)
        raise APIError(400, f"The chat template rejected these messages: {e}", param="messages",
                       code="invalid_value") from None
    return rendered, "\n".join(m["content"] for m in messages)


def create_app(server: Server) -> FastAPI:
    cfg = server.cfg

    @asynccontextmanager
    async def lifespan(app):
        server.engine.start()
        yield
        server.engine.stop()

    app = FastAPI(title="instructkit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e: StarletteHTTPException):
        kind = "not_found" if e.status_code == 404 else "method_not_allowed" if e.status_code == 405 else None
        message = {404: f"Unknown route {request.method} {request.url.path}.",
                   405: f"Method {request.method} is not allowed on {request.url.path}."}.get(e.status_code, str(e.detail))
        return error_response(APIError(e.status_code, message, code=kind))

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        return error_response(APIError(500, f"The server had an error while processing your request: {type(e).__name__}: {e}",
                                       type="server_error", code="internal_error"))

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/playground")

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": sorted(server.models)}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [_model_card(m) for m in server.models.values()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        return _model_card(server.model_for(name))

    @app.get("/instructkit/stats")
    async def stats():
        s = server.engine.stats
        return {"batches": s.batches, "rows": s.rows, "tokens": s.tokens, "max_batch_rows": s.max_batch_rows,
                "max_batch_jobs": s.max_batch_jobs, "filters": server.filters.to_dict()}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse_body(await read_body(request, cfg.max_body_bytes), CompletionRequest)
        served = server.model_for(req.model)
        texts, ids = _completion_prompts(req, served.tokenizer, cfg)
        budget = server.check_limits(req, served, ids, req.max_tokens)
        prompt_hits = await server.check_prompts(texts)
        return await _run(request, req, served, texts, ids, budget, prompt_hits, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse_body(await read_body(request, cfg.max_body_bytes), ChatCompletionRequest)
        served = server.model_for(req.model)
        rendered, text = _chat_prompt(req, served.tokenizer)
        ids = [served.tokenizer(rendered, add_special_tokens=False)["input_ids"] or [served.tokenizer.eos_token_id]]
        budget = server.check_limits(req, served, ids, req.budget)
        prompt_hits = await server.check_prompts([text])
        return await _run(request, req, served, [text], ids, budget, prompt_hits, chat=True)

    async def _run(request, req, served, texts, ids, budget, prompt_hits, *, chat: bool):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        job = server.make_job(req, served, ids, budget, loop, queue)
        try:
            server.engine.submit(job)
        except QueueFull as e:
            raise APIError(429, str(e), type="rate_limit_error", code="server_busy") from None
        meta = dict(id=new_id("chatcmpl" if chat else "cmpl"), created=now(), model=served.name)
        prompt_tokens = sum(len(x) for x in ids)
        if req.stream:
            return StreamingResponse(_stream(job, queue, req, texts, meta, prompt_tokens, prompt_hits, chat),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            outputs = await _collect(job, queue, req, texts)
        finally:
            job.cancelled.set()
        choices = []
        for i, (text, reason, hits, _) in enumerate(outputs):
            if not chat and req.echo:
                text = texts[i // req.n] + text
            choice = ({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                       "finish_reason": reason} if chat else
                      {"text": text, "index": i, "logprobs": None, "finish_reason": reason})
            if hits:
                choice["instructkit_filter"] = hits
            choices.append(choice)
        body = {"id": meta["id"], "object": "chat.completion" if chat else "text_completion", "created": meta["created"],
                "model": meta["model"], "choices": choices,
                "usage": usage(prompt_tokens, sum(o[3] for o in outputs))}
        if prompt_hits:
            body["instructkit_filter"] = prompt_hits
        return JSONResponse(body)

    async def _collect(job: Job, queue: asyncio.Queue, req, texts) -> list[tuple[str, str, list, int]]:
        """Wait for every row of a non-streaming job -> (text, finish_reason, hits, tokens) per row."""
        done: dict[int, tuple] = {}
        while len(done) < len(job.rows):
            for ev in await queue.get():
                if isinstance(ev, Failed):
                    raise ev.error
                if isinstance(ev, Finished):
                    text, reason, hits = await server.check_output(texts[ev.row // req.n], ev)
                    done[ev.row] = (text, reason, hits, ev.tokens)
        return [done[i] for i in range(len(job.rows))]

    async def _stream(job: Job, queue: asyncio.Queue, req, texts, meta, prompt_tokens, prompt_hits, chat: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"
        # a blocking score rule must see a whole output before any of it is shown
        buffer = server.filters.blocks_output_by_score

        def chunk(i: int, text: str | None, reason: str | None = None, hits=None, first: bool = False) -> bytes:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({} if text is None else {"content": text})
                c = {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}
            else:
                c = {"text": text or "", "index": i, "logprobs": None, "finish_reason": reason}
            if hits:
                c["instructkit_filter"] = hits
            body = {"id": meta["id"], "object": obj, "created": meta["created"], "model": meta["model"], "choices": [c]}
            if first and i == 0 and prompt_hits:
                body["instructkit_filter"] = prompt_hits
            return sse(body)

        completion_tokens = 0
        try:
            for i in range(len(job.rows)):  # opening chunks: the assistant role, an echo, prompt annotations
                if chat:
                    yield chunk(i, None, first=True)
                elif req.echo or (prompt_hits and i == 0):
                    yield chunk(i, texts[i // req.n] if req.echo else "", first=True)
            finished = 0
            while finished < len(job.rows):
                for ev in await queue.get():
                    if isinstance(ev, Failed):
                        e = ev.error if isinstance(ev.error, APIError) else APIError(
                            500, f"generation failed: {type(ev.error).__name__}: {ev.error}", type="server_error",
                            code="internal_error")
                        yield sse(e.body())
                        return
                    if isinstance(ev, Delta):
                        if not buffer:  # else the whole text goes out once it has passed the filters
                            yield chunk(ev.row, ev.text)
                    elif isinstance(ev, Finished):
                        finished += 1
                        completion_tokens += ev.tokens
                        text, reason, hits = await server.check_output(texts[ev.row // req.n], ev)
                        if buffer and reason != "content_filter" and text:
                            yield chunk(ev.row, text)
                        yield chunk(ev.row, None, reason, hits)
            if (req.stream_options or {}).get("include_usage"):
                yield sse({"id": meta["id"], "object": obj, "created": meta["created"], "model": meta["model"],
                           "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
            yield sse("[DONE]")
        finally:
            job.cancelled.set()  # the client left (or we are done): free the rows

    # ------------------------------------------------------------------ playground

    @app.get("/playground", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse(resources.files("instructkit.serve").joinpath("playground.html").read_text(encoding="utf-8"))

    @app.get("/playground/config")
    async def playground_config():
        return {"models": sorted(server.models), "label_url": cfg.label_url or None,
                "max_tokens_limit": cfg.max_tokens_limit}

    @app.post("/playground/compare")
    async def compare(request: Request):
        record = _comparison_record(await read_body(request, cfg.max_body_bytes))
        if not cfg.label_url:
            raise APIError(503, "No labeling app is configured: start the server with --label-url URL.",
                           type="server_error", code="label_url_not_configured")
        status, answer = await run_in_threadpool(send_comparison, cfg.label_url, record, server.label_token)
        return {"sent": True, "label_url": cfg.label_url, "status": status, "response": answer, "record": record}

    return app


def _model_card(m: ServedModel) -> dict:
    return {"id": m.name, "object": "model", "created": m.created, "owned_by": "instructkit",
            "context_length": m.context_length}


def _comparison_record(raw: bytes) -> dict:
    """Validate the playground's pair -> the record posted to the labeling app."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"We could not parse the JSON body of your request ({e}).", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    prompt, completions, models = data.get("prompt"), data.get("completions"), data.get("models")
    if not isinstance(prompt, str) or not prompt:
        raise APIError(400, "'prompt' must be a non-empty string.", param="prompt", code="invalid_value")
    for name, v in (("completions", completions), ("models", models)):
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)):
            raise APIError(400, f"'{name}' must be a list of two strings.", param=name, code="invalid_value")
    record = {"prompt": prompt, "completions": completions, "models": models, "source": "instructkit-playground"}
    if isinstance(data.get("sampling"), dict):
        record["sampling"] = data["sampling"]
    return record


# a project of instructkit's own labeling app (src/instructkit/feedback/api.py)
_LABEL_APP_PROJECT = re.compile(r"/api/v1/projects/[^/]+/?$")


def send_comparison(label_url: str, record: dict, token: str = "") -> tuple[int, object]:
    """Hand the playground's pair to the labeling app -> (HTTP status, its answer).

    label_url is either a project of instructkit's labeling app, http://HOST:PORT/api/v1/projects/NAME:
    the two outputs are imported ({"records": [{"prompt", "completion", "model"} x 2]} to .../outputs)
    and a comparison task is made for them ({"kind": "comparison", "models": [A, B]} to .../tasks);
    or any other URL, which receives the comparison record itself: {"prompt", "completions": [a, b],
    "models": [A, B], "source", "sampling"?}."""
    if not _LABEL_APP_PROJECT.search(urllib.parse.urlparse(label_url).path):
        return _post_json(label_url, record, token)
    if record["models"][0] == record["models"][1]:
        raise APIError(400, "The labeling app compares two different models: pick another model for A or B.",
                       param="models", code="invalid_value")
    base = label_url.rstrip("/")
    meta = {k: record[k] for k in ("source", "sampling") if k in record}
    outputs = [{"prompt": record["prompt"], "completion": c, "model": m, **meta}
               for c, m in zip(record["completions"], record["models"])]
    _, imported = _post_json(base + "/outputs", {"records": outputs}, token)
    status, tasks = _post_json(base + "/tasks", {"kind": "comparison", "models": record["models"]}, token)
    return status, {"outputs": imported, "tasks": tasks}


def _post_json(url: str, record: dict, token: str = "", timeout: float = 10.0) -> tuple[int, object]:
    """POST the record to the labeling app -> (status, parsed answer); 502 if it fails or refuses."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(record).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read(1 << 20)
            status = resp.status
    except urllib.error.HTTPError as e:
        detail = e.read(2000).decode("utf-8", "replace")
        raise APIError(502, f"The labeling app at {url} answered {e.code}: {detail}", type="server_error",
                       code="label_app_error") from None
    except (urllib.error.URLError, OSError) as e:
        raise APIError(502, f"Could not reach the labeling app at {url}: {getattr(e, 'reason', e)}",
                       type="server_error", code="label_app_unreachable") from None
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode("utf-8", "replace")[:2000]


# ----------------------------------------------------------------------------- running


class BackgroundServer:
    """uvicorn serving `app` from a thread on a socket already bound (no race for the port).

    with BackgroundServer(app) as url: ...  # url = "http://127.0.0.1:PORT"
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_keep_alive=30,
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def serve(cfg: ServeConfig) -> None:
    """Load the models and serve until interrupted."""
    import uvicorn

    server = Server(cfg)
    app = create_app(server)
    print(f"instructkit serve: {', '.join(f'{n} <- {m.path}' for n, m in server.models.items())}", flush=True)
    print(f"  API http://{cfg.host}:{cfg.port}/v1   playground http://{cfg.host}:{cfg.port}/playground"
          + (f"   filters: {len(server.filters.rules)} rule(s)" if server.filters else ""), flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_keep_alive=30)
