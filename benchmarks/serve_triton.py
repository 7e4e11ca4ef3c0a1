"""Triton's own client against `mobilenetv3 serve` (issue 27's target: "tritonclient HTTP (JSON and binary_data=True)
and gRPC examples run unmodified and give the same probabilities as mobilenetv3 predict, within 1e-5").

A real `python -m mobilenetv3 serve MODEL --grpc-port PORT` process of this checkout; `examples/triton_client.py`,
run as it is (a subprocess), on each image: raw pixels over HTTP with JSON tensors, HTTP with binary tensors and
gRPC, and the top classes by the classification extension; `mobilenetv3 predict` (its Python API: the command's
code) on the same files. Reported: the largest difference of each protocol's probabilities from predict's, over
every image and class; whether the classification answer ranks the classes as predict does; the example's time.

    python benchmarks/serve_triton.py --model runs/demo-*/last.pt --images shoe.png shirt.png
    python benchmarks/serve_triton.py              # serve.py's random 224 px Small, on photographs (JPEG)
    python benchmarks/serve_triton.py --quick      # two images

Needs the serve extra and `tritonclient[http,grpc]` (the dev extra).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from serve import HERE, ROOT, Server, free_port, make_jpegs, write_model

from mobilenetv3 import predict
from mobilenetv3.benchmarking import machine_info

DEFAULT_OUT = HERE / "results" / "serve_triton.json"
EXAMPLE = ROOT / "examples" / "triton_client.py"
TARGET = 1e-5  # largest difference from predict's probabilities
PROTOCOLS = ("http_json", "http_binary", "grpc")
TOP = 3


def run_example(image: Path, model_name: str, server: Server, grpc_port: int) -> tuple[dict, float]:
    """The example's answers for one image, and its wall time (a fresh interpreter: imports included)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(EXAMPLE), str(image), "--model", model_name, "--top", str(TOP),
                           "--http", f"127.0.0.1:{server.port}", "--grpc", f"127.0.0.1:{grpc_port}"],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"examples/triton_client.py failed on {image}:\n{done.stderr}")
    return json.loads(done.stdout), time.perf_counter() - started


def compare(images: list[Path], answers: list[dict], model: Path) -> dict:
    """Each protocol's largest difference from predict's probabilities, and the classification's agreement."""
    classes = len(answers[0]["grpc"])
    expected = {p.path: p.top for p in predict([str(i) for i in images], source=str(model), topk=classes)}
    worst = dict.fromkeys(PROTOCOLS, 0.0)
    ranked_alike = True
    for image, answer in zip(images, answers):
        top = expected[str(image)]
        reference = np.zeros(len(top))
        for entry in top:
            reference[entry["index"]] = entry["probability"]
        for protocol in PROTOCOLS:
            worst[protocol] = max(worst[protocol], float(np.abs(np.array(answer[protocol]) - reference).max()))
        ranked_alike &= [int(text.split(":")[1]) for text in answer["top"]] == [e["index"] for e in top[:TOP]]
    return dict(max_abs_diff=worst, classification_ranked_as_predict=ranked_alike)


def measure(args, folder: Path) -> dict:
    model = Path(args.model) if args.model else write_model(folder)
    images = [Path(i) for i in args.images] if args.images else write_photographs(folder, 2 if args.quick else 8)
    grpc_port = free_port()
    server = Server(model, 32, 5.0, folder / "server.log", flags=("--grpc-port", str(grpc_port)))
    try:
        server.wait_ready()
        model_name = json.loads(server.get("/v2/models/stats")[1])["model_stats"][0]["name"]
        runs = [run_example(image, model_name, server, grpc_port) for image in images]
    finally:
        server.process.terminate()
        server.process.wait(60)
    result = compare(images, [answers for answers, _ in runs], model)
    met = max(result["max_abs_diff"].values()) <= TARGET and result["classification_ranked_as_predict"]
    seconds = sorted(s for _, s in runs)
    return dict(benchmark="serve_triton", quick=args.quick, machine=machine_info(),
                settings=dict(model=str(model), images=[str(i) for i in images], images_are=args.images_are,
                              top=TOP), **result,
                example_seconds_median=round(seconds[len(seconds) // 2], 2), target_max_abs_diff=TARGET,
                target_met=met)


def write_photographs(folder: Path, count: int) -> list[Path]:
    paths = []
    for index, jpeg in enumerate(make_jpegs(count, 256)):
        paths.append(folder / f"photo{index}.jpg")
        paths[-1].write_bytes(jpeg)
    return paths


def print_report(result: dict) -> None:
    print(f"tritonclient vs mobilenetv3 predict: {len(result['settings']['images'])} images, model "
          f"{result['settings']['model']}")
    for protocol, diff in result["max_abs_diff"].items():
        print(f"  {protocol:12s} largest difference {diff:.2e} (target <= {TARGET:g}: "
              f"{'met' if diff <= TARGET else 'NOT met'})")
    print(f"  classification top-{TOP} ranked as predict: {result['classification_ranked_as_predict']}")
    print(f"  examples/triton_client.py per image (a fresh interpreter, 4 calls): "
          f"{result['example_seconds_median']:.2f} s median")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="the model to serve (default: serve.py's random 224 px Small)")
    p.add_argument("--images", nargs="+", help="image files (default: photographs as 256 px JPEGs)")
    p.add_argument("--images-are", help="what the images are, for the report (e.g. 'the first 8 Fashion-MNIST test "
                                        "images')")
    p.add_argument("--quick", action="store_true", help="two images")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON report")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="serve-triton-") as folder:
        result = measure(args, Path(folder))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print_report(result)
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
