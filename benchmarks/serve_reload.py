"""Hot reload under load (issue 27's target: 10 reloads under 16 clients, zero failed requests): a `mobilenetv3
serve` of a model repository answers N closed-loop clients (each sends its next /predict when its last one is
answered, on its keep-alive connection) while a new version of the model is written and loaded through the
repository API, again and again. Every answer is checked (200, one prediction, the version it came from);
reported: failed requests, latency percentiles in steady state and while a reload runs, each load's time, the
versions seen, and the server's RSS before and after (an old version's memory must be given back).

    python benchmarks/serve_reload.py              # 16 clients, 10 reloads (about 2 minutes on 2 cores)
    python benchmarks/serve.py --reload            # the same
    python benchmarks/serve_reload.py --quick      # 4 clients, 2 reloads

The model is serve.py's: a MobileNetV3-Small (width 1.0, 1000 classes, 224 px) with random weights, each version a
copy of its file (a reload reads, checks and warms it all the same); the server runs with the batching server's
settings (--max-batch 32 --max-delay-ms 5).
"""
from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from serve import HERE, JPEGS, Server, make_jpegs, write_model

from mobilenetv3.benchmarking import machine_info

DEFAULT_OUT = HERE / "results" / "serve_reload.json"
TARGET_FAILED = 0
NAME = "m"


@dataclass
class Answers:
    """What the clients got: one ``(started, seconds, version or None, error or None)`` per request."""

    rows: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, started: float, seconds: float, version, error) -> None:
        with self.lock:
            self.rows.append((started, seconds, version, error))


def post(connection: http.client.HTTPConnection, jpeg: bytes) -> tuple:
    """``(version, None)`` for a good answer, ``(None, what went wrong)`` otherwise."""
    connection.request("POST", f"/predict?model={NAME}", body=jpeg, headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        return None, f"HTTP {response.status}: {body[:200].decode(errors='replace')}"
    answer = json.loads(body)
    if len(answer["predictions"]) != 1:
        return None, f"not one prediction: {body[:200].decode(errors='replace')}"
    return answer["version"], None


def client(port: int, jpegs: list[bytes], answers: Answers, stop: threading.Event) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    index = 0
    while not stop.is_set():
        started = time.perf_counter()
        try:
            version, error = post(connection, jpegs[index % len(jpegs)])
        except (OSError, http.client.HTTPException, ValueError, KeyError) as err:
            version, error = None, f"{type(err).__name__}: {err}"
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        answers.add(started, time.perf_counter() - started, version, error)
        index += 1
    connection.close()


def load(port: int) -> tuple[int, float, str]:
    """``POST /v2/repository/models/NAME/load``: status, seconds, body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    try:
        connection.request("POST", f"/v2/repository/models/{NAME}/load", body=b"{}",
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, time.perf_counter() - started, response.read().decode(errors="replace")
    finally:
        connection.close()


def write_version(repo: Path, source: Path, version: int) -> None:
    folder = repo / NAME / str(version)
    folder.mkdir(parents=True)
    shutil.copyfile(source, folder / "model.pt")


def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return dict(requests=0, p50_ms=None, p99_ms=None, max_ms=None)
    ms = np.asarray(seconds) * 1000
    return dict(requests=len(ms), p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)),
                max_ms=float(ms.max()))


def measure(args, folder: Path) -> dict:
    source = args.model or write_model(folder)
    repo = folder / "repo"
    write_version(repo, source, 1)
    server = Server(repo, 32, 5.0, folder / "server.log")
    answers, stop, reloads = Answers(), threading.Event(), []
    try:
        server.wait_ready()
        jpegs = make_jpegs(JPEGS)
        clients = [threading.Thread(target=client, args=(server.port, jpegs, answers, stop))
                   for _ in range(args.clients)]
        for thread in clients:
            thread.start()
        time.sleep(args.settle_s)  # steady state first (and the servers' heap at its size under load)
        rss_before = server.rss_mb()
        for version in range(2, args.reloads + 2):
            write_version(repo, source, version)
            began = time.perf_counter()
            status, seconds, body = load(server.port)
            reloads.append(dict(version=version, status=status, seconds=seconds, began=began,
                                error=None if status == 200 else body[:300]))
            print(f"reload {version - 1}/{args.reloads}: version {version}, HTTP {status} in {seconds:.1f} s",
                  flush=True)
            time.sleep(args.between_s)
        rss_after = server.rss_mb()
        stop.set()
        for thread in clients:
            thread.join(120)
    finally:
        stop.set()
        server.stop()
    return summarise(args, answers.rows, reloads, rss_before, rss_after)


def summarise(args, rows: list, reloads: list, rss_before, rss_after) -> dict:
    windows = [(r["began"], r["began"] + r["seconds"]) for r in reloads]

    def during_reload(started: float, seconds: float) -> bool:
        return any(started < end and started + seconds > begin for begin, end in windows)

    good = [(started, seconds) for started, seconds, _, error in rows if error is None]
    errors = [error for *_, error in rows if error is not None]
    versions = sorted({version for _, _, version, error in rows if error is None}, key=int)
    return dict(benchmark="serve_reload", quick=args.quick, time=time.strftime("%Y-%m-%dT%H:%M:%S"),
                machine=machine_info(), settings=dict(clients=args.clients, reloads=args.reloads,
                                                      model=str(args.model) if args.model else
                                                      "mobilenetv3_small random weights, 224 px",
                                                      max_batch=32, max_delay_ms=5.0),
                requests=len(rows), failed=len(errors), errors=errors[:5], versions_seen=versions,
                steady=percentiles([s for b, s in good if not during_reload(b, s)]),
                during_reload=percentiles([s for b, s in good if during_reload(b, s)]),
                reloads=[{k: v for k, v in r.items() if k != "began"} for r in reloads],
                rss_before_mb=rss_before, rss_after_mb=rss_after,
                target=dict(failed=TARGET_FAILED, reloads=10, clients=16,
                            met=not errors and all(r["status"] == 200 for r in reloads)))


def print_report(result: dict) -> None:
    def row(name: str, p: dict) -> str:
        if not p["requests"]:
            return f"  {name:<14} no requests"
        return (f"  {name:<14} {p['requests']:>6} requests  p50 {p['p50_ms']:7.1f} ms  p99 {p['p99_ms']:7.1f} ms  "
                f"max {p['max_ms']:7.1f} ms")

    loads = [r["seconds"] for r in result["reloads"]]
    print(f"\n{result['settings']['clients']} clients, {len(loads)} reloads: {result['requests']} requests, "
          f"{result['failed']} failed; versions answered: {', '.join(result['versions_seen'])}")
    print(row("steady", result["steady"]))
    print(row("during reload", result["during_reload"]))
    if loads:
        print(f"  load (read, check, warm, swap, drain): median {np.median(loads):.1f} s, max {max(loads):.1f} s")
    print(f"  server RSS {result['rss_before_mb']:.0f} MB before the reloads, {result['rss_after_mb']:.0f} MB after")
    for error in result["errors"]:
        print(f"  error: {error}")
    verdict = "PASS" if result["target"]["met"] else "MISS"
    print(f"target 0 failed requests over 10 reloads under 16 clients: {result['failed']} failed over "
          f"{len(loads)} reloads under {result['settings']['clients']} clients: {verdict}")
    if result["quick"]:
        print("(a smoke run, not the target's measurement)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="weights to serve (default: Small, random weights, 224 px)")
    p.add_argument("--clients", type=int, help="concurrent closed-loop clients (default 16)")
    p.add_argument("--reloads", type=int, help="reloads of a new version (default 10)")
    p.add_argument("--settle-s", type=float, default=5.0, help="load before the first reload")
    p.add_argument("--between-s", type=float, default=2.0, help="load between two reloads")
    p.add_argument("--quick", action="store_true", help="a smoke run: 4 clients, 2 reloads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    args.clients = args.clients or (4 if args.quick else 16)
    args.reloads = args.reloads or (2 if args.quick else 10)
    if args.quick:
        args.settle_s, args.between_s = min(args.settle_s, 2.0), min(args.between_s, 0.5)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mobilenetv3-serve-reload-") as folder:
        result = measure(args, Path(folder))
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0 if result["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
