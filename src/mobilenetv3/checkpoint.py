"""Checkpoints, in one place: the format, atomic writes, safe loads, RNG state, pruning.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: loading never runs code from the file. It describes itself
(model name and constructor kwargs, class names, preprocessing, the resolved config), so
``mobilenetv3.load_model`` can rebuild the network from the file alone.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .files import fsync_dir, temporary_path, write_atomic
from .errors import UsageError

log = logging.getLogger(__name__)

FORMAT = "mobilenetv3.checkpoint/1"
EPOCH_CHECKPOINT = re.compile(r"mobilenetV3-(\d+)_(\d+)\.pt$")


def epoch_checkpoint_name(epoch: int, steps_per_epoch: int) -> str:
    """The seed's naming, ``mobilenetV3-{epoch}_{steps_per_epoch}``, with PyTorch's extension."""
    return f"mobilenetV3-{epoch}_{steps_per_epoch}.pt"


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` atomically (``files.write_atomic``): a kill leaves the old file or the new."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getbuffer())


def link_checkpoint(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` (a hard link, else a copy), atomically."""
    tmp = temporary_path(target)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def load_file(path) -> Any:
    """``torch.load`` with ``weights_only=True``; a clear ``ValueError`` for anything that is not a safe checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global[^.\n]*", str(err))
        if found is None:  # not a pickle of ours at all
            raise UsageError(f"{path}: not a readable PyTorch checkpoint (truncated or another format)") from None
        raise UsageError(f"{path}: refused to load: it holds Python objects that could run code "
                         f"({found.group(0).replace('GLOBAL ', '')}); only tensors and plain data are loaded") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError) as err:
        raise UsageError(f"{path}: not a readable PyTorch checkpoint (truncated or another format: "
                         f"{_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def load_checkpoint(path) -> dict:
    """A checkpoint written by this package (``save_checkpoint``); ``ValueError`` for anything else."""
    state = load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"{path}: not a mobilenetv3 training checkpoint")
    return state


# -------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states as plain data."""
    np_state = np.random.get_state()
    state = dict(python=random.getstate(), numpy=[np_state[0], torch.from_numpy(np_state[1].copy()),
                                                 int(np_state[2]), int(np_state[3]), float(np_state[4])],
                 torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# --------------------------------------------------------------------------------------- run files
def prune_epoch_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete the oldest ``mobilenetV3-*`` checkpoints beyond ``keep`` (last.pt and best.pt are separate files)."""
    found = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := EPOCH_CHECKPOINT.match(p.name)))
    for _, path in found[:-keep] if keep else found:
        path.unlink(missing_ok=True)


def save_safetensors(state_dict: dict, path: Path, metadata: dict[str, str]) -> None:
    """Weights only, for sharing: ``safetensors`` (no code, no pickle), with the model description as metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    write_atomic(path, save(tensors, metadata=metadata))


def latest_run_checkpoint(run_dir: Path) -> Optional[Path]:
    last = run_dir / "last.pt"
    return last if last.is_file() else None


# ------------------------------------------------------------------------- weights of any format
@dataclass
class Weights:
    """Weights read from any supported file, in this package's names, with what is known about them."""

    model_name: str
    model_kwargs: dict
    state_dict: dict
    source: str  # "mobilenetv3", "safetensors", "torchvision", "timm", "mindspore"
    classes: Optional[list] = None
    preprocessing: Optional[dict] = None
    checkpoint: Optional[dict] = None  # the whole training checkpoint, when it was one


def read_weights(path, ema: bool = False) -> Weights:
    """Read a checkpoint of ours, safetensors, a torchvision or timm state dict (or training checkpoint),
    or a MindSpore ``.ckpt``; ``ema=True`` takes the EMA weights of our training checkpoints."""
    path = Path(path)
    if path.suffix == ".ckpt":
        return _read_mindspore(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    content = load_file(path)
    if isinstance(content, dict) and content.get("format") == FORMAT:
        if ema and content.get("ema") is None:
            raise UsageError(f"{path} has no EMA weights (train with --ema-decay to keep them)")
        return Weights(content["model_name"], dict(content["model_kwargs"]),
                       content["ema"] if ema else content["model"], "mobilenetv3", content.get("classes"),
                       content.get("preprocessing"), content)
    if ema:
        raise UsageError(f"{path} is not a mobilenetv3 training checkpoint, so it has no EMA weights")
    for key in ("state_dict", "model"):  # torchvision's and timm's training checkpoints
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
            break
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise UsageError(f"{path}: holds no state dict (a mapping of names to tensors)")
    return foreign_weights(content, str(path))


def foreign_weights(state_dict: dict, source: str) -> Weights:
    """A state dict in any framework's names -> ``Weights`` (architecture inferred from the shapes)."""
    from .convert import TORCHVISION_KWARGS, from_timm, from_torchvision
    from .convert.common import fitting_model

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
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file as load_safetensors

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_safetensors(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None
    if "model_name" in metadata:
        from .models import create_model

        kwargs = json.loads(metadata["model_kwargs"])
        tensors = _in_model_order(tensors, create_model(metadata["model_name"], **kwargs))
        return Weights(metadata["model_name"], kwargs, tensors, "safetensors",
                       json.loads(metadata.get("classes", "null")), json.loads(metadata.get("preprocessing", "null")))
    return foreign_weights(tensors, str(path))


def _read_mindspore(path: Path) -> Weights:
    from .convert import mindspore

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        converted = mindspore.from_mindspore(mindspore.read_ckpt(path))
    except ValueError as err:
        message = str(err)
        raise UsageError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    return Weights(converted.model_name, converted.model_kwargs, converted.state_dict, "mindspore")


def model_from_weights(weights: Weights, **overrides) -> torch.nn.Module:
    """The network ``weights`` describe, with their values, in eval mode; ``classes`` and ``preprocessing``
    attached (the registry's ImageNet preprocessing when the file has none)."""
    from .convert import check_shapes
    from .models import create_model, get_model_entry

    model = create_model(weights.model_name, **dict(weights.model_kwargs, **overrides))
    check_shapes(weights.state_dict, model)
    model.load_state_dict(weights.state_dict)
    model.classes = weights.classes
    default = dict(get_model_entry(weights.model_name).meta["preprocessing"], in_chans=model.in_chans)
    model.preprocessing = weights.preprocessing or dict(
        resize=default["resize"], crop=default["crop"], interpolation=default["interpolation"],
        mean=default["mean"] if model.in_chans == 3 else (0.449,), std=default["std"] if model.in_chans == 3
        else (0.226,), in_chans=model.in_chans)
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


def write_weights(weights: Weights, path: Path, fmt: str) -> None:
    """Write ``weights`` as ``fmt``: ``mobilenetv3`` (a weights-only checkpoint of ours), ``safetensors``,
    ``torchvision`` or ``timm`` (their state dicts, for their models) or ``mindspore`` (the seed's ``.ckpt``).

    Frameworks fix BatchNorm eps in code (torchvision 1e-3, timm and the seed 1e-5): weights trained with
    another eps compute a slightly different function there, which is logged.
    """
    import json

    from .convert import to_timm, to_torchvision
    from .convert.mindspore import to_mindspore, write_ckpt

    state = {k: v.detach().cpu() for k, v in weights.state_dict.items()}
    eps = weights.model_kwargs.get("bn_eps", 1e-5)
    expected_eps = {"torchvision": 1e-3, "timm": 1e-5, "mindspore": 1e-5}.get(fmt)
    if expected_eps is not None and abs(eps - expected_eps) > 1e-12:
        log.warning("%s's MobileNetV3 uses BatchNorm eps %g, these weights were made with %g: outputs will differ "
                    "slightly", fmt, expected_eps, eps)
    if fmt == "mindspore":
        write_ckpt(to_mindspore(state), path)
    elif fmt == "safetensors":
        save_safetensors(state, path, dict(model_name=weights.model_name, model_kwargs=json.dumps(weights.model_kwargs),
                                           classes=json.dumps(weights.classes),
                                           preprocessing=json.dumps(weights.preprocessing)))
    elif fmt == "mobilenetv3":
        save_checkpoint(dict(format=FORMAT, model_name=weights.model_name, model_kwargs=dict(weights.model_kwargs),
                             classes=weights.classes, preprocessing=weights.preprocessing, model=state, ema=None),
                        path)
    elif fmt == "torchvision":
        save_checkpoint(to_torchvision(state), path)
    elif fmt == "timm":
        save_checkpoint(to_timm(state), path)
    else:
        raise UsageError(f"unknown weights format {fmt!r}")
