"""What every export format shares: the softmax wrapper and the description an exported file carries (the files
themselves are written with ``files.check_writable`` and ``files.atomic_output``)."""
from __future__ import annotations

import torch
from torch import nn

from ..checkpoint import card_of

METADATA_KEY = "mobilenetv3"
CALIBRATION_KEY = "mobilenetv3.calibration"  # INT8 files: the images they were calibrated on
INT8_KEY = "mobilenetv3.int8"  # INT8 IR and .pte: how it was quantised (tool, scheme; the IR: the layers kept in fp32)


class WithSoftmax(nn.Module):
    """The seed's export: the network followed by a softmax over classes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(dim=1)


def describe(model: nn.Module, softmax: bool) -> dict:
    """What an exported file says about itself: the model card, whether a softmax is appended, and ``dataset``,
    the data it was trained on (``checkpoint.dataset_record``, attached to the model by ``model_from_weights``;
    ``None`` when unknown), which ``eval --exported`` scores it on by default. Read back by each runtime's module
    (``OnnxModule``, ``OpenVinoModule``, ``ExecuTorchModule``, ``TorchProgramModule``)."""
    return dict(card_of(model), softmax=softmax, dataset=getattr(model, "dataset", None))
