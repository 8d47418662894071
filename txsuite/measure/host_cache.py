"""Figures measured once per host and kept (the matmul peak, the attention kernel choice).

One JSON file per kind under the txsuite cache folder ($TXSUITE_CACHE, default
~/.cache/txsuite), keyed by what the figure depends on (device model, torch version, threads,
dtype, shape). Concurrent cells take a file lock: the first measures, the others then read its
result instead of measuring on a machine the first one is busy on.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from txsuite.config.cache_dir import resolve_cache_dir


def cache_dir() -> Path:
    return resolve_cache_dir()


def locked_update(file_name: str, update: Callable[[dict[str, Any]], Any]) -> Any:
    """Call update(cache) on the contents of cache_dir()/file_name under its file lock, write the
    cache back if update changed it, and return what update returned. An unreadable file (torn
    by a killed writer) counts as empty: every entry can be measured again."""
    path = cache_dir() / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one measurer at a time; others then read its result
        try:
            cache = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            cache = {}
        before = json.dumps(cache, sort_keys=True)
        result = update(cache)
        if json.dumps(cache, sort_keys=True) != before:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            os.replace(tmp, path)
    return result


def measured_once(file_name: str, key: str, measure: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """(entry, cached): the entry stored under `key` in cache_dir()/file_name, or the one
    `measure()` returns, stored with its time (`measured_at`) before it is returned."""
    def update(cache: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if key in cache:
            return cache[key], True
        cache[key] = {**measure(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return cache[key], False
    return locked_update(file_name, update)
