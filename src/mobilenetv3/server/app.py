"""The HTTP app: the Open Inference Protocol (KServe v2), ``/predict`` for people, ``/metrics`` and a web page.

``create_app(model, settings)`` returns a Starlette (ASGI) app; ``mobilenetv3.tasks.serve`` runs it under
uvicorn. Importing this module needs the serve extra (``mobilenetv3.server`` imports it only when asked). Every
refusal is a JSON body ``{"error": "..."}`` naming the problem (4xx; 503 with ``Retry-After`` when the server is
full or a request's deadline passed: ``admission``), and the server goes on.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import wraps
from importlib import resources
from typing import Callable, Optional, Union

import torch
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..data.images import Conversions
from ..engine import top_classes
from .access import RequestIds
from .admission import HEAVY_BYTES, HEAVY_PIXELS, Admission, ClientGone, DecodeLanes, Expired, Work
from .batching import Dropped, DynamicBatcher, warmup_batches
from .metrics import Metrics
from .protocol import (
    EXTENSIONS,
    HEADER_LENGTH,
    InferRequest,
    ModelStatistics,
    http_response,
    inflated,
    model_metadata,
    model_outputs,
    prepare_input,
    read_http_request,
    served_names,
)
from .repository import LiveModel, ModelRepository
from .runtime import ServedModel, load_served_model
from .uploads import MAX_PIXELS, BadRequest, allow_pixels, decoded_pixels, prepare_image

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/", "application/octet-stream")
MAX_FILES = 64  # per /predict request
CLIENT_CLOSED = 499  # the status counted for a client that left before its answer (nginx's)
GRPC_STOP_GRACE_S = 5.0  # at shutdown, how long the gRPC calls in progress may take to finish


@dataclass
class ServerSettings:
    """What a server accepts and how it batches (the ``mobilenetv3 serve`` flags)."""

    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_upload_mb: float = 16.0
    max_pixels: int = MAX_PIXELS
    topk: int = 5
    api_key: Optional[str] = None
    decode_threads: int = 2
    warmup: bool = True  # run every batch size once before listening (see batching.warmup_batches)
    access_log: bool = False  # one line per request, with its X-Request-ID (see access.py)
    workers: int = 1  # processes serving the same models: the repository API's load and unload need one
    max_queue: Optional[int] = None  # inference requests in progress at most, more: 503 (None: ``queue_limit``)
    timeout_s: float = 10.0  # a request's deadline, its body's upload included (X-Request-Timeout-Ms shortens it)
    max_request_pixels: Optional[int] = None  # pixels one request may decode, all its files (None: max_pixels)
    max_images: int = MAX_FILES  # files per /predict, images per v2 request
    preferred_batch: tuple[int, ...] = ()  # batch sizes that run without waiting for more (Triton's)
    grpc_port: Optional[int] = None  # the Open Inference Protocol over gRPC on this port too (None: no gRPC; 0: a
    # free port, said in the app's state.grpc_port)
    grpc_host: str = "127.0.0.1"
    grpc_certfile: Optional[str] = None  # gRPC over TLS with this PEM certificate (chain): serve's --ssl-certfile
    grpc_keyfile: Optional[str] = None  # its PEM private key (None: in grpc_certfile)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def queue_limit(self) -> int:
        """``max_queue``, by default one full batch (32 at least): a request admitted under overload waits for the
        batch running and its own, about twice a batch's time, not for the whole crowd."""
        return self.max_queue if self.max_queue is not None else max(32, self.max_batch)

    @property
    def request_pixels(self) -> int:
        return self.max_request_pixels if self.max_request_pixels is not None else self.max_pixels


def create_app(models: Union[ServedModel, ModelRepository], settings: Optional[ServerSettings] = None):
    """The ASGI app serving ``models``: one model, or a repository of them (``repository.ModelRepository``). The
    models' batchers and the decoding threads start and stop with the app's lifespan (stopping finishes the
    requests already in the batchers). ``settings`` default to ``ServerSettings()``."""
    settings = settings or ServerSettings()
    allow_pixels(settings.max_pixels)
    metrics = Metrics()
    if isinstance(models, ServedModel):
        runtime = models.runtime
        models = ModelRepository.of(models, lambda path, name: load_served_model(str(path), runtime, name))
    models.on_use = metrics.request_in_flight
    if settings.workers > 1:
        models.frozen = (f"load and unload need --workers 1: each of the {settings.workers} worker processes holds "
                         "its own models (restart the server to change them)")
    decoders = DecodeLanes(settings.decode_threads)
    server = _Endpoints(models, settings, decoders, metrics)

    def start_batcher(model: ServedModel, version: str) -> DynamicBatcher:
        """One model version's batcher, started: it warms up before ``wait_ready`` returns."""
        statistics = server.model_statistics(model.name, version)
        batcher = DynamicBatcher(statistics.counted(model.run), settings.max_batch, settings.max_delay_ms / 1000,
                                 _both(metrics.batch_observer(model.name, version), statistics.observe_batch),
                                 settings.preferred_batch,
                                 _both(metrics.queue_observer(model.name, version), statistics.observe_queue))
        batcher.start(warmup_batches(model.input_shape, settings.max_batch) if settings.warmup else ())
        return batcher

    @asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(None, models.start, start_batcher)  # listening once warm
        grpc_server = None
        if settings.grpc_port is not None:
            grpc_server, app.state.grpc_port = await server.start_grpc()
        yield
        if grpc_server is not None:
            await grpc_server.stop(GRPC_STOP_GRACE_S)
        models.stop()
        decoders.shutdown()
        metrics.close()

    return Starlette(routes=_routes(server), lifespan=lifespan, exception_handlers={HTTPException: _http_error},
                     middleware=[Middleware(RequestIds, access_log=settings.access_log)])


def _routes(server: "_Endpoints") -> list:
    """The paths: the page, /predict and /metrics for people and Prometheus; the Open Inference Protocol under /v2
    (versioned paths, the statistics and repository extensions)."""
    return [
        Route("/", server.page, methods=["GET"]),
        Route("/predict", server.predict, methods=["POST"]),
        Route("/metrics", server.metrics, methods=["GET"]),
        Route("/v2", server.server_metadata, methods=["GET"]),
        Route("/v2/health/live", server.live, methods=["GET"]),
        Route("/v2/health/ready", server.ready, methods=["GET"]),
        Route("/v2/models/stats", server.statistics, methods=["GET"]),  # before /v2/models/{name}
        *(route for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}") for route in (
            Route(model, server.model_metadata, methods=["GET"]),
            Route(f"{model}/ready", server.model_ready, methods=["GET"]),
            Route(f"{model}/infer", server.infer, methods=["POST"]),
            Route(f"{model}/stats", server.statistics, methods=["GET"]))),
        Route("/v2/repository/index", server.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", server.repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", server.repository_unload, methods=["POST"]),
    ]


def _both(first: Callable, second: Callable) -> Callable:
    def call(*args):
        first(*args)
        second(*args)

    return call


async def _http_error(request, exc):
    """Starlette's own refusals (unknown path 404, wrong method 405) as JSON like the rest."""
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _endpoint(name: str, authenticated: bool = True):
    """Wraps a handler: API key check, ``BadRequest`` -> 4xx JSON, any other failure -> 500 JSON (logged),
    and the request's status and latency into the metrics under ``name``."""

    def wrap(handler):
        @wraps(handler)
        async def endpoint(self: "_Endpoints", request):
            started = time.perf_counter()
            try:
                if authenticated:
                    self.check_key(request)
                response = await handler(self, request)
            except BadRequest as err:
                headers = getattr(err, "headers", None) or ({"WWW-Authenticate": "Bearer"} if err.status == 401
                                                            else None)
                response = JSONResponse({"error": err.message}, status_code=err.status, headers=headers)
            except ClientGone as err:  # nobody to answer: one line, counted as a client close (nginx's 499)
                log.info("%s: %s", name, err)
                response = JSONResponse({"error": str(err)}, status_code=CLIENT_CLOSED)
            except asyncio.CancelledError:  # the shutdown's grace is over: a clean answer, not uvicorn's 500
                log.info("%s: ended by the shutdown", name)
                response = JSONResponse({"error": "the server is shutting down"}, status_code=503,
                                        headers={"Retry-After": "1", "Connection": "close"})
            except Exception as err:  # noqa: BLE001 - one bad request must not end the server
                log.exception("%s failed", name)
                response = JSONResponse({"error": f"internal error: {type(err).__name__}"}, status_code=500)
            self.stats.observe_request(name, response.status_code, time.perf_counter() - started)
            return response

        return endpoint

    return wrap


class _Endpoints:
    """The handlers, sharing the models (each a ``LiveModel``: a ``ServedModel`` and its batcher, taken by name and
    version with ``self.models.use``) and the decoding threads."""

    def __init__(self, models: ModelRepository, settings: ServerSettings, decoders: DecodeLanes, metrics: Metrics):
        self.models, self.settings, self.decoders, self.stats = models, settings, decoders, metrics
        self.admission = Admission(settings.queue_limit, settings.timeout_s)
        self.statistics_by_model: dict[tuple[str, str], ModelStatistics] = {}  # (name, version): Triton's statistics

    def model_statistics(self, name: str, version: str) -> ModelStatistics:
        return self.statistics_by_model.setdefault((name, version), ModelStatistics(name, version))

    async def start_grpc(self):
        """The gRPC service (``grpc_service.py``) on ``settings.grpc_port``, over the same models and batchers, and
        the port it listens on."""
        from .grpc_service import InferenceService, start_server

        service = InferenceService(self.models, self.admission, self.in_thread, self.model_statistics, self.settings,
                                   self.stats.observe_request)
        return await start_server(service, self.settings.grpc_host, self.settings.grpc_port,
                                  self.settings.max_upload_bytes, self.settings.grpc_certfile,
                                  self.settings.grpc_keyfile)

    # ------------------------------------------------------------------------------------ helpers
    def check_key(self, request) -> None:
        if self.settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise BadRequest(401, "missing API key: send the header 'Authorization: Bearer KEY'")
        if not hmac.compare_digest(token.strip().encode(), self.settings.api_key.encode()):
            raise BadRequest(401, "wrong API key")

    def model(self, request):
        """The live model a request names (path ``/v2/models/NAME[/versions/V]``, or ``?model=NAME&version=V``;
        none: the only one), held while the ``with`` block runs: ``with self.model(request) as live: ...``."""
        name = request.path_params.get("name") or request.query_params.get("model") or None
        return self.models.use(name, request.path_params.get("version") or request.query_params.get("version"))

    async def body(self, request) -> bytes:
        """The request body, refused with 413 as soon as it passes the upload limit (declared or streamed), with
        408 when it does not arrive within the request's deadline (``admission.Work.read_body``)."""
        work = getattr(request.state, "work", None)
        body = await (work or Work(self.settings.timeout_s)).read_body(request, self.settings.max_upload_bytes)
        if work is not None:  # an inference request: from now on, a client that leaves is noticed
            work.watch(request)
        return body

    async def in_thread(self, function, *args, heavy: bool = False, work: Optional[Work] = None):
        """``function(*args)`` in a decoding thread (the heavy lane for a costly request); not started when
        ``work`` is no longer wanted."""
        return await self.decoders.run(work, function, *args, heavy=heavy)

    @asynccontextmanager
    async def admitted(self, request, live: LiveModel):
        """An inference request's admission (503 + Retry-After when the server is full) and its ``Work``: the
        deadline, the watch for its client leaving, the batcher told it is coming. A request that ends early
        (client gone, deadline) is counted as dropped, by reason."""
        if self.admission.in_progress >= self.admission.max_queue:
            self.stats.observe_rejected(live.name, live.version, "queue_full")
        async with self.admission.admit(request) as work:
            request.state.work, request.state.expected = work, live.batcher.expect()
            try:
                yield work
            except (ClientGone, Expired) as err:  # what the batcher's Dropped becomes (run_model)
                self.stats.observe_dropped(live.name, live.version,
                                           "client_gone" if isinstance(err, ClientGone) else "deadline")
                raise
            finally:
                request.state.expected.arrived()

    async def decode_images(self, request, uploads: list[tuple[str, bytes]], preprocessing,
                            converted: list[Conversions]) -> list[torch.Tensor]:
        """The uploads as model inputs, decoded in the decoding threads once their cost, read from their
        headers, is within the request's pixel budget (413 before any decoding)."""
        work, limit = request.state.work, self.settings.max_pixels
        if len(uploads) > self.settings.max_images:
            raise BadRequest(413, f"{len(uploads)} files in one request, more than the limit of "
                                  f"{self.settings.max_images}")
        total = sum(decoded_pixels(data, preprocessing, limit, name) for name, data in uploads)
        if total > self.settings.request_pixels:
            raise BadRequest(413, f"the {len(uploads)} images would decode {total / 1e6:.1f} megapixels, more than "
                                  f"the limit of {self.settings.request_pixels / 1e6:g} megapixels per request")
        return await asyncio.gather(*(self.decoders.run(work, prepare_image, data, preprocessing, limit, name,
                                                        conversions, heavy=total > HEAVY_PIXELS)
                                      for (name, data), conversions in zip(uploads, converted)))

    async def run_model(self, request, live: LiveModel, images: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The model's outputs for an admitted request's images (``admitted``): dropped before the run when its
        client has gone or its deadline passed."""
        work = request.state.work
        if len(images) > self.settings.max_images:
            raise BadRequest(413, f"{len(images)} images in one request, more than the limit of "
                                  f"{self.settings.max_images}")
        work.check("inference")
        try:
            return await live.batcher.submit(images, request.state.expected, work.still_wanted)
        except Dropped:
            work.check("inference")
            raise ClientGone("the request was dropped before inference") from None

    # ----------------------------------------------------------------------------------- for people
    @_endpoint("page", authenticated=False)
    async def page(self, request):
        return HTMLResponse(_page(self.models, self.settings))

    @_endpoint("predict")
    async def predict(self, request):
        """Image files (multipart/form-data) or one image's bytes -> the top-k classes of each."""
        started = time.perf_counter()
        with self.model(request) as live:
            model = live.model
            topk = _topk(request.query_params.get("topk"), self.settings.topk, len(model.classes))
            async with self.admitted(request, live):
                uploads = await self.uploads(request)
                converted = [Conversions() for _ in uploads]  # one each: the decoding threads do not share one
                images = await self.decode_images(request, uploads, model.preprocessing, converted)
                self.stats.observe_conversions(converted)
                probabilities, batch = await self.run_model(request, live, torch.cat(images))
        values, indices = top_classes(probabilities, topk)
        predictions = [dict(file=name, top=[{"class": model.classes[i], "index": i, "probability": p}
                                            for p, i in zip(row_values, row_indices)])
                       for (name, _), row_values, row_indices in zip(uploads, values.tolist(), indices.tolist())]
        latency = round((time.perf_counter() - started) * 1000, 2)
        return JSONResponse(dict(model=model.name, version=live.version, predictions=predictions,
                                 latency_ms=latency), headers={"X-Batch-Size": str(batch)})

    async def uploads(self, request) -> list[tuple[str, bytes]]:
        """``[(file name, bytes)]`` from a multipart form (every file field) or a raw image body."""
        content_type = request.headers.get("content-type", "")
        body = await self.body(request)
        if not body:
            raise BadRequest(400, "empty body: send image files as multipart/form-data or one image's bytes")
        if content_type.startswith("multipart/form-data"):
            return await _form_files(request.headers, body)
        if content_type.startswith(IMAGE_TYPES):
            return [("upload", body)]
        raise BadRequest(415, f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data "
                              "or the image bytes as image/* or application/octet-stream")

    # ------------------------------------------------------------------ Open Inference Protocol (v2)
    @_endpoint("server_metadata", authenticated=False)
    async def server_metadata(self, request):
        from ..version import __version__

        return JSONResponse(dict(name="mobilenetv3", version=__version__, extensions=EXTENSIONS))

    @_endpoint("live", authenticated=False)
    async def live(self, request):
        return JSONResponse(dict(live=True))

    @_endpoint("ready", authenticated=False)
    async def ready(self, request):
        return JSONResponse(dict(ready=self.models.ready()), status_code=200 if self.models.ready() else 503)

    @_endpoint("model_ready")
    async def model_ready(self, request):
        with self.model(request) as live:
            return JSONResponse(dict(name=live.name, ready=True))

    @_endpoint("model_metadata")
    async def model_metadata(self, request):
        with self.model(request) as live:
            return JSONResponse(model_metadata(live.model, live.version))

    @_endpoint("infer")
    async def infer(self, request):
        """A v2 inference request, JSON or JSON and binary tensors (``protocol.py``: FP32, FP16 or UINT8 pixels in)
        -> the outputs it asks for (probabilities, or top-k classification strings), JSON or binary."""
        header_length = request.headers.get(HEADER_LENGTH)  # the binary extension: the body is not all JSON
        if header_length is None and \
                not request.headers.get("content-type", "application/json").startswith("application/json"):
            raise BadRequest(415, "a v2 inference request is JSON: send Content-Type: application/json (or the "
                                  f"binary tensor extension's {HEADER_LENGTH} header)")
        with self.model(request) as live:
            async with self.admitted(request, live) as work:
                body = await self.body(request)
                v2_request, images = await self.in_thread(_v2_input, body, request.headers, live.model,
                                                          self.settings, heavy=len(body) > HEAVY_BYTES, work=work)
                probabilities, batch = await self.run_model(request, live, images)
        outputs = model_outputs(v2_request, probabilities, live.model.classes)
        content, headers = http_response(live.name, live.version, outputs, v2_request.id)
        return Response(content, media_type=headers.pop("Content-Type"), headers={**headers,
                                                                                  "X-Batch-Size": str(batch)})

    @_endpoint("statistics")
    async def statistics(self, request):
        """Triton's statistics extension: ``{"model_stats": [...]}`` of every model served, or of the one named."""
        name = request.path_params.get("name")
        found = []
        for each in [name] if name else served_names(self.models):
            with self.models.use(each, request.path_params.get("version")) as live:
                found.append(self.model_statistics(live.name, live.version).to_dict())
        return JSONResponse(dict(model_stats=found))

    # ----------------------------------------------------- model repository (Triton's repository extension)
    @_endpoint("repository_index")
    async def repository_index(self, request):
        """``[{"name", "version", "state", "reason"}]`` of every model version known; ``{"ready": true}``: the
        ready ones."""
        body = await self.body(request)
        try:
            ready = bool(json.loads(body).get("ready")) if body.strip() else False
        except (ValueError, AttributeError, RecursionError):
            raise BadRequest(400, 'the body is not a JSON object (send {} or {"ready": true})') from None
        return JSONResponse(self.models.index(ready_only=ready))

    @_endpoint("repository_load")
    async def repository_load(self, request):
        """(Re)load a model's highest version from disk: swapped in once loaded, checked and warm; the version
        served before answers meanwhile, and goes on if this fails (400 with the reason)."""
        await asyncio.get_running_loop().run_in_executor(None, self.models.load, request.path_params["name"])
        return JSONResponse({})

    @_endpoint("repository_unload")
    async def repository_unload(self, request):
        """Stop serving a model once the requests holding it are answered."""
        await asyncio.get_running_loop().run_in_executor(None, self.models.unload, request.path_params["name"])
        return JSONResponse({})

    @_endpoint("metrics")
    async def metrics(self, request):
        content, media_type = self.stats.render()
        return Response(content, media_type=media_type)


def _v2_input(body: bytes, headers, model: ServedModel,
              settings: ServerSettings) -> tuple[InferRequest, torch.Tensor]:
    """A v2 request body (and its headers) -> the request and the model's input batch (in a decoding thread)."""
    body = inflated(body, headers.get("content-encoding"), settings.max_upload_bytes)
    request = read_http_request(body, headers.get(HEADER_LENGTH))
    return request, prepare_input(request, model, settings.max_pixels, settings.request_pixels, settings.max_images)


def _topk(given: Optional[str], default: int, classes: int) -> int:
    if given is None:
        return min(default, classes)
    if not given.isdigit() or int(given) < 1:
        raise BadRequest(400, f"topk must be a whole number of at least 1, not {given!r}")
    return min(int(given), classes)


async def _form_files(headers, body: bytes) -> list[tuple[str, bytes]]:
    async def stream():
        yield body

    try:
        form = await MultiPartParser(headers, stream(), max_files=MAX_FILES, max_fields=MAX_FILES).parse()
    except MultiPartException as err:
        raise BadRequest(400, f"malformed multipart form: {err.message}") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise BadRequest(400, "the form holds no files: send each image as a file field")
        return [(upload.filename or f"file{index}", await upload.read()) for index, upload in enumerate(files)]
    finally:
        await form.close()


def _page(models: ModelRepository, settings: ServerSettings) -> str:
    """The web page, with what it needs to know about this server's models filled in."""
    page = resources.files("mobilenetv3.server").joinpath("static/index.html").read_text(encoding="utf-8")
    described = [dict(name=live.name, version=live.version, runtime=live.model.runtime,
                      classes=len(live.model.classes), topk=min(5, len(live.model.classes)))
                 for live in models.served()]
    first = described[0] if described else dict(name="", runtime="", classes=0, topk=5)
    config = dict(model=first["name"], runtime=first["runtime"], classes=first["classes"], topk=first["topk"],
                  models=described, needs_key=settings.api_key is not None)
    return page.replace("__SERVER_CONFIG__", json.dumps(config).replace("</", "<\\/"))
