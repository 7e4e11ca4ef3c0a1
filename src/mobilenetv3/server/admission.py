"""Admission control: how much work the server takes on, for how long, and for whom.

- ``Admission``: at most ``max_queue`` inference requests in progress (admitted, not yet answered); one more is
  refused at once, before its body is read, with 503 and ``Retry-After``.
- ``Work``: one admitted request. It has a deadline (the server's ``--timeout-s``, which the header
  ``X-Request-Timeout-Ms`` may shorten); its body is read within it (408 when the body does not arrive in time);
  once the body is in, a watcher notices the client leaving. ``still_wanted()`` says why the work is no longer
  wanted (deadline passed, client gone), and is asked before decoding and before inference: a client that gave
  up costs no decoding and no model run.
- ``DecodeLanes``: decoding in bounded thread pools, a light lane for ordinary requests and a one-thread heavy
  lane for costly ones (many pixels, large bodies), so that a costly upload neither starves small requests
  nor takes more than one core.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Callable, Optional

from .uploads import BadRequest

log = logging.getLogger(__name__)

TIMEOUT_HEADER = "x-request-timeout-ms"
RETRY_AFTER_S = 1
HEAVY_PIXELS = 4_000_000  # a request decoding more pixels than this (a 2000x2000 photo) takes the heavy lane
HEAVY_BYTES = 1 << 20  # a v2 body larger than this is parsed in the heavy lane


class Refused(BadRequest):
    """A refusal with headers: 503 with ``Retry-After`` (overload), 408 with ``Connection: close`` (slow body)."""

    def __init__(self, status: int, message: str, headers: dict[str, str]):
        super().__init__(status, message)
        self.headers = headers


class ClientGone(Exception):
    """The client closed its connection before its answer: nothing to answer, and no work to do for it."""


class Expired(Refused):
    """The request's deadline passed before it was answered."""

    def __init__(self, timeout_s: float, stage: str):
        super().__init__(503, f"the request was not answered within its deadline of {timeout_s * 1000:g} ms "
                              f"(dropped {stage})", {"Retry-After": str(RETRY_AFTER_S)})


class Work:
    """One admitted request: its deadline and whether its client is still there."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.gone = False  # set by the disconnect watcher (event loop); read by the decoding and batching threads

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def still_wanted(self) -> Optional[str]:
        """``None`` while the answer is still wanted, else why not (``client_gone``, ``deadline``)."""
        if self.gone:
            return "client_gone"
        if time.monotonic() >= self.deadline:
            return "deadline"
        return None

    def check(self, stage: str) -> None:
        """Raises ``ClientGone`` or ``Expired`` when the work is no longer wanted (``stage``: where it stopped)."""
        reason = self.still_wanted()
        if reason == "client_gone":
            raise ClientGone(f"the client went away before {stage}")
        if reason == "deadline":
            raise Expired(self.timeout_s, f"before {stage}")

    async def read_body(self, request, limit: int) -> bytes:
        """The body, within the deadline (else 408) and ``limit`` bytes (else 413); a client gone mid-upload is
        ``ClientGone``."""
        from starlette.requests import ClientDisconnect

        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"upload of {int(declared)} bytes is over the limit of {limit} bytes")
        chunks: list[bytes] = []

        async def read():
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(413, f"upload is over the limit of {limit} bytes")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(read(), max(self.remaining(), 0))  # asyncio.timeout is Python 3.11's
        except asyncio.TimeoutError:
            raise Refused(408, f"the request body did not arrive within {self.timeout_s:g} s "
                               f"({sum(map(len, chunks))} bytes came)", {"Connection": "close"}) from None
        except ClientDisconnect:
            raise ClientGone(f"the client went away during the upload ({sum(map(len, chunks))} bytes came)") \
                from None
        return b"".join(chunks)

    def watch(self, request) -> None:
        """Once the body is in: notice the client leaving (``gone``) until ``close``."""
        async def watch():
            while (await request.receive())["type"] != "http.disconnect":
                pass
            self.gone = True

        self._watcher = asyncio.ensure_future(watch())

    def close(self) -> None:
        watcher = getattr(self, "_watcher", None)
        if watcher is not None:
            watcher.cancel()


class Admission:
    """At most ``max_queue`` requests in progress; each gets ``timeout_s`` (or less, if it asks) to be answered."""

    def __init__(self, max_queue: int, timeout_s: float):
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.in_progress = 0  # touched on the event loop only

    @asynccontextmanager
    async def admit(self, request):
        """``async with admission.admit(request) as work``: ``Refused`` (503 + Retry-After) when full."""
        if self.in_progress >= self.max_queue:
            raise Refused(503, f"the server is at its limit of {self.max_queue} requests in progress; retry later",
                          {"Retry-After": str(RETRY_AFTER_S)})
        work = Work(self.request_timeout(request.headers.get(TIMEOUT_HEADER)))
        self.in_progress += 1
        try:
            yield work
        finally:
            self.in_progress -= 1
            work.close()

    def request_timeout(self, asked: Optional[str]) -> float:
        """The server's timeout, or the shorter one the client asked for in ``X-Request-Timeout-Ms``."""
        if asked is None:
            return self.timeout_s
        if not asked.strip().isdigit() or int(asked) < 1:
            raise BadRequest(400, f"{TIMEOUT_HEADER} must be a whole number of milliseconds of at least 1, "
                                  f"not {asked!r}")
        return min(self.timeout_s, int(asked) / 1000)


class DecodeLanes:
    """``await lanes.run(work, function, *args, heavy=...)``: ``function(*args)`` in a decoding thread, unless
    ``work`` is no longer wanted by the time a thread is free. Light: ``threads`` threads; heavy: one, at the
    lowest CPU priority (on Linux, where a thread has its own): a costly decode then takes what CPU the model
    runs leave, and slows the small requests' inference less (at normal priority, a 40-megapixel PNG delayed
    small requests beside it by 130 ms on a busy 2-core machine)."""

    def __init__(self, threads: int):
        self.light = ThreadPoolExecutor(threads, thread_name_prefix="mobilenetv3-decode")
        self.heavy = ThreadPoolExecutor(1, thread_name_prefix="mobilenetv3-decode-heavy", initializer=_lowest_priority)

    async def run(self, work: Optional[Work], function: Callable, *args, heavy: bool = False, stage: str = "decoding"):
        def job():
            if work is not None:
                work.check(stage)
            return function(*args)

        return await asyncio.get_running_loop().run_in_executor(self.heavy if heavy else self.light, job)

    def shutdown(self) -> None:
        self.light.shutdown()
        self.heavy.shutdown()


def _lowest_priority() -> None:
    """Nice 19 for the calling thread (Linux: nice is per thread there; elsewhere it would be the process's)."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:  # not allowed: the thread keeps its priority
            pass
