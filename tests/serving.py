"""What the server tests share: a model worth serving, images to send, and a real server on a free port."""
import io
import socket
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from builders import write_image, write_weights

PREPROCESSING = dict(resize=73, crop=64, interpolation="bilinear", mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3),
                     in_chans=3)
IMAGES = [("RGB", "JPEG", (80, 60)), ("RGB", "PNG", (50, 90)), ("L", "PNG", (64, 64)), ("P", "PNG", (100, 70)),
          ("RGBA", "PNG", (77, 65)), ("CMYK", "JPEG", (90, 90))]


def write_served_model(folder: Path) -> Path:
    """A 3-class MobileNetV3-Small whose outputs differ from image to image, with classes and preprocessing."""
    return write_weights(folder / "served.pt", num_classes=3, preprocessing=PREPROCESSING, responsive=True)


def write_images(folder: Path) -> list[Path]:
    """Images of several modes, formats and sizes (what ``mobilenetv3 predict`` takes as well)."""
    suffix = {"JPEG": "jpg", "PNG": "png"}
    return [write_image(folder / f"{index}_{mode}.{suffix[fmt]}", mode, fmt, size, seed=index)
            for index, (mode, fmt, size) in enumerate(IMAGES)]


def png_header_only(width: int, height: int, grayscale: bool = False) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB (or grayscale) pixels, with almost no pixel data after
    it: a decompression bomb's signature, cheap to make (a real one compresses gigabytes of zeros into a few MB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0 if grayscale else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


def jpeg_bytes(size=(96, 80), seed: int = 0) -> bytes:
    image = Image.effect_noise(size, 40 + seed).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def live_server(app, **config):
    """``app`` served by uvicorn on loopback in a thread of this process (``config``: more of uvicorn's settings);
    yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                                           **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
