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
from typing import Optional

import torch
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..data.images import Conversions
from ..engine import top_classes
from .batching import DynamicBatcher, warmup_batches
from .metrics import Metrics
from .runtime import ServedModel
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

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


def create_app(model: ServedModel, settings: ServerSettings = ServerSettings()):
    """The ASGI app serving ``model``. Its batcher and decoding threads start and stop with the app's lifespan
    (stopping finishes the requests already in the batcher)."""
    allow_pixels(settings.max_pixels)
    metrics = Metrics()
    batcher = DynamicBatcher(model.run, settings.max_batch, settings.max_delay_ms / 1000, metrics.observe_batch)
    decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="mobilenetv3-decode")
    server = _Endpoints(model, settings, batcher, decoders, metrics)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start(warmup_batches(model.input_shape, settings.max_batch) if settings.warmup else ())
        await asyncio.get_running_loop().run_in_executor(None, batcher.wait_ready)  # listening once warm
        yield
        batcher.stop()
        decoders.shutdown()

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
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error})


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
    """The handlers, sharing one model, its batcher and the decoding threads."""

    def __init__(self, model: ServedModel, settings: ServerSettings, batcher: DynamicBatcher,
                 decoders: ThreadPoolExecutor, metrics: Metrics):
        self.model, self.settings, self.batcher, self.decoders, self.stats = model, settings, batcher, decoders, metrics
        self.page_html = _page(model, settings)

    # ------------------------------------------------------------------------------------ helpers
    def check_key(self, request) -> None:
        if self.settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise BadRequest(401, "missing API key: send the header 'Authorization: Bearer KEY'")
        if not hmac.compare_digest(token.strip().encode(), self.settings.api_key.encode()):
            raise BadRequest(401, "wrong API key")

    def check_name(self, request) -> None:
        name = request.path_params["name"]
        if name != self.model.name:
            raise BadRequest(404, f"unknown model {name!r}; this server has {self.model.name!r}")

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
        return HTMLResponse(self.page_html)

    @_endpoint("predict")
    async def predict(self, request):
        """Image files (multipart/form-data) or one image's bytes -> the top-k classes of each."""
        started = time.perf_counter()
        topk = _topk(request.query_params.get("topk"), self.settings.topk, len(self.model.classes))
        uploads = await self.uploads(request)
        converted = [Conversions() for _ in uploads]  # one each: the decoding threads do not share one
        images = await asyncio.gather(*(self.in_thread(prepare_image, data, self.model.preprocessing,
                                                       self.settings.max_pixels, name, conversions)
                                        for (name, data), conversions in zip(uploads, converted)))
        self.stats.observe_conversions(converted)
        probabilities, batch = await self.batcher.submit(torch.cat(images))
        values, indices = top_classes(probabilities, topk)
        predictions = [dict(file=name, top=[{"class": self.model.classes[i], "index": i, "probability": p}
                                            for p, i in zip(row_values, row_indices)])
                       for (name, _), row_values, row_indices in zip(uploads, values.tolist(), indices.tolist())]
        latency = round((time.perf_counter() - started) * 1000, 2)
        return JSONResponse(dict(model=self.model.name, predictions=predictions, latency_ms=latency),
                            headers={"X-Batch-Size": str(batch)})

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
        return JSONResponse(dict(ready=True))

    @_endpoint("model_ready")
    async def model_ready(self, request):
        self.check_name(request)
        return JSONResponse(dict(name=self.model.name, ready=True))

    @_endpoint("model_metadata")
    async def model_metadata(self, request):
        self.check_name(request)
        return JSONResponse(_model_metadata(self.model))

    @_endpoint("infer")
    async def infer(self, request):
        """A v2 inference request: one FP32 input (N, C, H, W), already preprocessed -> FP32 probabilities."""
        self.check_name(request)
        if not request.headers.get("content-type", "application/json").startswith("application/json"):
            raise BadRequest(415, "a v2 inference request is JSON: send Content-Type: application/json")
        images, request_id = await self.in_thread(_v2_input, await self.body(request), self.model.input_shape)
        probabilities, batch = await self.batcher.submit(images)
        output = dict(name="probabilities", datatype="FP32", shape=list(probabilities.shape),
                      data=probabilities.flatten().tolist())
        answer = dict(model_name=self.model.name, model_version="1", outputs=[output])
        if request_id is not None:
            answer["id"] = request_id
        return JSONResponse(answer, headers={"X-Batch-Size": str(batch)})

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


def _model_metadata(model: ServedModel) -> dict:
    c, h, w = model.input_shape
    return dict(name=model.name, versions=["1"], platform=f"mobilenetv3_{model.runtime}",
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


def _page(model: ServedModel, settings: ServerSettings) -> str:
    """The web page, with what it needs to know about this server filled in."""
    page = resources.files("mobilenetv3.server").joinpath("static/index.html").read_text(encoding="utf-8")
    config = dict(model=model.name, runtime=model.runtime, classes=len(model.classes), topk=min(5, len(model.classes)),
                  needs_key=settings.api_key is not None)
    return page.replace("__SERVER_CONFIG__", json.dumps(config).replace("</", "<\\/"))
