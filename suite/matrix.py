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
from typing import Any, Callable

from suite import spec
from suite.spec import CellConfig
from suite.yamlsource import YamlError, load_located

TOP_LEVEL_KEYS = {
    "name": "the matrix name (letters, digits, - and _), used for the results folder",
    "description": "free text",
    "extends": "a matrix file (or list of files) merged first, relative to this file",
    "fixed": "settings shared by every cell",
    "axes": "dotted key -> list of values; cells are their cartesian product",
    "exclude": "list of mappings; drops cells matching every key of an entry",
    "include": "list of mappings; each adds one cell (overrides of fixed)",
    "repeats": "independent repetitions of each cell (integer >= 1)",
    "guard": "metric -> allowed change, e.g. {tokens_per_s: -5%}",
    "baseline": "mapping of axis values naming the reference cell of the report",
    "constant": "derived quantities that must be equal in every cell: tokens_per_step, samples_per_step",
    "timeout_s": "seconds one cell repetition may run before it is killed",
}
CONSTANT_QUANTITIES = ("tokens_per_step", "samples_per_step")
GUARD_METRICS = ("tokens_per_s", "samples_per_s", "step_time_p50_s", "step_time_p90_s",
                 "peak_mem_bytes", "mfu", "val_loss")
DEFAULT_MAX_CELLS = 500  # more than this needs an explicit --yes
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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
class Host:
    """What the plan needs to know about the machine (found without importing torch)."""
    has_cuda: bool = False
    gpu_count: int = 0
    # the lowest compute capability among the GPUs (a cell may land on any), None if unknown
    compute_capability: float | None = None


@dataclass
class Cell:
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
    cells: list[Cell]
    axes: dict[str, list[Any]]
    fixed: dict[str, Any]
    repeats: int = 1
    guard: dict[str, str] = field(default_factory=dict)
    baseline: str | None = None  # cell id
    timeout_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "source": self.source,
            "axes": self.axes, "fixed": self.fixed, "repeats": self.repeats, "guard": self.guard,
            "baseline": self.baseline, "timeout_s": self.timeout_s,
            "cells": [{"cell_id": c.cell_id, "label": c.label, "origin": c.origin,
                       "skip_reason": c.skip_reason, "config": c.config.to_dict()} for c in self.cells],
        }

    def fingerprint(self) -> str:
        """Changes whenever the set of cells or repeats changes (decides whether to resume)."""
        import hashlib
        ids = sorted(c.cell_id for c in self.cells)
        return hashlib.sha1(json.dumps([ids, self.repeats]).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Loading and merging
# ---------------------------------------------------------------------------------------------

class _Source:
    """The merged matrix document plus, for every key path, the file and line it came from."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.where: dict[tuple, tuple[str, int]] = {}

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
        for section in (where, ("axes",), ("fixed",)):
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
    path = path.resolve() if path.exists() else path
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise MatrixError(str(chain[-1]), None, "extends", f"extends forms a cycle: {cycle}.")
    try:
        data, lines = load_located(path)
    except YamlError as exc:
        raise MatrixError(exc.file, exc.line, None, exc.message) from None
    file = _display(path)
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
            if not base.strip() or not base_path.is_file():
                raise MatrixError(file, lines.get(("extends",)), "extends",
                                  f"the base matrix '{base}' does not exist (looked at {base_path}).")
            parent = _load_chain(base_path, chain + (path,))
            _merge_into(source, parent.data, parent.where)
    where = {k: (file, v) for k, v in lines.items()}
    where[()] = (file, 1)
    _merge_into(source, {k: v for k, v in data.items() if k != "extends"}, where)
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
    for key, value in overrides.items():
        _flatten_setting(src, path + (key,), str(key), value, flat)
    return flat


def _flatten_setting(src: _Source, path: tuple, dotted: str, value: Any, out: dict[str, Any]) -> None:
    family, _, leaf = dotted.partition(".")
    if family not in spec.FAMILIES and family not in spec.SCALAR_FAMILIES:
        raise src.error(path, f"unknown setting '{family}'{_suggest(family, _families())}.",
                        ", ".join(_families()), key=dotted)
    if family == "model" and not leaf and isinstance(value, str):
        value = {"preset": value}  # `model: tiny` is short for `model: {preset: tiny}`
    if family in spec.FAMILIES and not leaf:
        if not isinstance(value, dict):
            raise src.error(path, f"'{family}' takes a mapping of its settings, got {_kind(value)}.",
                            ", ".join(spec.keys_of(family)), key=dotted)
        for k, v in value.items():
            _flatten_setting(src, path + (k,), f"{family}.{k}", v, out)
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
    out[dotted] = _check_value(src, path, dotted, value)


def _families() -> list[str]:
    return list(spec.FAMILIES) + list(spec.SCALAR_FAMILIES)


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_value(src: _Source, path: tuple, dotted: str, value: Any) -> Any:
    annotation = str(spec.field_type(dotted))
    choices = spec.CHOICES.get(dotted)
    if choices is not None:
        ok = any(value == c and type(value) is type(c) for c in choices)
        if not ok:
            raise src.error(path, f"{_kind(value)} is not allowed.", ", ".join(map(_show, choices)),
                            key=dotted)
        return value
    nullable = "None" in annotation
    if value is None:
        if nullable:
            return None
        raise src.error(path, "a value is required here (got null).", key=dotted)
    if annotation.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise src.error(path, f"expected an integer, got {_kind(value)}.", key=dotted)
        low = 1 if dotted in spec.POSITIVE_INTS else 0
        if value < low:
            raise src.error(path, f"expected an integer >= {low}, got {value}.", key=dotted)
        return value
    if annotation.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise src.error(path, f"expected a finite number, got {_kind(value)}.", key=dotted)
        if value < 0:
            raise src.error(path, f"expected a number >= 0, got {value}.", key=dotted)
        if dotted in ("data.val_fraction", "model.dropout") and value >= 1:
            raise src.error(path, f"expected a fraction in [0, 1), got {value}.", key=dotted)
        return float(value)
    if annotation.startswith("str"):
        if not isinstance(value, str) or not value:
            raise src.error(path, f"expected text, got {_kind(value)}.", key=dotted)
        if dotted == "data.dataset" and value not in spec.NAMED_DATASETS and not spec.is_dataset_path(value):
            raise src.error(path, f"unknown dataset {value!r}{_suggest(value, list(spec.NAMED_DATASETS))}.",
                            ", ".join(spec.NAMED_DATASETS) + ", or a path/glob of text files",
                            key=dotted)
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
                check_data: Callable[[Any], None] | None = None) -> Matrix:
    """`check_data(DataSpec)` (optional, e.g. suite.data.validate_data_spec) raises for data that
    cannot be found on this machine (a missing corpus package, a glob matching no file); the
    error is reported against the matrix line that chose that dataset."""
    path = Path(path)
    if not path.exists():
        raise MatrixError(str(path), None, None, "the matrix file does not exist.")
    src = _load_chain(path)
    host = host or Host()
    data = src.data
    file = _display(path)

    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise src.error((key,), f"unknown top-level key '{key}'{_suggest(str(key), list(TOP_LEVEL_KEYS))}.",
                            ", ".join(TOP_LEVEL_KEYS), key=str(key))
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise MatrixError(file, src.locate("name")[1], "name",
                          f"every matrix needs a name made of letters, digits, '-', '_' or '.', got {_kind(name)}.")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise src.error(("description",), f"expected text, got {_kind(description)}.")

    fixed = _normalise(src, ("fixed",), data.get("fixed"))
    axes = _read_axes(src, data.get("axes"))
    repeats = data.get("repeats", 1)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise src.error(("repeats",), f"expected an integer >= 1, got {_kind(repeats)}.")
    guard = _read_guard(src, data.get("guard"))
    timeout_s = data.get("timeout_s")
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                  or timeout_s <= 0):
        raise src.error(("timeout_s",), f"expected a positive number of seconds, got {_kind(timeout_s)}.")
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

    cells: list[Cell] = []
    seen: dict[str, Cell] = {}
    notes: list[str] = []
    data_checked: set = set()

    # `device: auto` becomes the host's device here, so exclude entries and cell ids see the
    # device the cell will really run on.
    host_device = "cuda" if host.has_cuda else "cpu"

    def add(flat: dict[str, Any], label: str, origin: str, where: tuple) -> None:
        config = _resolve(src, where, flat, host_device, device_override)
        _check_cell(src, where, config)
        if check_data is not None and config.data not in data_checked:
            try:
                check_data(config.data)
            except (ValueError, OSError, ImportError) as exc:
                raise src.setting_error(where, "data.dataset", f"{exc}.".replace("..", ".")) from None
            data_checked.add(config.data)
        cell = Cell(config, label, origin, _host_skip(config, host))
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
        label = "+ " + " ".join(f"{k}={_compact(v)}" for k, v in entry.items())
        add(flat, label, f"include[{i}]", ("include", i))

    if not cells:
        raise MatrixError(file, src.locate("exclude")[1], "exclude",
                          "every cell was excluded; nothing would run.")
    _check_constant(src, constant, cells)
    baseline = _read_baseline(src, data.get("baseline"), cells)
    return Matrix(name=name, description=description, source=file, cells=cells,
                  axes={k: [_compact(v) for v, _ in vals] for k, vals in axes},
                  fixed=fixed, repeats=repeats, guard=guard, baseline=baseline,
                  timeout_s=float(timeout_s) if timeout_s else None, notes=notes)


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
        out[metric] = change.strip()
    return out


def _read_baseline(src: _Source, baseline: Any, cells: list[Cell]) -> str | None:
    if baseline is None:
        return None
    entry = _normalise(src, ("baseline",), baseline)
    for cell in cells:
        if _matches(cell.config, entry):
            return cell.cell_id
    raise src.error(("baseline",), "no cell matches the baseline.", "; ".join(c.label for c in cells[:10]))


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


def _check_cell(src: _Source, where: tuple, c: CellConfig) -> None:
    """Combinations that can never work, on any host."""
    def fail(key: str, problem: str, allowed: str | None = None):
        raise src.setting_error(where, key, problem, allowed)

    n_layer, n_head, d_model, _ = spec.model_dims(c.model)
    if d_model % n_head:
        fail("model.n_head", f"d_model={d_model} is not divisible by n_head={n_head}.")
    _check_parallel(c, fail)
    if c.data.dataset in spec.SYNTHETIC_DATASETS and c.data.tokenizer != "byte":
        fail("data.tokenizer", f"the synthetic task '{c.data.dataset}' has its own symbols; "
                               f"tokenizer '{c.data.tokenizer}' does not apply.", "byte")
    if c.data.symbols is not None and c.data.dataset not in spec.SYNTHETIC_DATASETS:
        fail("data.symbols", "data.symbols only applies to synthetic tasks.", ", ".join(spec.SYNTHETIC_DATASETS))
    if c.data.vocab_size is not None and c.data.tokenizer != "bpe":
        fail("data.vocab_size", "data.vocab_size only applies to tokenizer 'bpe'.")
    if c.data.vocab_size is not None and c.data.vocab_size < 257:
        fail("data.vocab_size", f"a byte-level BPE vocabulary needs more than 256 entries, got {c.data.vocab_size}.")
    if c.memory.activation_checkpointing == "every_k" and c.memory.checkpoint_every > n_layer:
        fail("memory.checkpoint_every", f"checkpoint_every={c.memory.checkpoint_every} exceeds the "
                                        f"model's {n_layer} layers.")
    if c.train.lr_warmup_steps > c.train.warmup_steps + c.train.steps:
        fail("train.lr_warmup_steps", "the learning-rate warm-up is longer than the whole run.")
    _check_compress(c, fail)
    if c.fp8_training:
        # the weight gradient is grad_out^T [N, M] @ input [M, K] with M = the micro-batch's (or
        # pipeline chunk's) tokens, and fp8 GEMMs need their inner dimension a multiple of 16
        chunks = c.parallel.pp_chunks
        tokens = c.train.micro_batch // chunks * c.data.seq_len
        if tokens % 16:
            fail("train.micro_batch", f"fp8 matmuls need the tokens of one micro-batch"
                                      f"{' chunk' if chunks > 1 else ''} (micro_batch x seq_len = {tokens}) "
                                      f"to be a multiple of 16, the inner dimension of the weight-gradient GEMM.",
                 "micro_batch and data.seq_len whose product is a multiple of 16")


PRUNING_ALLOWED = ("none, magnitude-<sparsity>, structured-<ratio>, heads-<ratio>, neurons-<ratio> "
                   "(a number strictly between 0 and 1, e.g. magnitude-0.5), '2:4' (in quotes: YAML "
                   "reads a bare 2:4 as the number 124)")
POST_ONLY_QUANTIZATIONS = ("int8-dynamic", "int8-weight", "int4-weight")


def _check_compress(c: CellConfig, fail) -> None:
    """Compression settings that can never work (suite.compress, docs/compression.md). What
    depends on the host is not an error here: fp8 and 2:4 need a CUDA GPU, int4-weight a kernel
    package; suite.compress raises Unsupported before training and the cell is `skipped`."""
    k = c.compress
    try:
        kind, amount = k.pruning_target()
    except ValueError:
        fail("compress.pruning", f"{k.pruning!r} is not a pruning method.", PRUNING_ALLOWED)
    _, n_head, _, d_ff = spec.model_dims(c.model)
    for what, n, applies in (("attention heads", n_head, ("heads", "structured")),
                             ("MLP neurons", d_ff, ("neurons", "structured"))):
        if kind in applies:
            removed = int(amount * n + 0.5)  # nearest count, halves up (suite.compress.structured)
            if not 0 < removed < n:
                fail("compress.pruning", f"{k.pruning} removes {removed} of the model's {n} {what} per "
                                         f"layer; it must remove at least one and keep at least one.")
    if not 0.0 <= k.prune_start < k.prune_end <= 1.0:
        fail("compress.prune_end" if k.prune_end > 1.0 else "compress.prune_start",
             f"the pruning schedule needs 0 <= prune_start < prune_end <= 1 (fractions of the run), "
             f"got {k.prune_start:g} and {k.prune_end:g}.")
    if k.prune_every < 1:
        fail("compress.prune_every", f"expected an integer >= 1, got {k.prune_every}.")
    if not 0.0 <= k.distill_alpha <= 1.0:
        fail("compress.distill_alpha", f"expected a weight in [0, 1], got {k.distill_alpha:g}.")
    if k.distill_temperature <= 0:
        fail("compress.distill_temperature", "the temperature must be > 0.")
    if k.phase == "train" and k.quantization in POST_ONLY_QUANTIZATIONS:
        fail("compress.phase", f"quantization '{k.quantization}' converts a trained model; it has no "
                               f"training phase (quantization-aware training is 'qat-int8').", "post")
    if k.phase == "train" and kind not in ("none", "magnitude"):
        fail("compress.phase", f"pruning '{k.pruning}' acts on the trained model; only magnitude "
                               f"pruning has a while-training schedule.", "post")
    post_pruning = kind != "none" and not (kind == "magnitude" and k.phase == "train")
    if k.finetune_steps and not post_pruning:
        fail("compress.finetune_steps", "the fine-tune follows post-training pruning, and this cell "
                                        "prunes nothing after training.", "0")
    if k.distill and not k.finetune_steps:
        fail("compress.distill", "distillation teaches the pruned model during its fine-tune; "
                                 "set compress.finetune_steps > 0.")
    if not k.active:
        return
    if c.parallel.engine != "none":
        fail("parallel.engine", "compression runs on a single-process model in this version.", "none")
    if k.pruning == "2:4" and k.quantization != "none":
        fail("compress.quantization", "2:4 sparse weights do not combine with quantization in this "
                                      "version.", "none")
    if k.pruning == "2:4" and c.precision not in ("bf16", "fp16"):
        fail("precision", "2:4 semi-structured weights are stored and multiplied in bf16 or fp16 (the "
                          "sparse tensor-core kernels take no fp32).", "bf16, fp16")
    if k.quantization == "fp8" and kind != "none":
        fail("compress.pruning", "fp8 training does not combine with pruning in this version.", "none")
    if k.quantization == "fp8" and c.precision == "fp8":
        fail("compress.quantization", "quantization 'fp8' is float8 training, which precision 'fp8' "
                                      "already is; choose one.")


def _check_parallel(c: CellConfig, fail) -> None:
    """Parallel layouts that cannot work: wrong engine for an axis, sizes that do not divide."""
    p, t = c.parallel, c.train
    n_layer, n_head, _, d_ff = spec.model_dims(c.model)
    if p.engine == "none" and p.dp > 1:
        fail("parallel.engine", f"dp={p.dp} replicas needs a parallel engine for data parallelism, "
                                f"but engine is 'none'.", "ddp, fsdp, deepspeed")
    if p.engine == "ddp" and p.dp > 1 and (p.tp > 1 or p.pp > 1):
        fail("parallel.tp" if p.tp > 1 else "parallel.pp",
             "engine 'ddp' replicates the whole model and does not compose with tensor/pipeline "
             "parallelism (as in torchtitan); use engine 'fsdp' for 2-D/3-D layouts, or 'none' with dp: 1.",
             "tp: 1, pp: 1")
    if p.engine == "deepspeed":
        if p.tp > 1 or p.pp > 1:
            fail("parallel.tp" if p.tp > 1 else "parallel.pp",
                 "engine 'deepspeed' runs ZeRO data parallelism here; its own tensor/pipeline "
                 "parallelism needs a DeepSpeed PipelineModule. Use engine 'fsdp' for tp/pp.",
                 "tp: 1, pp: 1")
        if c.precision not in ("fp32", "bf16", "fp16"):
            fail("precision", f"DeepSpeed owns precision and has no '{c.precision}' mode.", "fp32, bf16, fp16")
        if c.memory.compile:
            fail("memory.compile", "torch.compile is not applied under engine 'deepspeed' in this version.",
                 "false")
    if p.zero_stage and p.engine != "deepspeed":
        fail("parallel.zero_stage", f"ZeRO stage {p.zero_stage} needs engine 'deepspeed', not '{p.engine}'.")
    if p.offload != "none" and p.engine != "deepspeed":
        fail("parallel.offload", f"offload '{p.offload}' needs engine 'deepspeed', not '{p.engine}'.")
    if p.offload == "optimizer" and p.zero_stage == 0:
        fail("parallel.offload", "DeepSpeed offloads the optimizer state of ZeRO stages 1-3, not stage 0.",
             "zero_stage: 1, 2 or 3")
    if p.offload == "optimizer+params" and p.zero_stage != 3:
        fail("parallel.offload", "DeepSpeed offloads parameters only under ZeRO stage 3.", "zero_stage: 3")
    if n_head % p.tp:
        fail("parallel.tp", f"tp={p.tp} does not divide the {n_head} attention heads.")
    if d_ff % p.tp:
        fail("parallel.tp", f"tp={p.tp} does not divide the MLP's d_ff={d_ff} neurons.")
    if p.pp > 1:
        virtual = 2 if p.pp_schedule == "interleaved-1f1b" else 1
        if p.pp * virtual > n_layer:
            fail("parallel.pp", f"pp={p.pp} with schedule '{p.pp_schedule}' needs {p.pp * virtual} stages "
                                f"of at least one layer, but the model has {n_layer} layers.")
        m = p.pp_chunks
        if t.micro_batch % m:
            fail("parallel.pp_microbatches", f"the micro-batch of {t.micro_batch} sequences does not split "
                                             f"into {m} pipeline chunks.",
                 "a divisor of train.micro_batch")
        if virtual > 1 and m % p.pp:
            fail("parallel.pp_microbatches", f"interleaved 1F1B needs a multiple of pp={p.pp} chunks, got {m}.")
        if c.precision == "fp16":
            fail("precision", "fp16 loss scaling is not wired into the pipeline schedule; use bf16.",
                 "fp32, bf16, bf16-pure")
        if c.memory.compile:
            fail("memory.compile", "torch.compile of pipeline stages is not supported in this version.", "false")




def _host_skip(c: CellConfig, host: Host) -> str | None:
    """Reasons a valid cell cannot run on this host: it is recorded as skipped, never faked."""
    device = c.device if c.device != "auto" else ("cuda" if host.has_cuda else "cpu")
    if device == "cuda" and not host.has_cuda:
        return "device 'cuda' was asked for but this host has no CUDA GPU"
    fp8_training = c.fp8_training
    fp8_cap, sparse_cap = _capability(spec.FP8_MIN_CAPABILITY), _capability(spec.SEMI_STRUCTURED_MIN_CAPABILITY)
    if device == "cpu" and fp8_training:
        return ("fp8 training (torchao float8) needs a CUDA GPU with fp8 tensor cores (compute capability "
                f">= {fp8_cap}: Ada, Hopper or newer); this cell is on cpu")
    if device == "cpu" and c.compress.pruning == "2:4":
        return ("2:4 semi-structured sparsity is accelerated only by sparse tensor cores (CUDA, compute "
                f"capability >= {sparse_cap}); this cell is on cpu")
    cap = host.compute_capability
    if device == "cuda" and cap is not None:
        if cap < float(fp8_cap) and fp8_training:
            return (f"fp8 training needs fp8 tensor cores (compute capability >= {fp8_cap}: Ada, Hopper or newer); "
                    f"this host's GPU has {cap:.1f}")
        if cap < float(sparse_cap) and c.compress.pruning == "2:4":
            return (f"2:4 sparsity needs sparse tensor cores (compute capability >= {sparse_cap}); "
                    f"this host's GPU has {cap:.1f}")
    import importlib.util  # local: this function's change stays within it
    if fp8_training and importlib.util.find_spec("torchao") is None:
        # found without importing it (the runner never imports torch); a GPU whose driver does not
        # report its compute capability leaves that check to the worker, which skips the cell
        return "fp8 training uses torchao.float8, which is not installed (pip install -e '.[compress]')"
    if device == "cpu" and c.precision == "tf32":
        return "tf32 is a CUDA tensor-core matmul mode; on cpu it would silently be fp32"
    return None


def _check_constant(src: _Source, constant: list[str], cells: list[Cell]) -> None:
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


def _capability(version: tuple[int, int]) -> str:
    """(8, 9) -> "8.9", as nvidia-smi reports a compute capability (Host.compute_capability)."""
    return f"{version[0]}.{version[1]}"
