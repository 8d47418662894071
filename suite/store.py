"""Results folder: atomic record appends, resume bookkeeping, and a pandas loader (L1).

Layout (DESIGN.md): <results-dir>/<matrix>/<run id>/
    records.jsonl        one JSON record per finished cell repetition
    matrix.json          the resolved matrix (cells, axes, guard) this run executed
    env.json             the host's environment fingerprint
    cells/<cell id>/r<repeat>/   per-cell config, result and log
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from suite.record import Record

RECORDS = "records.jsonl"


class RunStore:
    """One run folder. Safe against kill -9: every append replaces the file atomically."""

    def __init__(self, run_dir: Path | str):
        self.dir = Path(run_dir)

    @property
    def records_path(self) -> Path:
        return self.dir / RECORDS

    def cell_dir(self, cell_id: str, repeat: int) -> Path:
        return self.dir / "cells" / cell_id / f"r{repeat}"

    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        # Serialises appenders (two runners on one run folder); released when the process dies.
        self.create()
        with open(self.dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def append(self, record: Record) -> None:
        """Append one record. Write old content + new line to a temp file, fsync, rename:
        a reader (or a killed writer) sees either the old file or the new one, never a torn line.
        A record for a (cell, repeat) already present replaces it (used by --retry-failed)."""
        line = record.to_json() + "\n"
        with self._lock():
            kept = [r.to_json() + "\n" for r in self.records() if r.key != record.key]
            write_atomic(self.records_path, "".join(kept) + line)

    def records(self) -> list[Record]:
        if not self.records_path.exists():
            return []
        out = []
        for line in self.records_path.read_text().splitlines():
            if line.strip():
                out.append(Record.from_json(line))
        return out

    def finished(self) -> dict[tuple[str, int], str]:
        """(cell id, repeat) -> status of every record already stored."""
        return {r.key: r.status for r in self.records()}

    def write_json(self, name: str, obj: Any) -> None:
        write_atomic(self.dir / name, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def read_json(self, name: str) -> Any:
        path = self.dir / name
        return json.loads(path.read_text()) if path.exists() else None


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def find_runs(path: Path | str) -> list[Path]:
    """Run folders at or below `path` (a run folder, a matrix folder or a results root)."""
    path = Path(path)
    if (path / RECORDS).exists():
        return [path]
    return sorted(p.parent for p in path.glob(f"**/{RECORDS}"))


def load_records(path: Path | str) -> list[Record]:
    return [r for run in find_runs(path) for r in RunStore(run).records()]


def to_dataframe(records: list[Record] | Path | str):
    """One row per record: identity columns, flattened config (`config.train.micro_batch`),
    and scalar metrics (`tokens_per_s`...). List-valued metrics (loss curve, step times) stay
    as Python lists in their column."""
    import pandas as pd  # imported here: the runner loads this module and must stay light

    if not isinstance(records, list):
        records = load_records(records)
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "matrix": r.matrix, "run_id": r.run_id, "cell_id": r.cell_id, "repeat": r.repeat,
            "label": r.label, "status": r.status, "reason": r.reason, "duration_s": r.duration_s,
        }
        row.update({f"config.{k}": v for k, v in flatten(r.config).items()})
        row.update(r.metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
