"""The batcher: one background thread that turns concurrent requests into batched decoding.

Requests (`Job`s) wait in one queue. The thread takes the oldest, waits `batch_wait_ms` for more
to arrive, and runs every queued job for the same model (up to `max_batch_rows` rows) as one
`BatchDecoder` batch: sampling settings and budgets are per row, so any two requests for one model
are compatible. After each step it turns every row's tokens into text, ends rows whose text hit a
stop sequence or a blocking word/regex filter, and sends each job the text that is safe to show
(`Delta`) and, per row, how it ended (`Finished`). A batch runs until all its rows have ended;
jobs that arrive meanwhile form the next batch.

Events reach the request handlers through `Job.emit`, which the handler points at its own event
loop (`loop.call_soon_threadsafe`), so the thread never blocks on a slow client.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from instructkit.generation import left_pad
from instructkit.serve.decode import BatchDecoder


@dataclass
class Row:
    """One sequence to generate: a (prompt, choice) pair of a request."""
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    uniform: torch.Tensor
    """(max_tokens,) draws from U[0, 1): this row's randomness, fixed by the request's seed."""
    ignore_eos: bool = False
    """Keep sampling past EOS until max_tokens."""


@dataclass
class Delta:
    row: int
    text: str


@dataclass
class Finished:
    row: int
    text: str
    """The whole output text, stop sequence excluded; for a blocked row the text up to the block."""
    reason: str
    """"stop" (EOS or a stop sequence), "length" (budget spent) or "content_filter"."""
    tokens: int
    """Tokens sampled for the row (EOS included)."""
    filter_hit: object | None = None


@dataclass
class Failed:
    error: BaseException


@dataclass
class Job:
    model: str
    rows: list[Row]
    stop: list[str] = field(default_factory=list)
    holdback: list[str] = field(default_factory=list)
    """Strings never shown in part: stop sequences, and blocked words (matched case-insensitively)."""
    early_check: Callable[..., object | None] | None = None
    """Cheap output check `(text, final=False) -> hit | None` run on every step's text and on the final
    text before it is flushed; a hit ends the row with content_filter."""
    emit: Callable[[list], None] = lambda events: None
    """Receives each step's events for this job: Delta, Finished, Failed."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set by the handler when the client has gone: the job's rows end before the next step."""


@dataclass
class EngineStats:
    batches: int = 0
    rows: int = 0
    tokens: int = 0
    max_batch_rows: int = 0
    max_batch_jobs: int = 0


class QueueFull(Exception):
    pass


def _held_suffix(text: str, holdback: list[str]) -> int:
    """Length of the longest suffix of `text` that is a prefix of a holdback string (or all of it)."""
    low = text.lower()
    best = 0
    for s in holdback:
        s = s.lower()
        for n in range(min(len(s), len(low)), best, -1):
            if low.endswith(s[:n]):
                best = n
                break
    return best


class _RowText:
    """A row's tokens -> the text shown so far, with stop sequences trimmed and partial text held back."""

    def __init__(self, tokenizer, job: Job, index: int):
        self.tokenizer, self.job, self.index = tokenizer, job, index
        self.ids: list[int] = []
        self.sent = 0  # characters of the text already sent as deltas
        self.done = False

    def push(self, token: int, eos: int) -> tuple[str, Finished | None]:
        """Add a token: (new text safe to show, Finished if the row ended on text grounds)."""
        job = self.job
        if token == eos:
            return "", None
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
        if cut >= 0:
            return self._final(text[:cut], "stop")
        if job.early_check is not None:
            hit = job.early_check(text)
            if hit is not None:
                return "", Finished(self.index, text, "content_filter", len(self.ids), hit)
        end = len(text) - _held_suffix(text, job.holdback)
        while end > self.sent and text[end - 1] == "\ufffd":  # an incomplete UTF-8 sequence: wait for its rest
            end -= 1
        delta = text[self.sent:end]
        self.sent = max(self.sent, end)
        return delta, None

    def _final(self, text: str, reason: str, tokens: int | None = None) -> tuple[str, Finished]:
        delta = text[self.sent:] if len(text) > self.sent else ""
        self.sent = len(text)
        return delta, Finished(self.index, text, reason, len(self.ids) if tokens is None else tokens)

    def close(self, reason: str, tokens: int) -> tuple[str, Finished]:
        """The decoder ended the row (EOS or budget): flush what was held back, unless it is blocked."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.job.early_check is not None:
            hit = self.job.early_check(text, final=True)
            if hit is not None:
                return "", Finished(self.index, text, "content_filter", tokens, hit)
        return self._final(text, reason, tokens)


class Engine:
    """Serves `models` (name -> (model, tokenizer)) from one decoding thread."""

    def __init__(self, models: dict, *, max_batch_rows: int = 32, batch_wait_ms: float = 5.0, max_queued_rows: int = 1024):
        self.models = models
        self.max_batch_rows = max_batch_rows
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_queued_rows = max_queued_rows
        self.stats = EngineStats()
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="instructkit-batcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, job: Job) -> None:
        with self._cond:
            queued = sum(len(j.rows) for j in self._queue)
            if queued + len(job.rows) > self.max_queued_rows:
                raise QueueFull(f"the server has {queued} sequences queued; retry shortly")
            self._queue.append(job)
            self._cond.notify()

    # ------------------------------------------------------------------ batching

    def _next_batch(self) -> list[Job] | None:
        """Block for the oldest job, wait briefly for company, take all same-model jobs that fit."""
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            deadline = time.monotonic() + self.batch_wait
            while time.monotonic() < deadline and sum(len(j.rows) for j in self._queue) < self.max_batch_rows:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
                if self._stop:
                    return None
            first = self._queue.popleft()
            batch, rows, rest = [first], len(first.rows), collections.deque()
            while self._queue:
                job = self._queue.popleft()
                if job.model == first.model and rows + len(job.rows) <= self.max_batch_rows:
                    batch.append(job)
                    rows += len(job.rows)
                else:
                    rest.append(job)
            self._queue = rest
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            batch = [j for j in batch if not j.cancelled.is_set()]
            if not batch:
                continue
            try:
                self._run(batch)
            except BaseException as e:  # a failed batch fails its requests, never the thread
                for job in batch:
                    job.emit([Failed(e)])

    def _run(self, batch: list[Job]) -> None:
        model, tok = self.models[batch[0].model]
        eos = tok.eos_token_id
        rows: list[tuple[Job, int, Row]] = [(job, i, row) for job in batch for i, row in enumerate(job.rows)]
        B = len(rows)
        N = max(r.max_tokens for _, _, r in rows)
        input_ids, attention_mask = left_pad([r.prompt_ids for _, _, r in rows], tok.pad_token_id)
        uniform = torch.zeros((B, N))
        for b, (_, _, r) in enumerate(rows):
            uniform[b, : r.max_tokens] = r.uniform[: r.max_tokens]
        device = next(model.parameters()).device
        decoder = BatchDecoder(
            model, input_ids.to(device), attention_mask.to(device),
            temperature=torch.tensor([r.temperature for _, _, r in rows], device=device),
            top_p=torch.tensor([r.top_p for _, _, r in rows], device=device),
            top_k=torch.tensor([r.top_k for _, _, r in rows], device=device),
            budget=torch.tensor([r.max_tokens for _, _, r in rows], device=device),
            uniform=uniform.to(device), eos_token_id=eos,
            ignore_eos=torch.tensor([r.ignore_eos for _, _, r in rows], device=device),
        )
        texts = [_RowText(tok, job, i) for job, i, _ in rows]
        counts = [0] * B
        self.stats.batches += 1
        self.stats.rows += B
        self.stats.max_batch_rows = max(self.stats.max_batch_rows, B)
        self.stats.max_batch_jobs = max(self.stats.max_batch_jobs, len(batch))

        while True:
            for job in batch:  # clients that left: their rows stop costing compute
                if job.cancelled.is_set():
                    decoder.finish(b for b, (j, _, _) in enumerate(rows) if j is job and not texts[b].done)
            stepped = decoder.step()
            if stepped is None:
                break
            events: dict[int, list] = collections.defaultdict(list)
            ended = []
            for b, token in zip(*stepped):
                rt = texts[b]
                if rt.done:
                    continue
                counts[b] += 1
                self.stats.tokens += 1
                row = rows[b][2]
                delta, fin = rt.push(token, eos)
                ended_at_eos = token == eos and not row.ignore_eos
                if fin is None and (ended_at_eos or counts[b] >= row.max_tokens):
                    delta2, fin = rt.close("stop" if ended_at_eos else "length", counts[b])
                    delta += delta2
                job_events = events[id(rt.job)]
                if delta:
                    job_events.append(Delta(rt.index, delta))
                if fin is not None:
                    fin.tokens = counts[b]
                    job_events.append(fin)
                    rt.done = True
                    ended.append(b)
            if ended:
                decoder.finish(ended)
            for job in batch:
                if events.get(id(job)):
                    job.emit(events[id(job)])
        # rows the decoder ended without a final event (cancelled jobs): close them
        for b, rt in enumerate(texts):
            if not rt.done:
                rt.done = True
                delta, fin = rt.close("length", counts[b])
                rt.job.emit(([Delta(rt.index, delta)] if delta and not rt.job.cancelled.is_set() else []) + [fin])
