"""The convert task: weights from one framework's format to another's (MindSpore ``.ckpt``, ours, safetensors,
torchvision, timm)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import UsageError
from ..weights import FORMATS, read_weights, write_weights

SUFFIX_FORMATS = {".ckpt": "mindspore", ".safetensors": "safetensors", ".pt": "mobilenetv3"}


@dataclass
class ConvertResult:
    src: str
    dst: str
    source_format: str
    target_format: str
    model_name: str
    model_kwargs: dict


def convert_weights(src: str, dst: str, *, to: Optional[str] = None, from_format: Optional[str] = None,
                    ema: bool = False) -> ConvertResult:
    """Convert ``src`` (format detected from the file; checked against ``from_format`` if given) to ``dst``,
    whose format is ``to`` or told by its extension (``.ckpt`` MindSpore, ``.pt`` ours, ``.safetensors``)."""
    target = to or SUFFIX_FORMATS.get(Path(dst).suffix)
    if target is None:
        raise UsageError(f"cannot tell the format of {dst} from its extension; add --to ({', '.join(FORMATS)})")
    if Path(dst).resolve() == Path(src).resolve():
        raise UsageError("SRC and DST are the same file")
    weights = read_weights(src, ema=ema)
    ours = weights.source in ("mobilenetv3", "safetensors") and Path(src).suffix != ".safetensors"
    source_format = "mobilenetv3" if ours else weights.source
    if from_format and from_format != source_format:
        raise UsageError(f"{src} holds {source_format} weights, not {from_format}")
    write_weights(weights, Path(dst), target)
    return ConvertResult(str(src), str(dst), source_format, target, weights.model_name, dict(weights.model_kwargs))
