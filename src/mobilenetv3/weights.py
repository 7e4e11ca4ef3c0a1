"""Weights of any framework: detect, read, write, and build the model they describe.

``read_weights`` takes a checkpoint of ours, safetensors, a torchvision or timm state dict (or
their training checkpoints), or a MindSpore ``.ckpt``, and gives ``Weights`` in this package's names
with the architecture read from the file (or inferred from the shapes). ``load_model`` builds the
network from them; ``write_weights`` writes them in any of those formats. Our own training-checkpoint
format is ``checkpoint.py``'s.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from . import checkpoint as ckpt
from .convert import TORCHVISION_KWARGS, check_shapes, from_timm, from_torchvision, mindspore, to_timm, to_torchvision
from .convert.common import fitting_model
from .convert.mindspore import check_seed_network, to_mindspore, training_tensors, write_ckpt
from .errors import UsageError
from .models import create_model, default_preprocessing

log = logging.getLogger(__name__)

FORMATS = ("mindspore", "mobilenetv3", "safetensors", "torchvision", "timm")


@dataclass
class Weights:
    """Weights read from any supported file, in this package's names, with what is known about them."""

    model_name: str
    model_kwargs: dict
    state_dict: dict
    source: str  # "mobilenetv3", "safetensors", "torchvision", "timm", "mindspore"
    classes: Optional[list] = None
    preprocessing: Optional[dict] = None
    checkpoint: Optional[ckpt.Checkpoint] = None  # the whole checkpoint, when it was one of ours
    seed: Optional[object] = None  # the whole ``convert.MindSporeCheckpoint``, when it was the seed's

    def card(self) -> dict:
        return ckpt.model_card(self.model_name, self.model_kwargs, self.classes, self.preprocessing)

    def dataset(self) -> Optional[dict]:
        """The data they were trained on (``checkpoint.dataset_record``), when their training config says."""
        config = self.checkpoint.config if self.checkpoint is not None else None
        return ckpt.dataset_record(config, self.classes)


def exported_format(path: Path):
    """The row of ``export.formats.TABLE`` whose files ``path`` is named as (models, not weights), or ``None``.
    A TorchScript ``.pt`` is told apart by its content, where it is read."""
    from .export.formats import kind_of_name

    row = kind_of_name(path.name)
    return None if row is None or row.kind == "torchscript" else row


def read_weights(path, ema: bool = False) -> Weights:
    """Read a checkpoint of ours, safetensors, a torchvision or timm state dict (or training checkpoint),
    or a MindSpore ``.ckpt``; ``ema=True`` takes the EMA weights of our training checkpoints."""
    path = Path(path)
    exported = exported_format(path)
    if exported is not None:
        raise UsageError(f"{path} is {exported.what}, not weights: eval and predict run it with --exported {path}")
    if path.suffix == ".ckpt":
        return _read_mindspore(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    content = ckpt.load_file(path)
    if ckpt.is_ours(content):
        return _read_ours(ckpt.Checkpoint.from_dict(content), path, ema)
    if ema:
        raise UsageError(f"{path} is not a mobilenetv3 training checkpoint, so it has no EMA weights")
    for key in ("state_dict", "model"):  # torchvision's and timm's training checkpoints
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
            break
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise UsageError(f"{path}: holds no state dict (a mapping of names to tensors)")
    return foreign_weights(content, str(path))


def _read_ours(saved: ckpt.Checkpoint, path: Path, ema: bool) -> Weights:
    if ema and saved.ema is None:
        raise UsageError(f"{path} has no EMA weights (train with --ema-decay to keep them)")
    return Weights(saved.model_name, dict(saved.model_kwargs), saved.ema if ema else saved.model, "mobilenetv3",
                   saved.classes, saved.preprocessing, saved)


def foreign_weights(state_dict: dict, source: str) -> Weights:
    """A state dict in any framework's names -> ``Weights`` (architecture inferred from the shapes)."""

    state_dict = {_strip_wrappers(k): v for k, v in state_dict.items()}
    if "stem.conv.weight" in state_dict:
        converted, origin, extra = state_dict, "mobilenetv3", {}
    elif "features.0.0.weight" in state_dict:
        converted, origin, extra = from_torchvision(state_dict), "torchvision", dict(TORCHVISION_KWARGS)
    elif "conv_stem.weight" in state_dict:
        converted, origin, extra = from_timm(state_dict), "timm", {}
    else:
        first = next(iter(state_dict), "nothing")
        raise UsageError(f"{source}: not MobileNetV3 weights of a known layout (first tensor {first!r})")
    try:
        model = fitting_model(converted, extra)
    except ValueError as err:
        raise UsageError(f"{source}: {err}") from None
    return Weights(model.model_name, dict(model.model_kwargs), _in_model_order(converted, model), origin)


def _in_model_order(state_dict: dict, model: torch.nn.Module) -> dict:
    """Keys in the module's own order (safetensors sorts them; MindSpore files are written in this order)."""
    order = list(model.state_dict())
    known = set(order)
    ordered = {k: state_dict[k] for k in order if k in state_dict}
    return ordered | {k: v for k, v in state_dict.items() if k not in known}


def _strip_wrappers(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _read_safetensors(path: Path) -> Weights:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file as load_safetensors

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_safetensors(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{path}: not a readable safetensors file ({ckpt.first_line(err)})") from None
    card = ckpt.card_from_metadata(metadata)
    if card is None:
        return foreign_weights(tensors, str(path))

    tensors = _in_model_order(tensors, create_model(card["model_name"], **card["model_kwargs"]))
    return Weights(card["model_name"], card["model_kwargs"], tensors, "safetensors", card["classes"],
                   card["preprocessing"])


def _read_mindspore(path: Path) -> Weights:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        converted = mindspore.from_mindspore(mindspore.read_ckpt(path))
    except ValueError as err:
        message = str(err)
        raise UsageError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    converted.crc = mindspore.has_crc(path)
    return Weights(converted.model_name, converted.model_kwargs, converted.state_dict, "mindspore", seed=converted)


def model_from_weights(weights: Weights, **overrides) -> torch.nn.Module:
    """The network ``weights`` describe, with their values, in eval mode; ``classes`` and ``preprocessing``
    attached (the model's registry default when the file has none), and ``dataset``, the data they were trained
    on (``Weights.dataset``, ``None`` when unknown), which export records."""

    model = create_model(weights.model_name, **dict(weights.model_kwargs, **overrides))
    check_shapes(weights.state_dict, model)
    model.load_state_dict(weights.state_dict)
    model.classes = weights.classes
    model.preprocessing = weights.preprocessing or default_preprocessing(weights.model_name, model.in_chans)
    model.dataset = weights.dataset()
    return model.eval()


def load_model(path, ema: bool = False, **overrides) -> torch.nn.Module:
    """Build the network stored in ``path`` (any format ``read_weights`` reads), in eval mode.

    ``overrides`` change constructor arguments that do not alter the weights' shapes (``dropout``,
    ``bn_eps``, ...). The model carries ``classes`` and ``preprocessing`` (mean, std, resize, crop).
    """
    weights = read_weights(path, ema=ema)
    try:
        return model_from_weights(weights, **overrides)
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from None


def writes_training_state(weights: Weights, fmt: str) -> bool:
    """Whether ``write_weights(weights, path, fmt)`` keeps the training state the weights came with: only a
    seed training checkpoint written as a ``.ckpt`` does; every other file holds the weights alone."""
    return fmt == "mindspore" and weights.seed is not None and bool(weights.seed.training_state())


def writes_crc(weights: Weights, fmt: str, crc: Optional[bool] = None) -> bool:
    """Whether ``write_weights(weights, path, fmt, crc)`` ends the file in MindSpore's CRC trailer: as ``crc``
    says, by default when the weights came from a ``.ckpt`` that had one."""
    if crc is not None and fmt != "mindspore":
        raise UsageError(f"a CRC trailer belongs to MindSpore .ckpt files, not to {fmt} files")
    return crc if crc is not None else fmt == "mindspore" and weights.seed is not None and weights.seed.crc


def write_weights(weights: Weights, path: Path, fmt: str, crc: Optional[bool] = None,
                  any_architecture: bool = False) -> None:
    """Write ``weights`` as ``fmt``: ``mobilenetv3`` (a weights-only checkpoint of ours), ``safetensors``,
    ``torchvision`` or ``timm`` (their state dicts, for their models) or ``mindspore`` (the seed's ``.ckpt``).

    A ``.ckpt`` keeps a seed training checkpoint's state (``writes_training_state``) and ends in a CRC
    trailer when ``crc`` says so, by default when the source ``.ckpt`` had one (``writes_crc``); it holds the
    seed's network only (``convert.mindspore.check_seed_network``: each difference named, a ``UsageError``),
    unless ``any_architecture``.
    Frameworks fix BatchNorm eps in code (torchvision 1e-3, timm and the seed 1e-5): weights trained with
    another eps compute a slightly different function there, which is logged.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown weights format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    with_crc = writes_crc(weights, fmt, crc)
    if any_architecture and fmt != "mindspore":
        raise UsageError(f"--any-architecture is for MindSpore .ckpt files, not {fmt} files")
    if fmt == "mindspore":
        check_seed_network(weights.model_kwargs, weights.state_dict, any_architecture)
    if fmt in ("torchvision", "timm") and weights.model_kwargs.get("stem_stride", 2) != 2:
        raise UsageError(f"these weights were trained with stem_stride {weights.model_kwargs['stem_stride']}; "
                         f"{fmt}'s MobileNetV3 has a stride-2 stem: keep them in our formats (.pt, .safetensors)")
    state = {k: v.detach().cpu() for k, v in weights.state_dict.items()}
    eps = weights.model_kwargs.get("bn_eps", 1e-5)
    expected_eps = {"torchvision": 1e-3, "timm": 1e-5, "mindspore": 1e-5}.get(fmt)
    if expected_eps is not None and abs(eps - expected_eps) > 1e-12:
        log.warning("%s's MobileNetV3 uses BatchNorm eps %g, these weights were made with %g: outputs will differ "
                    "slightly", fmt, expected_eps, eps)
    if fmt == "mindspore":
        tensors = to_mindspore(state)
        if writes_training_state(weights, fmt):
            tensors |= training_tensors(weights.seed)
        write_ckpt(tensors, path, crc=with_crc)
    elif fmt == "safetensors":
        ckpt.save_safetensors(state, path, weights.card())
    elif fmt == "mobilenetv3":
        ckpt.Checkpoint(**weights.card(), model=state).save(path)
    else:
        ckpt.save_checkpoint((to_torchvision if fmt == "torchvision" else to_timm)(state), path)
