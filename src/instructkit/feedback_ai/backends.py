"""Where responses come from: a local model directory, or any OpenAI-compatible server (such as
`instructkit serve`) over HTTP. Both answer `complete(prompts, n, params, seed)` with n samples per
prompt. The HTTP client batches prompts per request, retries with exponential backoff on
connection errors, timeouts, 429 and 5xx, and reports any other error as an InputError."""
from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from instructkit.errors import InputError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ContextTooLong(InputError):
    """The server refused a prompt longer than its model's context (OpenAI's context_length_exceeded)."""


def is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


class HTTPClient:
    """POST/GET JSON with retries. `base` is the server root or its /v1 root."""

    def __init__(self, base: str, *, timeout: float = 120.0, retries: int = 5, backoff: float = 0.5,
                 api_key: str | None = None, sleep=time.sleep):
        base = base.rstrip("/")
        self.base = base[:-3] if base.endswith("/v1") else base
        self.timeout, self.retries, self.backoff, self.sleep = timeout, retries, backoff, sleep
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        host = urllib.parse.urlsplit(self.base).hostname or ""
        # a loopback server is never reached through a proxy the environment may name
        handlers = [urllib.request.ProxyHandler({})] if host in LOOPBACK else []
        self.opener = urllib.request.build_opener(*handlers)
        self.requests = 0  # attempts made (tests and the cache's "re-runs cost nothing" check read it)

    def request(self, route: str, body: dict | None = None) -> dict:
        url = self.base + route
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            self.requests += 1
            wait = self.backoff * 2 ** attempt * (1 + 0.25 * random.random())
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
                with self.opener.open(req, timeout=self.timeout) as r:
                    return json.loads(r.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", "replace")
                try:
                    err = json.loads(text)["error"]
                    msg, code = err["message"], err.get("code")
                except (ValueError, KeyError, TypeError):
                    msg, code = text[:300], None
                if e.code not in (408, 409, 429) and e.code < 500:
                    cls = ContextTooLong if code == "context_length_exceeded" else InputError
                    raise cls(f"{url}: HTTP {e.code}: {msg}", field="endpoint") from None
                last = f"HTTP {e.code}: {msg}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = max(wait, min(float(retry_after), 60.0))
            except (urllib.error.URLError, OSError, ValueError) as e:  # refused, reset, timeout, bad JSON
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.retries:
                self.sleep(wait)
        raise InputError(f"{url}: no answer after {self.retries + 1} attempts ({last})", field="endpoint")

    def model_names(self) -> list[str]:
        return [m["id"] for m in self.request("/v1/models").get("data", [])]


class EndpointModel:
    """An OpenAI-compatible server's model: /v1/completions (plain prompts, batched) or
    /v1/chat/completions (chat: one conversation per request)."""

    def __init__(self, url: str, name: str = "", *, chat: bool = False, system: str = "", max_prompts: int = 32,
                 client: HTTPClient | None = None):
        self.client = client or HTTPClient(url)
        if not name:
            names = self.client.model_names()
            if len(names) != 1:
                raise InputError(f"the server has {len(names)} models ({', '.join(names)}); pass --model-name",
                                 field="model-name")
            name = names[0]
        self.name, self.chat, self.system, self.max_prompts = name, chat, system, max_prompts
        self.id = f"{self.client.base}#{name}"

    def complete(self, prompts: list[str], n: int, params, seed: int = 0) -> list[list[str]]:
        """n responses per prompt, in prompt order."""
        out: list[list[str]] = []
        common = {"model": self.name, "n": n, "max_tokens": max(1, params.max_new_tokens),
                  "temperature": params.temperature, "top_p": params.top_p, "seed": seed}
        if self.chat:
            for p in prompts:
                msgs = ([{"role": "system", "content": self.system}] if self.system else []) + [
                    {"role": "user", "content": p}]
                body = self.client.request("/v1/chat/completions", {**common, "messages": msgs})
                choices = sorted(body["choices"], key=lambda c: c["index"])
                out.append([c["message"]["content"] or "" for c in choices])
            return out
        for i in range(0, len(prompts), self.max_prompts):
            chunk = prompts[i:i + self.max_prompts]
            body = self.client.request("/v1/completions", {**common, "prompt": chunk})
            choices = sorted(body["choices"], key=lambda c: c["index"])
            if len(choices) != len(chunk) * n:
                raise InputError(f"expected {len(chunk) * n} choices, the server sent {len(choices)}", field="endpoint")
            out += [[choices[j * n + k]["text"] for k in range(n)] for j in range(len(chunk))]
        return out


class LocalModel:
    """A local causal-LM directory, sampled with instructkit.generation (prompts rendered by the template)."""

    def __init__(self, path: str, *, template: str = "plain", system: str = "", batch_size: int = 64):
        from instructkit.config import TemplateConfig
        from instructkit.models import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(path)
        self.model.eval()
        self.template = TemplateConfig(kind=template, system=system)
        self.batch_size = batch_size
        self.name = Path(path).name
        self.id = str(Path(path).resolve())

    def complete(self, prompts: list[str], n: int, params, seed: int = 0) -> list[list[str]]:
        from instructkit.data.encode import render_prompt
        from instructkit.generation import generate_texts

        rendered = [render_prompt(p, self.tokenizer, self.template) for p in prompts]
        samples = [generate_texts(self.model, self.tokenizer, rendered, params, batch_size=self.batch_size,
                                  seed=seed + k) for k in range(n)]  # n lists of len(prompts)
        return [[samples[k][i] for k in range(n)] for i in range(len(prompts))]


def open_model(model: str, *, endpoint: str = "", template: str = "plain", system: str = "", batch_size: int = 64):
    """A local directory, or with `endpoint` a model name served there (empty: the only one)."""
    if endpoint:
        return EndpointModel(endpoint, model, chat=template == "chat", system=system)
    if not model:
        raise InputError("missing required flag (a model directory, or --endpoint URL)", field="--model")
    return LocalModel(model, template=template, system=system, batch_size=batch_size)
