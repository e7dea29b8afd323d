"""Formatting numbers for reasons and tables."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """Decimal units, as the GPU datasheets use: 5.85 GB, 412 MB, 256 B."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}" if n / size < 100 else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"
