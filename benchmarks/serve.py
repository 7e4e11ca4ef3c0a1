"""Load on `mobilenetv3 serve` on loopback, in one run, the figures issue 27's targets are about:

1. batching: 1 client and 32 clients in closed loop (each client sends its next request when its last one is
   answered) against a server with batching (`--max-batch 32 --max-delay-ms 5`) and one without
   (`--max-batch 1`), in interleaved rounds: images/s on / off at each (targets >= 0.95x alone, >= 3x at 32).
2. overload: open loop (requests at fixed times whatever became of the earlier ones, on kept-alive
   connections as a load balancer's, a new one when none is idle; given up by its client after --give-up-s,
   which closes its connection) on the batching server, first at the sustainable
   rate (80% of the images/s it reached with 32 clients), then at 10x that rate: the p99 of the answered
   requests at each (target: overload <= 2x sustainable), the 503s' latency (target p99 <= 50 ms), any other
   status (target none), the server's RSS (target: at most 10% over its most during the crowd's closed loop,
   the server at full load) and the images it computed for clients that had given up (its image count minus
   the answers received; target 0).
3. a costly request: one client sends small requests one after another while one request of the most pixels
   the budget allows (a 6300x6300 PNG, 39.7 megapixels) is decoded: the small requests' worst latency then,
   minus their median before (target <= 100 ms); and a request over the budget (16 such PNGs, 635
   megapixels): refused with 413 before decoding, and how fast.

    OMP_NUM_THREADS=2 python benchmarks/serve.py      # about 4 minutes on 2 cores
    python benchmarks/serve.py --quick                # a smoke run of every part, small and short

Both servers are real `python -m mobilenetv3 serve` processes of this checkout (its src/ on their PYTHONPATH).
The model is by default a MobileNetV3-Small (width 1.0, 1000 classes, resize 256 / crop 224) with random
weights: the arithmetic, hence the speed, does not depend on the weights. The clients run in this process
and share the CPU with the servers, as clients on the same machine would.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from mobilenetv3.benchmarking import machine_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "serve.json"
TARGETS = dict(lone_ratio=0.95, crowd_ratio=3.0, overload_p99_ratio=2.0, rejected_p99_ms=50.0, other_statuses=0,
               rss_growth_pct=10.0, abandoned_images=0, costly_delay_ms=100.0)
JPEGS = 4  # different images the clients send in turn
SHOWN_ERRORS = 5  # the first errors of each mode are kept (and printed)
SUSTAINABLE_SHARE = 0.8  # the sustainable rate: this share of the images/s the batching server reached
OVERLOAD_FACTOR = 10


# ------------------------------------------------------------------------------------------ inputs
def write_model(folder: Path, num_classes: int = 1000) -> Path:
    """A MobileNetV3-Small (width 1.0) with random weights, as our weights file with resize 256 / crop 224."""
    import torch

    from mobilenetv3 import weights as wts
    from mobilenetv3.models import create_model

    torch.manual_seed(0)
    model = create_model("mobilenetv3_small", num_classes=num_classes).eval()
    preprocessing = dict(resize=256, crop=224, interpolation="bilinear", mean=(0.485, 0.456, 0.406),
                         std=(0.229, 0.224, 0.225), in_chans=3)
    weights = wts.Weights(model.model_name, model.model_kwargs, model.state_dict(), "mobilenetv3",
                          classes=[f"class{i}" for i in range(num_classes)], preprocessing=preprocessing)
    path = folder / "mobilenetv3_small_random.pt"
    wts.write_weights(weights, path, "mobilenetv3")
    return path


def make_jpegs(count: int = 4, size: int = 256, seed: int = 0) -> list[bytes]:
    """``count`` different ``size`` x ``size`` JPEGs (quality 90): crops of the photographs matplotlib ships,
    or smooth noise when they are missing."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
        photos = [Image.open(sample / name).convert("RGB") for name in ("grace_hopper.jpg",
                                                                          "Minduka_Present_Blue_Pack.png")]
    except (ImportError, OSError):
        noise = rng.integers(0, 256, (count, 16, 16, 3), dtype=np.uint8)
        photos = [Image.fromarray(n).resize((size * 2, size * 2), Image.BICUBIC) for n in noise]
    jpegs = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.integers(min(photo.size) // 2, min(photo.size) + 1))
        left, top = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
        buffer = io.BytesIO()
        photo.crop((left, top, left + side, top + side)).resize((size, size)).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


# ------------------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """One `python -m mobilenetv3 serve` subprocess on a free loopback port; its output goes to ``log``."""

    def __init__(self, model: Path, max_batch: int, max_delay_ms: float, log: Path, threads: Optional[int] = None,
                 flags: tuple[str, ...] = ()):
        self.port, self.log_path, self.max_batch = free_port(), log, max_batch
        command = [sys.executable, "-m", "mobilenetv3", "serve", str(model), "--port", str(self.port),
                   "--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms), *flags]
        if threads:
            command += ["--threads", str(threads)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                         os.environ.get("PYTHONPATH")])))
        with open(log, "wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server (--max-batch {self.max_batch}) exited with code "
                                 f"{self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server (--max-batch {self.max_batch}) was not ready in {timeout:.0f} s:\n"
                         f"{self.log_tail()}")

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def rss_mb(self) -> Optional[float]:
        """The server's resident memory (VmRSS); ``None`` once it has exited."""
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def counters(self) -> dict[str, float]:
        """The server's /metrics samples summed over their labels, by name (``mobilenetv3_inference_count_total``,
        ``mobilenetv3_batch_size_count``, ``mobilenetv3_requests_dropped_total``, ...)."""
        totals: dict[str, float] = {}
        for line in self.get("/metrics")[1].decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            sample, _, value = line.rpartition(" ")
            name = sample.partition("{")[0]
            totals[name] = totals.get(name, 0.0) + float(value)
        return totals

    def batch_metrics(self) -> dict:
        """Model runs and images from the server's own /metrics (all requests, the warm-up's included)."""
        try:
            values = self.counters()
        except OSError as err:
            return dict(model_runs=None, images=None, images_per_run=None, error=str(err))
        runs, images = values.get("mobilenetv3_batch_size_count", 0), values.get("mobilenetv3_batch_size_sum", 0)
        return dict(model_runs=int(runs), images=int(images), images_per_run=images / runs if runs else None)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ------------------------------------------------------------------------------------------ closed loop
@dataclass
class Mode:
    """What one server's measured requests gave: every latency, batch size and failure."""

    name: str
    server: Server
    latencies_s: list = field(default_factory=list)
    batch_sizes: list = field(default_factory=list)
    failed: int = 0
    errors: list = field(default_factory=list)
    seconds: float = 0.0  # wall time of this mode's rounds
    rss_mb: list = field(default_factory=list)  # after every `rss_every` requests
    rss_every: int = 1000
    rounds: list = field(default_factory=list)  # (its latencies' slice, requests, seconds) of each round
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> int:
        return len(self.latencies_s) + self.failed

    def record(self, latency: float, batch: Optional[int], error: Optional[str]) -> None:
        with self.lock:
            if error is None:
                self.latencies_s.append(latency)
                self.batch_sizes.append(batch)
            else:
                self.failed += 1
                if len(self.errors) < SHOWN_ERRORS:
                    self.errors.append(error)
            if self.done % self.rss_every == 0:
                self.rss_mb.append(self.server.rss_mb())


class Tickets:
    """The requests of one round: ``take()`` gives the next request's number until ``count`` are taken or the
    deadline has passed, then ``None``."""

    def __init__(self, count: int, deadline: float):
        self.next, self.count, self.deadline, self.lock = 0, count, deadline, threading.Lock()

    def take(self) -> Optional[int]:
        with self.lock:
            if self.next >= self.count or time.perf_counter() >= self.deadline:
                return None
            self.next += 1
            return self.next - 1


def post_image(connection: http.client.HTTPConnection, jpeg: bytes) -> tuple[Optional[int], Optional[str]]:
    """POST one JPEG to /predict: ``(batch size, None)``, or ``(None, what went wrong)``."""
    connection.request("POST", "/predict", body=jpeg, headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        return None, f"HTTP {response.status}: {body[:200].decode(errors='replace')}"
    if len(json.loads(body)["predictions"]) != 1:
        return None, f"not one prediction: {body[:200].decode(errors='replace')}"
    return int(response.getheader("X-Batch-Size", "0")), None


def client(mode: Mode, tickets: Tickets, jpegs: list[bytes]) -> None:
    """One client: requests one after another on its keep-alive connection (a new one after an error)."""
    connection = connect(mode.server.port)
    while (ticket := tickets.take()) is not None:
        started = time.perf_counter()
        try:
            batch, error = post_image(connection, jpegs[ticket % len(jpegs)])
        except (OSError, http.client.HTTPException, ValueError, KeyError) as err:
            batch, error = None, f"{type(err).__name__}: {err}"
            connection.close()
            connection = connect(mode.server.port)
        mode.record(time.perf_counter() - started, batch, error)
    connection.close()


def connect(port: int) -> http.client.HTTPConnection:
    """A connection that lasts one round: between rounds it would sit idle while the other server is measured,
    longer than the server keeps an idle connection open (uvicorn's keep-alive timeout, 5 s)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.connect()
    except OSError:
        pass  # the first request reconnects, and fails if it cannot
    return connection


def run_round(mode: Mode, requests: int, seconds: float, clients: int, jpegs: list[bytes]) -> None:
    """``requests`` requests (or fewer, when ``seconds`` run out) from ``clients`` concurrent clients."""
    first, done = len(mode.latencies_s), mode.done
    started = time.perf_counter()
    tickets = Tickets(requests, started + seconds)
    threads = [threading.Thread(target=client, args=(mode, tickets, jpegs)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    mode.seconds += elapsed
    mode.rounds.append((slice(first, len(mode.latencies_s)), mode.done - done, elapsed))


def run_modes(modes: list[Mode], clients: int, requests: int, rounds: int, max_seconds: float, warmup: int,
              jpegs: list[bytes]) -> None:
    """Warm each server up (``warmup`` requests), then the measured requests of every mode in interleaved rounds:
    even rounds in the given order, odd rounds reversed (on, off, off, on, ...), so that a machine busy with
    something else slows both alike; each mode within its own share of ``max_seconds``."""
    for mode in modes:
        warm = Mode(mode.name, mode.server, rss_every=10**9)
        run_round(warm, warmup, max_seconds, clients, jpegs)
        if warm.failed:
            print(f"warning: {warm.failed} warm-up requests to {mode.name} failed: {warm.errors[0]}")
    per_round = -(-requests // rounds)
    for index in range(rounds):
        for mode in modes if index % 2 == 0 else modes[::-1]:
            left = min(per_round, requests - mode.done)
            time_left = (max_seconds - mode.seconds) / (rounds - index)
            if left > 0 and time_left > 0:
                run_round(mode, left, time_left, clients, jpegs)


def summary(mode: Mode) -> dict:
    latencies = np.asarray(mode.latencies_s) * 1000
    p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99)) if len(latencies) else (None, None)
    readings = [mb for mb in mode.rss_mb if mb is not None]
    first, last = (readings[0], readings[-1]) if readings else (None, None)
    return dict(mode=mode.name, max_batch=mode.server.max_batch, requests=mode.done, failed=mode.failed,
                errors=mode.errors, seconds=mode.seconds,
                images_per_s=len(mode.latencies_s) / mode.seconds if mode.seconds else 0.0,
                p50_ms=p50, p99_ms=p99, p99_over_p50=p99 / p50 if p50 else None,
                max_ms=float(latencies.max()) if len(latencies) else None,
                mean_batch=float(np.mean(mode.batch_sizes)) if mode.batch_sizes else None,
                rss_every=mode.rss_every, rss_mb=mode.rss_mb, rss_first_mb=first, rss_last_mb=last,
                rss_growth_pct=100 * (last - first) / first if first else None,
                rounds=[round_summary(mode, *r) for r in mode.rounds], server=mode.server.batch_metrics())


def round_summary(mode: Mode, answered: slice, requests: int, seconds: float) -> dict:
    latencies = np.asarray(mode.latencies_s[answered]) * 1000
    if not len(latencies):
        return dict(requests=requests, seconds=seconds, images_per_s=0.0, p50_ms=None, p99_ms=None)
    return dict(requests=requests, seconds=seconds, images_per_s=len(latencies) / seconds,
                p50_ms=float(np.percentile(latencies, 50)), p99_ms=float(np.percentile(latencies, 99)))


def compare_batching(servers: dict, clients: int, requests: int, args, jpegs: list[bytes]) -> dict:
    """Closed loop with ``clients`` clients against the batching server and the one without: each mode's
    summary and the ratio of their images/s."""
    modes = [Mode("batching on", servers["on"], rss_every=max(10, requests // 20)),
             Mode("batching off", servers["off"], rss_every=max(10, requests // 20))]
    run_modes(modes, clients, requests, args.rounds, args.max_seconds, args.warmup_per_client * clients, jpegs)
    rows = [summary(mode) for mode in modes]
    ratio = rows[0]["images_per_s"] / rows[1]["images_per_s"] if rows[1]["images_per_s"] else float("nan")
    print(f"{clients} client(s): images/s batching on {rows[0]['images_per_s']:.1f}, off "
          f"{rows[1]['images_per_s']:.1f}: {ratio:.2f}x", flush=True)
    return dict(clients=clients, modes=rows, ratio=ratio)


# ------------------------------------------------------------------------------------------ open loop
def _post_bytes(jpeg: bytes) -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
            "\r\n").encode() + jpeg


async def _one_request(port: int, request: bytes, give_up_s: float, idle: list) -> tuple[object, float]:
    """One request on an idle kept-alive connection of ``idle`` (or a new one), put back there once answered:
    ``(HTTP status, or what went wrong, seconds)``. A client that has waited ``give_up_s`` closes its
    connection ("gave up")."""
    started, held = time.perf_counter(), []  # held: the connection in use, to close or put back

    async def send():
        while True:
            reused = bool(idle)
            held[:] = [idle.pop() if reused else await asyncio.open_connection("127.0.0.1", port)]
            answer = await _exchange(*held[0], request)
            if answer is not None or not reused:
                return answer if answer is not None else ("closed", False)
            held[0][1].close()  # the server had closed it while it was idle: again on a new one

    try:
        status, keep = await asyncio.wait_for(send(), give_up_s)
    except asyncio.TimeoutError:
        status, keep = "gave up", False
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as err:
        status, keep = type(err).__name__, False
    if held:
        idle.append(held[0]) if keep else held[0][1].close()
    return status, time.perf_counter() - started


async def _exchange(reader, writer, request: bytes) -> Optional[tuple[int, bool]]:
    """Send ``request``, read the whole answer: ``(status, whether the connection stays open)``; ``None`` when
    the connection was closed before any answer."""
    writer.write(request)
    await writer.drain()
    line = await reader.readline()
    if not line:
        return None
    status, length, keep = int(line.split()[1]), 0, True
    while (header := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "connection" and "close" in value.lower():
            keep = False
    await reader.readexactly(length)
    return status, keep


async def _open_loop(port: int, rate: float, seconds: float, jpegs: list[bytes], give_up_s: float):
    requests, idle = [_post_bytes(jpeg) for jpeg in jpegs], []  # idle: kept-alive connections, as a balancer's
    started, tasks = time.perf_counter(), []
    for index in range(int(rate * seconds)):
        wait = started + index / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(_one_request(port, requests[index % len(requests)], give_up_s, idle)))
    sending = time.perf_counter() - started
    results = await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return results, sending


def open_loop(server: Server, name: str, rate: float, seconds: float, jpegs: list[bytes], give_up_s: float) -> dict:
    """Requests at ``rate`` per second for ``seconds``: what came back, how fast, the server's RSS meanwhile
    and the images it computed for clients that had given up (its image count minus the 200s received)."""
    before, rss_before = server.counters(), server.rss_mb()
    readings, sampling = [], threading.Event()

    def sample():
        while not sampling.wait(0.2):
            readings.append(server.rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results, sending = asyncio.run(_open_loop(server.port, rate, seconds, jpegs, give_up_s))
    time.sleep(1.0)  # whatever the server still computes for requests given up is counted too
    sampling.set()
    sampler.join()
    after = server.counters()
    by_status: dict[str, list[float]] = {}
    for status, latency in results:
        by_status.setdefault(str(status), []).append(latency * 1000)
    answered, rejected = by_status.get("200", []), by_status.get("503", [])
    computed = after.get("mobilenetv3_inference_count_total", 0) - before.get("mobilenetv3_inference_count_total", 0)
    rss = [mb for mb in readings if mb is not None]
    row = dict(phase=name, rate=rate, seconds=seconds, requests=len(results), offered_per_s=len(results) / sending,
               answered=len(answered), rejected=len(rejected), gave_up=len(by_status.get("gave up", [])),
               other={k: len(v) for k, v in by_status.items() if k not in ("200", "503", "gave up")},
               answered_per_s=len(answered) / seconds, **_percentiles("answered", answered),
               **_percentiles("rejected", rejected), rss_before_mb=rss_before, rss_max_mb=max(rss, default=None),
               rss_growth_pct=100 * (max(rss) - rss_before) / rss_before if rss and rss_before else None,
               images_computed=int(computed), abandoned_images=int(computed) - len(answered),
               dropped=after.get("mobilenetv3_requests_dropped_total", 0) -
               before.get("mobilenetv3_requests_dropped_total", 0))
    print(f"open loop {name}: {rate:.0f}/s offered ({row['offered_per_s']:.0f}/s sent) for {seconds:g} s: "
          f"{row['answered']} answered (p99 {_number(row['answered_p99_ms'], '.0f')} ms), {row['rejected']} 503 "
          f"(p99 {_number(row['rejected_p99_ms'], '.1f')} ms), {row['gave_up']} given up, other {row['other']}; "
          f"{row['abandoned_images']} images computed for no one", flush=True)
    return row


def _percentiles(prefix: str, values: list[float]) -> dict:
    if not values:
        return {f"{prefix}_p50_ms": None, f"{prefix}_p99_ms": None, f"{prefix}_max_ms": None}
    return {f"{prefix}_p50_ms": float(np.percentile(values, 50)), f"{prefix}_p99_ms": float(np.percentile(values, 99)),
            f"{prefix}_max_ms": float(np.max(values))}


def overload(server: Server, capacity: float, args, jpegs: list[bytes]) -> dict:
    """The sustainable rate, then ``OVERLOAD_FACTOR`` times it, on the batching server."""
    sustainable = SUSTAINABLE_SHARE * capacity
    rows = [open_loop(server, "sustainable", sustainable, args.overload_seconds, jpegs, args.give_up_s),
            open_loop(server, "overload", OVERLOAD_FACTOR * sustainable, args.overload_seconds, jpegs,
                      args.give_up_s)]
    return dict(capacity_images_per_s=capacity, sustainable_rate=sustainable, factor=OVERLOAD_FACTOR,
                give_up_s=args.give_up_s, phases=rows)


# ------------------------------------------------------------------------------------------ a costly request
def png_of(side: int) -> bytes:
    """A single-colour ``side`` x ``side`` RGB PNG: small to send, ``side**2`` pixels to decode."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 140, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "mobilenetv3-bench-boundary"
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
             f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_form(port: int, files: list[tuple[str, bytes]]) -> tuple[int, float, str]:
    body, content_type = _multipart(files)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    try:
        connection.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        text = response.read()[:200].decode(errors="replace")
        return response.status, time.perf_counter() - started, text
    finally:
        connection.close()


def costly_request(server: Server, side: int, baseline_s: float, jpegs: list[bytes]) -> dict:
    """A lone client's small requests, one after another: their median latency for ``baseline_s``, then their
    worst while a request of one ``side`` x ``side`` PNG is decoded and run; then a request of 16 of them."""
    png = png_of(side)
    small: list[tuple[float, float]] = []  # (start, seconds)
    stop = threading.Event()

    def small_client():
        connection = connect(server.port)
        while not stop.is_set():
            started = time.perf_counter()
            try:
                _, error = post_image(connection, jpegs[0])
            except (OSError, http.client.HTTPException) as err:
                error = str(err)
                connection.close()
                connection = connect(server.port)
            if error is None:
                small.append((started, time.perf_counter() - started))
        connection.close()

    client_thread = threading.Thread(target=small_client, daemon=True)
    client_thread.start()
    time.sleep(baseline_s)
    costly_started = time.perf_counter()
    rss_before = server.rss_mb()
    status, seconds, text = post_form(server.port, [("costly.png", png)])
    costly_ended = time.perf_counter()
    time.sleep(0.3)
    stop.set()
    client_thread.join()
    baseline = [s for start, s in small if start + s < costly_started]
    during = [s for start, s in small if start < costly_ended and start + s > costly_started]
    median = float(np.median(baseline)) * 1000 if baseline else None
    worst = max(during, default=None)
    over_status, over_seconds, over_text = post_form(server.port, [(f"costly{i}.png", png) for i in range(16)])
    row = dict(side=side, megapixels=side * side / 1e6, png_bytes=len(png), status=status, seconds=seconds,
               error=None if status == 200 else text, small_baseline_p50_ms=median, small_requests_during=len(during),
               small_worst_during_ms=worst * 1000 if worst is not None else None,
               delay_ms=worst * 1000 - median if worst is not None and median is not None else None,
               rss_before_mb=rss_before, rss_after_mb=server.rss_mb(), over_budget_files=16,
               over_budget_megapixels=16 * side * side / 1e6, over_budget_status=over_status,
               over_budget_ms=over_seconds * 1000, over_budget_error=over_text)
    print(f"costly request ({side}x{side} PNG, {row['megapixels']:.1f} MP): {status} in {seconds:.2f} s; small "
          f"requests: median {_number(median, '.1f')} ms before, worst {_number(row['small_worst_during_ms'], '.1f')} "
          f"ms during ({len(during)} requests); 16 of them: {over_status} in {over_seconds * 1000:.0f} ms", flush=True)
    return row


# ------------------------------------------------------------------------------------------ results
def targets(batching: list[dict], load: dict, costly: dict) -> dict:
    """Each target of issue 27 measured here: its value, its threshold and whether it is met."""
    lone, crowd = batching[0]["ratio"], batching[-1]["ratio"]
    sustainable, over = load["phases"]
    p99_ratio = (over["answered_p99_ms"] / sustainable["answered_p99_ms"]
                 if over["answered_p99_ms"] and sustainable["answered_p99_ms"] else None)
    other = sum(sum(p["other"].values()) for p in load["phases"])
    full_load = max((mb for mb in batching[-1]["modes"][0]["rss_mb"] if mb is not None), default=None)
    growth = 100 * (over["rss_max_mb"] - full_load) / full_load if over["rss_max_mb"] and full_load else None
    abandoned = sum(p["abandoned_images"] for p in load["phases"])

    def row(value, target, met):
        return dict(value=value, target=target, met=bool(met))

    return dict(
        lone_ratio=row(lone, TARGETS["lone_ratio"], lone >= TARGETS["lone_ratio"]),
        crowd_ratio=row(crowd, TARGETS["crowd_ratio"], crowd >= TARGETS["crowd_ratio"]),
        overload_p99_ratio=row(p99_ratio, TARGETS["overload_p99_ratio"],
                               p99_ratio is not None and p99_ratio <= TARGETS["overload_p99_ratio"]),
        rejected_p99_ms=row(over["rejected_p99_ms"], TARGETS["rejected_p99_ms"], over["rejected_p99_ms"] is not None
                            and over["rejected_p99_ms"] <= TARGETS["rejected_p99_ms"]),
        other_statuses=row(other, TARGETS["other_statuses"], other == 0),
        rss_growth_pct=row(growth, TARGETS["rss_growth_pct"],
                           growth is not None and growth <= TARGETS["rss_growth_pct"]),
        abandoned_images=row(abandoned, TARGETS["abandoned_images"], abandoned <= 0),
        costly_delay_ms=row(costly["delay_ms"], TARGETS["costly_delay_ms"],
                            costly["delay_ms"] is not None and costly["delay_ms"] <= TARGETS["costly_delay_ms"]),
        over_budget_refused=row(costly["over_budget_status"], 413, costly["over_budget_status"] == 413))


def _number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_report(result: dict) -> None:
    print(f"\n{'clients':>7} {'mode':<13} {'requests':>8} {'failed':>6} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'mean batch':>10} {'RSS MB':>7}")
    for comparison in result["batching"]:
        for r in comparison["modes"]:
            print(f"{comparison['clients']:>7} {r['mode']:<13} {r['requests']:>8} {r['failed']:>6} "
                  f"{r['images_per_s']:>9.1f} {_number(r['p50_ms'], '.1f'):>8} {_number(r['p99_ms'], '.1f'):>8} "
                  f"{_number(r['mean_batch'], '.1f'):>10} {_number(r['rss_last_mb'], '.0f'):>7}")
            for error in r["errors"]:
                print(f"  error: {error}")
        print(f"  images/s batching on / off with {comparison['clients']} client(s): {comparison['ratio']:.2f}x")
    verdict = {True: "PASS", False: "MISS"}
    labels = dict(lone_ratio="images/s batching on / off, 1 client, >=", crowd_ratio="images/s batching on / off, "
                  "32 clients, >=", overload_p99_ratio="p99 of answered requests at 10x / at the sustainable rate <=",
                  rejected_p99_ms="p99 latency of a 503 under overload (ms) <=",
                  other_statuses="responses other than 200 and 503 (and client errors) =",
                  rss_growth_pct="server RSS under overload over its most under the crowd's closed loop (%) <=",
                  abandoned_images="images computed for clients that gave up =",
                  costly_delay_ms="delay of a small request by a maximal costly one (ms) <=",
                  over_budget_refused="an over-budget request answered")
    print()
    for key, t in result["targets"].items():
        value = t["value"] if not isinstance(t["value"], float) else round(t["value"], 2)
        print(f"target {labels[key]} {t['target']:g}: {value}: {verdict[t['met']]}")
    if result["quick"]:
        print("(a smoke run, not a measurement)")


# ------------------------------------------------------------------------------------------ the run
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="a checkpoint or weights to serve (default: Small, random weights)")
    p.add_argument("--crowd", type=int, help="clients of the crowd's batching comparison (default 32)")
    p.add_argument("--requests", type=int, help="measured requests per mode with the crowd (default 2000; alone: a "
                                                "fifth)")
    p.add_argument("--max-seconds", type=float, default=40.0, help="time cap of each mode's measured requests")
    p.add_argument("--warmup-per-client", type=int, default=8, help="unmeasured requests per client first")
    p.add_argument("--rounds", type=int, help="rounds per mode, interleaved with the other mode's (default 4)")
    p.add_argument("--max-batch", type=int, default=32, help="--max-batch of the batching server")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="--max-delay-ms of the batching server")
    p.add_argument("--server-threads", type=int, help="--threads of the servers (default: serve's, the CPUs less one)")
    p.add_argument("--overload-seconds", type=float, help="length of each open-loop phase (default 20)")
    p.add_argument("--give-up-s", type=float, default=5.0, help="an open-loop client gives up after this")
    p.add_argument("--costly-side", type=int, help="side of the costly request's PNG (default 6300: 39.7 MP, "
                                                   "within the server's default budget of 40)")
    p.add_argument("--quick", action="store_true", help="a smoke run of every part: small and short")
    p.add_argument("--reload", action="store_true", help="measure hot reloads under load instead: 10 reloads "
                                                        "under 16 clients (serve_reload.py, its own results file)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    quick_or_full = dict(crowd=(4, 32), requests=(40, 2000), rounds=(2, 4), overload_seconds=(2.0, 20.0),
                         costly_side=(2100, 6300))
    for name, (quick, full) in quick_or_full.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if min(args.crowd, args.requests, args.rounds, args.max_batch) < 1 or args.max_seconds <= 0 or \
            args.overload_seconds <= 0 or args.give_up_s <= 0 or args.warmup_per_client < 0:
        p.error("--crowd, --requests, --rounds and --max-batch must be at least 1, the seconds above 0")
    return args


def describe(args, info: dict, model: str) -> None:
    load = os.getloadavg()[0]
    print(f"machine: {info['cpu']}, {info['cores']} cores, flags {' '.join(info['cpu_flags']) or 'n/a'}")
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"torch {info['torch']}, python {info['python']}, OMP_NUM_THREADS {threads}, load average (1 min) {load:.2f}")
    if load > (info["cores"] or 1):
        print(f"warning: the load average {load:.2f} is above the {info['cores']} cores: something else is busy, "
              "and the numbers below mean little")
    print(f"server: {model}; batching on: --max-batch {args.max_batch} --max-delay-ms {args.max_delay_ms:g}, off: "
          f"--max-batch 1; threads {args.server_threads or 'default'}; the servers' other settings at their defaults",
          flush=True)


def measure(args, folder: Path) -> dict:
    model = args.model or write_model(folder)
    info = machine_info()
    describe(args, info, str(model) if args.model else "MobileNetV3-Small, random weights, 1000 classes, 224 px")
    jpegs = make_jpegs(JPEGS)
    with ExitStack() as stack:
        servers = dict(on=Server(model, args.max_batch, args.max_delay_ms, folder / "server-on.log",
                                 args.server_threads),
                       off=Server(model, 1, args.max_delay_ms, folder / "server-off.log", args.server_threads,
                                  ("--max-queue", str(args.crowd))))  # it measures throughput, not admission
        for server in servers.values():
            stack.callback(server.stop)
        for server in servers.values():
            server.wait_ready()
        batching = [compare_batching(servers, clients, requests, args, jpegs)
                    for clients, requests in ((1, max(20, args.requests // 5)), (args.crowd, args.requests))]
        servers["off"].stop()  # its CPU is the batching server's from here
        capacity = batching[-1]["modes"][0]["images_per_s"]
        load = overload(servers["on"], capacity, args, jpegs)
        costly = costly_request(servers["on"], args.costly_side, 3.0 if not args.quick else 1.0, jpegs)
    settings = dict(model=str(args.model) if args.model else "mobilenetv3_small random weights (1000 classes)",
                    image_size=None if args.model else 224, jpeg_size=256, jpegs=len(jpegs), crowd=args.crowd,
                    requests=args.requests, rounds=args.rounds, max_seconds=args.max_seconds,
                    max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, server_threads=args.server_threads,
                    overload_seconds=args.overload_seconds, give_up_s=args.give_up_s, costly_side=args.costly_side,
                    omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    return dict(benchmark="serve", quick=args.quick, time=time.strftime("%Y-%m-%dT%H:%M:%S"), machine=info,
                settings=settings, batching=batching, overload=load, costly=costly,
                targets=targets(batching, load, costly))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.reload:
        from serve_reload import main as reload_main

        return reload_main(["--quick"] if args.quick else [])
    with tempfile.TemporaryDirectory(prefix="mobilenetv3-serve-bench-") as folder:
        result = measure(args, Path(folder))
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
