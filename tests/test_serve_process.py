"""``mobilenetv3 serve`` as a user starts it: a real process that answers, and on SIGTERM finishes the
requests in flight and exits 0."""
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

from conftest import cli_command
from serving import free_port, write_images, write_served_model

pytest.importorskip("uvicorn")


def start(model, port: int, *flags, env=None) -> subprocess.Popen:
    process = subprocess.Popen(cli_command("serve", model, "--port", port, *flags), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
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
