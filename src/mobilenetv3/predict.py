"""Classify image files: paths, folders or globs in; top-k classes and probabilities out."""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn
from torchvision.datasets.folder import IMG_EXTENSIONS

from .data.loader import load_image
from .data.transforms import BatchAugment, Preprocessing, Recipe, image_transform
from .errors import UsageError


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
def predict(model: nn.Module, paths: list[Path], preprocessing: Preprocessing, classes: Optional[list[str]],
            topk: int = 5, batch_size: int = 32, outputs_probabilities: bool = False) -> list[dict]:
    """``[{"path", "top": [{"class", "index", "probability"}, ...]}]`` for every image, in order."""
    model.eval()
    transform = image_transform(Recipe(preprocessing.crop), preprocessing, train=False)
    normalize = BatchAugment(Recipe(preprocessing.crop), preprocessing, train=False).finish
    k = min(topk, getattr(model, "num_classes", topk))
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = normalize(torch.stack([transform(load_image(str(p), preprocessing.in_chans)) for p in chunk]), None)
        outputs = model(images).float()
        probs = outputs if outputs_probabilities else outputs.softmax(dim=1)
        values, indices = probs.topk(k, dim=1)
        for path, row_values, row_indices in zip(chunk, values.tolist(), indices.tolist()):
            top = [dict(index=i, probability=p, **{"class": classes[i] if classes else str(i)})
                   for p, i in zip(row_values, row_indices)]
            results.append(dict(path=str(path), top=top))
    return results
