"""``mobilenetv3 serve`` as a user starts it: a real process that answers, and on SIGTERM finishes the
requests in flight and exits 0."""
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest

from conftest import cli_command
from serving import free_port, write_images, write_served_model

pytest.importorskip("uvicorn")


def start(model, port: int, *flags, env=None, verify=None) -> subprocess.Popen:
    """``mobilenetv3 serve`` started, once ready; ``verify``: an SSL context trusting its certificate (HTTPS)."""
    process = subprocess.Popen(cli_command("serve", model, "--port", port, *flags), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            scheme = "https" if verify else "http"
            if httpx.get(f"{scheme}://127.0.0.1:{port}/v2/health/ready", timeout=1,
                         verify=verify or True).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the server did not start: {process.communicate()}")


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path):
    model, image = write_served_model(tmp_path), write_images(tmp_path)[0]
    port = free_port()
    process = start(model, port, "--max-delay-ms", "3000", "--max-batch", "8", "--host", "0.0.0.0")  # 3 s for company
    answers = []
    sender = threading.Thread(target=lambda: answers.append(httpx.post(
        f"http://127.0.0.1:{port}/predict", content=image.read_bytes(), headers={"Content-Type": "image/jpeg"},
        timeout=30)))
    sender.start()
    time.sleep(1.0)  # the request is in the batcher now
    process.send_signal(signal.SIGTERM)
    sender.join(30)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["predictions"][0]["top"][0]["class"] in ("c0", "c1", "c2")
    assert "serving mobilenetv3_small" in err and "Traceback" not in err
    assert "listening on 0.0.0.0 without an API key" in err  # reachable from other machines: said
    with pytest.raises(httpx.TransportError):  # it no longer listens
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)


def test_a_server_started_from_the_command_line_answers_curl(tmp_path):
    model, images = write_served_model(tmp_path), write_images(tmp_path)
    port = free_port()
    process = start(model, port, "--name", "fashion", "--workers", "2", env={"MOBILENETV3_API_KEY": "k3y"})
    try:
        for image in images[:2]:
            done = subprocess.run(["curl", "-sS", "-H", "Authorization: Bearer k3y", "-F", f"file=@{image}",
                                   f"http://127.0.0.1:{port}/predict"], capture_output=True, text=True, timeout=30)
            assert '"model":"fashion"' in done.stdout, done
        assert httpx.get(f"http://127.0.0.1:{port}/v2/models/fashion/ready").status_code == 401  # the key is needed
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "without an API key" not in err


def self_signed_certificate(folder) -> tuple:
    """A certificate for 127.0.0.1 and its key, made now with the openssl command (an EC key: fast)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_two_workers_over_tls_add_up_their_metrics_and_log_request_ids(tmp_path):
    """Each worker loads the model (the parent only checks the file), /metrics of either counts both, HTTPS with
    a certificate made now, every answer and access log line carries its X-Request-ID, and the metrics folder
    is gone after exit."""
    model, image = write_served_model(tmp_path), write_images(tmp_path)[0]
    cert, key = self_signed_certificate(tmp_path)
    trusted = ssl.create_default_context(cafile=str(cert))
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    port, requests = free_port(), 12
    process = start(model, port, "--workers", "2", "--ssl-certfile", cert, "--ssl-keyfile", key, "--access-log",
                    env={"TMPDIR": str(temporary)}, verify=trusted)
    try:
        assert len(list(temporary.glob("mobilenetv3-metrics-*"))) == 1
        for index in range(requests):  # a connection each: both workers answer
            answer = httpx.post(f"https://127.0.0.1:{port}/predict", content=image.read_bytes(), verify=trusted,
                                headers={"Content-Type": "image/jpeg", "X-Request-ID": f"req-{index}"}, timeout=30)
            assert answer.status_code == 200 and answer.headers["X-Request-ID"] == f"req-{index}", answer.text
        images = 'mobilenetv3_inference_count_total{model="mobilenetv3_small",version="1"}'
        for _ in range(4):  # whichever worker answers the scrape
            scrape = httpx.get(f"https://127.0.0.1:{port}/metrics", verify=trusted, timeout=30).text
            assert f"{images} {float(requests)}" in scrape, [line for line in scrape.splitlines() if images in line]
        changed = httpx.post(f"https://127.0.0.1:{port}/v2/repository/models/mobilenetv3_small/load", verify=trusted)
        assert changed.status_code == 400 and "need --workers 1" in changed.json()["error"]  # a worker each: refused
        with pytest.raises(httpx.TransportError):  # plain HTTP is not spoken
            httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=5)
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"https://127.0.0.1:{port}/ with 2 workers" in err and err.count("loaded mobilenetv3_small version 1") == 2
    assert all(f"id=req-{index}" in err for index in range(requests)) and "Traceback" not in err
    assert not list(temporary.glob("mobilenetv3-metrics-*"))


def test_sigterm_with_slow_clients_exits_0_within_the_grace_and_ends_them_cleanly(tmp_path):
    """The issue's case: slow clients at SIGTERM held the server past Kubernetes' 30 s and got a 500. With
    --grace-s 2 (and deadlines longer than that) the process exits 0 within the grace; each slow client gets a
    503 or a closed connection, never a 500, and no traceback is logged."""
    model, image = write_served_model(tmp_path), write_images(tmp_path)[0]
    port = free_port()
    process = start(model, port, "--grace-s", "2", "--timeout-s", "60", "--header-timeout-s", "60")
    head = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n"
    slow = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(3)]
    for connection in slow:
        connection.sendall(head + b"x" * 100)  # then nothing more
    silent = socket.create_connection(("127.0.0.1", port), timeout=20)
    time.sleep(0.5)
    good = httpx.post(f"http://127.0.0.1:{port}/predict", content=image.read_bytes(),
                      headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert good.status_code == 200, good.text  # the slow clients do not hold up the others
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and time.monotonic() - started < 2 + 1, err  # the grace (+1 s: a busy machine)
    for connection in slow + [silent]:
        answer = _all_received(connection)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer
    assert "Traceback" not in err and "500 Internal" not in err, err


def _all_received(connection: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    connection.close()
    return received


def test_a_model_a_worker_cannot_load_is_unavailable_with_its_reason_and_the_server_stays_up(tmp_path):
    """A zip that is not a checkpoint passes the parent's cheap check; each worker fails to load it: the model is
    UNAVAILABLE with the reason in the index, readiness is 503, requests get an error; no worker dies."""
    import zipfile

    broken = tmp_path / "m.pt"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("m/data.pkl", b"nonsense")
    port = free_port()
    process = subprocess.Popen(cli_command("serve", broken, "--port", port, "--workers", "2"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 503
        index = httpx.post(f"http://127.0.0.1:{port}/v2/repository/index").json()
        assert [(m["name"], m["state"]) for m in index] == [("m", "UNAVAILABLE")]
        assert "not a readable PyTorch checkpoint" in index[0]["reason"]
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", content=b"x", headers={"Content-Type": "image/png"})
        assert answer.status_code == 503 and answer.json()["error"] == "no model is loaded", answer.text
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0 and "died" not in err and "Traceback" not in err, err
    assert err.count("m.pt cannot be served") == 2
