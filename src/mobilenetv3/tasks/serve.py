"""The serving task: load a model, build the HTTP app and run it under uvicorn until SIGTERM or Ctrl-C.

``serve("runs/demo/last.pt")`` is ``mobilenetv3 serve runs/demo/last.pt``. With ``workers`` above 1,
uvicorn starts that many processes, each loading the model (``app_from_environment``) and batching on its own;
``/metrics`` then describes the worker that answered.
"""
from __future__ import annotations

import importlib
import ipaddress
import json
import logging
import os
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import asdict
from typing import Optional

from ..errors import UsageError

log = logging.getLogger(__name__)

ENVIRONMENT_KEY = "MOBILENETV3_SERVE"  # the settings handed to worker processes
API_KEY_VARIABLE = "MOBILENETV3_API_KEY"
EXTRA_HINT = "pip install 'mobilenetv3[serve]'"


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, runtime: str = "auto", workers: int = 1,
          name: Optional[str] = None, threads: Optional[int] = None, precision: Optional[str] = None,
          access_log: bool = False, keep_alive_s: int = 5, **settings) -> None:
    """Serve ``model`` (any file the project loads) on ``host:port``. ``settings`` are ``ServerSettings`` fields
    (``max_batch``, ``max_delay_ms``, ``max_upload_mb``, ``max_pixels``, ``topk``, ``api_key``, ``decode_threads``);
    ``api_key`` defaults to the ``MOBILENETV3_API_KEY`` environment variable; an idle keep-alive connection is
    closed after ``keep_alive_s`` seconds; ``grpc_port`` (a setting) serves the Open Inference Protocol over gRPC
    too (Triton's ``inference.GRPCInferenceService``). Returns when the server stops."""
    uvicorn, ServerSettings, create_app = _serve_extra()
    from ..server import load_served_model

    settings.setdefault("api_key", os.environ.get(API_KEY_VARIABLE) or None)
    settings.setdefault("grpc_host", host)
    options = ServerSettings(**settings)
    _check_settings(options, port, workers, keep_alive_s)
    served = load_served_model(model, runtime, name, threads, precision)  # in the parent too: a bad file is one line
    _check_listening(host, port, options.api_key)
    _check_grpc(host, port, options.grpc_port)
    log.info("serving %s on http://%s:%d/ (page at /, KServe v2 at /v2/models/%s)", served.describe(),
             f"[{host}]" if ":" in host else host, port, served.name)
    common = dict(host=host, port=port, access_log=access_log, log_level="info", timeout_graceful_shutdown=30,
                  timeout_keep_alive=keep_alive_s)
    with _sigterm_ends_quietly():
        if workers == 1:
            uvicorn.run(create_app(served, options), **common)
            return
        os.environ[ENVIRONMENT_KEY] = json.dumps(dict(model=model, runtime=runtime, name=name, threads=threads,
                                                      precision=precision, settings=asdict(options)))
        uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, **common)


def app_from_environment():
    """The app of one worker process, from the settings ``serve`` left in ``MOBILENETV3_SERVE``."""
    from ..server import ServerSettings, create_app, load_served_model

    values = json.loads(os.environ[ENVIRONMENT_KEY])
    served = load_served_model(values["model"], values["runtime"], values["name"], values["threads"],
                               values["precision"])
    return create_app(served, ServerSettings(**values["settings"]))


@contextmanager
def _sigterm_ends_quietly():
    """uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler it found: with
    this no-op handler the process then exits 0 (a stop asked for is a success), not killed by the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve_extra():
    try:
        for module in ("starlette", "python_multipart", "prometheus_client"):  # python-multipart: for uploads
            importlib.import_module(module)
        import uvicorn

        from ..server import ServerSettings, create_app
    except ImportError as err:
        raise UsageError(f"serving needs the serve extra ({err.name} is missing): {EXTRA_HINT}") from None
    return uvicorn, ServerSettings, create_app


def _check_settings(options, port: int, workers: int, keep_alive_s: int) -> None:
    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, not {port}")
    at_least = {"--workers": (workers, 1), "--max-batch": (options.max_batch, 1), "--topk": (options.topk, 1),
                "--decode-threads": (options.decode_threads, 1), "--keep-alive-s": (keep_alive_s, 1),
                "--max-pixels": (options.max_pixels, 1), "--max-delay-ms": (options.max_delay_ms, 0)}
    for flag, (value, least) in at_least.items():
        if value < least:
            raise UsageError(f"{flag} must be at least {least}, not {value}")
    if options.max_upload_mb <= 0:
        raise UsageError(f"--max-upload-mb must be above 0, not {options.max_upload_mb}")


def _check_listening(host: str, port: int, api_key: Optional[str]) -> None:
    """One line if ``host:port`` cannot be listened on; a warning when it is reachable from other machines
    without an API key."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            pass
    except OSError as err:
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    if not _is_loopback(host) and api_key is None:
        log.warning("listening on %s without an API key: anyone who can reach this machine can use the model "
                    "(set --api-key or %s)", host, API_KEY_VARIABLE)


def _check_grpc(host: str, port: int, grpc_port: Optional[int]) -> None:
    """One line if gRPC is asked for on a port that cannot be listened on, or without grpcio."""
    if grpc_port is None:
        return
    if not 0 < grpc_port < 65536 or grpc_port == port:
        raise UsageError(f"--grpc-port must be between 1 and 65535 and not --port ({port}), not {grpc_port}")
    try:
        importlib.import_module("grpc")
    except ImportError:
        raise UsageError(f"serving gRPC needs grpcio (the serve extra): {EXTRA_HINT}") from None
    _check_listening(host, grpc_port, api_key="")  # the warning about a missing key is said once, for HTTP


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
