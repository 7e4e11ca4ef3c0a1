"""The prediction task: image files, folders or globs in; top-k classes and probabilities out."""
from __future__ import annotations

import glob
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import nn
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..data.classes import class_mismatch
from ..data.images import Conversions, load_image
from ..data.transforms import Preprocessing, image_transform, normalize_batch
from ..engine import top_classes
from ..errors import SettingError, UsageError
from ..export import check_pytorch_options, open_exported
from ..weights import load_model
from .common import is_exported, renamed, required_source

log = logging.getLogger(__name__)

SHOWN_UNREADABLE = 10  # unreadable images named in the line that says they were skipped


@dataclass
class Prediction:
    """One image's top classes: ``top`` is ``[{"class", "index", "probability"}, ...]``, most likely first;
    ``runtime`` and ``precision``: what computed them."""

    path: str
    top: list[dict]
    runtime: str = "pytorch"
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return asdict(self)


def predict(images: Iterable[str], *, source: Optional[str] = None, runtime: Optional[str] = None,
            precision: Optional[str] = None, topk: Optional[int] = None, batch_size: int = 32,
            skip_bad_images: bool = False, classes: Union[str, Sequence[str], None] = None,
            checkpoint: Optional[str] = None, onnx: Optional[str] = None,
            exported: Optional[str] = None) -> list[Prediction]:
    """Classify ``images`` (files, folders searched recursively, globs) with ``source``: weights (any format) or an
    exported model (``.onnx``, an OpenVINO IR ``.xml``, an ExecuTorch ``.pte``, a ``.torchscript.pt`` or a ``.pt2``;
    ``checkpoint``, ``onnx`` and ``exported`` are the older names), run in its own runtime unless
    ``runtime="openvino"`` (an ONNX file in
    OpenVINO), in ``precision`` ``fp32`` (default) or ``bf16`` (OpenVINO); class names and preprocessing come
    from the file. ``classes`` (names, a text file of one per line, or ``"a,b,c"``) names the classes instead:
    they must be the file's (``data.class_mismatch``: their count, and the names where the file's are more than
    indices or recorded with its training data). ``topk`` defaults to 5 (or all classes, when there are fewer); a
    ``topk`` above the class count shows them all and says so. An unreadable image is a ``UsageError`` naming
    it, unless ``skip_bad_images``: then it is left out of the results, and the ones left out are named in one
    logged line."""
    source = renamed("predict", "source", source, checkpoint=checkpoint, onnx=onnx, exported=exported)
    source = required_source(source, "the weights or the exported model to classify with")
    if topk is not None and topk < 1:
        raise SettingError("topk", "must be at least 1")
    if batch_size < 1:
        raise SettingError("batch_size", "must be at least 1")
    paths = expand_inputs(images)
    if is_exported(source):
        model = open_exported(source, runtime, precision)
    else:
        check_pytorch_options(runtime, precision)
        model = load_model(source)
    if not model.preprocessing:
        raise UsageError(f"{source} carries no preprocessing metadata (export it with `mobilenetv3 export`)")
    names = model.classes if classes is None else _given_classes(classes, model)
    predictions = classify(model, paths, Preprocessing.from_dict(model.preprocessing), names, topk,
                           batch_size, outputs_probabilities=getattr(model, "softmax", False),
                           skip_bad_images=skip_bad_images)
    for prediction in predictions:
        prediction.runtime = getattr(model, "runtime", "pytorch")
        prediction.precision = getattr(model, "precision", "fp32")
    return predictions


def _given_classes(classes: Union[str, Sequence[str]], model: nn.Module) -> list[str]:
    """The class names given (``--classes``): a list, a text file of one name per line, or ``"a,b,c"``; a
    ``UsageError`` when they are not the model's classes (their count; the names where the model's are known)."""
    if isinstance(classes, str):
        path = Path(classes).expanduser()
        try:
            text = path.read_text(encoding="utf-8") if path.is_file() else classes.replace(",", "\n")
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"--classes {path}: not a text file of class names ({type(err).__name__})") from None
        classes = [line.strip() for line in text.splitlines() if line.strip()]
    names = [str(name) for name in classes]
    problem = class_mismatch(model.classes, model.num_classes, names, "--classes",
                             names_known=getattr(model, "dataset", None) is not None)
    if problem:
        raise UsageError(f"{problem}; leave --classes out to show the model's own names")
    return names


def expand_inputs(patterns: Iterable[str]) -> list[Path]:
    """Files as given, folders searched recursively for images, globs expanded; sorted, no duplicates.

    A folder's files without an image extension are left out, and counted in one logged line."""
    found: dict[Path, None] = {}
    skipped: dict[Path, int] = {}  # folder -> files in it that are not images
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            matches, skipped[path] = _folder_images(path)
        elif path.is_file():
            matches = [path]
        elif any(ch in pattern for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise UsageError(f"no file matches {pattern}")
        else:
            raise FileNotFoundError(f"{path} does not exist")
        found.update(dict.fromkeys(matches))
    if sum(skipped.values()):
        folders = ", ".join(str(folder) for folder, count in skipped.items() if count)
        log.warning("skipped %d file(s) without an image extension in %s", sum(skipped.values()), folders)
    return list(found)


def _folder_images(folder: Path) -> tuple[list[Path], int]:
    """The image files under ``folder`` (by extension), sorted, and how many other files it holds."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    images = sorted(p for p in files if p.suffix.lower() in IMG_EXTENSIONS)
    if not images:
        raise UsageError(f"{folder} holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...)")
    return images, len(files) - len(images)


@torch.no_grad()
def classify(model: nn.Module, paths: list[Path], preprocessing: Preprocessing, classes: Optional[list[str]],
             topk: Optional[int] = None, batch_size: int = 32, outputs_probabilities: bool = False,
             skip_bad_images: bool = False) -> list[Prediction]:
    """The top-``topk`` classes of every image, in order, with the eval protocol ``preprocessing``; unreadable
    images left out with ``skip_bad_images`` (named in one logged line), else a ``UsageError`` naming the first."""
    model.eval()
    transform = image_transform(None, preprocessing, train=False)
    classes_count = getattr(model, "num_classes", topk or 5)
    k = min(topk or 5, classes_count)
    results, unreadable, converted = [], [], Conversions()
    for start in range(0, len(paths), batch_size):
        chunk, images = _decoded(paths[start:start + batch_size], transform, preprocessing.in_chans,
                                 unreadable if skip_bad_images else None, several=len(paths) > 1,
                                 converted=converted)
        if not chunk:
            continue
        images = normalize_batch(torch.stack(images), preprocessing)
        outputs = model(images).float()
        probs = outputs if outputs_probabilities else outputs.softmax(dim=1)
        values, indices = top_classes(probs, k)
        for path, row_values, row_indices in zip(chunk, values.tolist(), indices.tolist()):
            top = [dict(index=i, probability=p, **{"class": classes[i] if classes else str(i)})
                   for p, i in zip(row_values, row_indices)]
            results.append(Prediction(str(path), top))
    if unreadable:
        _report_unreadable(unreadable, len(paths))
    if converted:  # said after the work, so that an error stays the one line
        log.info("%s (decoded as an image viewer shows them)", converted)
    if topk is not None and topk > k:
        log.warning("--topk %d is more than the model's %d classes: showing all %d", topk, k, k)
    return results


def _decoded(paths: list[Path], transform, channels: int, unreadable: Optional[list[str]],
             several: bool, converted: Optional[Conversions] = None) -> tuple[list[Path], list[torch.Tensor]]:
    """The images of ``paths`` that decode, transformed, and their paths; the others' errors are added to
    ``unreadable`` (when it is a list) or raised (saying how to classify the rest, when there are ``several``)."""
    kept, images = [], []
    for path in paths:
        try:
            image = load_image(str(path), channels, converted)
        except ValueError as err:  # load_image's UsageError: "<path>: unreadable image (...)"
            if unreadable is None:
                raise UsageError(f"{err}; add --skip-bad-images to classify the other images" if several
                                 else str(err)) from None
            unreadable.append(str(err))
            continue
        kept.append(path)
        images.append(transform(image))
    return kept, images


def _report_unreadable(unreadable: list[str], total: int) -> None:
    """One logged line naming the images left out; none left at all is a ``UsageError``."""
    shown = "; ".join(unreadable[:SHOWN_UNREADABLE]) + (
        f"; and {len(unreadable) - SHOWN_UNREADABLE} more" if len(unreadable) > SHOWN_UNREADABLE else "")
    if len(unreadable) == total:
        raise UsageError(f"none of the {total} image(s) could be read: {shown}")
    log.warning("skipped %d unreadable image(s) of %d: %s", len(unreadable), total, shown)
