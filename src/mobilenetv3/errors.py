"""The project's two kinds of failure, told apart at the CLI boundary.

``UsageError``: a mistake the user can fix (a bad value, a wrong file, a missing folder). The CLI
prints its one line and exits with code 2. It is a ``ValueError``, so code that catches
``ValueError`` keeps working. ``SettingError`` is one about a single setting: the CLI names it by its flag.

Anything else that escapes (``RunError`` and every unexpected exception, an internal ``ValueError``
included) is a runtime fault: one line and exit code 1. ``MOBILENETV3_DEBUG=1`` shows the
traceback of both.
"""
from typing import Optional


class UsageError(ValueError):
    """A mistake the user can fix; one line and exit code 2 at the CLI."""


class RunError(RuntimeError):
    """A fault while running (not a user mistake): one line and exit code 1."""


class SettingError(UsageError):
    """A setting with a wrong value: ``key`` (a config field or keyword argument, ``batch_size``) and the
    ``problem`` with it; ``source``, where it was set (a preset or YAML file; ``"flag"`` or ``None``: given now,
    or the default). The CLI names a setting given now by its flag (``--batch-size``), a file's by its key."""

    def __init__(self, key: str, problem: str, source: Optional[str] = None):
        self.key, self.problem, self.source = key, problem, source
        super().__init__(f"{key} {problem}" if source in (None, "flag") else f"{source}: {key} {problem}")
