"""Micro-batching: concurrent requests share forward passes.

Request handlers `submit` work and await a future. One worker thread takes everything waiting in
the queue (up to `max_batch`; after the first request it waits up to `max_wait_ms` for more),
groups it by `SamplingKey` (model and every sampling setting: only requests that agree on all of
them can share one `generate` call), runs one batched generation per group and resolves the
futures. All torch work happens in that thread: forwards are not run concurrently, and the
adapter switch (`AdapterSet.use`) is process-wide state anyway.

While a batch is generating, new requests queue up and go together in the next one, so under load
batches fill up by themselves; `max_wait_ms` only matters for requests arriving at an idle server.
`batches` and `requests` count forward batches and the requests they served.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("tuneforge.serve")


@dataclass(frozen=True)
class SamplingKey:
    """What requests must agree on to share a batch."""

    model: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    raw: bool = False  # legacy completions: the prompt is continued as plain text


@dataclass
class BatchResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    confidence: float | None
    batch_size: int  # how many requests shared the forward pass


@dataclass
class _Item:
    key: SamplingKey
    prompt: object
    question: str | None  # set: also compute the calibrated confidence for this question
    future: Future = field(default_factory=Future)


_STOP = object()


class MicroBatcher:
    def __init__(self, models, max_batch: int = 8, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int], None] | None = None):
        """`models`: a ServedModels (anything with generate_detailed and confidence_many);
        `on_batch(size)` is called from the worker after each forward batch (for metrics)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.models = models
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.batches = 0  # forward batches run (one generate call each)
        self.requests = 0  # requests served by them
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tuneforge-batcher", daemon=True)
                self._thread.start()

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the batch in progress, fail what is still queued, stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)
        self._fail_pending(RuntimeError("the server is shutting down"))

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    # ---- submitting --------------------------------------------------------------------------

    def submit(self, key: SamplingKey, prompt, question: str | None = None) -> Future:
        """Queue one request; the future resolves to a BatchResult (or the generation's exception)."""
        if self._thread is None:
            self.start()
        item = _Item(key, prompt, question)
        with self._lock:  # nothing is queued behind the stop marker
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._queue.put(item)
        return item.future

    # ---- worker ------------------------------------------------------------------------------

    def _collect(self) -> tuple[list[_Item], bool]:
        first = self._queue.get()
        if first is _STOP:
            return [], True
        items = [first]
        deadline = time.monotonic() + self.max_wait
        stop = False
        while len(items) < self.max_batch:
            try:
                # Take what is already waiting at once; wait for newcomers only until the deadline.
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                stop = True
                break
            items.append(item)
        return items, stop

    def _run(self) -> None:
        while True:
            items, stop = self._collect()
            groups: dict[SamplingKey, list[_Item]] = {}
            for item in items:
                if item.future.set_running_or_notify_cancel():
                    groups.setdefault(item.key, []).append(item)
            for key, group in groups.items():
                self._run_group(key, group)
            if stop:
                return

    def _run_group(self, key: SamplingKey, group: list[_Item]) -> None:
        try:
            gens = self.models.generate_detailed(
                key.model, [i.prompt for i in group], max_tokens=key.max_tokens, temperature=key.temperature,
                top_p=key.top_p, stop=key.stop, seed=key.seed, raw=key.raw)
            confidences: dict[int, float] = {}
            asked = [n for n, i in enumerate(group) if i.question is not None]
            if asked:
                values = self.models.confidence_many([group[n].question for n in asked],
                                                     [gens[n].text for n in asked])
                confidences = dict(zip(asked, values))
        except BaseException as e:  # noqa: BLE001 - every waiting request must hear about it
            log.exception("generation failed for a batch of %d (model %s)", len(group), key.model)
            for item in group:
                item.future.set_exception(e)
            return
        self.batches += 1
        self.requests += len(group)
        if self.on_batch is not None:
            try:
                self.on_batch(len(group))
            except Exception:  # noqa: BLE001 - metrics must not break serving
                log.exception("batch callback failed")
        for n, (item, g) in enumerate(zip(group, gens)):
            item.future.set_result(BatchResult(g.text, g.prompt_tokens, g.completion_tokens, g.finish_reason,
                                               confidences.get(n), len(group)))

    def _fail_pending(self, error: Exception) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)
