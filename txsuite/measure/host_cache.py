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

from txsuite.config.cache_dir import CacheWarning, resolve_cache_dir  # noqa: F401 - CacheWarning for callers
from txsuite.config.cache_dir import cache_warning as warn


def cache_dir() -> Path:
    return resolve_cache_dir()


def locked_update(file_name: str, update: Callable[[dict[str, Any]], Any]) -> Any:
    """Call update(cache) on the contents of cache_dir()/file_name under its file lock, write the
    cache back if update changed it, and return what update returned.

    The cache is advisory: a file that is not a JSON mapping (torn by a killed writer, edited,
    of an older layout), or whose entries `update` cannot read (it raises TypeError, KeyError,
    ValueError or AttributeError on them), is named in a CacheWarning and replaced by an empty
    cache; a cache that cannot be locked or written (a read-only folder, a path that is a file)
    is warned about and left alone, and `update` runs on what could be read."""
    path = cache_dir() / file_name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "w")
    except OSError as exc:
        warn(path, f"cannot be locked ({exc.strerror or exc})", "measuring without keeping the result")
        return _update(path, _read(path)[0], update)[0]
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one measurer at a time; others then read its result
        except OSError as exc:  # a file system without locks: measure, as a lone cell would
            warn(path, f"cannot be locked ({exc.strerror or exc})", "it is used without a lock")
        cache, damaged = _read(path)
        before = json.dumps(cache, sort_keys=True)
        result, cache, rebuilt = _update(path, cache, update)
        if damaged or rebuilt or json.dumps(cache, sort_keys=True) != before:
            tmp = path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
                os.replace(tmp, path)
            except OSError as exc:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                warn(path, f"cannot be written ({exc.strerror or exc})", "the result is used but not kept")
    return result


def _read(path: Path) -> tuple[dict[str, Any], bool]:
    """(the cache file's mapping, False); ({}, True) with a warning for a file that is there but
    not a JSON mapping (to be rewritten); ({}, False) when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, False
    except (OSError, UnicodeDecodeError) as exc:
        warn(path, f"cannot be read ({getattr(exc, 'strerror', None) or exc})", "it is ignored")
        return {}, False
    try:
        cache = json.loads(text)
    except ValueError:
        warn(path, "is not valid JSON (a writer was killed, or it was edited)", "it is ignored and rewritten")
        return {}, True
    if not isinstance(cache, dict):
        warn(path, f"holds a JSON {type(cache).__name__}, not a mapping", "it is ignored and rewritten")
        return {}, True
    return cache, False


def _update(path: Path, cache: dict[str, Any], update: Callable[[dict[str, Any]], Any]
            ) -> tuple[Any, dict, bool]:
    """(update(cache), the cache it changed, whether it was rebuilt): entries update cannot read
    are thrown away (warned) and update runs again on an empty cache, so a second failure is
    update's own."""
    try:
        return update(cache), cache, False
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        if not cache:
            raise
        warn(path, f"holds entries of another shape ({type(exc).__name__}: {exc})", "it is ignored and rewritten")
    cache = {}
    return update(cache), cache, True


def measured_once(file_name: str, key: str, measure: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """(entry, cached): the entry stored under `key` in cache_dir()/file_name, or the one
    `measure()` returns, stored with its time (`measured_at`) before it is returned."""
    def update(cache: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        entry = cache.get(key)
        if isinstance(entry, dict) and "measured_at" in entry:  # what this function stores
            return entry, True
        if entry is not None:
            warn(cache_dir() / file_name, f"entry {key!r} is {type(entry).__name__} without its measured_at, "
                                          f"not one this cache stores", "it is measured again")
        cache[key] = {**measure(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return cache[key], False
    return locked_update(file_name, update)
