"""What every benchmark shares: the repository on sys.path, the data folder, a wall-clock timer."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
DATA = Path(os.environ.get("PREFDATA_TEST_DATA") or os.environ.get("PREFDATA_DATA") or REPO.parent / "shared" / "data")


def timed(fn):
    """(fn(), seconds it took)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
