"""Reading Locust's own `--csv` output (PREFIX_stats.csv, PREFIX_stats_history.csv)."""

from __future__ import annotations

import csv
from pathlib import Path


def read_stats(prefix: str | Path) -> dict[tuple[str, str], dict[str, str]]:
    """Rows of PREFIX_stats.csv keyed by (Type, Name), e.g. ("TTFT", "tenant-a")."""
    path = Path(f"{prefix}_stats.csv")
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


def read_users_over_time(prefix: str | Path) -> list[tuple[float, int]]:
    """(epoch seconds, users) from the Aggregated rows of PREFIX_stats_history.csv."""
    path = Path(f"{prefix}_stats_history.csv")
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [
            (float(row["Timestamp"]), int(row["User Count"]))
            for row in csv.DictReader(f)
            if row["Name"] == "Aggregated"
        ]
