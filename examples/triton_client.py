"""Classify an image with a ``mobilenetv3 serve`` server through NVIDIA Triton's own Python client, ``tritonclient``:
over HTTP with JSON tensors, over HTTP with binary tensors (``binary_data=True``, the client's default), and over
gRPC. The image goes as its raw pixels (UINT8, [1, H, W, C], any size): the server resizes, crops and normalises
them with the model's own preprocessing, so each answer is what ``mobilenetv3 predict IMAGE`` prints.

    pip install 'tritonclient[http,grpc]'
    mobilenetv3 serve runs/demo/last.pt --grpc-port 8001 &
    python examples/triton_client.py photo.jpg --model mobilenetv3_small

Prints a JSON object: each protocol's probabilities, and the top classes from Triton's classification extension;
for the first Fashion-MNIST test image and `make demo`'s model (the probabilities shortened here)::

    {
     "http_json": [0.01145401131361723, 0.012103275395929813, ..., 0.897370457649231],
     "http_binary": [0.01145401131361723, 0.012103275395929813, ..., 0.897370457649231],
     "grpc": [0.01145401131361723, 0.012103275395929813, ..., 0.897370457649231],
     "top": ["0.897370:9:Ankle boot", "0.013975:3:Dress", "0.012302:4:Coat"]
    }
"""
import argparse
import json

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image


def image_pixels(path: str, channels: int) -> np.ndarray:
    """The image's pixels as decoded, (1, H, W, C) uint8: RGB for a 3-channel model, grayscale for a 1-channel one."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB" if channels == 3 else "L"))
    return pixels.reshape(1, pixels.shape[0], pixels.shape[1], channels)


def classify_http(url: str, model: str, pixels: np.ndarray, binary: bool, top: int = 0) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    image = httpclient.InferInput("input", list(pixels.shape), "UINT8")
    image.set_data_from_numpy(pixels, binary_data=binary)
    wanted = httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=top)
    return client.infer(model, [image], outputs=[wanted]).as_numpy("probabilities")[0]


def classify_grpc(url: str, model: str, pixels: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    image = grpcclient.InferInput("input", list(pixels.shape), "UINT8")
    image.set_data_from_numpy(pixels)
    wanted = grpcclient.InferRequestedOutput("probabilities")
    return client.infer(model, [image], outputs=[wanted]).as_numpy("probabilities")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image")
    parser.add_argument("--model", required=True, help="the model's name (GET /v2/models/stats lists them)")
    parser.add_argument("--http", default="localhost:8000", help="the server's HTTP address")
    parser.add_argument("--grpc", default="localhost:8001", help="the server's gRPC address (serve --grpc-port)")
    parser.add_argument("--top", type=int, default=3, help="classes in the classification answer")
    args = parser.parse_args()

    metadata = httpclient.InferenceServerClient(args.http).get_model_metadata(args.model)
    channels = metadata["inputs"][0]["shape"][1]  # FP32 input: [N, C, H, W]
    pixels = image_pixels(args.image, channels)
    answers = {
        "http_json": classify_http(args.http, args.model, pixels, binary=False).tolist(),
        "http_binary": classify_http(args.http, args.model, pixels, binary=True).tolist(),
        "grpc": classify_grpc(args.grpc, args.model, pixels).tolist(),
        "top": [label.decode() if isinstance(label, bytes) else label  # "score:index:class name"
                for label in classify_http(args.http, args.model, pixels, binary=False, top=args.top)],
    }
    print("{\n" + ",\n".join(f" {json.dumps(key)}: {json.dumps(value)}" for key, value in answers.items()) + "\n}")


if __name__ == "__main__":
    main()
