"""Every answer carries a request id, ``X-Request-ID``: the client's own (as a load balancer or tracing proxy sends
it), or one made here; the access log line names it, so one request can be followed from client to log."""
from __future__ import annotations

import logging
import re
import time
import uuid

log = logging.getLogger("mobilenetv3.access")

HEADER = b"x-request-id"
GIVEN_ID = re.compile(rb"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces: safe to echo and to log


class RequestIds:
    """ASGI middleware: takes or makes the request id, adds it to the response's headers (errors too) and, with
    ``access_log``, logs one line per request: client, request line, status, time and id."""

    def __init__(self, app, access_log: bool = False):
        self.app, self.access_log = app, access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started, status = time.perf_counter(), [None]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": headers + [(HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                _log_request(scope, status[0], time.perf_counter() - started, request_id)


def _request_id(scope) -> str:
    given = next((value for key, value in scope.get("headers", []) if key.lower() == HEADER), None)
    if given is not None and GIVEN_ID.fullmatch(given):
        return given.decode()
    return uuid.uuid4().hex


def _log_request(scope, status, seconds: float, request_id: str) -> None:
    client = scope.get("client")
    where = f"{client[0]}:{client[1]}" if client else "-"
    path = scope.get("path", "") + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
    log.info('%s - "%s %s HTTP/%s" %s %.1f ms id=%s', where, scope.get("method"), path,
             scope.get("http_version", "1.1"), status if status is not None else "-", seconds * 1000, request_id)
