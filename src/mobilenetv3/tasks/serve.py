"""The serving task: load a model, build the HTTP app and run it under uvicorn until SIGTERM or Ctrl-C.

``serve("runs/demo/last.pt")`` is ``mobilenetv3 serve runs/demo/last.pt``; ``serve("models/")`` serves a model
repository (``server.repository``). With ``workers`` above 1, uvicorn starts that many processes, each loading the
models (``app_from_environment``) and batching on its own, while this one only checks the files; ``/metrics`` adds up
all workers' counts (prometheus_client's multiprocess mode, in a temporary folder removed at exit).
"""
from __future__ import annotations

import importlib
import ipaddress
import json
import logging
import os
import signal
import socket
import ssl
import threading
from contextlib import contextmanager
from dataclasses import asdict
from typing import Optional, Sequence, Union

from ..errors import UsageError
from .common import renamed, required_source

log = logging.getLogger(__name__)

ENVIRONMENT_KEY = "MOBILENETV3_SERVE"  # the settings handed to worker processes
API_KEY_VARIABLE = "MOBILENETV3_API_KEY"
EXTRA_HINT = "pip install 'mobilenetv3[serve]'"
SHUTDOWN_MARGIN_S = 0.5  # of --grace-s, for uvicorn's first pause (0.1 s), ending the last requests and exiting
# How long uvicorn waits for a worker's answer to its health check before it kills and restarts it: a worker
# starting (importing torch, loading the models) holds the interpreter longer than uvicorn's 5 s on a busy machine,
# and was killed and started again, with a traceback in the log.
WORKER_START_S = 120


def serve(source: Union[str, Sequence[str], None] = None, *, host: str = "127.0.0.1", port: int = 8000,
          runtime: str = "auto", workers: int = 1, name: Optional[str] = None, threads: Optional[int] = None,
          precision: Optional[str] = None, access_log: bool = False, keep_alive_s: int = 5,
          ssl_certfile: Optional[str] = None, ssl_keyfile: Optional[str] = None, model: Optional[str] = None,
          header_timeout_s: float = 5.0, grace_s: float = 15.0, **settings) -> None:
    """Serve ``source`` on ``host:port``: a model file (any the project loads; ``model`` is the older name), several,
    or a model repository folder (``server.repository``: ``repo/NAME/VERSION/FILE``, ``repo/NAME.EXT``).
    ``settings`` are ``ServerSettings`` fields (``max_batch``, ``max_delay_ms``, ``max_upload_mb``, ``max_pixels``,
    ``topk``, ``api_key``, ``decode_threads``, ...); ``api_key`` defaults to the ``MOBILENETV3_API_KEY`` environment
    variable; an idle keep-alive connection is closed after ``keep_alive_s`` seconds; ``ssl_certfile`` (and
    ``ssl_keyfile``, unless the key is in it) serve HTTPS. With ``workers`` above 1 only the workers load the
    models; this process checks the files cheaply first. A connection whose request headers take longer than
    ``header_timeout_s`` is closed; a request has ``timeout_s`` (a setting) to be answered, its upload included;
    ``grpc_port`` (a setting) serves the Open Inference Protocol over gRPC too (Triton's
    ``inference.GRPCInferenceService``), on the same host and models. SIGTERM lets the requests in progress finish
    for up to ``grace_s`` (keep it under the orchestrator's grace, Kubernetes' terminationGracePeriodSeconds, 30 s
    by default), then ends the rest with a 503. Returns when the server stops."""
    paths = _model_paths(renamed("serve", "source", source, model=model))
    uvicorn, ServerSettings, create_app = _serve_extra()
    from ..server.repository import ModelRepository
    from ..server.runtime import check_runtime

    settings.setdefault("api_key", os.environ.get(API_KEY_VARIABLE) or None)
    settings.setdefault("grpc_host", host)
    settings.setdefault("grpc_certfile", ssl_certfile)  # TLS for gRPC too, with the same certificate
    settings.setdefault("grpc_keyfile", ssl_keyfile)
    options = ServerSettings(**settings, access_log=access_log, workers=workers)
    _check_settings(options, port, workers, keep_alive_s)
    _check_time_limits(options, header_timeout_s, grace_s)
    _check_tls(ssl_certfile, ssl_keyfile)
    threads = threads or _inference_threads(workers)
    repository = ModelRepository(paths, _model_loader(runtime, threads, precision), name,  # cheap checks only
                                 lambda path: check_runtime(path, runtime))
    _check_listening(host, port, options.api_key)
    _check_grpc(host, port, options.grpc_port)
    address = f"{'https' if ssl_certfile else 'http'}://{f'[{host}]' if ':' in host else host}:{port}/"
    common = _uvicorn_options(host, port, keep_alive_s, header_timeout_s, grace_s, ssl_certfile, ssl_keyfile)
    with _sigterm_ends_quietly():
        if workers == 1:
            repository.preload()  # a file that does not load: one line, exit 2, before listening
            log.info("serving %s on %s (page at /, KServe v2 at /v2/models/NAME)", repository.describe(), address)
            uvicorn.run(create_app(repository, options), **common)
            return
        log.info("serving %s on %s with %d workers, each loading the models", ", ".join(paths), address, workers)
        _run_workers(uvicorn, dict(paths=paths, runtime=runtime, name=name, threads=threads, precision=precision,
                                   settings=asdict(options)), workers, common)


def _uvicorn_options(host: str, port: int, keep_alive_s: int, header_timeout_s: float, grace_s: float,
                     ssl_certfile: Optional[str], ssl_keyfile: Optional[str]) -> dict:
    """What uvicorn is told: where to listen, TLS, the idle, header and shutdown time-outs (the access log is ours:
    ``server.access``, with request ids)."""
    from ..server.connections import http_protocol

    return dict(host=host, port=port, access_log=False, log_level="info",
                timeout_graceful_shutdown=max(grace_s - SHUTDOWN_MARGIN_S, 0.1), timeout_keep_alive=keep_alive_s,
                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, http=http_protocol(header_timeout_s))


def _run_workers(uvicorn, served: dict, workers: int, common: dict) -> None:
    """uvicorn's worker processes, each building its app from ``served`` (``app_from_environment``)."""
    from ..server.metrics import multiprocess_folder

    with multiprocess_folder():  # the workers' metrics, added up at each scrape; removed at exit
        os.environ[ENVIRONMENT_KEY] = json.dumps(served)
        uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers,
                    timeout_worker_healthcheck=WORKER_START_S, **common)


def app_from_environment():
    """The app of one worker process, from the settings ``serve`` left in ``MOBILENETV3_SERVE``. A model that does
    not load here is UNAVAILABLE with its reason (the repository index says it); the others are served."""
    from ..server import ServerSettings, create_app
    from ..server.repository import ModelRepository

    _log_to_stderr()
    values = json.loads(os.environ[ENVIRONMENT_KEY])
    repository = ModelRepository(values["paths"], _model_loader(values["runtime"], values["threads"],
                                                                values["precision"]), values["name"])
    repository.preload(keep_going=True)
    return create_app(repository, ServerSettings(**values["settings"]))


def _model_paths(source) -> list[str]:
    if isinstance(source, (list, tuple)):
        return [str(required_source(each, "the model files to serve")) for each in source] or \
            [required_source(None, "the model files to serve")]
    return [required_source(source, "a model file or model repository folder to serve")]


def _inference_threads(workers: int) -> int:
    """The runtime's threads when none are asked for: the CPUs this process may use less one, shared by the
    workers. The HTTP event loop and the decoding threads need a core: on 2 busy cores, torch on both (its
    default) left them so little that, in one run each, the p99 latency at half the server's capacity was
    541 ms (15 ms with one thread) and its images/s with 32 clients 188 (223 with one thread)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, (usable - 1) // workers)


def _model_loader(runtime: str, threads: Optional[int], precision: Optional[str]):
    """``(path, name) -> ServedModel`` for the repository, in the runtime, threads and precision asked for."""
    from ..server import load_served_model

    def load(path, name: Optional[str]):
        return load_served_model(str(path), runtime, name, threads, precision)

    return load


def _log_to_stderr() -> None:
    """A worker process (started afresh by uvicorn) logs the package's INFO lines as the CLI's process does."""
    package = logging.getLogger("mobilenetv3")
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)


def _check_tls(certfile: Optional[str], keyfile: Optional[str]) -> None:
    """One line for a certificate or key that is missing, unreadable or not a pair (uvicorn would end in a
    traceback once listening)."""
    if certfile is None:
        if keyfile is not None:
            raise UsageError("--ssl-keyfile needs --ssl-certfile (the certificate it is the key of)")
        return
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise UsageError(f"{flag} {path}: {err.strerror or err}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=lambda: b"")  # never a terminal prompt
    except (ssl.SSLError, ValueError, OSError) as err:
        raise UsageError(f"--ssl-certfile {certfile}" + (f" and --ssl-keyfile {keyfile}" if keyfile else "") +
                         f" are not a PEM certificate and its private key ({err.reason or err})"
                         if isinstance(err, ssl.SSLError) else f"--ssl-certfile {certfile}: {err}") from None


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


def _check_time_limits(options, header_timeout_s: float, grace_s: float) -> None:
    """The admission and time-out settings in range; a warning when the grace is shorter than a request may take."""
    above_zero = {"--timeout-s": options.timeout_s, "--header-timeout-s": header_timeout_s, "--grace-s": grace_s}
    for flag, value in above_zero.items():
        if not value > 0:
            raise UsageError(f"{flag} must be above 0, not {value}")
    at_least_one = {"--max-queue": options.max_queue, "--max-request-pixels": options.max_request_pixels,
                    "--max-images": options.max_images}
    for flag, value in at_least_one.items():
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, not {value}")
    wrong = [size for size in options.preferred_batch if not 1 <= size <= options.max_batch]
    if wrong:
        raise UsageError(f"--preferred-batch sizes must be between 1 and --max-batch {options.max_batch}, not "
                         f"{', '.join(map(str, wrong))}")
    if grace_s < options.timeout_s:
        log.warning("--grace-s %g is shorter than --timeout-s %g: a request in progress at shutdown may be ended "
                    "with a 503 before its deadline", grace_s, options.timeout_s)


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
