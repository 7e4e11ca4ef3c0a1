"""The Open Inference Protocol over gRPC: Triton's ``inference.GRPCInferenceService`` (``proto/``: the published
``grpc_service.proto``, which ``tritonclient.grpc`` speaks) on a port of its own (``--grpc-port``), serving the same
models through the same batchers as HTTP, in the same event loop.

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer and ModelStreamInfer
(inputs in ``raw_input_contents`` or typed ``contents``: ``fp32_contents`` for FP32, ``uint_contents`` for UINT8;
outputs always in ``raw_output_contents``, as Triton answers), ModelStatistics, and the model repository's
RepositoryIndex, RepositoryModelLoad and RepositoryModelUnload. Any other method of the service is answered
UNIMPLEMENTED. A refusal is the HTTP one's message with the matching status code (400: INVALID_ARGUMENT, 404:
NOT_FOUND, 413: RESOURCE_EXHAUSTED, ...). With an API key, every method but the health and server metadata ones
needs the metadata ``authorization: Bearer KEY``.

ModelInfer is admitted as an HTTP inference request is (``admission.py``): it counts towards ``--max-queue``
(UNAVAILABLE when full), has the server's deadline, shortened by the call's own deadline or the metadata
``x-request-timeout-ms`` (DEADLINE_EXCEEDED once passed), and a call the client cancelled is dropped before
decoding and before inference.
"""
from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from types import SimpleNamespace
from typing import Awaitable, Callable, Optional

import grpc

from ..version import __version__
from .admission import HEAVY_BYTES, TIMEOUT_HEADER, Admission, ClientGone, Expired, Work
from .batching import Dropped
from .protocol import (
    EXTENSIONS,
    InferRequest,
    InputTensor,
    ModelStatistics,
    checked_parameters,
    model_metadata,
    model_outputs,
    prepare_input,
    requested_output,
    served_names,
)
from .uploads import BadRequest

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
CLIENT_CLOSED = 499  # the status counted for a call cancelled before its answer (app.py's, nginx's)
CONTENTS = {"FP32": "fp32_contents", "UINT8": "uint_contents"}  # the typed contents of each input datatype
STATUS_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
                408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                503: grpc.StatusCode.UNAVAILABLE}  # others: INVALID_ARGUMENT


@functools.lru_cache(maxsize=None)
def messages() -> SimpleNamespace:
    """The service's message classes (``messages().ModelInferRequest``, ...), built from the vendored descriptors in
    a descriptor pool of their own: ``tritonclient``'s copies of the same ``inference.*`` messages in protobuf's
    default pool (a client in the same process) do not clash with them."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    from .proto import DESCRIPTOR_SET

    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET).file:
        pool.Add(file)
    service = pool.FindServiceByName(SERVICE)
    types = {t.full_name: t for method in service.methods for t in (method.input_type, method.output_type)}
    return SimpleNamespace(**{t.name: message_factory.GetMessageClass(t) for t in types.values()})


class InferenceService:
    """The RPCs, over the app's ``models`` (a ``repository.ModelRepository``) and ``admission`` (its
    ``admission.Admission``), with the HTTP app's ``settings`` (``app.ServerSettings``: the API key, the limits on
    images). ``run_in_thread(function, *args, heavy=, work=)`` runs reading and preparing a request off the event
    loop (the app's decoding lanes); ``statistics(name, version)`` is a model version's ``ModelStatistics``;
    ``observe(endpoint, status, seconds)`` counts each call in the app's metrics (``grpc_ModelInfer``, ..., with the
    HTTP status of its outcome: 200, the refusal's 4xx, 499 for a cancelled call, 500)."""

    def __init__(self, models, admission: Admission, run_in_thread: Callable[..., Awaitable],
                 statistics: Callable[[str, str], ModelStatistics], settings,
                 observe: Callable[[str, int, float], None] = lambda endpoint, status, seconds: None):
        self.models, self.admission, self.run_in_thread, self.statistics = models, admission, run_in_thread, statistics
        self.settings, self.observe = settings, observe

    def handler(self) -> grpc.GenericRpcHandler:
        m = messages()
        methods = dict(ServerLive=(self.server_live, m.ServerLiveRequest, False),
                       ServerReady=(self.server_ready, m.ServerReadyRequest, False),
                       ServerMetadata=(self.server_metadata, m.ServerMetadataRequest, False),
                       ModelReady=(self.model_ready, m.ModelReadyRequest, True),
                       ModelMetadata=(self.model_metadata, m.ModelMetadataRequest, True),
                       ModelInfer=(self.model_infer, m.ModelInferRequest, True),
                       ModelStatistics=(self.model_statistics, m.ModelStatisticsRequest, True),
                       RepositoryIndex=(self.repository_index, m.RepositoryIndexRequest, True),
                       RepositoryModelLoad=(self.repository_model_load, m.RepositoryModelLoadRequest, True),
                       RepositoryModelUnload=(self.repository_model_unload, m.RepositoryModelUnloadRequest, True))
        handlers = {name: grpc.unary_unary_rpc_method_handler(
            self._guarded(name, method, authenticated), request_deserializer=request_type.FromString,
            response_serializer=lambda message: message.SerializeToString())
            for name, (method, request_type, authenticated) in methods.items()}
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.model_stream_infer, request_deserializer=m.ModelInferRequest.FromString,
            response_serializer=lambda message: message.SerializeToString())
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _guarded(self, name: str, method, authenticated: bool):
        """``method`` with the API key checked and every failure a status code and one line (never a traceback to
        the client; an unexpected one is logged)."""
        async def rpc(request, context):
            started, status = time.perf_counter(), 200
            try:
                if authenticated:
                    self._check_key(context)
                return await method(request, context)
            except Expired as err:
                status = err.status
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, err.message)
            except BadRequest as err:
                status = err.status
                await context.abort(STATUS_CODES.get(err.status, grpc.StatusCode.INVALID_ARGUMENT), err.message)
            except ClientGone as err:  # nobody is listening: said in one line, as HTTP does
                status = CLIENT_CLOSED
                log.info("gRPC %s: %s", name, err)
                await context.abort(grpc.StatusCode.CANCELLED, str(err))
            except Exception as err:  # noqa: BLE001 - one bad request must not end the server
                status = 500
                log.exception("gRPC %s failed", name)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}")
            finally:
                self.observe(f"grpc_{name}", status, time.perf_counter() - started)

        return rpc

    def _check_key(self, context) -> None:
        if self.settings.api_key is None:
            return
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise BadRequest(401, "missing API key: send the metadata 'authorization: Bearer KEY'")
        if not hmac.compare_digest(token.strip().encode(), self.settings.api_key.encode()):
            raise BadRequest(401, "wrong API key")

    # ------------------------------------------------------------------------------------------ the RPCs
    async def server_live(self, request, context):
        return messages().ServerLiveResponse(live=True)

    async def server_ready(self, request, context):
        return messages().ServerReadyResponse(ready=self.models.ready())

    async def server_metadata(self, request, context):
        return messages().ServerMetadataResponse(name="mobilenetv3", version=__version__, extensions=EXTENSIONS)

    async def model_ready(self, request, context):
        with self.models.use(request.name or None, request.version or None):
            return messages().ModelReadyResponse(ready=True)

    async def model_metadata(self, request, context):
        from google.protobuf import json_format

        with self.models.use(request.name or None, request.version or None) as live:
            metadata = model_metadata(live.model, live.version)
        return json_format.ParseDict(metadata, messages().ModelMetadataResponse(), ignore_unknown_fields=True)

    async def model_infer(self, message, context):
        with self.models.use(message.model_name or None, message.model_version or None) as live:
            async with self.admission.admit(_Call(context)) as work:
                context.add_done_callback(lambda _: setattr(work, "gone", True))  # ends early if cancelled
                request, probabilities = await self._run(message, live, work)
        response = messages().ModelInferResponse(model_name=live.name, model_version=live.version,
                                                 id=message.id)
        for output in model_outputs(request, probabilities, live.model.classes):
            response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
            response.raw_output_contents.append(output.raw())
        return response

    async def model_stream_infer(self, requests, context):
        """ModelStreamInfer (``tritonclient``'s ``start_stream`` and ``async_stream_infer``): each request of the
        stream answered in turn, in order; a refusal is that response's ``error_message`` and the stream goes on."""
        try:
            self._check_key(context)
        except BadRequest as err:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, err.message)
        async for message in requests:
            started, status = time.perf_counter(), 200
            try:
                response = messages().ModelStreamInferResponse(infer_response=await self.model_infer(message, context))
            except BadRequest as err:  # a deadline passed and a full queue too
                status, response = err.status, messages().ModelStreamInferResponse(error_message=err.message)
            except ClientGone as err:
                log.info("gRPC ModelStreamInfer: %s", err)
                return
            except Exception as err:  # noqa: BLE001 - one bad request must not end the stream
                log.exception("gRPC ModelStreamInfer failed")
                status = 500
                response = messages().ModelStreamInferResponse(error_message=f"internal error: {type(err).__name__}")
            self.observe("grpc_ModelStreamInfer", status, time.perf_counter() - started)
            yield response

    async def _run(self, message, live, work: Work):
        """The request read and its input prepared (a decoding lane), then run by the model's batcher; dropped
        before either once the call is cancelled or its deadline passed."""
        expected = live.batcher.expect()
        try:
            request, images = await self.run_in_thread(self._prepare, message, live.model,
                                                       heavy=message.ByteSize() > HEAVY_BYTES, work=work)
            work.check("inference")
            probabilities, _ = await live.batcher.submit(images, expected, work.still_wanted)
        except Dropped:
            work.check("inference")
            raise ClientGone("the call was dropped before inference") from None
        finally:
            expected.arrived()
        return request, probabilities

    def _prepare(self, message, model):
        request = infer_request(message)
        limits = self.settings
        return request, prepare_input(request, model, limits.max_pixels, limits.request_pixels, limits.max_images)

    async def model_statistics(self, request, context):
        from google.protobuf import json_format

        names = [request.name] if request.name else served_names(self.models)
        stats = []
        for name in names:
            with self.models.use(name, request.version or None) as live:
                stats.append(self.statistics(live.name, live.version).to_dict())
        return json_format.ParseDict(dict(model_stats=stats), messages().ModelStatisticsResponse())


    # ----------------------------------------------------------- the model repository (repository.ModelRepository)
    async def repository_index(self, request, context):
        response = messages().RepositoryIndexResponse()
        for row in self.models.index(ready_only=request.ready):
            response.models.add(**row)
        return response

    async def repository_model_load(self, request, context):
        await asyncio.get_running_loop().run_in_executor(None, self.models.load, request.model_name)
        return messages().RepositoryModelLoadResponse()

    async def repository_model_unload(self, request, context):
        await asyncio.get_running_loop().run_in_executor(None, self.models.unload, request.model_name)
        return messages().RepositoryModelUnloadResponse()


class _Call:
    """A gRPC call's metadata as ``Admission.admit`` reads an HTTP request's headers: ``x-request-timeout-ms`` from
    the metadata, or else from the call's own deadline."""

    def __init__(self, context):
        self.headers = dict(context.invocation_metadata() or ())
        remaining = context.time_remaining()
        if TIMEOUT_HEADER not in self.headers and remaining is not None:
            self.headers[TIMEOUT_HEADER] = str(max(1, int(remaining * 1000)))


def infer_request(message) -> InferRequest:
    """A ``ModelInferRequest`` -> the protocol's request (checked as the HTTP one is)."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(400, f"raw_input_contents holds {len(raw)} tensors for {len(message.inputs)} inputs")
    inputs = []
    for index, tensor in enumerate(message.inputs):
        if raw and tensor.HasField("contents"):
            raise BadRequest(400, f"input {tensor.name!r} has both contents and raw_input_contents: send one")
        inputs.append(InputTensor(tensor.name, tensor.datatype, list(tensor.shape),
                                  None if raw else _typed_contents(tensor), raw[index] if raw else None))
    outputs = [requested_output(output.name, _parameters(output.parameters, f"output {output.name!r}"))
               for output in message.outputs]
    _parameters(message.parameters, "the request's")
    return InferRequest(inputs, outputs, message.id or None, binary_output=True)


def _typed_contents(tensor) -> list:
    field = CONTENTS.get(tensor.datatype)
    if field is None:  # FP16 (the proto has no FP16 contents) or a datatype prepare_input refuses
        if tensor.datatype == "FP16":
            raise BadRequest(400, f"input {tensor.name!r}: FP16 values go in raw_input_contents")
        return []
    values = getattr(tensor.contents, field)
    if not values:
        raise BadRequest(400, f"input {tensor.name!r} has no values: send raw_input_contents or contents.{field}")
    return list(values)


def _parameters(parameters, where: str) -> dict:
    """A protobuf ``map<string, InferParameter>`` as the plain dict the protocol checks."""
    plain = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            plain[key] = getattr(value, choice)
    return checked_parameters(plain, where)


async def start_server(service: InferenceService, host: str, port: int, max_message_bytes: int,
                       certfile: Optional[str] = None, keyfile: Optional[str] = None):
    """A started ``grpc.aio`` server of ``service`` on ``host:port`` (0: a free port) in the running event loop, and
    the port it listens on; over TLS with
    ``certfile`` (a PEM certificate chain; its key in ``keyfile``, or in ``certfile`` itself, as uvicorn takes
    them); requests larger than ``max_message_bytes`` (the HTTP upload limit) are refused by gRPC itself
    (RESOURCE_EXHAUSTED)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", -1)])
    server.add_generic_rpc_handlers((service.handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if certfile is None:
            bound = server.add_insecure_port(address)
        else:
            with open(certfile, "rb") as chain, open(keyfile or certfile, "rb") as key:
                bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key.read(), chain.read())]))
    except RuntimeError as err:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {err}") from None
    if not bound:
        raise RuntimeError(f"cannot listen for gRPC on {address}")
    await server.start()
    log.info("gRPC (inference.GRPCInferenceService) on %s%s", address, " over TLS" if certfile else "")
    return server, bound
