"""A run folder: where a run's records, metadata and per-cell files live, and the one way to
read and write them (L1). The runner writes through it; the report and the guard read
through it.

Layout: <results-dir>/<matrix>/<run id>/
    records.jsonl        one JSON record per finished cell repetition (a retried one: its last line)
    matrix.json          the resolved matrix (cells, axes, guard) this run executed (RunMeta)
    env.json             the host's environment fingerprint
    cells/<cell id>/r<repeat>/   per-cell config, result and log

Nothing in a run folder is written through a symbolic link: files are opened with O_NOFOLLOW
in a folder opened with O_NOFOLLOW, the cell folders are checked before each repetition, and
the run's writer refuses a folder that holds a link anywhere (UnsafeRunFolder), so that a link
planted there cannot make txsuite overwrite, truncate or create anything outside it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from txsuite.config.record import Record

RECORDS = "records.jsonl"
REJECTED = "records.rejected.jsonl"  # torn last lines an append set aside, kept verbatim
META = "matrix.json"
ENV = "env.json"
# A longer line of records.jsonl is not read (skipped with a warning, never held in memory): a
# record of a million steps' times and losses is tens of MB.
MAX_LINE_BYTES = 256 * 2**20
FINAL = ("ok", "skipped")  # a record of another status may be replaced by a retry (--retry-failed)


class RecordsWarning(UserWarning):
    """A line of records.jsonl that is not a record: named by file and line, then skipped; or
    lines that repeat a (cell, repeat) already read: counted, the last one kept."""


def warn(message: str, category: type[Warning] = RecordsWarning) -> None:
    """Emit a warning about the user's files as one line on stderr, `<txsuite>:0: Category:
    message`: a warning issued from txsuite's code would also print the line of txsuite's source
    that issued it, which tells the user nothing. Shown once per process, as a warning is."""
    warnings.warn_explicit(message, category, filename="<txsuite>", lineno=0, module="txsuite", registry=_SHOWN)


_SHOWN: dict = {}  # warnings.warn's once-per-message registry, for warn()


class RunInUse(Exception):
    """Another process is writing this run (its lock names it); one paragraph for the user."""


class UnsafeRunFolder(RunInUse):
    """A run folder where txsuite would write through a symbolic link (or into something that is
    not a regular file): refused, one paragraph naming the path. A RunInUse, so that every caller
    that refuses a busy run (the CLI: exit 2) refuses this one too."""


def _refused_link(path: Path) -> UnsafeRunFolder:
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:
        target = ""
    return UnsafeRunFolder(
        f"{path} is a symbolic link{target} inside a run folder: txsuite writes there and never through a "
        f"link, so that nothing it writes lands outside the results folder. Remove the link (a run folder "
        f"copied with its links: copy it again with `cp -rL`), or give another --run-id.")


def _refuse_link(path: Path) -> None:
    """UnsafeRunFolder if `path` is a symbolic link; nothing if it is anything else or absent."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise _refused_link(path)


def open_in_run(directory: Path | str, name: str, flags: int, mode: int = 0o666) -> int:
    """os.open of `name` in `directory` without following a link at either (O_NOFOLLOW on both,
    the file opened relative to the folder's descriptor), refusing what is not a regular file (a
    FIFO or a device: O_NONBLOCK, so opening one never hangs). UnsafeRunFolder names the path."""
    directory = Path(directory)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and directory.is_symlink():
            raise _refused_link(directory) from None
        raise
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refused_link(directory / name) from None
        raise
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeRunFolder(f"{directory / name} is not a regular file (a FIFO, a device or a socket): txsuite "
                              f"writes a run's records, locks and metadata only into regular files. Remove it, "
                              f"or give another --run-id.")
    return fd


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
        """Take the lock, then check the folder for links (RunFolder.check_no_links): the writer
        refuses a run folder where a link would redirect what it writes."""
        import socket
        from datetime import datetime

        RunFolder(self.path.parent).create()
        fh = os.fdopen(open_in_run(self.path.parent, self.NAME, os.O_RDWR | os.O_CREAT), "r+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read(1000).strip() or "another process"
            fh.close()
            raise RunInUse(f"run {self.path.parent} is in use by {holder}: one runner writes a run at a time. "
                           f"Wait for it to finish (it then resumes nothing twice), or give another --run-id.") from None
        try:
            RunFolder(self.path.parent).check_no_links()
        except BaseException:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
            raise
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

    @classmethod
    def holder(cls, run_dir: Path | str) -> str | None:
        """Who holds the run's lock right now (its line: pid, host, since), or None when no
        process does: a reader (e.g. `txsuite baseline`) can refuse a run still being written."""
        try:
            fd = os.open(Path(run_dir) / cls.NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # absent (never run here) or a link (not a lock txsuite took)
            return None
        with os.fdopen(fd, "r", errors="replace") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return fh.read(1000).strip() or "another process"
            fcntl.flock(fh, fcntl.LOCK_UN)
            return None


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
    repeats: int | None = None  # with `detect`, the rounds that always ran
    seeds: int | None = None
    max_repeats: int | None = None  # `repeats: {min, max, detect}`: the most rounds the runner could add
    detect: float | None = None  # ... while the rounds could not detect this tokens/s gap (0.15: 15 %)
    detected: str | None = None  # ... and what the rounds run detect, in words
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
    """One run folder. Safe against kill -9: an append adds one line and fsyncs it (a line cut
    short by the kill is the torn last line that readers skip and the next append sets aside),
    so appending costs the same at the 20th record as at the 20,000th."""

    def __init__(self, run_dir: Path | str):
        self.dir = Path(run_dir)

    @property
    def records_path(self) -> Path:
        return self.dir / RECORDS

    def exists(self) -> bool:
        return self.records_path.exists()

    def cell_dir(self, cell_id: str, repeat: int) -> Path:
        """<run>/cells/<cell id>/r<repeat>, checked before a repetition writes into it: neither it,
        nor a folder on the way, nor anything directly in it is a symbolic link (UnsafeRunFolder),
        so that its cell.json, log.txt, result.json and checkpoint land in the run folder."""
        path = self.dir / "cells" / cell_id / f"r{repeat}"
        for part in (self.dir, self.dir / "cells", path.parent, path):
            _refuse_link(part)
        if path.is_dir():
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        raise _refused_link(Path(entry.path))
        return path

    def create(self) -> None:
        _refuse_link(self.dir)  # mkdir(exist_ok) accepts a link to a folder: the run would write there
        self.dir.mkdir(parents=True, exist_ok=True)
        _refuse_link(self.dir)

    def check_no_links(self) -> None:
        """UnsafeRunFolder, naming the first, if the run folder is or holds a symbolic link at any
        depth (links are not followed). The run's writer checks this when it takes the run
        (RunLock): every file and folder in a run folder is one txsuite writes or may write."""
        _refuse_link(self.dir)
        folders = [self.dir] if self.dir.is_dir() else []
        while folders:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        raise _refused_link(Path(entry.path))
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)

    # --- records -----------------------------------------------------------------------------
    @contextmanager
    def _lock(self) -> Iterator[None]:
        # Serialises appenders (threads of one runner, or any two processes); released when the
        # process dies.
        self.create()
        with os.fdopen(open_in_run(self.dir, ".lock", os.O_RDWR | os.O_CREAT), "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def append(self, record: Record) -> None:
        """Append one record: one line, written with one write() under the file lock, then
        fsynced; O(1) whatever the file's size. A record for a (cell, repeat) already stored with
        a status other than ok/skipped is a retry (--retry-failed): it is appended too, and
        readers keep the last line of each (cell, repeat). A torn last line left by a writer
        killed mid-write is set aside first (to records.rejected.jsonl, verbatim), so that the new
        line never joins it."""
        line = (record.to_json() + "\n").encode()
        with self._lock():
            fd = open_in_run(self.dir, RECORDS, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    self._mend_torn_tail(fd, size)
                _write_all(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _mend_torn_tail(self, fd: int, size: int) -> None:
        """The file does not end with a newline: its last line was cut short (a writer killed
        mid-write, a full disk) or written by hand without one. A line that reads as a record
        gets its newline; any other moves to records.rejected.jsonl, verbatim, and is cut off."""
        start = size
        while start > 0:  # back to the last newline, a chunk at a time
            chunk = os.pread(fd, min(start, 1 << 20), start - min(start, 1 << 20))
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                start = start - len(chunk) + cut + 1
                break
            start -= len(chunk)
        if size - start <= MAX_LINE_BYTES:
            try:
                Record.from_json(os.pread(fd, size - start, start).decode("utf-8", "replace"))
                _write_all(fd, b"\n")
                return
            except (ValueError, TypeError, KeyError, AttributeError):
                pass
        out = open_in_run(self.dir, REJECTED, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            for offset in range(start, size, 1 << 20):
                _write_all(out, os.pread(fd, min(1 << 20, size - offset), offset))
            _write_all(out, b"\n")
            os.fsync(out)
        finally:
            os.close(out)
        os.ftruncate(fd, start)
        os.fsync(fd)

    def records(self) -> list[Record]:
        """Every record of the run, one per (cell, repeat): the last line of each. A line that is
        not a record is skipped with a warning (RecordsWarning) naming the file and the line: a
        half-written last line (the run was copied mid-write, or the disk filled) so that its cell
        runs again on resume; any other one (malformed, longer than MAX_LINE_BYTES, nested too
        deeply, a metric that is not a finite number in its range) so that the rest of the run
        still reads. Lines that repeat a (cell, repeat) are counted in one warning, except a retry
        of a repetition that was not ok (see append)."""
        records, rejected, repeated = self._read()
        for n, _, problem in rejected:
            warn(f"{self.records_path}, line {n}: {problem}; skipped")
        if repeated:
            more = f" and {len(repeated) - 1} more line{'s' if len(repeated) > 2 else ''}" if len(repeated) > 1 else ""
            warn(f"{self.records_path}, line {repeated[0]}{more}: a (cell, repeat) already recorded, again (a records "
                 f"file concatenated or copied into itself?); the last line of each (cell, repeat) is kept, "
                 f"{len(repeated)} dropped, so that no repetition counts twice")
        return records

    def _read(self) -> tuple[list[Record], list[tuple[int, str, str]], list[int]]:
        """(records: the last line of each (cell, repeat); [(line number, its first 200 characters,
        problem)] of the lines that are not records; the numbers of the lines that repeated a (cell,
        repeat) other than as a retry). Reads line by line, each at most MAX_LINE_BYTES into memory."""
        try:
            fd = os.open(self.records_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return [], [], []
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file (a FIFO or a device), so it is not read",
                              str(self.records_path))
            by_key: dict[tuple[str, int], Record] = {}
            lines_of: dict[tuple[str, int], set[int]] = {}  # key -> hashes of the lines read for it
            rejected: list[tuple[int, str, str]] = []
            repeated: list[int] = []
            for n, line, whole in _lines(fh):
                if line is None:
                    rejected.append((n, "", f"not a txsuite result record (longer than {MAX_LINE_BYTES:,} bytes, "
                                            f"so not read)"))
                    continue
                if not line.strip():
                    continue
                try:
                    record = Record.from_json(line)
                except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError) as exc:
                    problem = ("a half-written last line (its cell will run again on resume)" if not whole
                               else f"not a txsuite result record ({type(exc).__name__}: {_short(exc)})")
                    rejected.append((n, line[:200], problem))  # a prefix: a hostile line may be huge
                    continue
                key, digest = record.key, hash(line.rstrip("\n"))
                earlier = by_key.pop(key, None)
                seen = lines_of.setdefault(key, set())
                if earlier is not None and (earlier.status in FINAL or digest in seen):
                    repeated.append(n)  # a retry replaces a repetition that was not ok by a new line, never by a copy
                seen.add(digest)
                by_key[key] = record  # re-inserted: the last line's place, as a replaced record had
        return list(by_key.values()), rejected, repeated

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
        _refuse_link(self.dir)  # the rename replaces a link at `name` itself, never its target
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


def _lines(fh) -> Iterator[tuple[int, str | None, bool]]:
    """(line number, text or None for a line longer than MAX_LINE_BYTES, whether it ended with a
    newline) of a binary file, holding at most one line of MAX_LINE_BYTES in memory."""
    n = 0
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        n += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # the rest of the line, unread
                raw = fh.readline(1 << 20)
            yield n, None, bool(raw)
            continue
        yield n, raw.decode("utf-8", "replace"), raw.endswith(b"\n")


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
