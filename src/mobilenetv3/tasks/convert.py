"""The convert task: weights from one framework's format to another's (MindSpore ``.ckpt``, ours, safetensors,
torchvision, timm)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import SettingError, UsageError
from ..weights import FORMATS, read_weights, write_weights, writes_crc, writes_training_state
from .common import renamed, required_source

SUFFIX_FORMATS = {".ckpt": "mindspore", ".safetensors": "safetensors", ".pt": "mobilenetv3"}


@dataclass
class ConvertResult:
    source: str
    output: str
    source_format: str
    target_format: str
    model_name: str
    model_kwargs: dict
    training_state: list[str] = field(default_factory=list)  # what SRC held besides the weights (the seed's)
    training_state_kept: bool = False  # written to DST too (a .ckpt holds it); else dropped
    crc: bool = False  # the output ends in MindSpore's CRC trailer

    @property
    def src(self) -> str:  # the older names, for one release
        return self.source

    @property
    def dst(self) -> str:
        return self.output


def convert_weights(source: Optional[str] = None, output: Optional[str] = None, *, to: Optional[str] = None,
                    from_format: Optional[str] = None, ema: bool = False, crc: Optional[bool] = None,
                    any_architecture: bool = False, src: Optional[str] = None,
                    dst: Optional[str] = None) -> ConvertResult:
    """Convert ``source`` (format detected from the file; checked against ``from_format`` if given) to ``output``,
    whose format is ``to`` or told by its extension (``.ckpt`` MindSpore, ``.pt`` ours, ``.safetensors``); ``src``
    and ``dst`` are the older names.

    A seed training checkpoint's state (``global_step``, ``momentum``, ``learning_rate``, ``moments.*``) goes
    to a ``.ckpt`` and is dropped elsewhere, as the result says; a ``.ckpt`` ends in a CRC trailer when
    ``crc`` says so, by default when ``source`` is a ``.ckpt`` with one. A ``.ckpt`` is written only of the seed's
    network (each difference named in a ``UsageError``), unless ``any_architecture``: then of any network whose
    tensors a ``.ckpt`` holds (not another stem stride, not a head bias).
    """
    src = required_source(renamed("convert_weights", "source", source, src=src), "the weights to convert")
    dst = renamed("convert_weights", "output", output, dst=dst)
    if not dst:
        raise SettingError("output", "is required: the file to write")
    target = to or SUFFIX_FORMATS.get(Path(dst).suffix)
    if target is None:
        raise SettingError("to", f"is needed: the extension of {dst} does not tell its format ({', '.join(FORMATS)})")
    if Path(dst).resolve() == Path(src).resolve():
        raise UsageError(f"source and output are the same file ({src})")
    weights = read_weights(src, ema=ema)
    source_format = weights.source
    if from_format and from_format != source_format:
        raise UsageError(f"{src} holds {source_format} weights, not {from_format}")
    with_crc = writes_crc(weights, target, crc)
    write_weights(weights, Path(dst), target, crc=crc, any_architecture=any_architecture)
    return ConvertResult(str(src), str(dst), source_format, target, weights.model_name, dict(weights.model_kwargs),
                         _training_state(weights), writes_training_state(weights, target), with_crc)


def _training_state(weights) -> list[str]:
    """What ``weights``' file holds besides the weights: the seed's state, or our optimizer, EMA and step."""
    if weights.seed is not None:
        return weights.seed.training_state()
    saved = weights.checkpoint
    if saved is None or not saved.is_training_state:
        return []
    return ["optimizer state", *(["EMA weights"] if saved.ema is not None else []),
            f"epoch {saved.state.epoch}, step {saved.state.global_step}"]
