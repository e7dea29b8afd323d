"""One JSON line per request the load test sent: the raw material of the report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Record:
    tenant: str
    start: float  # wall clock (epoch seconds) when the request was sent
    elapsed: float  # seconds since the test started, when it was sent
    stage: str
    level: float
    ok: bool
    status: int = 0
    error: str = ""
    ttft_s: float | None = None
    e2e_s: float | None = None
    tpot_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    max_tokens: int | None = None


class RecordWriter:
    def __init__(self, path: str | Path):
        self._file = open(path, "a", buffering=1)

    def write(self, record: Record) -> None:
        self._file.write(json.dumps(asdict(record)) + "\n")

    def close(self) -> None:
        self._file.close()


def read_records(path: str | Path) -> list[Record]:
    path = Path(path)
    if not path.exists():
        return []
    return [Record(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
