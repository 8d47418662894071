"""Matrix files -> validated cells (L1).

Expansion order: load `extends` chain (base first) -> deep-merge -> validate every key ->
cartesian product of `axes` over `fixed` -> drop `exclude` matches -> add one cell per
`include` entry -> resolve each cell against the host (device, host-dependent skips).

Every problem is a `MatrixError` naming the file, the line, the key and what is allowed.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from txsuite.config import numbers, spec
from txsuite.config.estimate import approx_vocab, estimate_memory
from txsuite.config.host import Host, host_problems, memory_problem
from txsuite.config.metrics import GUARDABLE
from txsuite.config.spec import CellConfig
from txsuite.config.yamlsource import YamlError, load_located

TOP_LEVEL_KEYS = {
    "name": "the matrix name (letters, digits, - and _), used for the results folder",
    "description": "free text",
    "extends": "a matrix file (or list of files) merged first, relative to this file",
    "fixed": "settings shared by every cell",
    "axes": "dotted key -> list of values; cells are their cartesian product",
    "exclude": "list of mappings; drops cells matching every key of an entry",
    "include": "list of mappings; each adds one cell (overrides of fixed)",
    "repeats": "timing repetitions of each cell: an integer >= 1, or {min: 2, max: 4, detect: 15%} to add rounds "
               "(up to max) while the rounds so far cannot detect that tokens/s gap against the reference cell",
    "seeds": "training seeds per cell, each changing initialisation and data order (integer >= 1; a seed's run "
             "is also a timing repetition)",
    "guard": "metric -> allowed change, e.g. {tokens_per_s: -5%}",
    "reference": "mapping of settings naming the report's reference cell (ratios and deltas are against it)",
    "constant": "derived quantities that must be equal in every cell: tokens_per_step, samples_per_step, "
                "train_tokens",
    "timeout_s": "seconds one cell repetition may run before it is killed",
    "search": "how the sweep spends its runs: grid (every cell, every repetition) or pareto (a short probe of "
              "every cell, then full repetitions only for cells that can still reach the front; docs/predictions.md)",
}
# `search:` values: grid runs every cell in full; pareto is the adaptive sweep (txsuite/run/search.py)
SEARCH_MODES = ("grid", "pareto")
CONSTANT_QUANTITIES = ("tokens_per_step", "samples_per_step", "train_tokens")
GUARD_METRICS = GUARDABLE
# Old spellings of top-level keys, still accepted: `baseline:` named the report's reference
# cell before "baseline" came to mean only the guard's baseline file.
TOP_LEVEL_ALIASES = {"baseline": "reference"}
DEFAULT_MAX_CELLS = 500  # more than this needs an explicit --yes
DEFAULT_MAX_REPETITIONS = 5000  # cells x repeats beyond this needs --yes too
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_NAME_LENGTH = 100  # a matrix name or run id is a folder name, inside paths of their own
# What txsuite names inside a run or results folder (txsuite.results.folder, runner, ab): a run id
# or matrix name equal to one would make its folder read as a run (compared without case: macOS)
RESERVED_NAMES = frozenset({"records.jsonl", "records.rejected.jsonl", "matrix.json", "env.json", "cells",
                            "submitit", "ab.json", "ab"})


def name_problem(name: object) -> str | None:
    """Why `name` cannot name a matrix or a run (a folder inside --results-dir), or None: letters,
    digits, '.', '_' and '-', starting with a letter or digit (so never '.', '..', a path or an
    absolute path), at most MAX_NAME_LENGTH characters."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        return "must be letters, digits, '-', '_' or '.', starting with a letter or digit (it names a folder)"
    if len(name) > MAX_NAME_LENGTH:
        return f"is {len(name)} characters long; at most {MAX_NAME_LENGTH} (it names a folder)"
    if name.casefold() in RESERVED_NAMES:
        return (f"is a name txsuite gives its own files and folders ({', '.join(sorted(RESERVED_NAMES))}); "
                f"a run or matrix so named (it names a folder) would be taken for one of them: give another name")
    return None


class MatrixError(Exception):
    """A user error in a matrix: printed as one paragraph, exit code 2."""

    def __init__(self, file: str, line: int | None, key: str | None, problem: str,
                 allowed: str | None = None):
        problem = " ".join(str(problem).split())  # one paragraph, whatever the source message held
        self.file, self.line, self.key, self.problem, self.allowed = file, line, key, problem, allowed
        parts = [file + (f", line {line}" if line else "")]
        if key:
            parts.append(f"key '{key}'")
        text = ", ".join(parts) + f": {problem}"
        if allowed:
            text += f" Allowed: {allowed}."
        super().__init__(text)


class MatrixTooLarge(MatrixError):
    pass


@dataclass
class PlannedCell:
    """A cell of the matrix as the plan resolved it: its configuration, the label the user
    reads, where in the file it came from, and why this host will skip it (None: it runs)."""
    config: CellConfig
    label: str
    origin: str  # "axes" or "include[i]"
    skip_reason: str | None = None

    @property
    def cell_id(self) -> str:
        return self.config.cell_id()

    @property
    def uses_one_gpu(self) -> bool:
        """A single-process CUDA cell: an executor may run several of these side by side."""
        return self.config.device == "cuda" and self.config.parallel.world_size == 1


@dataclass
class Matrix:
    name: str
    description: str
    source: str
    cells: list[PlannedCell]
    axes: dict[str, list[Any]]
    fixed: dict[str, Any]
    repeats: int = 1  # with `detect`: the rounds always run, the first stage
    seeds: int = 1
    max_repeats: int | None = None  # with `detect`: the most rounds the runner adds up to
    detect: float | None = None  # the tokens/s gap to the reference the rounds must detect (0.15: 15 %)
    guard: dict[str, str] = field(default_factory=dict)
    reference: str | None = None  # cell id of the report's reference cell
    timeout_s: float | None = None
    notes: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # `key=value` from the command line, as typed
    search: str = "grid"  # one of SEARCH_MODES

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "source": self.source,
            "overrides": self.overrides,
            "axes": self.axes, "fixed": self.fixed, "repeats": self.repeats, "seeds": self.seeds,
            "repetitions": self.repetitions, "guard": self.guard,
            **({"max_repeats": self.max_repeats, "detect": self.detect} if self.detect is not None else {}),
            "reference": self.reference, "timeout_s": self.timeout_s, "notes": self.notes,
            "search": self.search,
            "cells": [{"cell_id": c.cell_id, "label": c.label, "origin": c.origin,
                       "skip_reason": c.skip_reason, "config": c.config.to_dict()} for c in self.cells],
        }

    @property
    def repetitions(self) -> int:
        """Runs of each cell: every seed once, and at least `repeats` for timing (repetition r
        trains with seed r % seeds)."""
        return max(self.repeats, self.seeds)

    @property
    def most_repetitions(self) -> int:
        """The most runs of a cell: `repetitions`, or with `detect` the rounds the runner may add."""
        return max(self.max_repeats or self.repeats, self.repetitions)

    def fingerprint(self) -> str:
        """Changes whenever the set of cells, repeats, seeds or the search changes (decides whether
        to resume). A grid sweep hashes what it always did, so runs written before `search:`
        existed resume as before."""
        import hashlib
        ids = sorted(c.cell_id for c in self.cells)
        shape = ([ids, self.repeats, self.seeds] + ([self.search] if self.search != "grid" else [])
                 + ([self.max_repeats, self.detect] if self.detect is not None else []))
        return hashlib.sha1(json.dumps(shape).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Loading and merging
# ---------------------------------------------------------------------------------------------

class _Source:
    """The merged matrix document plus, for every key path, the file and line it came from."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.where: dict[tuple, tuple[str, int]] = {}
        # each file's own `fixed` block, base first: a later file's setting overrides an earlier
        # one's, whatever the spelling (nested or dotted); within one file a setting is set once
        self.fixed_layers: list[Any] = []

    def locate(self, *path: Any) -> tuple[str, int | None]:
        for n in range(len(path), 0, -1):
            if path[:n] in self.where:
                return self.where[path[:n]]
        return self.where.get((), ("<matrix>", None))

    def error(self, path: tuple, problem: str, allowed: str | None = None, key: str | None = None):
        file, line = self.locate(*path)
        return MatrixError(file, line, key if key is not None else _dotted(path), problem, allowed)


    def setting_error(self, where: tuple, dotted: str, problem: str, allowed: str | None = None):
        """An error about a resolved setting: point at the line that set it (in the include
        entry, the axis or `fixed`), or at the section if the value is a default."""
        family, _, leaf = dotted.partition(".")
        spellings = [(family, leaf), (dotted,), (family,)] if leaf else [(family,)]
        for section in (where, (COMMAND_LINE,), ("axes",), ("fixed",)):
            for spelling in spellings:
                if section + spelling in self.where:
                    return self.error(section + spelling, problem, allowed, key=dotted)
        return self.error(where, problem, allowed, key=dotted)


def _dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (("." if out else "") + str(p))
    return out


def _load_chain(path: Path, chain: tuple[Path, ...] = ()) -> _Source:
    # errors name the file as the user typed it: /dev/stdin, not /proc/<pid>/fd/pipe:[...]
    # and the file is read through that name (a pipe's resolved name cannot be opened)
    file, typed = _display(path), path
    path = path.resolve() if path.exists() else path
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise MatrixError(str(chain[-1]), None, "extends", f"extends forms a cycle: {cycle}.")
    try:
        data, lines = load_located(typed)
    except YamlError as exc:
        raise MatrixError(file, exc.line, None, exc.message) from None
    except ValueError as exc:  # an integer of more than 4,300 digits, which Python will not read
        raise MatrixError(file, None, None, f"a value in it cannot be read as a number: "
                                            f"{str(exc).split(';')[0]}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MatrixError(file, 1, None, f"a matrix must be a YAML mapping, got {_kind(data)}.",
                          "top-level keys " + ", ".join(TOP_LEVEL_KEYS))
    source = _Source()
    extends = data.get("extends")
    if extends is not None:
        bases = [extends] if isinstance(extends, str) else extends
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise MatrixError(file, lines.get(("extends",)), "extends",
                              f"expected a file name or a list of file names, got {_kind(extends)}.")
        for base in bases:
            base_path = (path.parent / base)
            if not base.strip() or not base_path.exists():
                raise MatrixError(file, lines.get(("extends",)), "extends",
                                  f"the base matrix '{base}' does not exist (looked at {base_path}).")
            if not base_path.is_file():
                raise MatrixError(file, lines.get(("extends",)), "extends",
                                  f"'{base}' is {'a folder' if base_path.is_dir() else 'not a regular file'}, "
                                  f"not a matrix file (looked at {base_path}).")
            parent = _load_chain(base_path, chain + (path,))
            _merge_into(source, parent.data, parent.where)
            source.fixed_layers.extend(parent.fixed_layers)
    where = {k: (file, v) for k, v in lines.items()}
    where[()] = (file, 1)
    _merge_into(source, {k: v for k, v in data.items() if k != "extends"}, where)
    if data.get("fixed") is not None:
        source.fixed_layers.append(data["fixed"])
    return source


def _merge_into(source: _Source, data: dict, where: dict) -> None:
    """Deep-merge mappings; a list or scalar in the child replaces the base's value."""
    def merge(dst: dict, src: dict) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = copy.deepcopy(v)
    merge(source.data, data)
    source.where.update(where)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if (isinstance(value, (list, dict)) and not value) or (type(value) is int and abs(value) >= 10**15):
        return numbers.shown(value)  # "an empty list"; a huge integer in a few characters
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------
# Validation of cell settings (fixed, axis values, include/exclude entries)
# ---------------------------------------------------------------------------------------------

def _normalise(src: _Source, path: tuple, overrides: Any) -> dict[str, Any]:
    """A settings mapping (nested and/or dotted keys) -> flat {dotted leaf: value}, validated."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise src.error(path, f"expected a mapping of settings, got {_kind(overrides)}.")
    flat: dict[str, Any] = {}
    origins: dict[str, tuple] = {}
    for key, value in overrides.items():
        _flatten_setting(src, path + (key,), str(key), value, flat, origins)
    return flat


def _flatten_setting(src: _Source, path: tuple, dotted: str, value: Any, out: dict[str, Any],
                     origins: dict[str, tuple] | None = None, nested: bool = False) -> None:
    """One setting (a dotted key, or a family mapping) into `out`. `origins` remembers where each
    key was set in this mapping: setting it twice (nested and dotted, or through an alias) is an
    error, since YAML would silently keep one."""
    origins = {} if origins is None else origins
    written = dotted  # errors name the key as the user wrote it
    family, _, leaf = dotted.partition(".")
    if dotted in spec.ALIASES:  # an old spelling: the value lands under today's key
        dotted, convert = spec.ALIASES[dotted]
        value = convert(value)
        family, _, leaf = dotted.partition(".")
        src.where.setdefault(_canonical_path(path, dotted), src.locate(*path))
    if family not in spec.FAMILIES and family not in spec.SCALAR_FAMILIES:
        raise src.error(path, f"unknown setting '{family}'{_suggest(family, _families())}.",
                        ", ".join(_families()), key=dotted)
    shorthand = spec.SHORTHANDS.get(family)
    if shorthand and not leaf and isinstance(value, shorthand[0]):
        _, key, convert = shorthand  # `model: tiny` is short for `model: {preset: tiny}`
        value = {key: convert(value)}
    if family in spec.FAMILIES and not leaf:
        if not isinstance(value, dict):
            raise src.error(path, f"'{family}' takes a mapping of its settings, got {_kind(value)}.",
                            ", ".join(spec.keys_of(family)), key=dotted)
        for k, v in value.items():
            _flatten_setting(src, path + (k,), f"{family}.{k}", v, out, origins, nested=True)
        return
    if family in spec.SCALAR_FAMILIES and leaf:
        raise src.error(path, f"'{family}' is a single value and has no sub-key '{leaf}'.",
                        ", ".join(map(str, spec.SCALAR_FAMILIES[family])), key=dotted)
    if family in spec.FAMILIES and "." in leaf:
        raise src.error(path, f"'{family}.{leaf.split('.')[0]}' has no sub-keys.", key=dotted)
    if family in spec.FAMILIES and leaf not in spec.keys_of(family):
        keys = spec.keys_of(family)
        raise src.error(path, f"'{family}' has no setting '{leaf}'{_suggest(leaf, keys)}.",
                        ", ".join(f"{family}.{k}" for k in keys), key=dotted)
    spelling = f"{family}: {{{leaf}: ...}}" if nested else written
    if dotted in origins:
        first_path, first_spelling = origins[dotted]
        first = src.locate(*first_path)[1]
        raise src.error(path, f"'{dotted}' is set twice in one mapping: as '{first_spelling}'"
                              f"{f' (line {first})' if first else ''} and as '{spelling}'; YAML would keep one "
                              f"silently. Keep one.", key=written)
    origins[dotted] = (path, spelling)
    out[dotted] = _check_value(src, path, dotted, value, shown=written)


def _canonical_path(path: tuple, dotted: str) -> tuple:
    """The key path an aliased setting would have had under today's name, in the same section
    (so errors about it point at the line where the old spelling was written)."""
    section = path[:-1] if len(path) > 1 and "." in str(path[-1]) else path[:-2]
    return section + (dotted,)


def _families() -> list[str]:
    return list(spec.FAMILIES) + list(spec.SCALAR_FAMILIES)


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_value(src: _Source, path: tuple, dotted: str, value: Any, shown: str | None = None) -> Any:
    """`value` for the setting `dotted`, checked against its type and allowed values; errors
    name the key as `shown` (the old spelling of an aliased key)."""
    annotation = str(spec.field_type(dotted))
    key = shown or dotted
    choices = spec.CHOICES.get(dotted)
    if choices is not None:
        ok = any(value == c and type(value) is type(c) for c in choices)
        if not ok:
            allowed = ", ".join(map(_show, choices))
            note = spec.CHOICE_NOTES.get(dotted)
            raise src.error(path, f"{_kind(value)} is not allowed.", f"{allowed} {note}" if note else allowed,
                            key=key)
        return value
    if value in spec.WORDS.get(dotted, ()):
        return value
    nullable = "None" in annotation
    if value is None:
        if nullable:
            return None
        raise src.error(path, "a value is required here (got null).", key=key)
    if annotation.startswith("int"):
        try:  # one check of kind and bounds for every integer (txsuite/config/numbers.py)
            return numbers.integer(value, 1 if dotted in spec.POSITIVE_INTS else 0,
                                   spec.MAXIMA.get(dotted, numbers.INT64_MAX),
                                   spec.MAXIMA_WHY.get(dotted, "beyond what any machine could run"))
        except numbers.NumberProblem as exc:
            raise src.error(path, exc.problem, exc.allowed, key=key) from None
    if annotation.startswith("float"):
        try:
            number = numbers.real(value)
        except numbers.NumberProblem as exc:
            words = " or ".join(spec.WORDS.get(dotted, ()))
            wrong_kind = isinstance(value, bool) or not isinstance(value, (int, float)) or "finite" in exc.problem
            raise src.error(path, f"expected a finite number{' or ' + words if words else ''}, got {_kind(value)}."
                            if wrong_kind else exc.problem, key=key) from None
        if dotted in spec.FRACTIONS and number >= 1:
            raise src.error(path, f"expected a fraction in [0, 1), got {number:g}.", key=key)
        return number
    if annotation.startswith("str"):
        if not isinstance(value, str) or not value:
            raise src.error(path, f"expected text, got {_kind(value)}.", key=key)
        return value
    return value


def _show(choice: Any) -> str:
    if isinstance(choice, bool):
        return "true" if choice else "false"
    return str(choice)


# ---------------------------------------------------------------------------------------------
# Expansion
# ---------------------------------------------------------------------------------------------

def load_matrix(path: Path | str, host: Host | None = None, device_override: str | None = None,
                max_cells: int | None = DEFAULT_MAX_CELLS,
                check_data: Callable[[Any], None] | None = None,
                overrides: Sequence[str] = ()) -> Matrix:
    """`check_data(DataSpec)` (optional, e.g. txsuite.data.validate_data_spec) raises for data that
    cannot be found on this machine (a missing corpus package, a glob matching no file); the
    error is reported against the matrix line that chose that dataset. `overrides` are
    `key=value` texts from the command line (see `_apply_overrides`)."""
    path = Path(path)
    if not path.exists():
        raise MatrixError(str(path), None, None, "the matrix file does not exist.")
    src = _load_chain(path)
    command_line = _apply_overrides(src, overrides)
    host = host or Host()
    data = src.data
    for key in data:
        if key not in TOP_LEVEL_KEYS and key not in TOP_LEVEL_ALIASES:
            raise src.error((key,), f"unknown top-level key '{key}'{_suggest(str(key), list(TOP_LEVEL_KEYS))}.",
                            ", ".join(TOP_LEVEL_KEYS), key=str(key))
    _apply_top_level_aliases(src)
    file = _display(path)
    name = data.get("name")
    problem = name_problem(name)
    if problem:
        shown = f"the name {name[:60]!r}{'...' if len(name) > 60 else ''}" if isinstance(name, str) else (
            f"every matrix needs a name; got {_kind(name)}, and a name")
        raise MatrixError(file, src.locate("name")[1], "name", f"{shown} {problem}.")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise src.error(("description",), f"expected text, got {_kind(description)}.")

    fixed: dict[str, Any] = {}
    for layer in src.fixed_layers:  # base files first; a later file overrides an earlier one
        fixed.update(_normalise(src, ("fixed",), layer))
    fixed.update(command_line)
    # an axis whose every setting the command line fixes is no axis any more (its labels would lie)
    axes = [(key, values) for key, values in _read_axes(src, data.get("axes"))
            if not set(values[0][1]) <= set(command_line)]
    def repetitions_of(value: Any) -> int:
        return numbers.integer(value, 1, numbers.MAX_REPETITIONS, "the most repetitions of a cell (each is a process)")
    repeats, max_repeats, detect = _read_repeats(src, repetitions_of)
    seeds = _top_level_number(src, "seeds", repetitions_of, 1)
    guard = _read_guard(src, data.get("guard"))
    timeout_s = _top_level_number(src, "timeout_s", _timeout, None)
    search = _read_search(src, data.get("search", "grid"))
    constant = data.get("constant") or []
    if isinstance(constant, str):
        constant = [constant]
    if not isinstance(constant, list) or any(c not in CONSTANT_QUANTITIES for c in constant):
        raise src.error(("constant",), f"expected a list of derived quantities, got {constant!r}.",
                        ", ".join(CONSTANT_QUANTITIES))
    excludes = _read_entries(src, "exclude", data.get("exclude"))
    includes = _read_entries(src, "include", data.get("include"))

    n_product = math.prod(len(v) for _, v in axes) if axes else 1
    if max_cells is not None and n_product + len(includes) > max_cells:
        raise MatrixTooLarge(file, src.locate("axes")[1], "axes",
                             f"the matrix expands to {n_product + len(includes)} cells (more than "
                             f"{max_cells}); pass --yes to run it anyway.")
    most = max_repeats or repeats  # the most rounds that may run
    repetitions = (n_product + len(includes)) * max(most, seeds)
    if max_cells is not None and repetitions > DEFAULT_MAX_REPETITIONS:
        raise MatrixTooLarge(file, src.locate("repeats" if most >= seeds else "seeds")[1],
                             "repeats" if most >= seeds else "seeds",
                             f"{n_product + len(includes)} cells x {max(most, seeds)} "
                             f"{'repeats' if most >= seeds else 'seeds'} are {repetitions:,} cell "
                             f"repetitions (more than {DEFAULT_MAX_REPETITIONS:,}), each a process; pass --yes to "
                             f"run them anyway.")

    cells: list[PlannedCell] = []
    seen: dict[str, PlannedCell] = {}
    notes: list[str] = []
    data_checked: set = set()

    # `device: auto` becomes the host's device here, so exclude entries and cell ids see the
    # device the cell will really run on.
    host_device = "cuda" if host.has_cuda else "cpu"

    def add(flat: dict[str, Any], label: str, origin: str, where: tuple) -> None:
        config = _resolve(src, where, flat, host_device, device_override)
        _reject_problems(src, where, config)
        if check_data is not None and config.data not in data_checked:
            try:
                check_data(config.data)
            except (ValueError, OSError, ImportError) as exc:
                raise src.setting_error(where, "data.dataset", f"{exc}.".replace("..", ".")) from None
            data_checked.add(config.data)
        # a cell that cannot fit this host is skipped with the reason (a value no machine could
        # run was refused above, naming its key, by the spec's MAXIMA)
        cell = PlannedCell(config, label, origin, host_problems(config, host) or _memory_refusal(config, host))
        if cell.cell_id in seen:
            notes.append(f"{origin} ({label}) is identical to cell {cell.cell_id} "
                         f"({seen[cell.cell_id].label}); it is run once.")
            return
        seen[cell.cell_id] = cell
        cells.append(cell)

    for combo in itertools.product(*(values for _, values in axes)) if axes else [()]:
        flat = dict(fixed)
        parts = []
        for (key, _), (value, value_flat) in zip(axes, combo):
            flat.update(value_flat)
            parts.append(f"{key}={_compact(value)}")
        config = _resolve(src, ("axes",), flat, host_device, device_override)
        if any(_matches(config, entry) for entry in excludes):
            continue
        add(flat, " ".join(parts) or "default", "axes", ("axes",))
    for i, entry in enumerate(includes):
        flat = dict(fixed)
        flat.update(entry)
        flat.update(command_line)  # the command line wins over the file, include entries too
        label = "+ " + " ".join(f"{k}={_compact(v)}" for k, v in entry.items())
        add(flat, label, f"include[{i}]", ("include", i))

    if not cells:
        raise MatrixError(file, src.locate("exclude")[1], "exclude",
                          "every cell was excluded; nothing would run.")
    _check_constant(src, constant, cells)
    _check_init_sources(src, cells)
    reference = _read_reference(src, data.get("reference"), cells)
    return Matrix(name=name, description=description, source=file, cells=cells,
                  axes={k: [_compact(v) for v, _ in vals] for k, vals in axes},
                  fixed=fixed, repeats=repeats, seeds=seeds, max_repeats=max_repeats, detect=detect, guard=guard,
                  reference=reference,
                  timeout_s=float(timeout_s) if timeout_s else None, notes=notes, overrides=list(overrides),
                  search=search)


def _read_search(src: _Source, value: Any) -> str:
    """`search:` as one of SEARCH_MODES (a MatrixError at its line otherwise)."""
    if value is None:
        return "grid"
    if not isinstance(value, str) or value not in SEARCH_MODES:
        shown = _kind(value)
        hint = _suggest(value, list(SEARCH_MODES)) if isinstance(value, str) else ""
        raise src.error(("search",), f"{shown} is not a way to search{hint}.",
                        "grid (every cell, every repetition; the default), pareto (probe every cell, then full "
                        "repetitions only for cells that can still reach the front)")
    return value


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):  # a number written as text is not one (the schema says so too)
        raise numbers.NumberProblem(f"expected a number of seconds, got {_kind(value)}.", numbers.SECONDS_ALLOWED)
    return numbers.seconds(value)


def _top_level_number(src: _Source, key: str, check: Callable[[Any], Any], default: Any) -> Any:
    """A top-level number (repeats, seeds, timeout_s) through its check in
    txsuite/config/numbers.py; a problem is a MatrixError at its line."""
    try:
        return check(src.data.get(key, default))
    except numbers.NumberProblem as exc:
        raise src.error((key,), exc.problem, exc.allowed) from None


REPEATS_KEYS = ("min", "max", "detect")
REPEATS_ALLOWED = ("an integer >= 1, or a mapping {min: 2, max: 4, detect: 15%}: at least min rounds, and more, up "
                   "to max, while the rounds so far cannot detect a tokens/s gap of `detect` against the reference "
                   "cell (min >= 2, max >= min, detect a percentage above 0% and below 100%)")


def _read_repeats(src: _Source, repetitions_of: Callable[[Any], int]) -> tuple[int, int | None, float | None]:
    """`repeats:` -> (the rounds that always run, the most with `detect` or None, the gap to
    detect or None): an integer, or {min, max, detect} (txsuite/run/more_rounds.py)."""
    value = src.data.get("repeats", 1)
    if not isinstance(value, dict):
        return _top_level_number(src, "repeats", repetitions_of, 1), None, None
    unknown = [k for k in value if k not in REPEATS_KEYS]
    missing = [k for k in REPEATS_KEYS if k not in value]
    if unknown or missing:
        problem = (f"unknown key '{unknown[0]}'" if unknown else f"'{missing[0]}' is missing")
        raise src.error(("repeats",), f"{problem} in the mapping form of repeats.", REPEATS_ALLOWED)
    try:
        least = numbers.integer(value["min"], 2, numbers.MAX_REPETITIONS,
                                "the most repetitions of a cell (each is a process)")
    except numbers.NumberProblem as exc:
        why = " (one round cannot measure the noise that decides whether to add one)" if (
            isinstance(value["min"], int) and not isinstance(value["min"], bool) and value["min"] < 2) else ""
        raise src.error(("repeats", "min"), exc.problem.rstrip(".") + why + ".", REPEATS_ALLOWED) from None
    try:
        most = numbers.integer(value["max"], least, numbers.MAX_REPETITIONS,
                               "the most repetitions of a cell (each is a process)")
    except numbers.NumberProblem as exc:
        raise src.error(("repeats", "max"), exc.problem, REPEATS_ALLOWED) from None
    text = value["detect"]
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", text) if isinstance(text, str) else None
    gap = float(match.group(1)) / 100.0 if match else None
    if gap is None or not 0.0 < gap < 1.0:
        raise src.error(("repeats", "detect"), f"expected a percentage above 0% and below 100%, got "
                        f"{numbers.shown(text)}.", REPEATS_ALLOWED)
    return least, most, gap


COMMAND_LINE = "<command line>"  # the section of the document that overrides come from
# Top-level keys a `key=value` override may set; the others shape the matrix and live in its file.
OVERRIDABLE_TOP_LEVEL = ("name", "description", "repeats", "seeds", "timeout_s", "search", "guard.<metric>")


def _apply_overrides(src: _Source, overrides: Sequence[str]) -> dict[str, Any]:
    """`key=value` texts from the command line, applied over the file: a top-level key (`repeats=3`,
    `guard.tokens_per_s=-5%`) replaces the file's; a cell setting (`train.steps=3`) is returned as
    flat validated settings that win over `fixed`, the axes and the include entries; a list value
    (`precision=[fp32,bf16]`) makes or replaces an axis. Values are read as YAML scalars, so they
    mean what they would in the file. Errors name the override as typed."""
    src.where[(COMMAND_LINE,)] = ("the command line", None)
    settings: dict[str, Any] = {}
    for text in overrides:
        key, sep, raw = text.partition("=")
        key = key.strip()
        where = ("the command line", None)
        if not sep or not key:
            raise MatrixError(where[0], None, None, f"'{text}' is not a setting: expected KEY=VALUE, "
                              f"e.g. train.steps=3 or precision=bf16.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except (yaml.YAMLError, ValueError):  # ValueError: an integer too long for Python to read
            value = raw
        top, _, rest = key.partition(".")
        if top == "fixed" and rest:  # `fixed.train.steps=3` says what `train.steps=3` says
            key, (top, _, rest) = rest, rest.partition(".")
        if top in TOP_LEVEL_KEYS or top in TOP_LEVEL_ALIASES:
            _override_top_level(src, text, key, value)
            continue
        if isinstance(value, list):  # an axis from the command line
            src.data.setdefault("axes", {})
            if not isinstance(src.data["axes"], dict):
                src.data["axes"] = {}
            src.data["axes"][key] = value
            src.where[("axes", key)] = where
            continue
        src.where[(COMMAND_LINE, key)] = where
        _flatten_setting(src, (COMMAND_LINE, key), key, value, settings, {})
    return settings


def _override_top_level(src: _Source, text: str, key: str, value: Any) -> None:
    top, _, metric = key.partition(".")
    where = ("the command line", None)
    allowed = ", ".join(OVERRIDABLE_TOP_LEVEL) + ", or a cell setting such as train.steps"
    if top == "guard" and metric:
        if not isinstance(src.data.get("guard"), dict):
            src.data["guard"] = {}
        src.data["guard"][metric] = value
        src.where[("guard", metric)] = where
    elif top in OVERRIDABLE_TOP_LEVEL and not metric:
        src.data[top] = value
        src.where[(top,)] = where
    else:
        raise MatrixError(where[0], None, key, f"'{top}' shapes the matrix and cannot be set from the "
                          f"command line; edit the matrix file.", allowed)


def _read_axes(src: _Source, axes: Any) -> list[tuple[str, list[tuple[Any, dict]]]]:
    """-> [(dotted key, [(value as written, flat overrides it implies)])]"""
    if axes is None:
        return []
    if not isinstance(axes, dict):
        raise src.error(("axes",), f"expected a mapping of dotted key -> list of values, got {_kind(axes)}.")
    out = []
    for key, values in axes.items():
        path = ("axes", key)
        if not isinstance(values, list) or not values:
            raise src.error(path, f"an axis needs a non-empty list of values, got {_kind(values)}.")
        parsed = []
        for i, value in enumerate(values):
            flat: dict[str, Any] = {}
            _flatten_setting(src, path + (i,), str(key), value, flat)
            parsed.append((value, flat))
        keys = [json.dumps(f, sort_keys=True, default=str) for _, f in parsed]
        if len(set(keys)) != len(keys):
            raise src.error(path, "the axis lists the same value twice.")
        out.append((str(key), parsed))
    return out


def _read_entries(src: _Source, section: str, entries: Any) -> list[dict[str, Any]]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise src.error((section,), f"expected a list of mappings, got {_kind(entries)}.")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry:
            raise src.error((section, i), f"each {section} entry must be a non-empty mapping of settings, "
                                          f"got {_kind(entry)}.")
        out.append(_normalise(src, (section, i), entry))
    return out


def _read_guard(src: _Source, guard: Any) -> dict[str, str]:
    if guard is None:
        return {}
    if not isinstance(guard, dict):
        raise src.error(("guard",), f"expected a mapping metric -> change, got {_kind(guard)}.")
    out = {}
    for metric, change in guard.items():
        if metric not in GUARD_METRICS:
            raise src.error(("guard", metric), f"cannot guard '{metric}'.", ", ".join(GUARD_METRICS))
        if not isinstance(change, str) or not re.fullmatch(r"[+-]\d+(\.\d+)?%", change.strip()):
            raise src.error(("guard", metric), f"expected a signed percentage like -5% or +10%, "
                                               f"got {_kind(change)}.")
        text = change.strip()
        impossible = numbers.change_problem(-1 if text[0] == "-" else 1, float(text[1:-1]) / 100.0)
        if impossible:
            raise src.error(("guard", metric), f"{text[:12]}{'...' if len(text) > 12 else ''}: {impossible}.",
                            numbers.CHANGE_ALLOWED)
        out[metric] = text
    return out


def init_source(cell: PlannedCell, cells: list[PlannedCell]) -> PlannedCell:
    """The cell whose trained weights `train.init: cell:<selector>` starts from. The selector is
    a cell id, a label, or settings `key=value[,key=value]` that exactly one other cell has.
    ValueError says what is wrong: no match, several, a chain, or weights that would not fit."""
    import yaml
    selector = cell.config.train.init_cell
    others = [c for c in cells if c.cell_id != cell.cell_id]
    found = [c for c in others if selector in (c.cell_id, c.label)]
    if not found and "=" in selector:
        entry = {}
        for part in selector.split(","):
            key, _, text = part.partition("=")
            entry[key.strip()] = yaml.safe_load(text.strip()) if text.strip() else None
        try:
            found = [c for c in others if _matches(c.config, entry)]
        except KeyError as exc:
            raise ValueError(f"train.init {cell.config.train.init!r}: no setting {exc.args[0]!r}") from None
    if len(found) != 1:
        what = "no other cell" if not found else f"{len(found)} cells ({', '.join(c.label for c in found[:3])})"
        raise ValueError(f"train.init {cell.config.train.init!r} matches {what}; it must name exactly one cell of "
                         f"this matrix: its id, its label, or settings key=value[,key=value] that only it has")
    source = found[0]
    if source.config.train.init_cell is not None:
        raise ValueError(f"train.init {cell.config.train.init!r} names a cell that itself starts from another cell; "
                         f"start from a cell trained from scratch or from a checkpoint path")
    a, b = cell.config, source.config
    if a.model != b.model or a.data.seq_len != b.data.seq_len or _vocabulary(a) != _vocabulary(b):
        raise ValueError(f"train.init {cell.config.train.init!r}: that cell's weights do not fit this one (the model "
                         f"shape, data.seq_len and vocabulary must be the same)")
    return source


def _vocabulary(config: CellConfig) -> tuple:
    """What decides the embedding table's rows: bytes for corpora, the alphabet of a synthetic
    task, a BPE learnt from one corpus at one size."""
    d = config.data
    if d.synthetic:
        return ("synthetic", d.dataset, d.symbols)
    return ("byte",) if d.tokenizer == "byte" else ("bpe", d.dataset, d.vocab_size)


def _check_init_sources(src: _Source, cells: list[PlannedCell]) -> None:
    for cell in cells:
        if cell.config.train.init_cell is None:
            continue
        where = ("include", int(cell.origin[8:-1])) if cell.origin.startswith("include[") else ("axes",)
        try:
            source = init_source(cell, cells)
        except ValueError as exc:
            raise src.setting_error(where, "train.init", str(exc), None) from None
        p = source.config.parallel
        if p.pp > 1 or p.engine == "deepspeed":
            raise src.setting_error(where, "train.init", f"cell {source.label!r} is pipelined or runs under DeepSpeed, "
                                                         f"whose weights txsuite does not save", None)


def _read_reference(src: _Source, reference: Any, cells: list[PlannedCell]) -> str | None:
    if reference is None:
        return None
    entry = _normalise(src, ("reference",), reference)
    for cell in cells:
        if _matches(cell.config, entry):
            return cell.cell_id
    raise src.error(("reference",), "no cell matches the reference.", "; ".join(c.label for c in cells[:10]))


def _memory_refusal(config: CellConfig, host: Host) -> str | None:
    """Why the cell cannot fit this host's memory (host.memory_problem on the plan's estimate),
    or None. The estimate is the one `txsuite plan` shows, with a BPE vocabulary above
    BIG_VOCAB counted as 256 tokens: how many a corpus supports is only known by reading it, and
    a cell is refused only when it surely does not fit."""
    if host.memory_bytes is None and host.gpu_memory_bytes is None:
        return None
    vocab = approx_vocab(config)
    if config.data.tokenizer == "bpe" and vocab > BIG_VOCAB:
        vocab = 256
    return memory_problem(config, host, estimate_memory(config, vocab)["total_bytes"])


# above this BPE vocabulary, the plan asks the corpus what it supports (txsuite/cli/plan.py)
BIG_VOCAB = 65536


def _apply_top_level_aliases(src: _Source) -> None:
    """Old top-level spellings -> today's names, with their lines (`baseline:` -> `reference:`)."""
    for old, new in TOP_LEVEL_ALIASES.items():
        if old not in src.data:
            continue
        if new in src.data:
            raise src.error((old,), f"'{old}' is the old name of '{new}', and both are set; keep '{new}'.",
                            key=old)
        src.data[new] = src.data.pop(old)
        for path in [p for p in src.where if p[:1] == (old,)]:
            src.where[(new,) + path[1:]] = src.where[path]


def _resolve(src: _Source, where: tuple, flat: dict[str, Any], host_device: str,
             device_override: str | None) -> CellConfig:
    """Flat validated settings -> CellConfig. `--device` forces every cell's device; otherwise
    `auto` (the default) becomes the host's device."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        family, _, leaf = dotted.partition(".")
        if leaf:
            nested.setdefault(family, {})[leaf] = value
        else:
            nested[family] = value
    device = device_override or nested.get("device", "auto")
    nested["device"] = host_device if device == "auto" else device
    try:
        return CellConfig.from_dict(nested)
    except TypeError as exc:  # unreachable for validated input; keep the message readable anyway
        raise src.error(where, f"invalid settings: {exc}.") from None


def _matches(config: CellConfig, entry: dict[str, Any]) -> bool:
    resolved = config.to_dict()
    for dotted, value in entry.items():
        family, _, leaf = dotted.partition(".")
        actual = resolved[family][leaf] if leaf else resolved[family]
        if actual != value:
            return False
    return True


def _reject_problems(src: _Source, where: tuple, config: CellConfig) -> None:
    """The first rule the cell breaks (the families' rules, txsuite/config/spec), as an error
    pointing at the line that set the offending key."""
    for problem in config.problems():
        raise src.setting_error(where, problem.key, problem.message, problem.allowed)


def _check_constant(src: _Source, constant: list[str], cells: list[PlannedCell]) -> None:
    for quantity in constant:
        values = {}
        for cell in cells:
            values.setdefault(getattr(cell.config, quantity), []).append(cell.label)
        if len(values) > 1:
            detail = "; ".join(f"{v}: {', '.join(labels[:3])}{'...' if len(labels) > 3 else ''}"
                               for v, labels in sorted(values.items()))
            raise src.error(("constant",), f"'{quantity}' must be equal in every cell, but differs: {detail}.")


def _compact(value: Any) -> Any:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
