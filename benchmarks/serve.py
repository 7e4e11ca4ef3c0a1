"""Load on `mobilenetv3 serve`, batching on and off side by side: N concurrent keep-alive clients on loopback
POST a JPEG to /predict; images/s, p50/p99 latency, batch sizes and the server's memory (RSS) per mode.

    python benchmarks/serve.py                       # 16 clients, 10,000 requests per mode (~6 min on 2 cores)
    python benchmarks/serve.py --quick               # a smoke run: 4 clients, 200 requests per mode
    python benchmarks/serve.py --model runs/x/best.pt --server-cpus 0,1 --out /tmp/serve.json

Both servers are real `python -m mobilenetv3 serve` processes of this checkout (its src/ on their PYTHONPATH),
started side by side, one with `--max-batch B --max-delay-ms D` and one with `--max-batch 1`; the requests of
each mode are spread over interleaved rounds (on, off, off, on, on, ...), so that a machine busy with
something else slows both alike. The model is by default a MobileNetV3-Small (width 1.0, 1000 classes,
resize 256 / crop 224) with random weights: the arithmetic, hence the speed, does not depend on the weights.
The clients run in this process and share the CPU with the server, as a client on the same machine would.
"""
from __future__ import annotations

import argparse
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

from mobilenetv3.bench import machine_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "serve.json"
TARGETS = dict(speedup=2.0, p99_over_p50=4.0, requests=10_000, rss_growth_pct=10.0)
JPEGS = 4  # different images the clients send in turn
SHOWN_ERRORS = 5  # the first errors of each mode are kept (and printed)


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

    def __init__(self, model: Path, max_batch: int, max_delay_ms: float, log: Path,
                 cpus: Optional[set[int]] = None, threads: Optional[int] = None):
        self.port, self.log_path, self.max_batch = free_port(), log, max_batch
        command = [sys.executable, "-m", "mobilenetv3", "serve", str(model), "--port", str(self.port),
                   "--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms)]
        if threads:
            command += ["--threads", str(threads)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                         os.environ.get("PYTHONPATH")])))
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        with open(log, "wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                            preexec_fn=pin)

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

    def batch_metrics(self) -> dict:
        """Model runs and images from the server's own /metrics (all requests, the warm-up's included)."""
        values = {}
        try:
            text = self.get("/metrics")[1].decode()
        except OSError as err:
            return dict(model_runs=None, images=None, images_per_run=None, error=str(err))
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("mobilenetv3_batch_size_count", "mobilenetv3_batch_size_sum"):
                values[name.rsplit("_", 1)[1]] = float(value)
        runs, images = values.get("count", 0), values.get("sum", 0)
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


# ------------------------------------------------------------------------------------------ clients
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


def run_modes(modes: list[Mode], args, jpegs: list[bytes]) -> None:
    """Warm each server up (its memory grows over the first few hundred requests, as batches of new sizes
    come), then the measured requests of every mode in interleaved rounds: even rounds in the given order, odd
    rounds reversed (on, off, off, on, ...), each mode within its own share of its time budget."""
    for mode in modes:
        warmup = Mode(mode.name, mode.server, rss_every=10**9)
        run_round(warmup, args.warmup, args.max_seconds, args.clients, jpegs)
        if warmup.failed:
            print(f"warning: {warmup.failed} warm-up requests to {mode.name} failed: {warmup.errors[0]}")
    per_round = -(-args.requests // args.rounds)
    for index in range(args.rounds):
        for mode in modes if index % 2 == 0 else modes[::-1]:
            left = min(per_round, args.requests - mode.done)
            time_left = (args.max_seconds - mode.seconds) / (args.rounds - index)
            if left > 0 and time_left > 0:
                run_round(mode, left, time_left, args.clients, jpegs)
        print(f"round {index + 1}/{args.rounds}: " + ", ".join(f"{m.name} {m.done} requests" for m in modes),
              flush=True)


# ------------------------------------------------------------------------------------------ results
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


def targets(rows: list[dict], speedup: float) -> dict:
    """Each target of the issue: its value, its threshold and whether it is met (latency on the batching
    server; failures and memory on both)."""
    on = rows[0]
    growth = max((r["rss_growth_pct"] for r in rows if r["rss_growth_pct"] is not None), default=float("nan"))
    return dict(
        speedup=dict(value=speedup, target=TARGETS["speedup"], met=speedup >= TARGETS["speedup"]),
        p99_over_p50=dict(value=on["p99_over_p50"], target=TARGETS["p99_over_p50"],
                          met=on["p99_over_p50"] is not None and on["p99_over_p50"] < TARGETS["p99_over_p50"]),
        failed=dict(value=sum(r["failed"] for r in rows), target=0, requests=min(r["requests"] for r in rows),
                    target_requests=TARGETS["requests"], met=all(r["failed"] == 0 for r in rows)),
        rss_growth_pct=dict(value=growth, target=TARGETS["rss_growth_pct"], met=growth < TARGETS["rss_growth_pct"]))


def _number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_report(result: dict) -> None:
    print(f"\n{'mode':<13} {'requests':>8} {'failed':>6} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'p99/p50':>7} {'mean batch':>10} {'RSS first MB':>12} {'last MB':>8} {'growth':>7}")
    for r in result["modes"]:
        print(f"{r['mode']:<13} {r['requests']:>8} {r['failed']:>6} {r['images_per_s']:>9.1f} "
              f"{_number(r['p50_ms'], '.1f'):>8} {_number(r['p99_ms'], '.1f'):>8} "
              f"{_number(r['p99_over_p50'], '.2f'):>7} {_number(r['mean_batch'], '.1f'):>10} "
              f"{_number(r['rss_first_mb'], '.1f'):>12} {_number(r['rss_last_mb'], '.1f'):>8} "
              f"{_number(r['rss_growth_pct'], '+.1f'):>6}%")
    print(f"images/s batching on / off: {result['speedup']:.2f}x")
    for r in result["modes"]:
        s = r["server"]
        print(f"  {r['mode']}: slowest request {_number(r['max_ms'], '.1f')} ms; server: {s['model_runs']} model runs,"
              f" {_number(s['images_per_run'], '.1f')} images per run (warm-up included)")
        for error in r["errors"]:
            print(f"  {r['mode']} error: {error}")
    t = result["targets"]
    verdict = {True: "PASS", False: "MISS"}
    print(f"\ntarget images/s on / off >= {t['speedup']['target']:g}x: {t['speedup']['value']:.2f}x: "
          f"{verdict[t['speedup']['met']]}")
    print(f"target p99 < {t['p99_over_p50']['target']:g}x p50 (batching on): "
          f"{_number(t['p99_over_p50']['value'], '.2f')}x: {verdict[t['p99_over_p50']['met']]}")
    print(f"target 0 failed over {t['failed']['target_requests']} requests: {t['failed']['value']} failed over "
          f"{t['failed']['requests']} per mode: {verdict[t['failed']['met']]}")
    print(f"target RSS growth < {t['rss_growth_pct']['target']:g}% (read every {result['modes'][0]['rss_every']} "
          f"requests, first reading to last, worse mode): {_number(t['rss_growth_pct']['value'], '+.1f')}%: "
          f"{verdict[t['rss_growth_pct']['met']]}")
    if result["settings"]["requests"] < TARGETS["requests"] or result["quick"]:
        print("(fewer requests than the targets assume: a smoke run, not a measurement)")


# ------------------------------------------------------------------------------------------ the run
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="a checkpoint or weights to serve (default: Small, random weights)")
    p.add_argument("--clients", type=int, help="concurrent clients, one keep-alive connection each (default 16)")
    p.add_argument("--requests", type=int, help="measured requests per mode (default 10000)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="time cap of each mode's measured requests")
    p.add_argument("--warmup", type=int, help="unmeasured requests to each server first (default 16 per client)")
    p.add_argument("--rounds", type=int, help="rounds per mode, interleaved with the other mode's (default 10)")
    p.add_argument("--max-batch", type=int, default=32, help="--max-batch of the batching server")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="--max-delay-ms of the batching server")
    p.add_argument("--server-cpus", help="pin both servers to these CPUs, e.g. 0,1 (default: not pinned)")
    p.add_argument("--server-threads", type=int, help="--threads of the servers (default: the runtime's choice)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 4 clients, 200 requests per mode, 2 rounds")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    quick_or_full = dict(clients=(4, 16), requests=(200, TARGETS["requests"]), rounds=(2, 10))
    for name, (quick, full) in quick_or_full.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.warmup = 16 * args.clients if args.warmup is None else args.warmup
    try:
        args.server_cpus = {int(c) for c in args.server_cpus.split(",")} if args.server_cpus else None
    except ValueError:
        p.error(f"--server-cpus takes CPU numbers separated by commas, not {args.server_cpus!r}")
    if args.server_cpus and not args.server_cpus <= os.sched_getaffinity(0):
        p.error(f"--server-cpus: this process may run on CPUs {sorted(os.sched_getaffinity(0))} only")
    if min(args.clients, args.requests, args.rounds, args.max_batch) < 1 or args.max_seconds <= 0 or args.warmup < 0:
        p.error("--clients, --requests, --rounds and --max-batch must be at least 1, --max-seconds above 0 and "
                "--warmup at least 0")
    return args


def describe(args, info: dict, model: str) -> None:
    load = os.getloadavg()[0]
    print(f"machine: {info['cpu']}, {info['cores']} cores, flags {' '.join(info['cpu_flags']) or 'n/a'}")
    print(f"torch {info['torch']}, python {info['python']}, load average (1 min) {load:.2f}")
    if load > (info["cores"] or 1):
        print(f"warning: the load average {load:.2f} is above the {info['cores']} cores: something else is busy, "
              "and the numbers below mean little")
    pinned = ",".join(map(str, sorted(args.server_cpus))) if args.server_cpus else "not pinned"
    print(f"server: {model}; batching on: --max-batch {args.max_batch} --max-delay-ms {args.max_delay_ms:g}, "
          f"off: --max-batch 1; CPUs {pinned}, threads {args.server_threads or 'default'}")
    print(f"load: {args.clients} clients, {args.warmup} warm-up then {args.requests} requests per mode in "
          f"{args.rounds} interleaved rounds (at most {args.max_seconds:g} s per mode), {JPEGS} different 256x256 "
          "JPEGs", flush=True)


def measure(args, folder: Path) -> dict:
    model = args.model or write_model(folder)
    info = machine_info()
    describe(args, info, str(model) if args.model else "MobileNetV3-Small, random weights, 1000 classes, 224 px")
    jpegs = make_jpegs(JPEGS)
    rss_every = min(1000, max(10, args.requests // 10))
    with ExitStack() as stack:
        servers = [Server(model, batch, args.max_delay_ms, folder / f"server-{batch}.log", args.server_cpus,
                          args.server_threads) for batch in (args.max_batch, 1)]
        for server in servers:
            stack.callback(server.stop)
        for server in servers:
            server.wait_ready()
        modes = [Mode("batching on", servers[0], rss_every=rss_every),
                 Mode("batching off", servers[1], rss_every=rss_every)]
        run_modes(modes, args, jpegs)
        rows = [summary(mode) for mode in modes]
    speedup = rows[0]["images_per_s"] / rows[1]["images_per_s"] if rows[1]["images_per_s"] else float("nan")
    settings = dict(model=str(args.model) if args.model else "mobilenetv3_small random weights (1000 classes)",
                    image_size=None if args.model else 224, jpeg_size=256, jpegs=len(jpegs), clients=args.clients,
                    requests=args.requests,
                    rounds=args.rounds, warmup=args.warmup, max_seconds=args.max_seconds, max_batch=args.max_batch,
                    max_delay_ms=args.max_delay_ms, server_cpus=sorted(args.server_cpus or []) or None,
                    server_threads=args.server_threads)
    return dict(benchmark="serve", quick=args.quick, time=time.strftime("%Y-%m-%dT%H:%M:%S"), machine=info,
                settings=settings, modes=rows, speedup=speedup, targets=targets(rows, speedup))


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mobilenetv3-serve-bench-") as folder:
        result = measure(args, Path(folder))
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
