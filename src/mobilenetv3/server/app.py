"""The HTTP app: the Open Inference Protocol (KServe v2), ``/predict`` for people, ``/metrics`` and a web page.

``create_app(model, settings)`` returns a Starlette (ASGI) app; ``mobilenetv3.tasks.serve`` runs it under
uvicorn. Importing this module needs the serve extra (``mobilenetv3.server`` imports it only when asked). Every refusal is a 4xx JSON body ``{"error": "..."}`` naming the problem, and the server goes on.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import wraps
from importlib import resources
from typing import Optional, Union

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
from .batching import DynamicBatcher, warmup_batches
from .metrics import Metrics
from .repository import LiveModel, ModelRepository
from .runtime import ServedModel, load_served_model
from .uploads import MAX_PIXELS, BadRequest, allow_pixels, prepare_image, read_v2_tensor

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/", "application/octet-stream")
MAX_FILES = 64  # per /predict request


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

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def create_app(models: Union[ServedModel, ModelRepository], settings: ServerSettings = ServerSettings()):
    """The ASGI app serving ``models``: one model, or a repository of them (``repository.ModelRepository``). The
    models' batchers and the decoding threads start and stop with the app's lifespan (stopping finishes the
    requests already in the batchers)."""
    allow_pixels(settings.max_pixels)
    metrics = Metrics()
    if isinstance(models, ServedModel):
        runtime = models.runtime
        models = ModelRepository.of(models, lambda path, name: load_served_model(str(path), runtime, name))
    models.on_use = metrics.request_in_flight
    decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="mobilenetv3-decode")
    server = _Endpoints(models, settings, decoders, metrics)

    def start_batcher(model: ServedModel, version: str) -> DynamicBatcher:
        """One model version's batcher, started: it warms up before ``wait_ready`` returns."""
        batcher = DynamicBatcher(model.run, settings.max_batch, settings.max_delay_ms / 1000,
                                 metrics.batch_observer(model.name, version))
        batcher.start(warmup_batches(model.input_shape, settings.max_batch) if settings.warmup else ())
        return batcher

    @asynccontextmanager
    async def lifespan(app):
        await asyncio.get_running_loop().run_in_executor(None, models.start, start_batcher)  # listening once warm
        yield
        models.stop()
        decoders.shutdown()
        metrics.close()

    routes = [
        Route("/", server.page, methods=["GET"]),
        Route("/predict", server.predict, methods=["POST"]),
        Route("/metrics", server.metrics, methods=["GET"]),
        Route("/v2", server.server_metadata, methods=["GET"]),
        Route("/v2/health/live", server.live, methods=["GET"]),
        Route("/v2/health/ready", server.ready, methods=["GET"]),
        Route("/v2/models/{name}", server.model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", server.model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", server.infer, methods=["POST"]),
        Route("/v2/repository/index", server.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", server.repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", server.repository_unload, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error},
                     middleware=[Middleware(RequestIds, access_log=settings.access_log)])


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
                headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
                response = JSONResponse({"error": err.message}, status_code=err.status, headers=headers)
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

    def __init__(self, models: ModelRepository, settings: ServerSettings, decoders: ThreadPoolExecutor,
                 metrics: Metrics):
        self.models, self.settings, self.decoders, self.stats = models, settings, decoders, metrics

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
        """The request body, refused with 413 as soon as it passes the upload limit (declared or streamed)."""
        limit = self.settings.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"upload of {int(declared)} bytes is over the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"upload is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def in_thread(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.decoders, function, *args)

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
            uploads = await self.uploads(request)
            converted = [Conversions() for _ in uploads]  # one each: the decoding threads do not share one
            images = await asyncio.gather(*(self.in_thread(prepare_image, data, model.preprocessing,
                                                           self.settings.max_pixels, name, conversions)
                                            for (name, data), conversions in zip(uploads, converted)))
            self.stats.observe_conversions(converted)
            probabilities, batch = await live.batcher.submit(torch.cat(images))
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

        return JSONResponse(dict(name="mobilenetv3", version=__version__, extensions=[]))

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
            return JSONResponse(_model_metadata(live))

    @_endpoint("infer")
    async def infer(self, request):
        """A v2 inference request: one FP32 input (N, C, H, W), already preprocessed -> FP32 probabilities."""
        if not request.headers.get("content-type", "application/json").startswith("application/json"):
            raise BadRequest(415, "a v2 inference request is JSON: send Content-Type: application/json")
        with self.model(request) as live:
            images, request_id = await self.in_thread(_v2_input, await self.body(request), live.model.input_shape)
            probabilities, batch = await live.batcher.submit(images)
        output = dict(name="probabilities", datatype="FP32", shape=list(probabilities.shape),
                      data=probabilities.flatten().tolist())
        answer = dict(model_name=live.name, model_version=live.version, outputs=[output])
        if request_id is not None:
            answer["id"] = request_id
        return JSONResponse(answer, headers={"X-Batch-Size": str(batch)})

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
        name = self.changeable(request)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.models.load, name)
        except BadRequest:
            raise
        except Exception as err:  # noqa: BLE001 - a file that cannot be served is the caller's to fix
            log.warning("loading %s failed: %s", name, err)
            raise BadRequest(400, f"failed to load {name!r}: {' '.join(str(err).split()) or type(err).__name__}") \
                from None
        return JSONResponse({})

    @_endpoint("repository_unload")
    async def repository_unload(self, request):
        """Stop serving a model once the requests holding it are answered."""
        await asyncio.get_running_loop().run_in_executor(None, self.models.unload, self.changeable(request))
        return JSONResponse({})

    def changeable(self, request) -> str:
        if self.settings.workers > 1:
            raise BadRequest(400, f"load and unload need --workers 1: each of the {self.settings.workers} worker "
                                  "processes holds its own models (restart the server to change them)")
        return request.path_params["name"]

    @_endpoint("metrics")
    async def metrics(self, request):
        content, media_type = self.stats.render()
        return Response(content, media_type=media_type)


def _v2_input(body: bytes, shape: tuple[int, int, int]) -> tuple[torch.Tensor, Optional[str]]:
    """A v2 request body -> its input tensor and its ``id`` (echoed in the answer), if it has one."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadRequest(400, "the body is not valid JSON") from None
    request_id = request.get("id") if isinstance(request, dict) else None
    return read_v2_tensor(request, shape), request_id if isinstance(request_id, str) else None


def _model_metadata(live: LiveModel) -> dict:
    model = live.model
    c, h, w = model.input_shape
    return dict(name=model.name, versions=[live.version], platform=f"mobilenetv3_{model.runtime}",
                inputs=[dict(name="input", datatype="FP32", shape=[-1, c, h, w])],
                outputs=[dict(name="probabilities", datatype="FP32", shape=[-1, len(model.classes)])],
                parameters=dict(classes=model.classes, preprocessing=model.preprocessing.to_dict()))


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
    described = []
    for name in models.names():
        try:
            with models.use(name) as live:
                described.append(dict(name=name, version=live.version, runtime=live.model.runtime,
                                      classes=len(live.model.classes), topk=min(5, len(live.model.classes))))
        except BadRequest:  # unloaded meanwhile
            pass
    first = described[0] if described else dict(name="", runtime="", classes=0, topk=5)
    config = dict(model=first["name"], runtime=first["runtime"], classes=first["classes"], topk=first["topk"],
                  models=described, needs_key=settings.api_key is not None)
    return page.replace("__SERVER_CONFIG__", json.dumps(config).replace("</", "<\\/"))
