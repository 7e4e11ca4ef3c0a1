"""Dynamic batching: concurrent requests' images gathered into one model run, each answered with its own rows.

One inference thread takes the oldest waiting request and everything already queued behind it that fits in
``max_batch`` images. It waits for more only while a batch is forming: while requests are on their way
(admitted, their images still being read or decoded: ``expect``) or while the batch holds fewer requests than
the previous one did (concurrent clients: their next requests are coming), and never past ``max_delay`` after
the oldest request arrived. A lone client therefore never waits: with nothing else in sight its request runs at
once. A batch that reaches one of the ``preferred`` sizes with nothing more queued runs without waiting.
``max_batch=1`` switches batching off: each request runs alone, in arrival order. A request whose answer is
no longer wanted (``submit(wanted=...)``: client gone, deadline passed) is dropped before its model run.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch

log = logging.getLogger(__name__)

_STOP = object()  # queued by ``stop``: everything before it is served, then the thread ends
POLL_S = 0.001  # how often a forming batch checks whether requests are still on their way


class Dropped(Exception):
    """A request dropped before its model run: ``reason`` is what its ``wanted`` said (client gone, deadline)."""

    def __init__(self, reason: str):
        super().__init__(f"dropped before inference: {reason}")
        self.reason = reason


@dataclass
class _Request:
    images: torch.Tensor  # (k, C, H, W)
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    wanted: Optional[Callable[[], Optional[str]]] = None  # None while the answer is wanted, else why not
    arrived: float = field(default_factory=time.monotonic)


class Expected:
    """A request on its way to the batcher (``DynamicBatcher.expect``); ``arrived()`` once it is submitted or
    will never be (idempotent)."""

    def __init__(self, batcher: "DynamicBatcher"):
        self._batcher, self._open = batcher, True

    def arrived(self) -> None:
        if self._open:
            self._open = False
            with self._batcher._coming_lock:
                self._batcher._coming -= 1


class DynamicBatcher:
    """``await batcher.submit(images)`` -> ``(outputs, batch size)``: the model's outputs for those images, run
    with whatever else arrived meanwhile, and how many images that run held. ``on_batch(images, seconds)`` is
    called after each run and ``on_queue(seconds)`` with each request's wait before it (for metrics)."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 32, max_delay: float = 0.005,
                 on_batch: Optional[Callable[[int, float], None]] = None, preferred: Iterable[int] = (),
                 on_queue: Optional[Callable[[float], None]] = None):
        preferred = sorted(set(preferred))
        if max_batch < 1 or max_delay < 0 or any(size < 1 or size > max_batch for size in preferred):
            raise ValueError("max_batch must be at least 1, max_delay at least 0 and preferred sizes between 1 and "
                             "max_batch")
        self.run, self.max_batch, self.max_delay, self.on_batch = run, max_batch, max_delay, on_batch
        self.on_queue = on_queue  # called with each request's wait in the queue (seconds) as its run begins
        self.preferred = set(preferred)
        self._queue: queue.Queue = queue.Queue()  # _Request or _STOP
        self._held = None  # what did not fit in the last batch (a request, or the stop): the next batch's first
        self._coming, self._coming_lock = 0, threading.Lock()  # requests on their way (``expect``)
        self._previous_requests = 0  # requests in the last batch: several means concurrent clients
        self._thread = threading.Thread(target=self._serve_forever, name="mobilenetv3-batcher", daemon=True)
        self._warmup: list[torch.Tensor] = []
        self.ready = threading.Event()
        self.failed: Optional[Exception] = None  # what the warm-up raised: the thread then serves nothing

    def start(self, warmup: Iterable[torch.Tensor] = ()) -> None:
        """Start the inference thread; it first runs the model on each ``warmup`` batch (see ``warmup_batches``),
        and ``ready`` is set once it has."""
        self._warmup = list(warmup)
        self._thread.start()

    def wait_ready(self) -> None:
        """Wait for the warm-up; ``RuntimeError`` if the model failed on it."""
        self.ready.wait()
        if self.failed is not None:
            raise RuntimeError(f"the model failed on a warm-up batch: {self.failed}") from self.failed

    def stop(self) -> None:
        """Finish every request already submitted, then end the inference thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def expect(self) -> Expected:
        """Announce a request that will be submitted soon (admitted, its images being read or decoded): a
        forming batch waits for it (within ``max_delay``). Call ``arrived()`` on the result when it is submitted
        (``submit(expected=...)`` does) or given up."""
        with self._coming_lock:
            self._coming += 1
        return Expected(self)

    async def submit(self, images: torch.Tensor, expected: Optional[Expected] = None,
                     wanted: Optional[Callable[[], Optional[str]]] = None) -> tuple[torch.Tensor, int]:
        """Run ``images`` in the next batch with room; ``wanted()`` is asked just before the run: a reason
        instead of ``None`` drops the request (``Dropped``)."""
        loop = asyncio.get_running_loop()
        request = _Request(images, loop.create_future(), loop, wanted)
        if expected is not None:
            expected.arrived()  # first: a batch that finds it must not wait for its announcement
        self._queue.put(request)
        return await request.future

    def _serve_forever(self) -> None:
        try:
            for images in self._warmup:
                self.run(images)
        except Exception as err:  # noqa: BLE001 - handed to whoever waits for ``ready``
            self.failed = err
            return
        finally:
            self._warmup = []
            self.ready.set()
        while True:
            batch = self._gather()
            if batch is None:
                return
            self._run(batch)

    def _gather(self) -> Optional[list[_Request]]:
        """The next batch: the oldest request plus those queued or arriving while a batch forms, as many as fit;
        ``None`` at stop."""
        first = self._held if self._held is not None else self._queue.get()
        self._held = None
        if first is _STOP:
            return None
        batch, count = [first], len(first.images)
        deadline, previous = first.arrived + self.max_delay, self._previous_requests
        while count < self.max_batch:
            request = self._next(deadline, forming=len(batch) < previous)
            if request is None:
                break
            if request is _STOP or count + len(request.images) > self.max_batch:
                self._held = request  # a stop, or a request for the next batch: it goes first there
                break
            batch.append(request)
            count += len(request.images)
            if count in self.preferred and self._queue.empty():
                break
        self._previous_requests = len(batch)
        return batch

    def _next(self, deadline: float, forming: bool):
        """The next queued request; else, while a batch is ``forming`` (fewer requests than the last batch) or
        requests are on their way, and before ``deadline``, the next to come; ``None`` when there is nothing to
        wait for."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            pass
        while forming or self._coming > 0:
            waiting = deadline - time.monotonic()
            if waiting <= 0:
                return None
            try:
                return self._queue.get(timeout=min(waiting, POLL_S))
            except queue.Empty:
                continue
        return None

    def _run(self, batch: list[_Request]) -> None:
        batch = [request for request in batch if self._keep(request)]
        if not batch:
            return
        images = torch.cat([request.images for request in batch])
        if self.on_queue:
            now = time.monotonic()
            for request in batch:
                self.on_queue(now - request.arrived)
        started = time.perf_counter()
        try:
            outputs = torch.cat([self.run(chunk) for chunk in images.split(self.max_batch)])
        except Exception as err:  # noqa: BLE001 - the requests get the error; the thread keeps serving
            log.exception("model run failed on a batch of %d images", len(images))
            for request in batch:
                request.loop.call_soon_threadsafe(_fail, request.future, err)
            return
        if self.on_batch:
            self.on_batch(len(images), time.perf_counter() - started)
        for request, rows in zip(batch, outputs.split([len(request.images) for request in batch])):
            request.loop.call_soon_threadsafe(_answer, request.future, (rows, len(images)))

    @staticmethod
    def _keep(request: _Request) -> bool:
        """Whether the request's answer is still wanted; a dropped one is failed with ``Dropped``."""
        reason = "cancelled" if request.future.cancelled() else (request.wanted() if request.wanted else None)
        if reason is not None:
            request.loop.call_soon_threadsafe(_fail, request.future, Dropped(reason))
        return reason is None


def warmup_batches(shape: tuple[int, ...], max_batch: int) -> list[torch.Tensor]:
    """Zero batches of every size from ``max_batch`` down to 1. Run before the first request, they make the
    runtime prepare its kernels for each batch size (oneDNN builds them on first sight: a first request of a new
    size was slow) and bring the inference thread's heap to the size it keeps under load: without it the
    server's memory grew by about 15% over the first thousands of requests, then went up and down."""
    return [torch.zeros(size, *shape) for size in range(max_batch, 0, -1)]


def _answer(future: asyncio.Future, result) -> None:
    if not future.done():  # a client that went away has its future cancelled
        future.set_result(result)


def _fail(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
