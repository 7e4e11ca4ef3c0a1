"""The Open Inference Protocol as NVIDIA Triton's own client speaks it: ``tritonclient`` over HTTP (JSON and binary
tensors) and gRPC against a real server (uvicorn on a free port, gRPC beside it), giving ``mobilenetv3 predict``'s
probabilities for the same image; UINT8 pixels, FP16, the classification and statistics extensions, versioned
paths, requested outputs, ids; every bad request refused with a 4xx (gRPC: its status code) naming the problem,
and a good request answered after it."""
import gzip
import json
import math
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from mobilenetv3 import predict
from mobilenetv3.server import ServerSettings, create_app, load_served_model

from conftest import run_cli
from serving import PREPROCESSING, free_port, live_server, write_images, write_served_model

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
import grpc  # noqa: E402 - after the skip: grpcio comes with tritonclient[grpc]
import httpx  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402 - the client's own messages
from tritonclient.utils import InferenceServerException  # noqa: E402

NAME = "mobilenetv3_small"
TOLERANCE = 1e-5  # the issue's: probabilities as `mobilenetv3 predict` gives them
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "triton_client.py"
PLAIN = 3  # the first images of serving.IMAGES are RGB JPEG, RGB PNG and grayscale PNG: pixels as decoded


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("triton")
    return write_served_model(folder), write_images(folder)[:PLAIN]


@pytest.fixture(scope="module")
def expected(files):
    """``mobilenetv3 predict``'s probabilities of each image, in class order."""
    model, images = files
    return {p.path: np.array([t["probability"] for t in sorted(p.top, key=lambda t: t["index"])])
            for p in predict([str(i) for i in images], source=str(model), topk=3)}


@pytest.fixture(scope="module")
def server(files):
    """``(http address, grpc address)`` of one server with both protocols."""
    app = create_app(load_served_model(str(files[0])), ServerSettings(max_delay_ms=0, grpc_port=0))  # 0: any free
    with live_server(app) as url:
        yield url.removeprefix("http://"), f"127.0.0.1:{app.state.grpc_port}"


@pytest.fixture(scope="module")
def http(server):
    return httpclient.InferenceServerClient(server[0])


@pytest.fixture(scope="module")
def grpc_client(server):
    return grpcclient.InferenceServerClient(server[1])


def free_ports(count: int) -> list[int]:
    """``count`` different free ports, held together while chosen (two free_port() calls may give one port twice)."""
    held = [socket.socket() for _ in range(count)]
    try:
        for each in held:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in held]
    finally:
        for each in held:
            each.close()


def pixels(path) -> np.ndarray:
    """(1, H, W, 3) uint8: the image as decoded, at its own size."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))[None]


def reference_input(path) -> np.ndarray:
    """The eval protocol written with torchvision alone: resize, center crop, scale, normalise -> (1, C, H, W)."""
    p = PREPROCESSING
    transform = v2.Compose([v2.Resize(p["resize"], antialias=True), v2.CenterCrop(p["crop"]), v2.PILToTensor(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(p["mean"], p["std"])])
    with Image.open(path) as image:
        return transform(image.convert("RGB"))[None].numpy()


def http_infer(client, values: np.ndarray, datatype: str, binary: bool, class_count: int = 0, **kwargs):
    tensor = httpclient.InferInput("input", list(values.shape), datatype)
    tensor.set_data_from_numpy(values, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=class_count)]
    return client.infer(NAME, [tensor], outputs=wanted, **kwargs)


def grpc_infer(client, values: np.ndarray, datatype: str, class_count: int = 0, **kwargs):
    tensor = grpcclient.InferInput("input", list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    return client.infer(NAME, [tensor], outputs=[grpcclient.InferRequestedOutput("probabilities", class_count)],
                        **kwargs)


def all_protocols(http, grpc_client, values: np.ndarray, datatype: str, **kwargs) -> dict:
    """The probabilities over HTTP JSON, HTTP binary and gRPC."""
    return {"http json": http_infer(http, values, datatype, False, **kwargs).as_numpy("probabilities"),
            "http binary": http_infer(http, values, datatype, True, **kwargs).as_numpy("probabilities"),
            "grpc": grpc_infer(grpc_client, values, datatype, **kwargs).as_numpy("probabilities")}


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float = TOLERANCE) -> None:
    assert actual.shape == expected.shape and np.abs(actual - expected).max() <= tolerance, (actual, expected)


# -------------------------------------------------------------------------------------------- the answers
def test_uint8_pixels_give_predicts_probabilities_over_every_protocol(http, grpc_client, files, expected):
    for image in files[1]:
        for protocol, answer in all_protocols(http, grpc_client, pixels(image), "UINT8").items():
            assert answer.dtype == np.float32, protocol
            assert_close(answer[0], expected[str(image)])
    gray = files[1][2]  # a grayscale PNG sent as it is, one channel, to this RGB model: converted as predict does
    with Image.open(gray) as image:
        assert image.mode == "L"
        one_channel = np.asarray(image)[None, :, :, None]
    for answer in all_protocols(http, grpc_client, one_channel, "UINT8").values():
        assert_close(answer[0], expected[str(gray)])


def test_fp32_tensors_give_predicts_probabilities_and_fp16_the_same_as_fp32(http, grpc_client, files, expected):
    batch = np.concatenate([reference_input(image) for image in files[1]])  # (3, 3, 64, 64): one request
    for answer in all_protocols(http, grpc_client, batch, "FP32").values():
        for row, image in zip(answer, files[1]):
            assert_close(row, expected[str(image)])
    half = batch.astype(np.float16)
    as_fp32 = http_infer(http, half.astype(np.float32), "FP32", True).as_numpy("probabilities")
    for answer in all_protocols(http, grpc_client, half, "FP16").values():
        assert_close(answer, as_fp32, 1e-6)


def test_classification_gives_tritons_top_k_strings(http, grpc_client, files, expected):
    image = files[1][0]
    probabilities = expected[str(image)]
    order = np.argsort(-probabilities, kind="stable")[:2]
    answers = [http_infer(http, pixels(image), "UINT8", False, class_count=2),
               http_infer(http, pixels(image), "UINT8", True, class_count=2),
               grpc_infer(grpc_client, pixels(image), "UINT8", class_count=2)]
    for answer in answers:
        strings = answer.as_numpy("probabilities")
        assert strings.shape == (1, 2)
        for text, index in zip(strings[0], order):
            text = text.decode() if isinstance(text, bytes) else text
            assert re.fullmatch(r"\d\.\d{6}:\d+:c\d", text), text  # C++ std::to_string's six decimals, as Triton
            score, position, label = text.split(":")
            assert (int(position), label) == (index, f"c{index}")
            assert abs(float(score) - probabilities[index]) <= 1e-6 + TOLERANCE


def test_the_example_runs_unmodified_and_gives_predicts_probabilities(server, files, expected):
    image = files[1][0]
    run = subprocess.run([sys.executable, str(EXAMPLE), str(image), "--model", NAME, "--http", server[0],
                          "--grpc", server[1], "--top", "2"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    answers = json.loads(run.stdout)
    for protocol in ("http_json", "http_binary", "grpc"):
        assert_close(np.array(answers[protocol]), expected[str(image)])
    assert [int(text.split(":")[1]) for text in answers["top"]] == \
        list(np.argsort(-expected[str(image)], kind="stable")[:2])


def test_metadata_lists_the_extensions_over_both_protocols(http, grpc_client):
    extensions = {"binary_tensor_data", "classification", "statistics"}
    assert extensions <= set(http.get_server_metadata()["extensions"])
    assert extensions <= set(grpc_client.get_server_metadata().extensions)
    assert grpc_client.is_server_live() and grpc_client.is_server_ready() and grpc_client.is_model_ready(NAME)
    metadata = grpc_client.get_model_metadata(NAME)
    assert metadata.name == NAME and list(metadata.inputs[0].shape) == [-1, 3, 64, 64]


def test_versioned_paths_serve_version_1_and_refuse_others(http, grpc_client, files, expected):
    image = files[1][1]
    for answer in (http_infer(http, pixels(image), "UINT8", True, model_version="1"),
                   grpc_infer(grpc_client, pixels(image), "UINT8", model_version="1")):
        assert_close(answer.as_numpy("probabilities")[0], expected[str(image)])
    assert http.is_model_ready(NAME, "1") and grpc_client.is_model_ready(NAME, "1")
    assert http.get_model_metadata(NAME, "1")["versions"] == ["1"]
    with pytest.raises(InferenceServerException, match="no version '2'"):
        http_infer(http, pixels(image), "UINT8", True, model_version="2")
    with pytest.raises(InferenceServerException, match="no version '2'") as refused:
        grpc_infer(grpc_client, pixels(image), "UINT8", model_version="2")
    assert refused.value.status() == "StatusCode.NOT_FOUND"


def test_statistics_count_every_request_in_tritons_shape(server, http, grpc_client, files):
    before = http.get_inference_statistics(NAME)["model_stats"][0]
    batch = np.concatenate([pixels(files[1][0])] * 2)  # two images in one request
    http_infer(http, batch, "UINT8", True)
    grpc_infer(grpc_client, batch, "UINT8")
    after = http.get_inference_statistics(NAME, "1")["model_stats"][0]
    assert after["name"] == NAME and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 4
    assert 1 <= after["execution_count"] - before["execution_count"] <= 2
    stats, earlier = after["inference_stats"], before["inference_stats"]
    for kind in ("success", "queue", "compute_infer"):
        assert stats[kind]["count"] - earlier[kind]["count"] == 2, kind
        assert stats[kind]["ns"] > earlier[kind]["ns"], kind
    assert stats["fail"]["count"] == 0
    assert after["batch_stats"] and all(set(b) >= {"batch_size", "compute_infer"} for b in after["batch_stats"])
    every = httpx.get(f"http://{server[0]}/v2/models/stats").json()["model_stats"]
    assert [s["name"] for s in every] == [NAME]
    over_grpc = grpc_client.get_inference_statistics(NAME).model_stats[0]
    assert over_grpc.inference_count >= after["inference_count"]
    assert over_grpc.inference_stats.success.count >= stats["success"]["count"]


def test_compressed_requests_give_the_same_answers(http, files, expected):
    """tritonclient's request_compression_algorithm: the body gzip- or zlib-compressed (Content-Encoding)."""
    image = files[1][0]
    for algorithm in ("gzip", "deflate"):
        answer = http_infer(http, pixels(image), "UINT8", True, request_compression_algorithm=algorithm)
        assert_close(answer.as_numpy("probabilities")[0], expected[str(image)])


def test_ids_are_echoed_as_sent(server, http, grpc_client, files):
    url = f"http://{server[0]}/v2/models/{NAME}/infer"
    tensor = reference_input(files[1][0])
    for request_id in (42, 4.5, "abc"):
        answer = httpx.post(url, json=dict(id=request_id, inputs=[dict(name="input", datatype="FP32",
                                                                         shape=list(tensor.shape),
                                                                         data=tensor.flatten().tolist())]))
        assert answer.status_code == 200 and answer.json()["id"] == request_id
    assert http_infer(http, tensor, "FP32", True, request_id="7").get_response()["id"] == "7"
    assert grpc_infer(grpc_client, tensor, "FP32", request_id="8").get_response().id == "8"


def test_requested_outputs_are_the_ones_returned(server, files):
    url = f"http://{server[0]}/v2/models/{NAME}/infer"
    tensor = reference_input(files[1][0])
    inputs = [dict(name="input", datatype="FP32", shape=list(tensor.shape), data=tensor.flatten().tolist())]
    every = httpx.post(url, json=dict(inputs=inputs)).json()["outputs"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in every] == [("probabilities", "FP32", [1, 3])]
    top = httpx.post(url, json=dict(inputs=inputs, outputs=[dict(name="probabilities",
                                                                 parameters=dict(classification=5))])).json()
    assert [(o["name"], o["datatype"], o["shape"]) for o in top["outputs"]] == [("probabilities", "BYTES", [1, 3])]
    plain = httpx.post(url, json=dict(inputs=inputs, outputs=[dict(name="probabilities",
                                                                   parameters=dict(classification=0))])).json()
    assert plain["outputs"][0]["datatype"] == "FP32"  # 0: no classification, as Triton reads it


# ------------------------------------------------------------------------------------------ bad requests
def v2_json(shape=(1, 3, 64, 64), datatype="FP32", data=None, **fields) -> dict:
    count = int(np.prod(shape, dtype=object)) if data is None else None
    tensor = dict(name="input", datatype=datatype, shape=list(shape), data=[0] * count if data is None else data)
    tensor.update(fields.pop("tensor", {}))
    return dict(inputs=[tensor], **fields)


def with_binary(header: dict, binary: bytes, length=None) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    return text + binary, {"Inference-Header-Content-Length": str(len(text) if length is None else length)}


HUGE = [2**60, 3, 64, 64]  # its product wraps around in int64 (np.prod): a 500 once
BINARY_INPUT = dict(name="input", datatype="FP32", shape=[1, 3, 64, 64], parameters=dict(binary_data_size=49152))
BAD_HTTP = [  # name, body (a dict: JSON), or (bytes, headers), status, what the error says
    ("unknown input name", v2_json(tensor=dict(name="bogus")), 400, "unknown input 'bogus'"),
    ("unknown output", v2_json(outputs=[dict(name="bogus")]), 400, "unknown output 'bogus'"),
    ("parameters not an object", v2_json(parameters=[1, 2]), 400, "\"parameters\" must be an object"),
    ("parameter of the wrong type", v2_json(parameters=dict(binary_data_output="yes")), 400, "true or false"),
    ("classification not a number", v2_json(outputs=[dict(name="probabilities", parameters=dict(classification="2"))]),
     400, "classification"),
    ("nested parameter", v2_json(parameters=dict(a=dict(b=1))), 400, "string, number or boolean"),
    ("id an object", v2_json(id=dict(a=1)), 400, "\"id\" must be a string or a number"),
    ("huge shape", v2_json(HUGE, data=[0.5] * 12288), 400, "shape [1152921504606846976, 3, 64, 64] needs"),
    ("huge uint8 shape", v2_json([2**60, 8, 8, 3], "UINT8", data=[1] * 192), 400, "needs"),
    ("negative dimension", v2_json((-1, 3, 64, 64), data=[0.5]), 400, "whole numbers"),
    ("unsupported datatype", v2_json(datatype="INT64"), 400, "FP32, FP16, UINT8"),
    ("uint8 value above 255", v2_json((1, 8, 8, 3), "UINT8", data=[300] * 192), 400, "0 to 255"),
    ("uint8 of two channels", v2_json((1, 8, 8, 2), "UINT8"), 400, "C 1 or 3"),
    ("fp16 beyond its range", v2_json(datatype="FP16", data=[1e6] * 12288), 400, "FP16's range"),
    ("two inputs", dict(inputs=v2_json()["inputs"] * 2), 400, "given 2 times"),
    ("data and binary", v2_json(tensor=dict(parameters=dict(binary_data_size=4))), 400, "both"),
    ("binary without its header", dict(inputs=[BINARY_INPUT]), 400, "needs the Inference-Header-Content-Length"),
    ("binary size without data", with_binary(dict(inputs=[BINARY_INPUT]), b"\0" * 100), 400,
     "holds 100 bytes after the JSON"),
    ("binary size of the wrong shape", with_binary(dict(inputs=[dict(BINARY_INPUT, parameters=dict(
        binary_data_size=8))]), b"\0" * 8), 400, "needs 49152"),
    ("header length past the body", with_binary(dict(inputs=[BINARY_INPUT]), b"", length=10**6), 400,
     "the body holds"),
    ("header length not a number", with_binary(dict(inputs=[BINARY_INPUT]), b"", length="x"), 400,
     "whole number of bytes"),
    ("header length zero", with_binary(dict(inputs=[BINARY_INPUT]), b"", length=0), 400, "not supported"),
    ("not JSON", (b"{oops", {}), 400, "not valid JSON"),
    ("unknown content encoding", (b"{}", {"Content-Encoding": "br"}), 415, "Content-Encoding 'br'"),
    ("not gzip", (b"{oops", {"Content-Encoding": "gzip"}), 400, "not valid gzip"),
    ("gzip bomb", (gzip.compress(b" " * (17 << 20)), {"Content-Encoding": "gzip"}), 413, "inflates to more than"),
    ("a JSON list", (b"[1, 2]", {}), 400, "must be a JSON object"),
    ("unknown version", v2_json(), 404, "no version '7'"),
]


@pytest.mark.parametrize("name, body, status, says", BAD_HTTP, ids=[case[0] for case in BAD_HTTP])
def test_bad_http_requests_get_a_4xx_and_the_server_goes_on(server, http, files, expected, name, body, status, says):
    version = "/versions/7" if name == "unknown version" else ""
    url = f"http://{server[0]}/v2/models/{NAME}{version}/infer"
    content, headers = (json.dumps(body).encode(), {}) if isinstance(body, dict) else body
    answer = httpx.post(url, content=content, headers={"Content-Type": "application/json", **headers})
    assert answer.status_code == status, answer.text
    assert says in answer.json()["error"]
    good = http_infer(http, pixels(files[1][0]), "UINT8", True).as_numpy("probabilities")
    assert_close(good[0], expected[str(files[1][0])])


def grpc_request(shape=(1, 3, 64, 64), datatype="FP32", raw=None, name="input", output=None, version=""):
    request = service_pb2.ModelInferRequest(model_name=NAME, model_version=version)
    request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    if raw is not False:
        request.raw_input_contents.append(raw if raw is not None else b"\0" * (4 * 3 * 64 * 64))
    if output is not None:
        request.outputs.add(name=output)
    return request


BAD_GRPC = [  # name, request (the client's own messages), status code, what the error says
    ("unknown input name", grpc_request(name="bogus"), "INVALID_ARGUMENT", "unknown input 'bogus'"),
    ("unknown output", grpc_request(output="bogus"), "INVALID_ARGUMENT", "unknown output 'bogus'"),
    ("huge shape", grpc_request(HUGE), "INVALID_ARGUMENT", "needs"),
    ("raw data of the wrong size", grpc_request(raw=b"\0" * 7), "INVALID_ARGUMENT", "holds 7 bytes"),
    ("no data", grpc_request(raw=False), "INVALID_ARGUMENT", "no values"),
    ("fp16 as typed contents", grpc_request(datatype="FP16", raw=False), "INVALID_ARGUMENT", "raw_input_contents"),
    ("unknown version", grpc_request(version="7"), "NOT_FOUND", "no version '7'"),
    ("unknown model", service_pb2.ModelInferRequest(model_name="resnet50"), "NOT_FOUND", "unknown model"),
]


@pytest.mark.parametrize("name, request_message, code, says", BAD_GRPC, ids=[case[0] for case in BAD_GRPC])
def test_bad_grpc_requests_get_a_status_and_the_server_goes_on(server, grpc_client, files, expected, name,
                                                               request_message, code, says):
    with grpc.insecure_channel(server[1]) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request_message, timeout=30)
    assert refused.value.code().name == code and says in refused.value.details(), refused.value.details()
    good = grpc_infer(grpc_client, pixels(files[1][0]), "UINT8").as_numpy("probabilities")
    assert_close(good[0], expected[str(files[1][0])])


def test_grpc_calls_are_counted_in_the_metrics(server, grpc_client, files):
    grpc_infer(grpc_client, pixels(files[1][0]), "UINT8")
    with pytest.raises(InferenceServerException):
        grpc_client.infer(NAME, [], outputs=[grpcclient.InferRequestedOutput("bogus")])
    metrics = httpx.get(f"http://{server[0]}/metrics").text
    for status in ("200", "400"):
        assert re.search(rf'mobilenetv3_requests_total{{endpoint="grpc_ModelInfer",status="{status}"}} [1-9]',
                         metrics), status


def test_grpc_needs_the_api_key_for_models_but_not_for_health(files):
    app = create_app(load_served_model(str(files[0])),
                     ServerSettings(max_delay_ms=0, warmup=False, grpc_port=0, api_key="sesame"))
    with live_server(app):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{app.state.grpc_port}")
        assert client.is_server_live()
        with pytest.raises(InferenceServerException, match="missing API key"):
            client.is_model_ready(NAME)
        with pytest.raises(InferenceServerException, match="wrong API key"):
            client.is_model_ready(NAME, headers={"authorization": "Bearer open"})
        assert client.is_model_ready(NAME, headers={"authorization": "Bearer sesame"})


def test_grpc_calls_are_admitted_as_http_requests_are(files):
    """``--max-queue`` bounds gRPC calls too (0 here: every inference refused); health and metadata are not bound."""
    app = create_app(load_served_model(str(files[0])),
                     ServerSettings(max_delay_ms=0, warmup=False, grpc_port=0, max_queue=0))
    with live_server(app):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{app.state.grpc_port}")
        with pytest.raises(InferenceServerException, match="limit of 0 requests in progress") as refused:
            grpc_infer(client, pixels(files[1][0]), "UINT8")
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert client.is_model_ready(NAME) and client.get_model_metadata(NAME).name == NAME


def test_a_grpc_call_past_its_deadline_is_dropped_and_the_server_goes_on(grpc_client, files, expected):
    large = np.zeros((1, 1500, 1500, 3), np.uint8)  # resizing it takes longer than the deadline
    with pytest.raises(InferenceServerException, match="deadline of 1 ms") as expired:
        grpc_infer(grpc_client, large, "UINT8", headers={"x-request-timeout-ms": "1"})
    assert expired.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    good = grpc_infer(grpc_client, pixels(files[1][0]), "UINT8").as_numpy("probabilities")
    assert_close(good[0], expected[str(files[1][0])])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("key_apart", [True, False], ids=["key file", "key in the certificate file"])
def test_grpc_over_tls_with_the_https_certificate(tmp_path, files, expected, key_apart):
    from test_serve_process import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path)
    if not key_apart:
        cert.write_bytes(cert.read_bytes() + key.read_bytes())
    app = create_app(load_served_model(str(files[0])), ServerSettings(
        max_delay_ms=0, warmup=False, grpc_port=0, grpc_certfile=str(cert),
        grpc_keyfile=str(key) if key_apart else None))
    with live_server(app):
        address = f"127.0.0.1:{app.state.grpc_port}"
        client = grpcclient.InferenceServerClient(address, ssl=True, root_certificates=str(cert))
        image = files[1][0]
        assert_close(grpc_infer(client, pixels(image), "UINT8").as_numpy("probabilities")[0], expected[str(image)])
        with pytest.raises(InferenceServerException):  # in plain text: no answer
            grpcclient.InferenceServerClient(address).is_server_live(client_timeout=5)


def test_binary_outputs_follow_the_json_with_its_length_in_the_header(server, files):
    """The binary extension's response layout, read here without tritonclient."""
    tensor = reference_input(files[1][0])
    header = dict(inputs=[dict(BINARY_INPUT)], outputs=[dict(name="probabilities", parameters=dict(binary_data=True))])
    content, headers = with_binary(header, tensor.astype("<f4").tobytes())
    answer = httpx.post(f"http://{server[0]}/v2/models/{NAME}/infer", content=content, headers=headers)
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["Inference-Header-Content-Length"])
    described = json.loads(answer.content[:length])["outputs"][0]
    assert described["parameters"] == {"binary_data_size": 12} and "data" not in described
    values = struct.unpack("<3f", answer.content[length:])
    assert abs(sum(values) - 1) < 1e-5


# ------------------------------------------------------------------------------------------ from the shell
@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: 25 s on 2 busy cores
def test_serve_grpc_port_from_the_command_line(files, expected, workers):
    """``mobilenetv3 serve --grpc-port``: both protocols answer, and SIGTERM still ends it with 0; with workers, each
    worker's gRPC server shares the port (SO_REUSEPORT, gRPC's default)."""
    from test_serve_process import start

    port, grpc_port = free_ports(2)
    process = start(files[0], port, "--grpc-port", grpc_port, "--workers", workers, "--max-delay-ms", "0",
                    "--no-warmup")
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        image = files[1][0]
        for _ in range(4):  # new connections, spread over the workers
            assert_close(grpc_infer(client, pixels(image), "UINT8").as_numpy("probabilities")[0], expected[str(image)])
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        http = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert_close(http_infer(http, pixels(image), "UINT8", True).as_numpy("probabilities")[0], expected[str(image)])
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("flags, says", [(["--grpc-port", "0"], "--grpc-port must be between 1 and 65535"),
                                         (["--grpc-port", "{port}"], "not --port")])
def test_a_bad_grpc_port_is_one_line_and_exit_2(files, flags, says):
    port = free_port()
    result = run_cli("serve", files[0], "--port", port, *[flag.format(port=port) for flag in flags])
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result


@pytest.mark.slow  # a server process and the example's interpreters: 10-20 s
def test_the_triton_benchmark_meets_its_target_on_a_small_model(tmp_path, files):
    out = tmp_path / "serve_triton.json"
    benchmark = EXAMPLE.parents[1] / "benchmarks" / "serve_triton.py"
    run = subprocess.run([sys.executable, str(benchmark), "--model", str(files[0]), "--images", str(files[1][0]),
                          str(files[1][2]), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["target_met"] and set(report["max_abs_diff"]) == {"http_json", "http_binary", "grpc"}
    assert max(report["max_abs_diff"].values()) <= TOLERANCE and report["classification_ranked_as_predict"]


# ------------------------------------------------------------------------------- fuzzed protocol requests
def fuzzed_requests():
    """``(v2 request body, Inference-Header-Content-Length)``, near the valid ones: real datatypes and shapes (some
    huge, negative or of the wrong rank), data of the right size or not, flat, nested or binary, and any JSON value
    in any field now and then."""
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
    junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=6), inner, max_size=3), max_leaves=8)

    def rarely(strategy, other):  # ``other`` one time in ten
        return st.one_of(*[strategy] * 9, other)

    @st.composite
    def tensor(draw):
        datatype = draw(rarely(st.sampled_from(["FP32", "FP16", "UINT8"]), st.just("INT64")))
        if draw(rarely(st.just(True), st.just(False))):
            sizes = [draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))]
            shape = [sizes[0], 3, 8, 8] if datatype != "UINT8" else [*sizes, draw(st.sampled_from([1, 3, 2]))]
        else:
            shape = draw(st.lists(st.integers(-2, 2**62) | st.integers(0, 9), max_size=5))
        count = math.prod(shape) if 0 < math.prod(shape) <= 2000 else draw(st.integers(0, 50))
        count += draw(st.sampled_from([0, 0, 0, 1, -1])) if count else 0
        numbers = st.integers(0, 255) if datatype == "UINT8" else st.floats(-4, 4, width=32)
        values = draw(st.lists(numbers | st.integers(-1, 300) | st.floats(width=32), min_size=count, max_size=count)
                      if draw(st.booleans()) else st.lists(numbers, min_size=count, max_size=count))
        item = dict(name=draw(rarely(st.just("input"), st.just("bogus") | junk)), datatype=datatype, shape=shape)
        if draw(st.booleans()):
            dtype = {"FP32": "<f4", "FP16": "<f2", "UINT8": "u1"}.get(datatype, "<i8")
            raw = np.nan_to_num(np.array(values, dtype=np.float64)).clip(-60000, 60000).astype(dtype).tobytes()
            item["parameters"] = dict(binary_data_size=len(raw) + draw(st.sampled_from([0, 0, 0, 1])))
            return item, raw
        item["data"] = values if draw(st.booleans()) or not values else np.reshape(values, (-1, 1)).tolist()
        return draw(rarely(st.just(item), junk)), b""

    @st.composite
    def body(draw):
        tensors = draw(rarely(st.lists(tensor(), min_size=1, max_size=1), st.lists(tensor(), max_size=2)))
        document = dict(inputs=[item for item, _ in tensors])
        if draw(st.booleans()):
            document["outputs"] = draw(rarely(st.lists(st.fixed_dictionaries(
                dict(name=rarely(st.just("probabilities"), st.just("bogus"))), optional=dict(parameters=rarely(
                    st.fixed_dictionaries({}, optional=dict(classification=rarely(st.integers(0, 5), junk),
                                                            binary_data=rarely(st.booleans(), junk))), junk))),
                max_size=2), junk))
        for key, value in (("id", rarely(st.integers() | st.text(max_size=5), junk)),
                           ("parameters", rarely(st.fixed_dictionaries({}, optional=dict(
                               binary_data_output=rarely(st.booleans(), junk))), junk))):
            if draw(st.booleans()):
                document[key] = draw(value)
        text, binary = json.dumps(document).encode(), b"".join(raw for _, raw in tensors)
        length = draw(rarely(st.just(len(text)), st.sampled_from([0, len(text) + 1, None])))
        return text + binary, None if length is None else str(length)

    return body()


def test_fuzzed_v2_requests_are_refused_with_a_4xx_or_prepared():
    """Whatever the JSON and the binary part hold, reading and preparing a request either gives the model's input
    or refuses it with a BadRequest (400, 413): never another exception (the server's 500)."""
    from hypothesis import HealthCheck, given, settings

    from mobilenetv3.data.transforms import Preprocessing
    from mobilenetv3.server import BadRequest
    from mobilenetv3.server.protocol import model_outputs, prepare_input, read_http_request
    from mobilenetv3.server.runtime import ServedModel

    model = ServedModel("m", "torch", "-", ["a", "b"], Preprocessing(9, 8, "bilinear", (0.5,) * 3, (0.2,) * 3, 3),
                        run=lambda images: torch.full((len(images), 2), 0.5))
    prepared = []

    @settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(fuzzed_requests())
    def read_and_prepare(request_body):
        body, header_length = request_body
        try:
            request = read_http_request(body, header_length)
            images = prepare_input(request, model, max_pixels=100, max_request_pixels=200, max_images=2)
        except BadRequest as err:
            assert 400 <= err.status < 500 and err.message
            return
        assert images.shape[1:] == (3, 8, 8) and images.dtype == torch.float32 and torch.isfinite(images).all()
        model_outputs(request, model.run(images), model.classes)
        prepared.append(request.inputs[0].datatype)

    read_and_prepare()
    assert prepared, "no request got through: the fuzzing stayed on the surface"


def test_a_grpc_stream_answers_each_request_in_turn_and_goes_on_after_a_refusal(grpc_client, files, expected):
    """tritonclient's start_stream / async_stream_infer (ModelStreamInfer): a bad request's refusal is its own
    response, and the stream goes on."""
    import queue

    answers = queue.Queue()
    image = files[1][0]
    good = grpcclient.InferInput("input", list(pixels(image).shape), "UINT8").set_data_from_numpy(pixels(image))
    bad = grpcclient.InferInput("bogus", list(pixels(image).shape), "UINT8").set_data_from_numpy(pixels(image))
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for request_id, tensor in (("a", good), ("b", bad), ("c", good)):
            grpc_client.async_stream_infer(NAME, [tensor], request_id=request_id)
        received = [answers.get(timeout=30) for _ in range(3)]
    finally:
        grpc_client.stop_stream()
    (first, _), (_, refused), (third, _) = received
    assert "unknown input 'bogus'" in str(refused)
    for result, request_id in ((first, "a"), (third, "c")):
        assert result.get_response().id == request_id
        assert_close(result.as_numpy("probabilities")[0], expected[str(image)])
