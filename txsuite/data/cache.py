"""Where derived data lives (trained tokenizers, token arrays) and how it is written safely.

Only results that cost real time to recompute are cached: reading the corpora takes well under
a second (docs/measurements.md, "Data"), but training a BPE
vocabulary takes seconds and encoding a corpus with it one to several seconds more.
Entries are keyed by content hashes, so a stale entry can never be picked up; they are written
to a temporary file and renamed into place, so concurrent cells never see a torn file.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from txsuite.config.cache_dir import cache_warning
from txsuite.config.cache_dir import resolve_cache_dir  # noqa: F401 - re-exported for data's users


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` then rename the temporary file onto `path` (same directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; cache entries are ordinary shared files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cache_write(path: Path, write: Callable[[Path], None]) -> bool:
    """atomic_write into the cache, which is advisory: a folder that cannot be written (read-only,
    a path that is a file, a full disk) is named in a CacheWarning and the entry is not kept.
    Returns whether it was written."""
    try:
        atomic_write(path, write)
        return True
    except OSError as exc:
        cache_warning(path, f"cannot be written ({exc.strerror or exc})", "the result is used but not kept")
        return False
