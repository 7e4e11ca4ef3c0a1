"""The prediction task: image files, folders or globs in; top-k classes and probabilities out."""
from __future__ import annotations

import glob
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..data.loader import load_image
from ..data.transforms import Preprocessing, image_transform, normalize_batch
from ..errors import UsageError


@dataclass
class Prediction:
    """One image's top classes: ``top`` is ``[{"class", "index", "probability"}, ...]``, most likely first."""

    path: str
    top: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def predict(images: Iterable[str], *, checkpoint: Optional[str] = None, onnx: Optional[str] = None, topk: int = 5,
            batch_size: int = 32) -> list[Prediction]:
    """Classify ``images`` (files, folders searched recursively, globs) with ``checkpoint`` (any weights format)
    or an exported ``onnx`` model; class names and preprocessing come from the file."""
    from ..export import OnnxModule
    from ..weights import load_model

    if bool(checkpoint) == bool(onnx):
        raise UsageError("give exactly one of --checkpoint PATH or --onnx FILE")
    if topk < 1 or batch_size < 1:
        raise UsageError("--topk and --batch-size must be at least 1")
    paths = expand_inputs(images)
    model = OnnxModule(onnx) if onnx else load_model(checkpoint)
    if not model.preprocessing:
        raise UsageError(f"{onnx} carries no preprocessing metadata (export it with `mobilenetv3 export`)")
    return classify(model, paths, Preprocessing.from_dict(model.preprocessing), model.classes, topk, batch_size,
                    outputs_probabilities=getattr(model, "softmax", False))


def expand_inputs(patterns: Iterable[str]) -> list[Path]:
    """Files as given, folders searched recursively for images, globs expanded; sorted, no duplicates."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
            if not matches:
                raise UsageError(f"{path} holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...)")
        elif path.is_file():
            matches = [path]
        elif any(ch in pattern for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise UsageError(f"no file matches {pattern}")
        else:
            raise FileNotFoundError(f"{path} does not exist")
        found.update(dict.fromkeys(matches))
    return list(found)


@torch.no_grad()
def classify(model: nn.Module, paths: list[Path], preprocessing: Preprocessing, classes: Optional[list[str]],
             topk: int = 5, batch_size: int = 32, outputs_probabilities: bool = False) -> list[Prediction]:
    """The top-``topk`` classes of every image, in order, with the eval protocol ``preprocessing``."""
    model.eval()
    transform = image_transform(None, preprocessing, train=False)
    k = min(topk, getattr(model, "num_classes", topk))
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = normalize_batch(torch.stack([transform(load_image(str(p), preprocessing.in_chans)) for p in chunk]),
                                 preprocessing)
        outputs = model(images).float()
        probs = outputs if outputs_probabilities else outputs.softmax(dim=1)
        values, indices = probs.topk(k, dim=1)
        for path, row_values, row_indices in zip(chunk, values.tolist(), indices.tolist()):
            top = [dict(index=i, probability=p, **{"class": classes[i] if classes else str(i)})
                   for p, i in zip(row_values, row_indices)]
            results.append(Prediction(str(path), top))
    return results
