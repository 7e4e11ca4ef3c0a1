"""Admission control and bounded work, on a real socket: a crowd over the queue limit gets 503 + Retry-After
at once; a request past its deadline, or whose client left, is dropped before inference; a client gone
mid-upload is one log line and a 499; a slow body gets 408; silent and slow-loris connections are closed; a
request over the pixel budget is refused before decoding; a costly upload decodes in its own lane. Each bad
input is followed by a good request that succeeds. The "model" is a stub whose runs can be held (``gate``),
so that what is queued, and for how long, does not depend on the machine's speed."""
import asyncio
import io
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
import torch
from PIL import Image

from mobilenetv3.data.transforms import Preprocessing
from mobilenetv3.server import ServedModel, ServerSettings, create_app

from serving import PREPROCESSING, jpeg_bytes, live_server, png_header_only, write_served_model

pytest.importorskip("uvicorn")
from mobilenetv3.server import app as app_module  # noqa: E402
from mobilenetv3.server.admission import HEAVY_PIXELS, ClientGone, DecodeLanes, Expired, Work  # noqa: E402
from mobilenetv3.server.connections import http_protocol  # noqa: E402
from mobilenetv3.server.uploads import decoded_pixels  # noqa: E402

JPEG = jpeg_bytes()
SOURCE = None  # the file the served stub claims to come from (source_file)
IMAGE = {"Content-Type": "image/jpeg"}


class GatedModel:
    """A 3-class "model" whose runs wait while ``gate`` is closed; it counts the runs begun and their images."""

    def __init__(self):
        self.gate, self.entered, self.images = threading.Event(), 0, []
        self.gate.set()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.entered += 1
        assert self.gate.wait(20), "the test never opened the gate"
        self.images.append(len(images))
        return torch.full((len(images), 3), 1 / 3)

    def hold(self) -> None:
        """Runs from now on wait for ``gate.set()`` (those the server made starting up did not)."""
        self.entered, self.images = 0, []
        self.gate.clear()

    def wait_entered(self, runs: int) -> None:
        deadline = time.monotonic() + 10
        while self.entered < runs:
            assert time.monotonic() < deadline, "the model run did not begin"
            time.sleep(0.01)


def server_of(model, **settings):
    """An app serving ``model`` as "tiny" (the repository wants a real file behind it: ``SOURCE``)."""
    served = ServedModel("tiny", "torch", str(SOURCE), ["c0", "c1", "c2"], Preprocessing.from_dict(PREPROCESSING),
                         model)
    return create_app(served, ServerSettings(warmup=False, **settings))


@pytest.fixture(autouse=True, scope="module")
def source_file(tmp_path_factory):
    global SOURCE
    SOURCE = write_served_model(tmp_path_factory.mktemp("admission"))  # the stub is served, never this


def post_image(url: str, headers=None, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{url}/predict", content=JPEG, headers={**IMAGE, **(headers or {})}, timeout=timeout)


def assert_good_request(url: str) -> None:
    answer = post_image(url)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["top"][0]["class"] in ("c0", "c1", "c2")


def metric(url: str, name: str, **labels) -> float:
    """The value of one sample on /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics").text
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample, _, value = line.rpartition(" ")
            if all(f'{key}="{wanted}"' in sample for key, wanted in labels.items()):
                return float(value)
    return 0.0


def raw_socket(url: str) -> socket.socket:
    parts = urlsplit(url)
    connection = socket.create_connection((parts.hostname, parts.port), timeout=5)
    return connection


def request_head(length: int, path: str = "/predict", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\nContent-Length: {length}\r\n"
            f"{extra}\r\n").encode()


def closed_within(connection: socket.socket, seconds: float) -> bytes:
    """What the server sent before closing ``connection``; fails if it is still open after ``seconds``."""
    connection.settimeout(seconds)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except socket.timeout:
        pytest.fail(f"the server kept the connection open for {seconds} s (received {received[:80]!r})")
    except ConnectionResetError:
        pass
    return received


# ------------------------------------------------------------------------------------------ the queue
def test_a_crowd_over_the_queue_limit_gets_503_with_retry_after_at_once():
    model = GatedModel()
    with live_server(server_of(model, max_queue=3, max_batch=1)) as url, ThreadPoolExecutor(3) as pool:
        model.hold()
        admitted = [pool.submit(post_image, url)]
        model.wait_entered(1)  # one running, two more fill the queue
        admitted += [pool.submit(post_image, url) for _ in range(2)]
        time.sleep(0.3)
        refusals = []
        for _ in range(8):
            started = time.monotonic()
            refusals.append((post_image(url), time.monotonic() - started))
        model.gate.set()
        assert [f.result().status_code for f in admitted] == [200, 200, 200]
        for answer, seconds in refusals:
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1", answer.text
            assert "limit of 3 requests in progress" in answer.json()["error"] and seconds < 1.0
        assert metric(url, "mobilenetv3_requests_rejected_total", reason="queue_full") == 8
        assert_good_request(url)


# ------------------------------------------------------------------------------------------ deadlines
def test_a_request_past_its_deadline_is_dropped_before_inference():
    model = GatedModel()
    with live_server(server_of(model, max_batch=1)) as url, ThreadPoolExecutor(2) as pool:
        model.hold()
        first = pool.submit(post_image, url)
        model.wait_entered(1)
        hurried = pool.submit(post_image, url, {"X-Request-Timeout-Ms": "200"})
        time.sleep(0.5)  # its deadline passes while it waits behind the first
        model.gate.set()
        assert first.result().status_code == 200
        answer = hurried.result()
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert "deadline of 200 ms" in answer.json()["error"]
        assert model.images == [1]  # the hurried request's image never ran
        assert metric(url, "mobilenetv3_requests_dropped_total", reason="deadline") == 1
        bad = post_image(url, {"X-Request-Timeout-Ms": "soon"})
        assert bad.status_code == 400 and "X-Request-Timeout-Ms".lower() in bad.json()["error"].lower()
        assert_good_request(url)


def test_a_request_whose_client_left_is_dropped_before_inference():
    model = GatedModel()
    with live_server(server_of(model, max_batch=1)) as url, ThreadPoolExecutor(1) as pool:
        model.hold()
        first = pool.submit(post_image, url)
        model.wait_entered(1)
        leaving = raw_socket(url)
        leaving.sendall(request_head(len(JPEG)) + JPEG)
        time.sleep(0.3)  # admitted, decoded and queued behind the first
        leaving.close()
        time.sleep(0.3)
        model.gate.set()
        assert first.result().status_code == 200
        deadline = time.monotonic() + 5
        while metric(url, "mobilenetv3_requests_dropped_total", reason="client_gone") < 1:
            assert time.monotonic() < deadline, "the request of the client that left was not dropped"
            time.sleep(0.05)
        assert model.images == [1]  # zero images computed for the client that gave up
        assert metric(url, "mobilenetv3_requests_total", status="499") == 1
        assert metric(url, "mobilenetv3_requests_total", status="500") == 0
        assert_good_request(url)


def test_a_client_gone_mid_upload_is_one_log_line_and_a_client_close(caplog):
    model = GatedModel()
    with caplog.at_level(logging.INFO, logger="mobilenetv3"), live_server(server_of(model)) as url:
        runs_before = model.entered  # the repository's check of the model on starting
        quitter = raw_socket(url)
        quitter.sendall(request_head(100_000) + JPEG[:1000])
        time.sleep(0.2)
        quitter.close()
        deadline = time.monotonic() + 5
        while metric(url, "mobilenetv3_requests_total", status="499") < 1:
            assert time.monotonic() < deadline, "the upload's end was not counted as a client close"
            time.sleep(0.05)
        assert metric(url, "mobilenetv3_requests_total", status="500") == 0 and model.entered == runs_before
        assert metric(url, "mobilenetv3_requests_dropped_total", reason="client_gone") == 1
        assert_good_request(url)
    lines = [r.getMessage() for r in caplog.records if "went away during the upload" in r.getMessage()]
    assert len(lines) == 1 and "1000 bytes came" in lines[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_slow_body_gets_408_when_the_deadline_passes_and_the_connection_closes():
    with live_server(server_of(GatedModel(), timeout_s=0.5)) as url:
        slow = raw_socket(url)
        slow.sendall(request_head(len(JPEG)) + JPEG[:100])  # and no more
        started = time.monotonic()
        answer = closed_within(slow, 5)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 3
        assert b"did not arrive within 0.5 s (100 bytes came)" in answer
        assert_good_request(url)


# ------------------------------------------------------------------------------------------ connections
def test_silent_and_slow_loris_connections_are_closed_after_the_header_timeout():
    with live_server(server_of(GatedModel()), http=http_protocol(0.3)) as url:
        silent = raw_socket(url)
        started = time.monotonic()
        assert closed_within(silent, 5) == b"" and time.monotonic() - started < 3
        loris = raw_socket(url)
        started = time.monotonic()
        with pytest.raises(OSError):  # the server closed it: a send fails (broken pipe, reset)
            for byte in request_head(len(JPEG)):  # a byte every 0.1 s: the headers would take 10 s
                loris.sendall(bytes([byte]))
                time.sleep(0.1)
        assert time.monotonic() - started < 3
        with httpx.Client(base_url=url) as client:  # a kept-alive connection's pauses are not late headers
            for _ in range(2):
                assert client.post("/predict", content=JPEG, headers=IMAGE).status_code == 200
                time.sleep(0.5)


# ------------------------------------------------------------------------------------------ work budget
def test_a_request_over_the_pixel_budget_is_refused_before_decoding(monkeypatch):
    decoded = []
    monkeypatch.setattr(app_module, "prepare_image", lambda *args: decoded.append(args) or pytest.fail("decoded"))
    with live_server(server_of(GatedModel(), max_request_pixels=20_000_000)) as url:
        bombs = [("files", (f"big{i}.png", png_header_only(3000, 3000), "image/png")) for i in range(3)]
        answer = httpx.post(f"{url}/predict", files=bombs, timeout=30)  # 27 MP in all, each under --max-pixels
        assert answer.status_code == 413 and decoded == []
        assert answer.json()["error"] == ("the 3 images would decode 27.0 megapixels, more than the limit of 20 "
                                          "megapixels per request")
        monkeypatch.undo()
        assert_good_request(url)


def test_too_many_files_are_refused_before_decoding():
    with live_server(server_of(GatedModel(), max_images=2)) as url:
        files = [("files", (f"{i}.jpg", JPEG, "image/jpeg")) for i in range(3)]
        answer = httpx.post(f"{url}/predict", files=files, timeout=30)
        assert answer.status_code == 413 and "3 files in one request, more than the limit of 2" in answer.text
        assert_good_request(url)


def test_a_large_jpeg_is_counted_and_decoded_at_its_reduced_size():
    preprocessing = Preprocessing.from_dict(PREPROCESSING)  # resize 73: a JPEG is reduced while its side >= 146
    big = io.BytesIO()
    Image.new("RGB", (1000, 800), (200, 30, 60)).save(big, "JPEG")
    assert decoded_pixels(big.getvalue(), preprocessing) == 250 * 200  # 1/4: 800 // 146 = 5 -> 4
    assert decoded_pixels(JPEG, preprocessing) == 96 * 80  # too small to reduce
    assert decoded_pixels(png_header_only(1000, 800), preprocessing) == 1000 * 800  # PNG: no reduced decoding


def test_a_costly_upload_decodes_in_its_own_lane_and_a_small_request_goes_on(monkeypatch):
    real, heavy_started, release = app_module.prepare_image, threading.Event(), threading.Event()

    def held_when_heavy(*args):
        if threading.current_thread().name.startswith("mobilenetv3-decode-heavy"):
            heavy_started.set()
            assert release.wait(20)
        return real(*args)

    monkeypatch.setattr(app_module, "prepare_image", held_when_heavy)
    side = int(HEAVY_PIXELS ** 0.5) + 100
    costly = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(costly, "PNG")
    with live_server(server_of(GatedModel())) as url, ThreadPoolExecutor(1) as pool:
        big = pool.submit(httpx.post, f"{url}/predict", content=costly.getvalue(),
                          headers={"Content-Type": "image/png"}, timeout=30)
        assert heavy_started.wait(10), "the costly upload did not take the heavy lane"
        assert_good_request(url)  # while the heavy lane is busy
        release.set()
        assert big.result().status_code == 200


def test_a_v2_shape_whose_size_overflows_is_refused_with_a_4xx():
    with live_server(server_of(GatedModel())) as url:
        tensor = dict(name="input", datatype="FP32", shape=[2**60, 3, 64, 64], data=[0.0])
        answer = httpx.post(f"{url}/v2/models/tiny/infer", json=dict(inputs=[tensor]), timeout=30)
        assert answer.status_code in (400, 413) and "error" in answer.json()
        good = dict(name="input", datatype="FP32", shape=[1, 3, 64, 64], data=[0.0] * (3 * 64 * 64))
        answer = httpx.post(f"{url}/v2/models/tiny/infer", json=dict(inputs=[good]), timeout=30)
        assert answer.status_code == 200, answer.text
        assert json.loads(answer.text)["outputs"][0]["shape"] == [1, 3]


def test_decoding_is_not_started_for_a_request_no_longer_wanted():
    lanes, calls = DecodeLanes(1), []
    gone, late, wanted = Work(10), Work(0.001), Work(10)
    gone.gone = True
    time.sleep(0.01)  # late's deadline passes

    async def decode_each():
        return await asyncio.gather(*(lanes.run(work, calls.append, name) for work, name in
                                      ((gone, "gone"), (late, "late"), (wanted, "wanted"))), return_exceptions=True)

    try:
        answers = asyncio.run(decode_each())
    finally:
        lanes.shutdown()
    assert isinstance(answers[0], ClientGone) and isinstance(answers[1], Expired) and answers[1].status == 503
    assert calls == ["wanted"]
