"""Our training-checkpoint format, in one place: the ``Checkpoint`` dataclass, the model card every file we
write carries, atomic writes, safe loads, RNG state, restore and pruning.

On disk a checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: loading never runs code from the file. It describes itself with its
model card (model name and constructor kwargs, class names, preprocessing) and the resolved config,
so ``mobilenetv3.load_model`` can rebuild the network from the file alone. ``model_card`` is also what
safetensors metadata and every export format (ONNX, TorchScript, pt2) store. Weights of other
frameworks are ``weights.py``'s business.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import random
import re
import shutil
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .convert import check_shapes
from .errors import UsageError
from .files import atomic_output, fsync_dir, write_atomic

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
    with atomic_output(target) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    fsync_dir(target.parent)


def load_file(path) -> Any:
    """``torch.load`` with ``weights_only=True``; one clear ``UsageError`` for anything not a safe checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the one line below is what matters
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = refused_global(str(err))
        if refused is None:  # not a pickle of ours at all
            raise _unreadable(path, err) from None
        raise UsageError(f"{path}: refused to load: it holds Python objects that could run code (global "
                         f"{refused}); only tensors and plain data are loaded") from None
    except Exception as err:  # noqa: BLE001 - torch's messages (a cut-off miniz note, weights_only's history) say less
        raise _unreadable(path, err) from None


def _unreadable(path: Path, err: Exception) -> UsageError:
    """What a file ``torch.load`` could not read is, said in the user's words rather than torch's internals."""
    import zipfile

    if path.suffix == ".safetensors":  # torch.load hands these to safetensors, whose message says what is wrong
        return UsageError(f"{path}: not a readable safetensors file ({type(err).__name__}: {first_line(err)})")
    unreadable = UsageError(f"{path}: not a readable PyTorch checkpoint (truncated or not a PyTorch file)")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # not a zip archive: torch.save's format since PyTorch 1.6, TorchScript's
            return unreadable
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return UsageError(f"{path}: not a readable PyTorch checkpoint (truncated: its zip archive is cut short)")
    if any("/code/" in name for name in names):  # the compiled source of a TorchScript program
        return UsageError(f"{path} is a TorchScript program, not weights: eval and predict run it with "
                          f"--exported {path}; weights are a checkpoint of ours, safetensors or a state dict")
    return unreadable


def refused_global(message: str) -> Optional[str]:
    """The global a ``weights_only`` load refused, from torch's message in any version in range
    (2.5: "Unsupported global: GLOBAL posix.system ...", 2.14: "... unsupported GLOBAL posix.system ...")."""
    found = re.search(r"unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", message, re.IGNORECASE)
    return found.group(1) if found else None


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def load_checkpoint(path) -> dict:
    """The raw dict of a checkpoint written by this package; ``UsageError`` for anything else."""
    state = load_file(path)
    if not is_ours(state):
        raise UsageError(f"{path}: not a mobilenetv3 training checkpoint")
    return state


def is_ours(content: Any) -> bool:
    """Whether ``content`` (what ``load_file`` returned) is a checkpoint of this package."""
    return isinstance(content, dict) and content.get("format") == FORMAT


# -------------------------------------------------------------------------------------- model card
def model_card(model_name: str, model_kwargs: dict, classes: Optional[list] = None,
               preprocessing: Optional[dict] = None) -> dict:
    """What every file we write says about its model: enough to rebuild it and to feed it.

    Checkpoints store it as top-level keys, safetensors as JSON metadata strings, exported models
    (ONNX, TorchScript, pt2) as one JSON document with ``softmax`` added.
    """
    return dict(model_name=model_name, model_kwargs=dict(model_kwargs),
                classes=list(classes) if classes is not None else None,
                preprocessing=dict(preprocessing) if preprocessing is not None else None)


def card_of(model: torch.nn.Module) -> dict:
    """The model card of a built model (``classes`` and ``preprocessing`` as attached by ``load_model``)."""
    return model_card(model.model_name, model.model_kwargs, getattr(model, "classes", None),
                      getattr(model, "preprocessing", None))


def dataset_record(config: Optional[dict], classes: Optional[list]) -> Optional[dict]:
    """What the data a training run learnt from was, for the files exported from its checkpoint (beside the model
    card, whose preprocessing is the eval protocol): the dataset format, its folder (made absolute where it
    exists), the class names as the dataset has them and, for synthetic data, the settings that make its images.
    ``None`` without the run's ``config`` (weights of another framework, a checkpoint without one)."""
    data = (config or {}).get("data")
    if not isinstance(data, dict) or not data.get("dataset"):
        return None
    path = data.get("data_path")
    if path and Path(path).expanduser().exists():
        path = str(Path(path).expanduser().resolve())
    record = dict(dataset=data["dataset"], data_path=path, classes=list(classes) if classes is not None else None)
    if data["dataset"] == "synthetic":
        record.update(synthetic_samples=data.get("synthetic_samples"), image_size=data.get("image_size"),
                      seed=(config.get("run") or {}).get("seed"))
    return record


def card_from_metadata(metadata: dict[str, str]) -> Optional[dict]:
    """The model card stored in safetensors metadata by ``save_safetensors``; ``None`` when there is none."""
    import json

    if "model_name" not in metadata:
        return None
    return model_card(metadata["model_name"], json.loads(metadata["model_kwargs"]),
                      json.loads(metadata.get("classes", "null")), json.loads(metadata.get("preprocessing", "null")))


# ------------------------------------------------------------------------------ training checkpoint
@dataclass
class TrainState:
    """Where a run stands: what a resumed run needs besides the weights and the optimizer."""

    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # steps finished in the current epoch
    global_step: int = 0
    epoch_loss_sum: float = 0.0  # the losses of this epoch's steps so far (the group's mean per process)
    epoch_loss_steps: int = 0  # how many steps that sum holds (a resumed seed checkpoint has none)
    best_top1: Optional[float] = None
    history: list = field(default_factory=list)  # one record per finished epoch

    def mean_loss(self) -> float:
        return self.epoch_loss_sum / max(1, self.epoch_loss_steps)

    def copy(self, **changes) -> "TrainState":
        """A copy with its own ``history`` list (appending to one leaves the other as it was), ``changes``
        applied (``state.copy(epoch_loss_sum=0.0)``)."""
        return replace(self, **{"history": list(self.history), **changes})


@dataclass
class Trainable:
    """The objects a training checkpoint saves and restores."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Optional[Any] = None  # torch.amp.GradScaler
    ema: Optional[Any] = None  # torch.optim.swa_utils.AveragedModel


@dataclass
class Checkpoint:
    """A checkpoint of ours: a model card and weights; training checkpoints add the optimizer, the EMA, the
    scaler, the ``TrainState``, the resolved config and every process's random state."""

    model_name: str
    model_kwargs: dict
    model: dict  # the state dict
    classes: Optional[list] = None
    preprocessing: Optional[dict] = None
    config: Optional[dict] = None
    ema: Optional[dict] = None
    ema_n_averaged: Optional[int] = None
    optimizer: Optional[dict] = None
    scaler: Optional[dict] = None
    state: Optional[TrainState] = None
    steps_per_epoch: Optional[int] = None
    rng_ranks: Optional[list] = None

    def card(self) -> dict:
        return model_card(self.model_name, self.model_kwargs, self.classes, self.preprocessing)

    @property
    def is_training_state(self) -> bool:
        return self.optimizer is not None and self.state is not None

    def require_training_state(self, source) -> "Checkpoint":
        """This checkpoint, if it holds a run to continue (optimizer, ``TrainState`` and the run's config); else
        the ``UsageError`` saying that ``source`` holds weights only."""
        if not self.is_training_state or self.config is None:
            raise UsageError(f"{source} holds weights only, not a training state; start from it with --pretrained")
        return self

    @classmethod
    def capture(cls, trainable: Trainable, card: dict, config: dict, state: TrainState, rng_ranks: list,
                steps_per_epoch: int) -> "Checkpoint":
        """A training checkpoint of ``trainable`` now."""
        ema = trainable.ema
        return cls(**card, model=trainable.model.state_dict(), config=config,
                   ema=ema.module.state_dict() if ema is not None else None,
                   ema_n_averaged=int(ema.n_averaged) if ema is not None else None,
                   optimizer=trainable.optimizer.state_dict(),
                   scaler=trainable.scaler.state_dict() if trainable.scaler is not None else None,
                   state=state.copy(), steps_per_epoch=steps_per_epoch, rng_ranks=rng_ranks)

    def to_dict(self) -> dict:
        """The on-disk form (``mobilenetv3.checkpoint/1``): flat keys, plain data and tensors."""
        content = dict(format=FORMAT, **self.card(), model=self.model, ema=self.ema)
        if self.config is not None:
            content["config"] = self.config
        if self.is_training_state:
            content.update(ema_n_averaged=self.ema_n_averaged, optimizer=self.optimizer, scaler=self.scaler,
                           **vars(self.state), steps_per_epoch=self.steps_per_epoch,
                           rng=self.rng_ranks[0], rng_ranks=self.rng_ranks)
        return content

    @classmethod
    def from_dict(cls, content: dict) -> "Checkpoint":
        state = None
        if "optimizer" in content and "epoch" in content:
            state = TrainState(epoch=content["epoch"], step_in_epoch=content["step_in_epoch"],
                               global_step=content["global_step"], epoch_loss_sum=content["epoch_loss_sum"],
                               epoch_loss_steps=content.get("epoch_loss_steps", content["step_in_epoch"]),
                               best_top1=content["best_top1"], history=list(content["history"]))
        return cls(model_name=content["model_name"], model_kwargs=dict(content["model_kwargs"]),
                   model=content["model"], classes=content.get("classes"), preprocessing=content.get("preprocessing"),
                   config=content.get("config"), ema=content.get("ema"), ema_n_averaged=content.get("ema_n_averaged"),
                   optimizer=content.get("optimizer"), scaler=content.get("scaler"), state=state,
                   steps_per_epoch=content.get("steps_per_epoch"),
                   rng_ranks=content.get("rng_ranks") or ([content["rng"]] if "rng" in content else None))

    def save(self, path: Path) -> None:
        save_checkpoint(self.to_dict(), path)

    @classmethod
    def load(cls, path) -> "Checkpoint":
        return cls.from_dict(load_checkpoint(path))

    def restore(self, trainable: Trainable, rank: int, world_size: int, source: str) -> TrainState:
        """Load weights, optimizer, scaler, EMA and this process's random state into ``trainable``."""
        self.require_training_state(source)
        trainable.model.load_state_dict(self.model)
        trainable.optimizer.load_state_dict(self.optimizer)
        if trainable.scaler is not None and self.scaler:
            trainable.scaler.load_state_dict(self.scaler)
        if trainable.ema is not None and self.ema is not None:
            trainable.ema.module.load_state_dict(self.ema)
            trainable.ema.n_averaged.fill_(int(self.ema_n_averaged))
        ranks = self.rng_ranks or []
        if len(ranks) != world_size and rank == 0:
            log.warning("%s was saved by %d process(es), this run has %d: ranks beyond its count start fresh random "
                        "streams", source, len(ranks), world_size)
        if rank < len(ranks):
            set_rng_state(ranks[rank])
        return self.state.copy()


def restore_seed(seed, trainable: Trainable, steps_per_epoch: int, source: str) -> TrainState:
    """Continue a seed training checkpoint (``convert.MindSporeCheckpoint``): its weights, its SGD momentum
    buffers, its step in the schedule.

    MindSpore's Momentum and PyTorch's SGD keep the same buffer (v = m * v + g), so the buffers carry over.
    The seed stores no running loss: the epoch's mean loss counts only the steps this run takes.
    """

    model, optimizer = trainable.model, trainable.optimizer
    check_shapes(seed.state_dict, model)
    model.load_state_dict(seed.state_dict)
    if seed.momentum_buffers and isinstance(optimizer, torch.optim.SGD):
        params = dict(model.named_parameters())
        for name, buffer in seed.momentum_buffers.items():
            optimizer.state[params[name]]["momentum_buffer"] = buffer.to(params[name]).clone()
    elif seed.momentum_buffers:
        log.warning("%s holds SGD momentum buffers; the %s optimizer starts without them", source,
                    type(optimizer).__name__)
    if trainable.ema is not None:
        trainable.ema.module.load_state_dict(model.state_dict())
    step = seed.global_step or 0
    log.info("continuing the seed's run at global step %d (momentum buffers: %d)", step, len(seed.momentum_buffers))
    return TrainState(epoch=step // steps_per_epoch, step_in_epoch=step % steps_per_epoch, global_step=step)


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


def save_safetensors(state_dict: dict, path: Path, card: dict) -> None:
    """Weights only, for sharing: ``safetensors`` (no code, no pickle), with the model card as metadata."""
    import json

    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    metadata = {key: value if key == "model_name" else json.dumps(value) for key, value in card.items()}
    write_atomic(path, save(tensors, metadata=metadata))


def latest_run_checkpoint(run_dir: Path) -> Optional[Path]:
    last = run_dir / "last.pt"
    return last if last.is_file() else None
