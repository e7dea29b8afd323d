"""Counts that the hostile-input tests gather, written for `benchmarks/reliability.py` to print.

A test module adds its counts with `record(name, counter)`; when `PALISERVE_FIGURES` names a
file, the session writes every count there as JSON when it ends.
"""

from __future__ import annotations

import json
import os
from collections import Counter

FIGURES: dict[str, dict[str, int]] = {}


def record(name: str, counts: Counter) -> None:
    FIGURES[name] = {str(k): int(v) for k, v in counts.items()}


def dump() -> None:
    path = os.environ.get("PALISERVE_FIGURES")
    if path:
        with open(path, "w") as f:
            json.dump(FIGURES, f, indent=2)
