"""TorchScript (traced) and ``torch.export`` (pt2) programs, each with the description in ``metadata.json``, and
``TorchProgramModule``, either file run by PyTorch where a model is expected."""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from ..files import atomic_output
from .common import WithSoftmax, describe

METADATA_FILE = "metadata.json"  # the description, an extra file of the archive


def export_torchscript(model: nn.Module, path: Path, example: torch.Tensor, softmax: bool = False) -> Path:
    """TorchScript (traced), with the description in the archive's ``metadata.json``."""
    net = WithSoftmax(model) if softmax else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but many runtimes load it
        traced = torch.jit.trace(net.eval(), example)
        with atomic_output(path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={METADATA_FILE: json.dumps(describe(model, softmax))})
    return path


def export_pt2(model: nn.Module, path: Path, example: torch.Tensor, softmax: bool = False) -> Path:
    """``torch.export`` program with a dynamic batch, loadable with ``torch.export.load``."""
    net = WithSoftmax(model) if softmax else model
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(net.eval(), (example,), dynamic_shapes=({0: batch},))
    with atomic_output(path) as tmp:
        torch.export.save(program, str(tmp), extra_files={METADATA_FILE: json.dumps(describe(model, softmax))})
    return path


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip with the ``code/`` folder of its compiled source (a
    ``torch.save`` checkpoint has none)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


@contextlib.contextmanager
def _quiet_loading():
    """torch.jit's deprecation warning and torch.export's log of a failed load (a warning with the whole
    traceback) kept off the terminal: a file that does not load is one line, said by the caller."""
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        export_log.setLevel(level)


class TorchProgramModule(nn.Module):
    """A TorchScript archive (``kind="torchscript"``) or a ``torch.export`` program (``kind="pt2"``) run by
    PyTorch on the CPU, usable where a model is expected (``engine.evaluate``, predict), with the model card the
    export wrote into it (``metadata.json``)."""

    precision = "fp32"

    def __init__(self, path, kind: str):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        what = "TorchScript program" if kind == "torchscript" else "torch.export program (.pt2)"
        self.runtime = "torchscript" if kind == "torchscript" else "torch.export"
        if not zipfile.is_zipfile(path):  # torch's reader would quote a cut-off miniz message
            raise UsageError(f"{path}: not a loadable {what} (not a zip archive: cut short, or another kind of file)")
        extra = {METADATA_FILE: ""}
        try:
            with _quiet_loading():
                if kind == "torchscript":
                    self.program = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
                else:
                    self.program = torch.export.load(str(path), extra_files=extra).module()
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, zip and pickle errors alike
            text = " ".join(str(err).split()) or type(err).__name__
            raise UsageError(f"{path}: not a loadable {what} ({text[:200]})") from None
        if not extra[METADATA_FILE]:
            raise UsageError(f"{path}: a {what} without the model card of `mobilenetv3 export` ({METADATA_FILE})")
        info = json.loads(extra[METADATA_FILE])
        kwargs = info.get("model_kwargs", {})
        self.model_name, self.model_kwargs = info.get("model_name", path.stem), kwargs
        self.classes, self.preprocessing = info.get("classes"), info.get("preprocessing")
        self.softmax = bool(info.get("softmax", False))
        self.dataset = info.get("dataset")  # the data it was trained on (None: not recorded)
        self.num_classes, self.in_chans = kwargs.get("num_classes"), kwargs.get("in_chans", 3)
        if self.num_classes is None:
            raise UsageError(f"{path}: its model card does not say how many classes it has")

    def train(self, mode: bool = True) -> "TorchProgramModule":
        """The program is fixed as exported, in eval mode (torch.export's module refuses ``train()``): only the
        flag changes."""
        self.training = mode
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x.detach().float().contiguous().cpu())
