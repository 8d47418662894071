"""A run folder: where a run's records, metadata and per-cell files live, and the one way to
read and write them (L1). The runner writes through it; the report and the guard read
through it.

Layout: <results-dir>/<matrix>/<run id>/
    records.jsonl        one JSON record per finished cell repetition
    matrix.json          the resolved matrix (cells, axes, guard) this run executed (RunMeta)
    env.json             the host's environment fingerprint
    cells/<cell id>/r<repeat>/   per-cell config, result and log
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from txsuite.config.record import Record

RECORDS = "records.jsonl"
REJECTED = "records.rejected.jsonl"  # lines a rewrite could not parse, kept verbatim
META = "matrix.json"
ENV = "env.json"


class RecordsWarning(UserWarning):
    """A line of records.jsonl that is not a record: named by file and line, then skipped."""


class RunInUse(Exception):
    """Another process is writing this run (its lock names it); one paragraph for the user."""


class RunLock:
    """The one-writer lock of a run folder: held by the runner from the first cell to the last.

    An flock on <run>/.run.lock: the kernel releases it when its holder dies, kill -9 included,
    so it can never go stale. The file says who holds it (pid, host, since) so that a second
    runner can be told whom it is waiting for."""

    NAME = ".run.lock"

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / self.NAME
        self._fh = None

    def __enter__(self) -> "RunLock":
        import socket
        from datetime import datetime

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunInUse(f"run {self.path.parent} is in use by {holder}: one runner writes a run at a time. "
                           f"Wait for it to finish (it then resumes nothing twice), or give another --run-id.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on host {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


@dataclass
class RunMeta:
    """matrix.json, typed: what the run executed. Every field has a default, so a run killed
    before its metadata was written, or a copied records.jsonl, still reads."""
    name: str | None = None
    description: str = ""
    source: str | None = None  # the matrix file the run came from
    overrides: list[str] = field(default_factory=list)  # `key=value` settings given on the command line
    axes: dict[str, list[Any]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    repeats: int | None = None
    seeds: int | None = None
    guard: dict[str, str] = field(default_factory=dict)
    reference: Any = None  # the report's reference cell (a cell id); `baseline` in older runs
    timeout_s: float | None = None
    cells: list[dict[str, Any]] = field(default_factory=list)  # cell_id, label, origin, skip_reason, config
    notes: list[str] = field(default_factory=list)  # what the plan noticed (e.g. duplicate cells)
    fingerprint: str | None = None
    complete: bool = False

    @classmethod
    def from_json(cls, data: Any) -> "RunMeta":
        if not isinstance(data, dict):
            return cls()
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        if "reference" not in data and "baseline" in data:  # written before the rename
            values["reference"] = data["baseline"]
        meta = cls(**values)
        meta.axes = meta.axes if isinstance(meta.axes, dict) else {}
        meta.guard = meta.guard if isinstance(meta.guard, dict) else {}
        meta.cells = [c for c in meta.cells if isinstance(c, dict)] if isinstance(meta.cells, list) else []
        meta.notes = [str(n) for n in meta.notes] if isinstance(meta.notes, list) else []
        meta.overrides = [str(o) for o in meta.overrides] if isinstance(meta.overrides, list) else []
        return meta

    def labels(self) -> dict[str, str]:
        """cell id -> label, for every planned cell."""
        return {c["cell_id"]: c.get("label") or c["cell_id"] for c in self.cells if c.get("cell_id")}


@dataclass
class Run:
    """A run as read once: its records, typed metadata and host environment (what the report
    and the guard work from)."""
    dir: Path
    records: list[Record]
    meta: RunMeta
    env: dict[str, Any]

    @property
    def name(self) -> str:
        if self.meta.name:
            return str(self.meta.name)
        if self.records and self.records[0].matrix:
            return self.records[0].matrix
        return self.dir.parent.name or "matrix"

    @property
    def run_id(self) -> str:
        return self.records[0].run_id if self.records and self.records[0].run_id else self.dir.name

    @property
    def time_span(self) -> tuple[str | None, str | None]:
        starts = sorted(r.started_at for r in self.records if r.started_at)
        ends = sorted(r.finished_at for r in self.records if r.finished_at)
        return (starts[0] if starts else None, ends[-1] if ends else None)


class RunFolder:
    """One run folder. Safe against kill -9: every append replaces the file atomically."""

    def __init__(self, run_dir: Path | str):
        self.dir = Path(run_dir)

    @property
    def records_path(self) -> Path:
        return self.dir / RECORDS

    def exists(self) -> bool:
        return self.records_path.exists()

    def cell_dir(self, cell_id: str, repeat: int) -> Path:
        return self.dir / "cells" / cell_id / f"r{repeat}"

    def create(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    # --- records -----------------------------------------------------------------------------
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
            records, rejected = self._read()
            if rejected:  # never lose what was there: unreadable lines move aside, verbatim
                with open(self.dir / REJECTED, "a") as fh:
                    fh.writelines(text + "\n" for _, text, _ in rejected)
            kept = [r.to_json() + "\n" for r in records if r.key != record.key]
            write_atomic(self.records_path, "".join(kept) + line)

    def records(self) -> list[Record]:
        """Every record of the run. A line that is not a record is skipped with a warning
        (RecordsWarning) naming the file and the line: a half-written last line (the run was
        copied mid-write, or the disk filled) so that its cell runs again on resume; any other
        one so that the rest of the run still reads."""
        records, rejected = self._read()
        for n, _, problem in rejected:
            warnings.warn(f"{self.records_path}, line {n}: {problem}; skipped", RecordsWarning, stacklevel=2)
        return records

    def _read(self) -> tuple[list[Record], list[tuple[int, str, str]]]:
        """(records, [(line number, text, problem)] of the lines that are not records)."""
        if not self.records_path.exists():
            return [], []
        text = self.records_path.read_text(errors="replace")
        lines = text.split("\n")
        out, rejected = [], []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(Record.from_json(line))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                torn = n == len(lines)  # the last line, without its newline: a write cut short
                problem = ("a half-written last line (its cell will run again on resume)" if torn
                           else f"not a txsuite result record ({type(exc).__name__}: {exc})")
                rejected.append((n, line, problem))
        return out, rejected

    def load(self) -> Run:
        """Records, metadata and environment, read once. A folder without records.jsonl is not a
        run folder (FileNotFoundError); missing or broken metadata reads as defaults."""
        if not self.records_path.exists():
            raise FileNotFoundError(f"{self.dir} is not a run folder: it holds no {RECORDS}")
        return Run(dir=self.dir, records=self.records(), meta=self.meta, env=self.env)

    def finished(self) -> dict[tuple[str, int], str]:
        """(cell id, repeat) -> status of every record already stored."""
        return {r.key: r.status for r in self.records()}

    # --- metadata ----------------------------------------------------------------------------
    @property
    def meta(self) -> RunMeta:
        return RunMeta.from_json(self.read_json(META, quiet=True))

    @property
    def env(self) -> dict[str, Any]:
        env = self.read_json(ENV, quiet=True)
        return env if isinstance(env, dict) else {}

    def write_json(self, name: str, obj: Any) -> None:
        write_atomic(self.dir / name, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def read_json(self, name: str, quiet: bool = False) -> Any:
        """The parsed file, None when it does not exist; with `quiet`, None for a half-written
        or hand-broken file too (metadata must never cost the records)."""
        path = self.dir / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            if quiet:
                return None
            raise


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader, or a writer killed mid-way, sees the old file or
    the new one, never half of one. The file gets the mode the umask gives new files (mkstemp
    alone would leave every result readable by its owner only). An existing path that is not a
    regular file (a device, a FIFO, a folder) is refused: a rename would replace it."""
    ensure_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def ensure_replaceable(path: Path) -> None:
    """Raise OSError unless `path` is absent or a regular file: an atomic write renames over the
    target, and renaming over /dev/null or a FIFO would replace it (root may)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder, not a file", str(path))
    if path.exists() and not path.is_file():
        raise OSError(errno.EEXIST, "not a regular file (a device or a FIFO), so it is not replaced", str(path))


def _umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status); elsewhere set
    and put back at once."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def find_runs(path: Path | str) -> list[Path]:
    """Run folders at or below `path` (a run folder, a matrix folder or a results root)."""
    path = Path(path)
    if (path / RECORDS).exists():
        return [path]
    return sorted(p.parent for p in path.glob(f"**/{RECORDS}"))


def load_records(path: Path | str) -> list[Record]:
    return [r for run in find_runs(path) for r in RunFolder(run).records()]
