"""Connections that cannot hold the server open: a request's headers must arrive within a time limit.

uvicorn closes a keep-alive connection that stays idle after an answer (``timeout_keep_alive``), but nothing
else: a connection that never sends a byte, or sends its headers a byte at a time (slow-loris), stays open for
ever, each one a socket and a protocol object. ``http_protocol(header_timeout_s)`` is uvicorn's own HTTP
protocol (httptools, or h11 without it) with one more rule: from the moment a connection opens, or a new
request's first bytes arrive, its headers must be complete within ``header_timeout_s``, or the connection is
closed. A slow body is the app's to end (``admission.Work.read_body``: 408 once the request's deadline passes).
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Optional

log = logging.getLogger(__name__)


class _HeaderDeadline:
    """Mixed into a uvicorn HTTP protocol class (``self.cycle``: the request being answered, created once its
    headers are complete; ``self.loop``, ``self.transport``)."""

    def __init__(self, *args, header_timeout_s: float = 10.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._header_timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if self._header_timer is None and (before is None or before.response_complete):
            self._arm()  # the first bytes of a new request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not before:  # its headers are complete: a request (cycle) was made of them
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.debug("closing a connection whose request headers did not arrive within %g s",
                      self.header_timeout_s)
            self.transport.close()


def _protocol_class():
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # httptools missing: uvicorn's pure-Python protocol
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


class HeaderDeadlineProtocol(_HeaderDeadline, _protocol_class()):
    """uvicorn's HTTP protocol with a deadline on each request's headers."""


def http_protocol(header_timeout_s: float):
    """What to give uvicorn as ``http=``: its protocol, closing connections whose headers are late."""
    return functools.partial(HeaderDeadlineProtocol, header_timeout_s=header_timeout_s)
