"""The result record: one JSON object per finished cell repetition (L0: stdlib only).

Field names are a contract that reports, the guard and users' own scripts rely on
(docs/design.md, "Names that other tools rely on").
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from txsuite.config.metrics import REQUIRED
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
        return cls.from_dict(json.loads(line))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        if not isinstance(d, dict):
            raise ValueError(f"a record is a JSON object, got {type(d).__name__}")
        known = cls.__dataclass_fields__
        return cls(**{"schema": 1, **{k: v for k, v in d.items() if k in known}})


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
