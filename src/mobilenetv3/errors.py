"""The project's two kinds of failure, told apart at the CLI boundary.

``UsageError``: a mistake the user can fix (a bad value, a wrong file, a missing folder). The CLI
prints its one line and exits with code 2. It is a ``ValueError``, so code that catches
``ValueError`` keeps working.

Anything else that escapes (``RunError`` and every unexpected exception, an internal ``ValueError``
included) is a runtime fault: one line and exit code 1. ``MOBILENETV3_DEBUG=1`` shows the
traceback of both.
"""


class UsageError(ValueError):
    """A mistake the user can fix; one line and exit code 2 at the CLI."""


class RunError(RuntimeError):
    """A fault while running (not a user mistake): one line and exit code 1."""
