"""What every task shares: one vocabulary and its older spellings.

Every task reads a model from ``source`` (weights of any format, or an exported file: told apart by
``is_exported``), writes a file to ``output`` and a folder to ``out_dir``. The names the tasks used before
(``weights``, ``checkpoint``, ``onnx``, ``exported``, ``model``, ``src``, ``dst``) still work for one release,
with a ``FutureWarning``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

from ..errors import SettingError
from ..export import exported_kind


def renamed(task: str, new: str, value, **old):
    """``value`` of the parameter ``new``, or the one given under an old name in ``old`` (warned about once per
    call site); a ``SettingError`` when both, or two old names, give different values."""
    for name, old_value in old.items():
        if old_value is None:
            continue
        warnings.warn(f"{task}({name}=...) is renamed {task}({new}=...); the old name goes in the next release",
                      FutureWarning, stacklevel=3)
        if value is not None and value != old_value:
            raise SettingError(new, f"is given twice: as {new} ({value}) and as {name} ({old_value})")
        value = old_value
    return value


def required_source(source: Optional[str], what: str) -> str:
    """``source``, which a task cannot do without: ``what`` says what it must be."""
    if not source:
        raise SettingError("source", f"is required: {what}")
    return str(source)


def is_exported(source) -> bool:
    """``source`` is an exported model (``.onnx``, ``.xml``, ``.pte``, ``.pt2``, a TorchScript ``.pt``), not weights."""
    return exported_kind(Path(source)) is not None
