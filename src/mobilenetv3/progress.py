"""Progress of the long steps outside training: eval's pass over the data, an export's stages.

On a terminal a loop shows a tqdm bar, once it has run ``DELAY_S`` (a fast one shows nothing) and gone when it
ends; elsewhere (a log file, a pipe, ``| tee``) a bar would write a line per update, so a loop logs a line every
``EVERY_S`` seconds while it lasts instead. An export with slow stages (INT8, ExecuTorch) logs one line as each
stage begins, ``export executorch-int8, 41 s: quantising ...``, on a terminal or not. ``runlog.py`` shows training's
progress the same way.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)

DELAY_S = 2.0  # a bar shows itself after this long
EVERY_S = 15.0  # off a terminal: a line at most this often
Item = TypeVar("Item")


def tracked(items: Iterable[Item], total: int, what: str, unit: str = "batch", units: str = "batches",
            enabled: bool = True) -> Iterator[Item]:
    """``items`` (``total`` of them, each a ``unit``), with their progress shown while they are consumed: a bar
    on a terminal, else ``"<what>: 12 of 40 batches, 31 s"`` every ``EVERY_S`` seconds (nothing for a loop that
    ends sooner). ``enabled=False`` (another rank than the first) shows nothing."""
    if not enabled:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(items, total=total, desc=what, unit=unit, delay=DELAY_S, leave=False, dynamic_ncols=True) as bar:
            yield from bar
        return
    start = last = time.perf_counter()
    for done, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= EVERY_S and done < total:
            log.info("%s: %d of %d %s, %.0f s", what, done, total, units, now - start)
            last = now


class Stages:
    """The stages of one task, each said in one line as it begins, with the time since the first:
    ``"export executorch-int8, 41 s: quantising ..."``. ``enabled=False``: a task not worth the lines."""

    def __init__(self, what: str, enabled: bool = True):
        self.what, self.enabled, self.start = what, enabled, time.perf_counter()

    def begin(self, stage: str) -> None:
        if self.enabled:
            log.info("%s, %.0f s: %s", self.what, time.perf_counter() - self.start, stage)
