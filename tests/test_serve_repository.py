"""Several models behind one server: a model repository (``repo/NAME/VERSION/FILE``, ``repo/NAME.EXT``), the
repository API (index, load, unload), hot reload under load without a failed request, bad repositories refused
in one line or with a reason while the server goes on; request ids, per-model metrics, TLS flags checked."""
import math
import threading
import time
import zipfile

import httpx
import pytest

from mobilenetv3 import predict
from mobilenetv3.server import ServerSettings, create_app, load_served_model
from mobilenetv3.server.metrics import Metrics
from mobilenetv3.server.repository import ModelRepository

from builders import write_weights
from conftest import run_cli
from serving import PREPROCESSING, free_port, live_server, write_images

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

BIASES = [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.0], [0.0, 1.0, 2.0]]
TOLERANCE = 1e-5


def softmax(logits: list[float]) -> list[float]:
    """The probabilities of a model that ignores its input (zero classifier weights, this bias), by hand."""
    exps = [math.exp(x) for x in logits]
    return [e / sum(exps) for e in exps]


def write_version(repo, name: str, version: int, bias=None):
    """``repo/name/version/model.pt``: a model whose probabilities are ``softmax(bias)`` for every image."""
    bias = BIASES[(version - 1) % len(BIASES)] if bias is None else bias
    return write_weights(repo / name / str(version) / "model.pt", bias=bias, preprocessing=PREPROCESSING)


def load(path, name):
    return load_served_model(str(path), "auto", name)


def repository_app(*paths, **settings):
    repository = ModelRepository([str(p) for p in paths], load)
    repository.preload()
    return create_app(repository, ServerSettings(**{"max_batch": 4, "max_delay_ms": 0, **settings}))


@pytest.fixture
def repo(tmp_path):
    """fashion versions 1 and 2, and digits.pt (a model whose answer depends on the image)."""
    folder = tmp_path / "models"
    write_version(folder, "fashion", 1)
    write_version(folder, "fashion", 2)
    write_weights(folder / "digits.pt", preprocessing=PREPROCESSING, responsive=True)
    (folder / "README.txt").write_text("not a model: ignored")
    return folder


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))[0]


def classify(client, image, **params):
    return client.post("/predict", params=dict(topk=3, **params), content=image.read_bytes(),
                       headers={"Content-Type": "image/jpeg"})


def probabilities(answer) -> list[float]:
    top = {t["class"]: t["probability"] for t in answer.json()["predictions"][0]["top"]}
    return [top[f"c{i}"] for i in range(3)]


def assert_serves(client, image, name: str, version: int) -> None:
    answer = classify(client, image, model=name)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == name and answer.json()["version"] == str(version)
    expected = softmax(BIASES[(version - 1) % len(BIASES)])
    assert max(abs(a - e) for a, e in zip(probabilities(answer), expected)) <= TOLERANCE


def index(client, **body) -> dict:
    answer = client.post("/v2/repository/index", json=body)
    assert answer.status_code == 200, answer.text
    return {(row["name"], row["version"]): (row["state"], row["reason"]) for row in answer.json()}


# ------------------------------------------------------------------------------------------ serving
def test_a_repository_serves_each_model_at_its_highest_version(repo, image):
    expected = predict([str(image)], source=str(repo / "digits.pt"), topk=3)[0].top
    with TestClient(repository_app(repo)) as client:
        assert index(client) == {("digits", "1"): ("READY", ""), ("fashion", "1"): ("UNAVAILABLE", "not loaded"),
                                 ("fashion", "2"): ("READY", "")}
        assert set(index(client, ready=True)) == {("digits", "1"), ("fashion", "2")}
        assert_serves(client, image, "fashion", 2)
        digits = classify(client, image, model="digits")
        assert [t["class"] for t in digits.json()["predictions"][0]["top"]] == [t["class"] for t in expected]
        assert max(abs(a["probability"] - e["probability"])
                   for a, e in zip(digits.json()["predictions"][0]["top"], expected)) <= TOLERANCE
        assert client.get("/v2/models/fashion").json()["versions"] == ["2"]
        old = classify(client, image, model="fashion", version="1")
        assert old.status_code == 404 and "serves version 2" in old.json()["error"]
        unnamed = classify(client, image)
        assert unnamed.status_code == 400 and "several models" in unnamed.json()["error"]
        unknown = classify(client, image, model="nope")
        assert unknown.status_code == 404 and "unknown model 'nope'" in unknown.json()["error"]
        assert client.get("/v2/models/nope").status_code == 404
        assert_serves(client, image, "fashion", 2)  # each bad request followed by a good one
        assert client.get("/v2/health/ready").json() == {"ready": True}


def test_several_files_are_named_after_their_files(tmp_path, image):
    first, second = write_version(tmp_path, "a", 1), write_weights(tmp_path / "other.pt", bias=BIASES[1],
                                                                  preprocessing=PREPROCESSING)
    with TestClient(repository_app(first, second)) as client:
        assert set(index(client)) == {("model", "1"), ("other", "1")}
        assert classify(client, image, model="model").json()["predictions"][0]["top"][0]["class"] == "c0"
        assert classify(client, image, model="other").json()["predictions"][0]["top"][0]["class"] == "c1"


def test_load_swaps_in_a_new_version_and_unload_stops_a_model(repo, image):
    with TestClient(repository_app(repo)) as client:
        write_version(repo, "fashion", 3)
        assert client.post("/v2/repository/models/fashion/load").json() == {}
        assert_serves(client, image, "fashion", 3)
        states = index(client)
        assert states[("fashion", "3")] == ("READY", "")
        assert states[("fashion", "2")] == ("UNAVAILABLE", "replaced by version 3")

        assert client.post("/v2/repository/models/digits/unload").status_code == 200
        gone = classify(client, image, model="digits")
        assert gone.status_code == 404 and "not loaded (UNAVAILABLE: unloaded)" in gone.json()["error"]
        assert index(client)[("digits", "1")] == ("UNAVAILABLE", "unloaded")
        assert client.get("/v2/health/ready").status_code == 200  # unloaded on purpose: still ready
        again = client.post("/v2/repository/models/digits/unload")
        assert again.status_code == 404 and "not loaded" in again.json()["error"]
        assert client.post("/v2/repository/models/digits/load").status_code == 200
        assert classify(client, image, model="digits").status_code == 200
        assert index(client)[("digits", "1")] == ("READY", "")


def test_a_lone_file_reloads_under_its_name(tmp_path, image):
    path = write_weights(tmp_path / "served.pt", bias=BIASES[0], preprocessing=PREPROCESSING)
    with TestClient(create_app(load_served_model(str(path)), ServerSettings(max_batch=2))) as client:
        assert classify(client, image).json()["predictions"][0]["top"][0]["class"] == "c0"
        write_weights(path, bias=BIASES[2], preprocessing=PREPROCESSING)  # the file replaced in place
        assert client.post("/v2/repository/models/mobilenetv3_small/load").status_code == 200
        assert classify(client, image).json()["predictions"][0]["top"][0]["class"] == "c2"
        other = client.post("/v2/repository/models/other/load")
        assert other.status_code == 404 and "serves 'mobilenetv3_small'" in other.json()["error"]
        assert index(client) == {("mobilenetv3_small", "1"): ("READY", "")}


# ------------------------------------------------------------------------------------------ bad loads
def test_bad_loads_are_refused_with_a_reason_and_the_served_version_goes_on(repo, image):
    with TestClient(repository_app(repo)) as client:
        def refused(name: str, says: str, status: int = 400) -> None:
            answer = client.post(f"/v2/repository/models/{name}/load")
            assert answer.status_code == status and says in answer.json()["error"], answer.text
            assert_serves(client, image, "fashion", 2)

        refused("nope", "no model named 'nope'", 404)
        (repo / "broken" / "1").mkdir(parents=True)
        (repo / "broken" / "1" / "model.pt").write_bytes(b"not a checkpoint at all")
        refused("broken", "not a readable PyTorch checkpoint")
        assert index(client)[("broken", "1")][0] == "UNAVAILABLE"

        write_version(repo, "fashion", 3)
        with zipfile.ZipFile(repo / "fashion" / "3" / "model.pt", "w") as archive:  # a zip, not a checkpoint
            archive.writestr("model/data.pkl", b"nonsense")
        refused("fashion", "failed to load 'fashion'")
        state, reason = index(client)[("fashion", "3")]
        assert state == "UNAVAILABLE" and "3/model.pt" in reason
        assert index(client)[("fashion", "2")] == ("READY", "")

        write_version(repo, "fashion", 4, bias=[float("nan"), 0.0, 0.0])  # loads, answers NaN: not swapped in
        refused("fashion", "not finite")
        (repo / "fashion" / "5").mkdir()
        refused("fashion", "holds no model file")
        bad_index = client.post("/v2/repository/index", content=b"[1, 2")
        assert bad_index.status_code == 400 and "not a JSON object" in bad_index.json()["error"]
        assert_serves(client, image, "fashion", 2)
        assert client.get("/v2/health/ready").status_code == 200


def test_hot_reload_under_concurrent_load_fails_no_request(repo, image):
    """The issue's target, smaller: 4 clients while the model is reloaded 4 times (the benchmark's --reload
    runs 16 clients and 10 reloads)."""
    answers, stop = [], threading.Event()
    with live_server(repository_app(repo, max_delay_ms=2)) as url:
        def client():
            with httpx.Client(base_url=url, timeout=30) as session:
                while not stop.is_set():
                    answer = session.post("/predict?model=fashion", content=image.read_bytes(),
                                          headers={"Content-Type": "image/jpeg"})
                    answers.append((answer.status_code, answer.json().get("version"), answer.text))

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        for version in range(3, 7):
            write_version(repo, "fashion", version)
            time.sleep(0.1)
            assert httpx.post(f"{url}/v2/repository/models/fashion/load", timeout=60).status_code == 200
        time.sleep(0.2)
        stop.set()
        for thread in clients:
            thread.join(30)
        final = httpx.post(f"{url}/predict?model=fashion", content=image.read_bytes(),
                           headers={"Content-Type": "image/jpeg"}).json()["version"]
    failed = [a for a in answers if a[0] != 200]
    assert not failed, failed[:3]
    assert len(answers) > 20 and final == "6"
    assert {version for _, version, _ in answers} >= {"2", "6"}


# ------------------------------------------------------------------------------------------ operations
def test_every_answer_carries_a_request_id_and_the_access_log_names_it(tmp_path, image, caplog):
    path = write_weights(tmp_path / "served.pt", bias=BIASES[0], preprocessing=PREPROCESSING)
    with TestClient(create_app(load_served_model(str(path)), ServerSettings(access_log=True))) as client:
        with caplog.at_level("INFO", logger="mobilenetv3.access"):
            given = client.post("/predict", content=image.read_bytes(),
                                headers={"Content-Type": "image/jpeg", "X-Request-ID": "abc-1"})
            bad = client.post("/predict", content=b"nope", headers={"Content-Type": "image/jpeg",
                                                                   "X-Request-ID": "bad-2"})
            lost = client.get("/no/such/path", headers={"X-Request-ID": "lost-3"})
            made = client.get("/v2/health/live")
            unsafe = client.get("/v2/health/live", headers={"X-Request-ID": "two words".encode() + b"\xe9"})
    assert (given.status_code, given.headers["X-Request-ID"]) == (200, "abc-1")
    assert (bad.status_code, bad.headers["X-Request-ID"]) == (400, "bad-2")
    assert (lost.status_code, lost.headers["X-Request-ID"]) == (404, "lost-3")
    for answer in (made, unsafe):
        assert len(answer.headers["X-Request-ID"]) == 32 and int(answer.headers["X-Request-ID"], 16) >= 0
    lines = [r.getMessage() for r in caplog.records if r.name == "mobilenetv3.access"]
    assert any('"POST /predict HTTP/1.1" 200' in line and line.endswith("id=abc-1") for line in lines), lines
    assert any('"GET /no/such/path HTTP/1.1" 404' in line and "id=lost-3" in line for line in lines), lines


def test_metrics_are_per_model_with_images_over_runs_and_rejections(repo, image):
    with TestClient(repository_app(repo, max_delay_ms=0)) as client:
        for _ in range(3):
            assert classify(client, image, model="fashion").status_code == 200
        form = [("file", (f"{i}.jpg", image.read_bytes(), "image/jpeg")) for i in range(3)]
        assert client.post("/predict?model=digits", files=form).status_code == 200
        text = client.get("/metrics").text
    fashion, digits = '{model="fashion",version="2"}', '{model="digits",version="1"}'
    assert f"mobilenetv3_inference_count_total{fashion} 3.0" in text
    assert f"mobilenetv3_inference_exec_count_total{fashion} 3.0" in text
    assert f"mobilenetv3_inference_count_total{digits} 3.0" in text  # 3 images in one run: mean batch 3
    assert f"mobilenetv3_inference_exec_count_total{digits} 1.0" in text
    assert f"mobilenetv3_requests_in_flight{fashion} 0.0" in text
    assert f"mobilenetv3_queue_seconds_count{fashion} 3.0" in text
    assert f"mobilenetv3_queue_seconds_count{digits} 1.0" in text
    metrics = Metrics()
    metrics.observe_rejected("fashion", "2", "queue_full")
    metrics.observe_dropped("fashion", "2", "deadline")
    metrics.queue_observer("fashion", "2")(0.003)
    text = metrics.render()[0].decode()
    assert 'mobilenetv3_requests_rejected_total{model="fashion",reason="queue_full",version="2"} 1.0' in text
    assert 'mobilenetv3_requests_dropped_total{model="fashion",reason="deadline",version="2"} 1.0' in text
    assert f"mobilenetv3_queue_seconds_count{fashion} 1.0" in text


# ------------------------------------------------------------------------------------------ bad starts
def one_line_error(*argv) -> str:
    done = run_cli("serve", *map(str, argv), "--port", free_port())
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_a_bad_repository_or_certificate_is_one_line_and_exit_2(tmp_path, repo):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no model files" in one_line_error(empty)
    assert "does not exist" in one_line_error(tmp_path / "missing")
    assert "--name names the model of one file" in one_line_error(repo, "--name", "x")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "m.pt").write_bytes(b"\x00" * 10)
    assert "not a readable PyTorch checkpoint" in one_line_error(corrupt)
    assert "not a readable PyTorch checkpoint" in one_line_error(corrupt / "m.pt", "--workers", "2")  # before forking
    (corrupt / "m.pt").unlink()
    with zipfile.ZipFile(corrupt / "m.pt", "w") as archive:  # passes the cheap check; loading refuses it
        archive.writestr("m/data.pkl", b"nonsense")
    assert "m.pt" in one_line_error(corrupt)

    two = tmp_path / "two"
    write_version(two, "m", 1)
    write_version(two, "m", 1).rename(two / "m" / "1" / "other.pt")
    write_version(two, "m", 1)
    assert "holds 2 model files" in one_line_error(two)
    flat = tmp_path / "flat"
    write_weights(flat / "m" / "model.pt")
    assert "holds no version folders" in one_line_error(flat)
    lone = repo / "digits.pt"
    assert "--ssl-certfile" in one_line_error(lone, "--ssl-certfile", tmp_path / "nope.pem")
    assert "--ssl-keyfile needs --ssl-certfile" in one_line_error(lone, "--ssl-keyfile", lone)
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n")
    assert "not a PEM certificate and its private key" in one_line_error(lone, "--ssl-certfile",
                                                                         tmp_path / "cert.pem")


def test_tritons_clients_drive_the_repository_over_http_and_grpc(repo, image):
    httpclient = pytest.importorskip("tritonclient.http")
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    grpc_port = free_port()
    with live_server(repository_app(repo, grpc_port=grpc_port)) as url:
        over_http = httpclient.InferenceServerClient(url.removeprefix("http://"))
        over_grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        index = over_http.get_model_repository_index()
        assert {(m["name"], m["version"], m["state"]) for m in index} >= {("fashion", "2", "READY"),
                                                                         ("digits", "1", "READY")}
        assert [(m.name, m.version, m.state) for m in over_grpc.get_model_repository_index().models] == \
            [(m["name"], m["version"], m["state"]) for m in index]
        write_version(repo, "fashion", 3)
        over_grpc.load_model("fashion")
        assert over_http.is_model_ready("fashion", "3") and not over_http.is_model_ready("fashion", "2")
        over_http.unload_model("digits")
        assert not over_http.is_model_ready("digits")
        assert ("digits", "1", "UNAVAILABLE") in {(m.name, m.version, m.state)
                                                  for m in over_grpc.get_model_repository_index().models}
        for client in (over_http, over_grpc):
            with pytest.raises(InferenceServerException, match="no model named 'nope'"):
                client.load_model("nope")
        over_http.load_model("digits")
        assert over_grpc.is_model_ready("digits")
        with httpx.Client(base_url=url) as session:
            assert_serves(session, image, "fashion", 3)
