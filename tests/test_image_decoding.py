"""Images as the user sees them: the one decoder (``data/images.py``) of training, eval, predict and the server,
on files written by other libraries than Pillow (simplejpeg's libjpeg-turbo, pypng, piexif, tifffile) from real
Fashion-MNIST images.

Every file holds an upright 8-bit image (``Case.shown``, what an image viewer shows) stored another way: sideways
with an EXIF orientation tag, in 16 bits, as a palette with transparent entries, with alpha, as CMYK, under an
ICC profile. The expected pixels come from the formats' specifications applied here in NumPy (the EXIF table of
where row 0 and column 0 lie; value / 257; compositing on white; the CMYK ink formula; the profile's primaries),
never from the decoder. ``predict``, the server and eval must then give what they give for ``shown`` saved as a
plain 8-bit PNG.
"""
import io
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import piexif  # noqa: E402 - the dev extra's writers: a missing one fails the tests, never skips them
import png  # noqa: E402 - pypng
import pytest
import simplejpeg  # noqa: E402
import tifffile  # noqa: E402
from PIL import Image

import mobilenetv3
from mobilenetv3.data.datasets import FASHION_MNIST_SYSTEM_DIR, read_idx
from mobilenetv3.data.images import Conversions, load_image

from conftest import ON_CI
from serving import PREPROCESSING, png_header_only

JPEG_QUALITY = 100  # these tests are about orientation and colour, not about JPEG's loss
# JPEG at quality 100 without chroma subsampling moves these 28 x 56 images by under a level on average; a
# decoder that ignores a conversion is tens of levels off (a palette's transparent black: ~135).
JPEG_MEAN_LEVELS = 1.0
LOSSLESS_LEVELS = 1  # rounding: value / 257, compositing, CMYK and ICC arithmetic
# The model's probabilities on a converted file against the original's (measured: JPEG within 0.004, the others
# 0.002); the sideways images as stored are 0.025 to 0.1 off.
JPEG_PROBABILITY = 0.01
LOSSLESS_PROBABILITY = 0.005


# ------------------------------------------------------------------------------------ the real images
@pytest.fixture(scope="module")
def fashion() -> np.ndarray:
    """64 real Fashion-MNIST test images (28 x 28, uint8); the first is the issue's ankle boot. The first six
    make the files, all of them the model's batch-norm statistics."""
    path = FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        message = f"Fashion-MNIST not found in {FASHION_MNIST_SYSTEM_DIR} (Debian package dataset-fashion-mnist)"
        pytest.fail(message) if ON_CI else pytest.skip(message)
    return read_idx(path)[:64].numpy()


def gray_image(fashion) -> np.ndarray:
    """(28, 56): two images side by side, so that a transposed one has another shape."""
    return np.concatenate([fashion[0], fashion[1]], axis=1)


def color_image(fashion) -> np.ndarray:
    """(28, 56, 3): a different real image in each channel, so that a channel mix-up shows."""
    return np.stack([np.concatenate([fashion[i], fashion[i + 1]], axis=1) for i in (0, 2, 4)], axis=-1)


# ------------------------------------------------------------------------------------ the files
# The stored pixels of an upright image under each EXIF orientation: the tag says where the stored row 0 and
# column 0 lie when shown (1 top/left, 2 top/right, 3 bottom/right, 4 bottom/left, 5 left/top, 6 right/top,
# 7 right/bottom, 8 left/bottom).
STORED = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],
    3: lambda u: u[::-1, ::-1],
    4: lambda u: u[::-1, :],
    5: lambda u: u.T,
    6: lambda u: u[:, ::-1].T,  # stored[i, j] = shown[j, W - 1 - i]: a camera turned to the right
    7: lambda u: u[::-1, ::-1].T,
    8: lambda u: u[::-1, :].T,
}


def jpeg(pixels: np.ndarray, colorspace: str = "GRAY") -> bytes:
    image = np.ascontiguousarray(pixels if pixels.ndim == 3 else pixels[..., None])
    return simplejpeg.encode_jpeg(image, quality=JPEG_QUALITY, colorspace=colorspace,
                                  colorsubsampling="Gray" if colorspace == "GRAY" else "444")


def exif_jpeg(shown: np.ndarray, orientation: int) -> bytes:
    """A grayscale JPEG of ``shown`` stored turned as ``orientation`` says, with that EXIF tag (piexif)."""
    out = io.BytesIO()
    piexif.insert(piexif.dump({"0th": {piexif.ImageIFD.Orientation: orientation}}),
                  jpeg(STORED[orientation](shown)), out)
    return out.getvalue()


def png_bytes(rows: np.ndarray, **writer) -> bytes:
    """A PNG by pypng: ``rows`` (H, W * samples)."""
    out = io.BytesIO()
    png.Writer(rows.shape[1] // writer.pop("samples", 1), rows.shape[0], **writer).write(out, rows.tolist())
    return out.getvalue()


def with_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    """The PNG ``data`` with one more chunk right after IHDR."""
    chunks = list(png.Reader(bytes=data).chunks())
    out = io.BytesIO()
    png.write_chunks(out, chunks[:1] + [(kind, body)] + chunks[1:])
    return out.getvalue()


def sixteen_bits(shown: np.ndarray, seed: int) -> np.ndarray:
    """``shown`` as a 16-bit source has it: value * 257 give or take what rounds back to it (|noise| <= 128)."""
    noise = np.random.default_rng(seed).integers(-128, 129, shown.shape)
    return (shown.astype(np.int64) * 257 + noise).clip(0, 65535).astype(np.uint16)


def on_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Compositing over a white page: color * a + 255 * (1 - a), a = alpha / 255."""
    a = alpha.astype(np.float64) / 255
    a = a[..., None] if color.ndim == 3 else a
    return np.rint(color * a + 255 * (1 - a)).astype(np.uint8)


def palette_png(shown: np.ndarray) -> tuple[bytes, np.ndarray]:
    """An 8-bit palette PNG with a tRNS chunk: the background (0) fully transparent, dark greys half, the rest
    opaque; the transparent entries' colour is black, which is not what a viewer shows. Returns the file and the
    colours a viewer shows."""
    values = np.unique(shown)
    alpha = np.where(values == 0, 0, np.where(values < 40, 128, 255))
    palette = [(int(v), int(v), int(v), int(a)) for v, a in zip(values, alpha)]
    indices = np.searchsorted(values, shown)
    return png_bytes(indices, palette=palette, bitdepth=8), on_white(shown, alpha[indices])


def icc_profile(description: str, primaries: list) -> bytes:
    """An ICC v2 RGB display profile (a matrix and sRGB's tone curve) with the given D50 ``primaries`` (the
    XYZ of the red, green and blue channels), written from the ICC specification."""
    def tag_xyz(xyz):
        return b"XYZ \0\0\0\0" + b"".join(struct.pack(">i", round(v * 65536)) for v in xyz)

    srgb_curve = b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(
        struct.pack(">i", round(v * 65536)) for v in (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045))
    text = description.encode("utf-16-be")
    desc = b"mluc\0\0\0\0" + struct.pack(">II2s2sII", 1, 12, b"en", b"US", len(text), 28) + text
    tags = [(b"desc", desc), (b"wtpt", tag_xyz(D50)), (b"rXYZ", tag_xyz(primaries[0])),
            (b"gXYZ", tag_xyz(primaries[1])), (b"bXYZ", tag_xyz(primaries[2])),
            (b"rTRC", srgb_curve), (b"gTRC", srgb_curve), (b"bTRC", srgb_curve)]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for signature, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += struct.pack(">4sII", signature, offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = struct.pack(">I4sI4s4s4s6H4sI4sII8sI", size, b"lcms", 0x02100000, b"mntr", b"RGB ", b"XYZ ",
                         2024, 1, 1, 0, 0, 0, b"acsp", 0, b"\0\0\0\0", 0, 0, b"\0" * 8, 0)
    header += b"".join(struct.pack(">i", round(v * 65536)) for v in D50) + b"\0" * 48
    return header + struct.pack(">I", len(tags)) + table + data


D50 = (0.9642, 1.0, 0.8249)
SRGB_PRIMARIES = [(0.4360747, 0.2225045, 0.0139322), (0.3850649, 0.7168786, 0.0971045),
                  (0.1430804, 0.0606169, 0.7141733)]  # sRGB's red, green, blue adapted to D50 (Bradford)


def icc_png(shown: np.ndarray) -> bytes:
    """An RGB PNG whose iCCP profile gives its channels sRGB's green, blue and red primaries: it stores
    (G, B, R) of ``shown``, which a colour-managed viewer shows as ``shown``."""
    profile = icc_profile("Rotated primaries", SRGB_PRIMARIES[1:] + SRGB_PRIMARIES[:1])
    stored = shown[..., [1, 2, 0]]
    return with_chunk(png_bytes(stored.reshape(stored.shape[0], -1), samples=3, greyscale=False, bitdepth=8),
                      b"iCCP", b"Rotated primaries\0\0" + zlib.compress(profile))


def cmyk_jpeg(shown: np.ndarray) -> bytes:
    """A CMYK JPEG of ``shown`` with black generation: K = 255 - max(R, G, B), C = (255 - R - K) / (1 - K/255),
    ...; stored inverted (255 - ink), as Adobe's CMYK JPEGs are and viewers read them (TurboJPEG leaves that to
    its caller)."""
    rgb = shown.astype(np.float64)
    k = 255 - rgb.max(axis=-1, keepdims=True)
    cmy = np.where(k < 255, (255 - rgb - k) / np.maximum(1 - k / 255, 1e-9), 0)
    ink = np.rint(np.concatenate([cmy, k], axis=-1)).clip(0, 255).astype(np.uint8)
    return jpeg(255 - ink, colorspace="CMYK")


@dataclass
class Case:
    data: bytes
    suffix: str
    shown: np.ndarray  # (H, W, 3) uint8: what a viewer shows
    counts: dict  # the conversions it needs, as Conversions.counts() names them
    jpeg: bool = False


def build_cases(fashion) -> dict[str, Case]:
    gray, color = gray_image(fashion), color_image(fashion)
    as_rgb = np.repeat(gray[..., None], 3, axis=-1)
    cases = {f"exif-{o}": Case(exif_jpeg(gray, o), ".jpg", as_rgb, {"exif_rotated": 1} if o != 1 else {}, True)
             for o in STORED}
    cases["gray16"] = Case(png_bytes(sixteen_bits(gray, 1), greyscale=True, bitdepth=16), ".png", as_rgb,
                           {"high_depth_scaled": 1})
    rgb16 = sixteen_bits(color, 2)
    cases["rgb16"] = Case(png_bytes(rgb16.reshape(28, -1), samples=3, greyscale=False, bitdepth=16), ".png", color,
                          {"high_depth_scaled": 1})
    palette, shown = palette_png(gray)
    cases["palette-trns"] = Case(palette, ".png", np.repeat(shown[..., None], 3, axis=-1), {"alpha_composited": 1})
    alpha = np.where(gray > 0, 255, np.where(np.arange(56) % 2 == 0, 0, 90)[None, :].repeat(28, 0)).astype(np.uint8)
    rgba = np.concatenate([np.where(alpha[..., None] == 0, 0, color), alpha[..., None]], axis=-1)
    cases["rgba"] = Case(png_bytes(rgba.reshape(28, -1), samples=4, greyscale=False, alpha=True, bitdepth=8),
                         ".png", on_white(color, alpha), {"alpha_composited": 1})
    cases["gray-trns"] = Case(png_bytes(gray, greyscale=True, bitdepth=8, transparent=0), ".png",
                              np.repeat(np.where(gray == 0, 255, gray)[..., None], 3, -1), {"alpha_composited": 1})
    gray_alpha = np.stack([np.where(alpha == 0, 0, gray), alpha], axis=-1)
    cases["gray-alpha"] = Case(png_bytes(gray_alpha.reshape(28, -1), samples=2, greyscale=True, alpha=True,
                                         bitdepth=8), ".png", np.repeat(on_white(gray, alpha)[..., None], 3, -1),
                               {"alpha_composited": 1})
    cases["cmyk"] = Case(cmyk_jpeg(color), ".jpg", color, {"cmyk_converted": 1}, True)
    cases["icc"] = Case(icc_png(color), ".png", color, {"icc_converted": 1})
    return cases


@pytest.fixture(scope="module")
def cases(fashion) -> dict[str, Case]:
    return build_cases(fashion)


CASE_NAMES = [f"exif-{o}" for o in STORED] + ["gray16", "rgb16", "palette-trns", "gray-trns", "rgba", "gray-alpha",
                                             "cmyk", "icc"]
# What the decoder says once for all of them: the sums of the cases' counts
REPORT = (f"of {len(CASE_NAMES)} images decoded: 7 EXIF-rotated, 2 scaled from 16/32 bits to 8, 4 alpha composited "
          "on white, 1 CMYK to RGB, 1 ICC profile to sRGB (decoded as an image viewer shows them)")


# ------------------------------------------------------------------------------------ the decoder
@pytest.mark.parametrize("name", CASE_NAMES)
def test_each_file_decodes_to_what_a_viewer_shows(cases, name):
    case = cases[name]
    converted = Conversions()
    decoded = np.asarray(load_image(case.data, 3, converted)).astype(np.int64)
    assert decoded.shape == case.shown.shape
    error = np.abs(decoded - case.shown)
    if case.jpeg:
        assert error.mean() <= JPEG_MEAN_LEVELS, error.mean()
    else:
        assert error.max() <= LOSSLESS_LEVELS, error.max()
    assert converted.counts() == case.counts and converted.images == 1


@pytest.mark.parametrize("name", CASE_NAMES)
def test_each_file_decodes_to_its_luma_for_one_channel(cases, name):
    """A one-channel model gets the ITU-R 601 luma of what a viewer shows (PIL's L)."""
    case = cases[name]
    decoded = np.asarray(load_image(case.data, 1)).astype(np.int64)
    error = np.abs(decoded - np.rint(case.shown @ np.array([0.299, 0.587, 0.114])))
    assert error.mean() <= JPEG_MEAN_LEVELS if case.jpeg else error.max() <= LOSSLESS_LEVELS


def test_sixteen_bits_are_scaled_by_the_declared_depth_not_the_values(fashion):
    """A dark 16-bit PNG (every value below 256) stays dark: the file's bit depth decides, value / 257."""
    dark = (gray_image(fashion).astype(np.uint16) // 4)  # 0..63 of 65535
    decoded = np.asarray(load_image(png_bytes(dark, greyscale=True, bitdepth=16), 1))
    assert decoded.max() == 0  # 63 / 257 rounds to 0: black, as a viewer shows it (a clip would show 0..63)


@pytest.mark.parametrize("stored, expected", [
    (np.array([[0.0, 0.5, 1.0, 2.0]], np.float32), [0, 128, 255, 255]),  # float: 0..1, clipped as a display does
    (np.array([[0, 257, 65535, 65535]], np.uint16), [0, 1, 255, 255]),  # 16-bit TIFF: / 257
    (np.array([[0, 2**31 - 1, 2**24, -5]], np.int32), [0, 127, 1, 0]),  # 32-bit: / 16843009, negatives black
])
def test_tiff_depths_by_tifffile(stored, expected):
    out = io.BytesIO()
    tifffile.imwrite(out, stored, photometric="minisblack")
    converted = Conversions()
    assert np.asarray(load_image(out.getvalue(), 1, converted)).ravel().tolist() == expected
    assert converted.counts() == {"high_depth_scaled": 1}


def test_a_plain_image_is_not_converted(fashion):
    """The usual 8-bit file: decoded as stored, nothing counted (and no copy made: ``to_mode``'s fast path)."""
    color = color_image(fashion)
    converted = Conversions()
    decoded = load_image(png_bytes(color.reshape(28, -1), samples=3, greyscale=False, bitdepth=8), 3, converted)
    assert np.array_equal(np.asarray(decoded), color)
    assert not converted and converted.images == 1


# ------------------------------------------------------------------------------------ predict, server, eval
def write_model(path: Path, fashion: np.ndarray) -> Path:
    """A 10-class MobileNetV3-Small (width 0.5), untrained but with answers that follow its input: batch-norm
    statistics measured on pairs of real images in four orientations (as the eval protocol feeds them), a
    seeded random classifier large enough that the probabilities are far from uniform."""
    import torch

    from mobilenetv3 import weights as wts
    from mobilenetv3.models import create_model

    torch.manual_seed(26)
    model = create_model("mobilenetv3_small", num_classes=10, width_mult=0.5)
    pairs = [gray_image(fashion[i:i + 2]) for i in range(0, len(fashion), 2)]
    pictures = np.stack([STORED[o](pair) for pair in pairs for o in (1, 2, 3, 4)])  # (N, 28, 56)
    images = torch.from_numpy(pictures).float()[:, None].expand(-1, 3, -1, -1) / 255
    images = torch.nn.functional.interpolate(images, size=(PREPROCESSING["crop"],) * 2, mode="bilinear")
    images = (images - torch.tensor(PREPROCESSING["mean"])[:, None, None]) / torch.tensor(PREPROCESSING["std"])[
        :, None, None]
    norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = None  # a plain average over the one batch
        norm.reset_running_stats()
    with torch.no_grad():
        model.train()(images)
        model.classifier.weight.normal_(0, 30 / model.classifier.weight.shape[1] ** 0.5)
    for norm in norms:
        norm.momentum = 0.1
    weights = wts.Weights(model.model_name, model.model_kwargs, model.state_dict(), "mobilenetv3",
                          classes=[f"c{i}" for i in range(10)], preprocessing=PREPROCESSING)
    wts.write_weights(weights, path, "mobilenetv3")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, fashion, cases):
    """The converted files and, beside them, each ``shown`` as a plain 8-bit PNG (pypng); a 10-class model."""
    root = tmp_path_factory.mktemp("decoding")
    converted, originals = root / "converted", root / "originals"
    converted.mkdir(), originals.mkdir()
    for name, case in cases.items():
        (converted / f"{name}{case.suffix}").write_bytes(case.data)
        (originals / f"{name}.png").write_bytes(
            png_bytes(case.shown.reshape(case.shown.shape[0], -1), samples=3, greyscale=False, bitdepth=8))
    model = write_model(root / "model.pt", fashion)
    return dict(root=root, converted=converted, originals=originals, model=model)


def in_class_order(top: list[dict]) -> np.ndarray:
    """A prediction's ``top`` (all 10 classes) as the 10 probabilities in class order."""
    row = np.zeros(10)
    for entry in top:
        row[entry["index"]] = entry["probability"]
    return row


def predict(model: Path, *inputs: Path, **options) -> dict[str, np.ndarray]:
    """``mobilenetv3.predict``'s probabilities by file stem."""
    return {Path(p.path).stem: in_class_order(p.top)
            for p in mobilenetv3.predict([str(i) for i in inputs], checkpoint=str(model), topk=10, **options)}


@pytest.fixture(scope="module")
def predicted(files):
    """``predict``'s probabilities for the converted files and for the originals."""
    return predict(files["model"], files["converted"]), predict(files["model"], files["originals"])


def assert_same_answer(actual: np.ndarray, original: np.ndarray, jpeg: bool, name: str) -> None:
    assert actual.argmax() == original.argmax(), (name, actual, original)
    tolerance = JPEG_PROBABILITY if jpeg else LOSSLESS_PROBABILITY
    assert np.abs(actual - original).max() <= tolerance, (name, actual, original)


def test_predict_gives_the_upright_8_bit_originals_answer(cases, predicted):
    converted, originals = predicted
    for name, case in cases.items():
        assert_same_answer(converted[name], originals[name], case.jpeg, name)


def test_the_stored_pixels_would_answer_otherwise(files, cases, predicted, tmp_path):
    """The check above is not blind: on the pixels as stored, without their tag, the model answers otherwise
    (every orientation moves the probabilities by more than the tolerance, some change the class)."""
    stored = tmp_path / "stored"
    stored.mkdir()
    turned = [f"exif-{o}" for o in range(2, 9)]
    for name in turned:
        pixels = np.ascontiguousarray(STORED[int(name[-1])](cases[name].shown[..., 0]))
        (stored / f"{name}.png").write_bytes(png_bytes(pixels, greyscale=True, bitdepth=8))
    as_stored, (_, originals) = predict(files["model"], stored), predicted
    assert all(np.abs(as_stored[name] - originals[name]).max() > 2 * JPEG_PROBABILITY for name in turned)
    assert any(as_stored[name].argmax() != originals[name].argmax() for name in turned)


def test_the_server_gives_predicts_answers(files, cases, predicted):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from mobilenetv3.server import ServerSettings, create_app, load_served_model

    converted, _ = predicted
    app = create_app(load_served_model(str(files["model"])), ServerSettings(max_delay_ms=0, topk=10, warmup=False))
    with TestClient(app) as client:
        for name, case in cases.items():
            kind = "image/jpeg" if case.suffix == ".jpg" else "image/png"
            answer = client.post("/predict", content=case.data, headers={"Content-Type": kind})
            assert answer.status_code == 200, answer.text
            served = in_class_order(answer.json()["predictions"][0]["top"])
            assert np.abs(served - converted[name]).max() <= 1e-5, name
        metrics = client.get("/metrics").text
    counted = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("mobilenetv3_images_converted_total{")}
    assert counted == {"exif_rotated": 7.0, "high_depth_scaled": 2.0, "alpha_composited": 4.0, "cmyk_converted": 1.0,
                       "icc_converted": 1.0}


def labelled_folder(root: Path, files_of: dict[str, tuple[Path, int]]) -> Path:
    """An ImageFolder whose class folders c0..c9 hold each file under the class given (some folders empty)."""
    for index in range(10):
        (root / f"c{index}").mkdir(parents=True)
    for name, (path, label) in files_of.items():
        (root / f"c{label}" / f"{name}{path.suffix}").write_bytes(path.read_bytes())
    return root


def test_eval_scores_every_file_as_its_original_and_says_once_what_it_converted(files, cases, predicted, tmp_path,
                                                                                caplog):
    """Each file labelled with the class predict gives its upright original: eval (one worker process, which
    counts in its batches) scores 100% and logs one line of what the decoder did."""
    _, originals = predicted
    converted = {name: (files["converted"] / f"{name}{case.suffix}", int(originals[name].argmax()))
                 for name, case in cases.items()}
    folder = labelled_folder(tmp_path / "folder", converted)
    caplog.set_level(logging.INFO, logger="mobilenetv3")
    result = mobilenetv3.evaluate(str(files["model"]), dataset="imagenet", data_path=str(folder), batch_size=4,
                                  workers=1, report=False)
    assert result.top1 == 1.0 and result.count == len(cases)
    said = [r.getMessage() for r in caplog.records if "decoded as an image viewer shows them" in r.getMessage()]
    assert said == [f"{folder}: {REPORT}"]


def test_decode_gpu_gives_the_cpu_loaders_batches(files, cases, tmp_path):
    """``--decode gpu`` (run on the CPU, as tests/test_gpu_decode.py does) sends only plain JPEGs to
    ``decode_jpeg``: the rotated and CMYK ones are decoded in the worker by the same decoder as the CPU loader's,
    so all are the CPU loader's images within the 2 levels of the device path's tensor resize (tests/
    test_gpu_decode.py); a sideways image given to ``decode_jpeg`` would be tens of levels off."""
    import torch

    from mobilenetv3.data import build_loader, build_preset
    from mobilenetv3.data.datasets import IMAGENET_STATS, image_folder

    (tmp_path / "c0").mkdir()
    for name, case in cases.items():
        if case.suffix == ".jpg":
            (tmp_path / "c0" / f"{name}.jpg").write_bytes(case.data)
    data = image_folder(tmp_path, "val")
    _, preprocessing = build_preset("seed-imagenet", 32, *IMAGENET_STATS, 3)

    def images(**device):
        loader = build_loader(data, None, preprocessing, train=False, batch_size=4, workers=0, **device)
        return torch.cat([batch.images for batch in loader])

    levels = (images() - images(decode_device=torch.device("cpu"))).abs().amax(dim=(1, 2, 3)) * 255 * max(
        IMAGENET_STATS[1])
    assert levels.max() <= 2, dict(zip([Path(path).stem for path, _ in data.samples], levels.tolist()))


def test_a_training_loader_says_once_over_its_epochs(cases, tmp_path, caplog):
    """Three epochs of training batches: one line, after the first, counting each image once."""
    from mobilenetv3.data import build_loader, build_preset
    from mobilenetv3.data.datasets import IMAGENET_STATS, image_folder

    for index, (name, case) in enumerate(cases.items()):
        (tmp_path / f"c{index % 2}").mkdir(exist_ok=True)
        (tmp_path / f"c{index % 2}" / f"{name}{case.suffix}").write_bytes(case.data)
    data = image_folder(tmp_path, "train")
    recipe, preprocessing = build_preset("seed-imagenet", 32, *IMAGENET_STATS, 3)
    loader = build_loader(data, recipe, preprocessing, train=True, batch_size=len(cases), workers=0)
    caplog.set_level(logging.INFO, logger="mobilenetv3")
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        assert sum(len(batch.labels) for batch in loader) == len(cases)
    said = [r.getMessage() for r in caplog.records if "decoded as an image viewer shows them" in r.getMessage()]
    assert said == [f"{tmp_path}: {REPORT}"]


def test_predict_says_once_what_it_converted(files, cases, caplog):
    caplog.set_level(logging.INFO, logger="mobilenetv3")
    mobilenetv3.predict([str(files["converted"])], checkpoint=str(files["model"]), batch_size=4)
    said = [r.getMessage() for r in caplog.records if "decoded as an image viewer shows them" in r.getMessage()]
    assert said == [REPORT]


# ------------------------------------------------------------------------------------ the server's pixel limit
@pytest.mark.parametrize("max_pixels, status, says", [
    (None, 413, "96 megapixels, more than the limit of 40 megapixels"),  # over PIL's 89 million as well
    (150_000_000, 400, "truncated or corrupt"),  # allowed: PIL's own limit no longer refuses it first
])
def test_the_server_refuses_by_the_limit_it_quotes(files, monkeypatch, max_pixels, status, says):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from mobilenetv3.server import ServerSettings, create_app, load_served_model

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # put back after the test
    settings = ServerSettings(max_delay_ms=0, warmup=False, **({"max_pixels": max_pixels} if max_pixels else {}))
    with TestClient(create_app(load_served_model(str(files["model"])), settings)) as client:
        answer = client.post("/predict", content=png_header_only(9800, 9800, grayscale=True),  # 96 MB in PIL
                             headers={"Content-Type": "image/png"})
    assert answer.status_code == status and says in answer.json()["error"], answer.text
