"""Dynamic batching: concurrent requests' images gathered into one model run, each answered with its own rows.

One inference thread takes the oldest waiting request and gathers more until the batch holds ``max_batch``
images or the oldest has waited ``max_delay`` seconds, runs the model once and hands every request its slice.
A request never waits longer than the delay for company (it may wait for the model to finish the batch
before). ``max_batch=1`` switches batching off: each request runs alone, in arrival order.
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


@dataclass
class _Request:
    images: torch.Tensor  # (k, C, H, W)
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """``await batcher.submit(images)`` -> ``(outputs, batch size)``: the model's outputs for those images, run
    with whatever else arrived meanwhile, and how many images that run held. ``on_batch(images, seconds)`` is
    called after each run (for metrics)."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 32, max_delay: float = 0.005,
                 on_batch: Optional[Callable[[int, float], None]] = None):
        if max_batch < 1 or max_delay < 0:
            raise ValueError("max_batch must be at least 1 and max_delay at least 0")
        self.run, self.max_batch, self.max_delay, self.on_batch = run, max_batch, max_delay, on_batch
        self._queue: queue.Queue = queue.Queue()  # _Request or _STOP
        self._held = None  # what did not fit in the last batch (a request, or the stop): the next batch's first
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

    async def submit(self, images: torch.Tensor) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        request = _Request(images, loop.create_future(), loop)
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
        """The next batch: the oldest request plus those that arrive before its deadline and fit; ``None`` at stop."""
        first = self._held if self._held is not None else self._queue.get()
        self._held = None
        if first is _STOP:
            return None
        batch, count = [first], len(first.images)
        deadline = first.arrived + self.max_delay
        while count < self.max_batch:
            try:
                waiting = deadline - time.monotonic()
                request = self._queue.get(timeout=waiting) if waiting > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if request is _STOP or count + len(request.images) > self.max_batch:
                self._held = request  # a stop, or a request for the next batch: it goes first there
                break
            batch.append(request)
            count += len(request.images)
        return batch

    def _run(self, batch: list[_Request]) -> None:
        images = torch.cat([request.images for request in batch])
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
