"""The result record: one JSON object per finished cell repetition (L0: stdlib only).

Field names are a contract that reports, the guard and users' own scripts rely on
(docs/design.md, "Names that other tools rely on").
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from txsuite.config.metrics import BY_NAME, REQUIRED
from txsuite.config.spec import CellConfig

STATUSES = ("ok", "failed", "oom", "diverged", "timeout", "skipped")
# 2: records carry their schema; 1: records written before they did (read the same way)
SCHEMA = 2


class Unsupported(Exception):
    """A cell, or a technique in it, cannot run on this host (e.g. a GPU-only kernel on a CPU):
    the worker records the cell as `skipped` with this message as the reason, never runs
    something else instead. Defined here, without torch, so the worker can catch it from the
    start; txsuite.techniques re-exports it."""

# Metrics every record carries (null when not measured, e.g. for a skipped cell).
REQUIRED_METRICS = REQUIRED

# What a line read back may hold (Record.from_json). JSON nested deeper than this is not a record
# (one holds 5 levels: record, metrics, loss_curve, a row, ...); checked before parsing, since the
# parser and everything after it recurse once per level.
MAX_DEPTH = 64
# Numbers the report and the guard compute with, besides the headline metrics (every name of
# txsuite.config.metrics): each is null or a finite number >= 0 (the guard's per-repetition
# fields; a negative tokens_per_step or probe time would be a logarithm of a negative number).
MEASURED = ("tokens_per_step", "samples_per_step", "flops_per_token", "peak_flops", "memory_bandwidth",
            "achieved_flops", "probe_before_s", "probe_after_s", "probe_best_s", "probe_mean_s",
            "probe_steps_s", "train_wall_s", "warmup_wall_s")
# per-step samples: a list of finite numbers >= 0 each (the probes between the steps, and how
# many measured steps ran before each, are read with the steps' times)
SAMPLES = ("step_times_s", "step_cpu_times_s", "probe_during_s", "probe_during_at")


@dataclass
class Record:
    matrix: str
    run_id: str
    cell_id: str
    repeat: int
    config: dict[str, Any]
    status: str
    reason: str | None = None
    label: str = ""  # human-readable axis values, e.g. "precision=bf16 train.micro_batch=4"
    env: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    log: str | None = None  # path of the cell's log, relative to the run folder
    seed: int | None = None  # the training seed this repetition used (seeds: N gives each cell N)
    seed_index: int | None = None  # which of the cell's seeds (repetition % seeds)
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        """A record is checked field by field as it is made or read back: a hand-edited or
        damaged line fails here (ValueError naming the field), never later in a report."""
        for name, kinds in (("matrix", str), ("run_id", str), ("cell_id", str), ("label", str),
                            ("config", dict), ("env", dict), ("metrics", dict)):
            if not isinstance(getattr(self, name), kinds):
                raise ValueError(f"field {name!r} must be {kinds.__name__}, got {type(getattr(self, name)).__name__}")
        if isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or self.repeat < 0:
            raise ValueError(f"field 'repeat' must be an integer >= 0, got {self.repeat!r}")
        if not isinstance(self.status, str) or self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        if isinstance(self.schema, bool) or not isinstance(self.schema, int) or self.schema > SCHEMA:
            raise ValueError(f"schema {self.schema!r}: written by a newer txsuite than this one (schema {SCHEMA})")
        for name in REQUIRED_METRICS:
            self.metrics.setdefault(name, None)

    @property
    def key(self) -> tuple[str, int]:
        return (self.cell_id, self.repeat)

    @property
    def cell(self) -> CellConfig:
        """The resolved configuration, typed (configs written by earlier versions are upgraded)."""
        return CellConfig.from_dict(self.config)

    def to_json(self) -> str:
        """One line of JSON; NaN/inf (a diverged loss) become null so the line stays valid JSON."""
        return json.dumps(_finite(asdict(self)), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> "Record":
        """A record from one line of records.jsonl, bounded and range-checked: ValueError (naming
        what is wrong) for JSON nested deeper than MAX_DEPTH (checked before parsing), for NaN or
        Infinity, for a number beyond a float's range (1e400, 10**400), and for what from_dict
        refuses. Never RecursionError or OverflowError."""
        return cls.from_dict(parse_line(line))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        """A record from a parsed line (or a record's dict): its fields are type-checked
        (__post_init__), and a measured metric that is not null or a finite number in its range
        (metric_problem) is a ValueError naming it, so that a hand-edited or damaged record is
        skipped as a whole, never reported from."""
        if not isinstance(d, dict):
            raise ValueError(f"a record is a JSON object, got {type(d).__name__}")
        known = cls.__dataclass_fields__
        record = cls(**{"schema": 1, **{k: v for k, v in d.items() if k in known}})
        duration = record.duration_s
        if duration is not None and not _non_negative(duration):
            raise ValueError(f"field 'duration_s' must be a finite number of seconds >= 0, got {duration!r}")
        for name, value in record.metrics.items():
            problem = metric_problem(name, value)
            if problem:
                raise ValueError(f"metric {name!r} {problem}")
        return record


def metric_problem(name: str, value: Any) -> str | None:
    """Why `value` cannot be metric `name` of a record read back (None: it can). A headline
    metric (txsuite.config.metrics) or a MEASURED one is null or a finite number >= 0; a SAMPLES
    one is null or a list of those. Other metrics are free-form (the reader has checked that
    their numbers are finite)."""
    if value is None:
        return None
    if name in SAMPLES:
        if not isinstance(value, list):
            return f"must be a list of per-step values, got {type(value).__name__}"
        try:  # in C: a string, null or list in it is a TypeError, a number beyond a float's an OverflowError
            good = not value or (math.isfinite(math.fsum(value)) and min(value) >= 0)
        except (TypeError, OverflowError, ValueError):
            good = False
        if not good:
            bad = [v for v in value if not _non_negative(v)][:1]
            return (f"holds {_shown(bad[0])}: each per-step value must be a finite number >= 0" if bad
                    else "sums beyond a float's range")
        return None
    if (name in BY_NAME or name in MEASURED) and not _non_negative(value):
        return f"is {_shown(value)}: it must be null or a finite number >= 0"
    return None


def _non_negative(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v) and v >= 0  # math.isfinite(int) converts: OverflowError beyond a float
    except OverflowError:
        return False


def _shown(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:30]}... ({type(v).__name__}, {len(text):,} characters)"


def parse_line(line: str) -> Any:
    """json.loads for a line read back, bounded (see Record.from_json). The checks cost a tenth
    of the parse: byte-level translations and searches, no Python loop over the text."""
    raw = line.encode("utf-8", "surrogatepass")
    if nesting_depth(raw, MAX_DEPTH) > MAX_DEPTH:
        raise ValueError(f"JSON nested more than {MAX_DEPTH} levels deep (a record needs about 5)")
    try:
        data = _DECODER.decode(line)
    except RecursionError:  # unreachable after the depth check; kept so that it can never escape
        raise ValueError("JSON nested too deeply to read") from None
    if _maybe_huge(raw):  # rare: only then is every number looked at
        _check_finite(data)
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a record may hold (a non-finite value is written as null)")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
# Each byte of a line as its class: a digit "0", an exponent "e", a sign (dropped), anything else " ".
_NUMBER_CLASSES = bytes(48 if 48 <= b <= 57 else 101 if b in b"eE" else 32 for b in range(256))


def _maybe_huge(raw: bytes) -> bool:
    """Whether the line may hold a number beyond a float's range: one has an exponent of 3 digits
    (1e400 parses as inf) or more than 308 digits (10**400 parses as an int no float holds).
    Strings that look so only cost a walk over the numbers."""
    classes = raw.translate(_NUMBER_CLASSES, b"+-")
    return b"e000" in classes or b"0" * 309 in classes


_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_PAIRS = re.compile(rb"\[\]|\{\}")


def nesting_depth(text: str | bytes, limit: int) -> int:
    """An upper bound on how deeply the JSON in `text` nests, exact for balanced brackets, and
    limit + 1 for anything deeper than `limit`. Cheap on any line: strings, then everything but
    brackets are removed, then each pass removes the innermost pairs (one level). Text that
    stops reducing is not balanced JSON: its bound is the levels removed plus the brackets left."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    count = raw.count(b"[") + raw.count(b"{")
    if count <= limit:
        return count
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for level in range(limit + 1):
        if not brackets:
            return level
        inner = _PAIRS.sub(b"", brackets)
        if inner == brackets:
            return min(level + len(brackets), limit + 1)
        brackets = inner
    return limit + 1


def _check_finite(data: Any) -> None:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            try:
                finite = math.isfinite(item)
            except OverflowError:
                finite = False
            if not finite:
                raise ValueError(f"a number beyond a float's range ({_shown(item)})")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
