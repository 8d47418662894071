"""Where txsuite keeps what it builds or measures once per host (L0): tokenizers, tokenized
corpora, cleaned corpus texts, the matmul peaks, the machine-state probe's best time, the attention
and linear kernel choices."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

CACHE_ENV_VAR = "TXSUITE_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/txsuite"


def resolve_cache_dir(cache_dir: Path | str | None = None) -> Path:
    """The explicit directory, else $TXSUITE_CACHE (when set and not empty), else
    ~/.cache/txsuite. Not created here."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR
    return Path(cache_dir).expanduser()


class CacheWarning(UserWarning):
    """A cache file that could not be used (of another shape, unreadable, unwritable): named,
    ignored and, where it can be, rewritten. The cache is advisory: a cell never fails for it."""


def cache_warning(path: Path | str, problem: str, action: str) -> None:
    """Warn (CacheWarning) that the cache file `path` has `problem`, and what is done instead."""
    # one line, without txsuite's source line under it (as the records reader warns)
    warnings.warn_explicit(f"txsuite cache {path}: {problem}; {action}", CacheWarning, filename="<txsuite>",
                           lineno=0, module="txsuite")
