#!/usr/bin/env python3
"""The seed's `train.py`, with its flags (see `python train.py --help`), run by mobilenetv3."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # works without installing the package too

from mobilenetv3.seed_compat import run, train_argv  # noqa: E402

if __name__ == "__main__":
    sys.exit(run(train_argv))
