"""One side of a guard comparison: a run folder or a committed baseline file, as samples.

The baseline file (`txsuite baseline RUN -o FILE`) is JSON, schema-versioned, and keeps the
samples the guard decides on, not summaries: per cell and repetition the measured step times,
the quantities that turn them into throughput and MFU, the peak memory and validation loss.
Everything the guard reports (medians, ratios) is recomputed from these samples, so there is
one source of truth in the file. Layout (one repetition per line, so a diff stays readable):

    {
     "format": "txsuite-baseline",
     "schema": 1,
     "created_at": "2026-11-29T03:40:00",
     "matrix": "smoke", "run_id": "20261129-031050", "source": "matrices/smoke.yaml",
     "guard": {"tokens_per_s": "-5%"},
     "env": {... the environment fingerprint of the run ...},
     "cells": [
      {"cell_id": "738cb88548", "label": "precision=fp32", "config": {...},
       "repeats": [
        {"repeat": 0, "step_times_s": [0.0134, ...], "tokens_per_step": 256, "samples_per_step": 4,
         "flops_per_token": 1234567, "peak_flops": 2.1e11, "peak_mem_bytes": 377192448, "val_loss": 2.71}
       ]}
     ]
    }

A repetition without per-step samples (records written before step times were kept) stores
its recorded `tokens_per_s`, `samples_per_s`, `step_time_p50_s`, `step_time_p90_s` and `mfu`
instead; the guard then decides on per-repetition values.
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from suite.config.metrics import REGISTRY
from suite.config.record import Record
from suite.results import RECORDS, RunFolder, RunMeta, find_runs, write_atomic

BASELINE_FORMAT = "txsuite-baseline"
BASELINE_SCHEMA = 1
# the per-step metrics a record also summarises per repetition (used when it has no step samples)
SUMMARY_KEYS = tuple(m.name for m in REGISTRY if m.per_step and m.guardable)
# a record whose summary tokens/s disagrees with its own step times by more than this was edited
CONSISTENCY_TOLERANCE = 0.01


class GuardInputError(Exception):
    """Input the guard cannot use (exit code 2): one paragraph naming the file and the problem."""


@dataclass
class RepeatSamples:
    repeat: int
    step_times_s: list[float] | None = None
    tokens_per_step: float | None = None
    samples_per_step: float | None = None
    flops_per_token: float | None = None
    peak_flops: float | None = None
    peak_mem_bytes: float | None = None
    val_loss: float | None = None
    # recorded per-repetition summaries: used only when there are no per-step samples
    summary: dict[str, float | None] = field(default_factory=dict)

    def mfu_per_token_per_s(self) -> float | None:
        """MFU = tokens/s x this factor (FLOPs per token / peak FLOP/s)."""
        if self.flops_per_token and self.peak_flops:
            return self.flops_per_token / self.peak_flops
        mfu, tps = self.summary.get("mfu"), self.summary.get("tokens_per_s")
        return mfu / tps if mfu and tps else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"repeat": self.repeat}
        if self.step_times_s:
            out["step_times_s"] = [float(t) for t in self.step_times_s]
        for key in ("tokens_per_step", "samples_per_step", "flops_per_token", "peak_flops",
                    "peak_mem_bytes", "val_loss"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if not self.step_times_s:
            out.update({k: v for k, v in self.summary.items() if v is not None})
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RepeatSamples":
        return cls(repeat=int(d.get("repeat", 0)), step_times_s=d.get("step_times_s"),
                   tokens_per_step=d.get("tokens_per_step"), samples_per_step=d.get("samples_per_step"),
                   flops_per_token=d.get("flops_per_token"), peak_flops=d.get("peak_flops"),
                   peak_mem_bytes=d.get("peak_mem_bytes"), val_loss=d.get("val_loss"),
                   summary={k: d[k] for k in SUMMARY_KEYS if d.get(k) is not None})


@dataclass
class CellSamples:
    cell_id: str
    label: str
    config: dict[str, Any]
    repeats: list[RepeatSamples] = field(default_factory=list)

    @property
    def precision(self) -> str | None:
        return self.config.get("precision") if isinstance(self.config, dict) else None


@dataclass
class Side:
    """The measured cells of one run or baseline file (only `ok` repetitions carry samples)."""
    path: str
    kind: str  # "run" or "baseline"
    matrix: str | None = None
    run_id: str | None = None
    source: str | None = None  # the matrix file the run came from
    guard: dict[str, str] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    cells: dict[str, CellSamples] = field(default_factory=dict)
    not_ok: dict[str, list[str]] = field(default_factory=dict)  # cell id -> ["repeat 0: oom", ...]
    labels: dict[str, str] = field(default_factory=dict)  # every cell id seen -> label
    notes: list[str] = field(default_factory=list)
    run_dir: Path | None = None

    def describe(self) -> str:
        what = "run" if self.kind == "run" else "baseline file"
        return f"{what} {self.path}"


# ------------------------------------------------------------------ loading ------------------

def _display(path: Path) -> str:
    """The path as the user would type it: relative below the working folder, else absolute."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path.absolute()) if rel.startswith("..") else rel


def load_side(path: str | os.PathLike) -> Side:
    """A run folder (results/<matrix>/<run id>, or a matrix folder holding exactly one run, or
    its records.jsonl) or a baseline file written by `txsuite baseline`."""
    p = Path(path)
    shown = _display(p)
    if not p.exists():
        raise GuardInputError(
            f"{shown} does not exist: give a run folder (results/<matrix>/<run id>) or a baseline "
            f"file written by `txsuite baseline RUN -o FILE`.")
    if p.is_dir():
        if (p / RECORDS).exists():
            return _load_run(p)
        runs = find_runs(p)
        if len(runs) == 1:
            return _load_run(runs[0])
        if not runs:
            raise GuardInputError(
                f"{shown} is a folder without {RECORDS} in or below it: it is not a run folder. "
                f"Give results/<matrix>/<run id> or a baseline file.")
        listed = ", ".join(_display(r) for r in runs[-5:])
        raise GuardInputError(
            f"{shown} holds {len(runs)} runs; say which one to use, e.g. one of: {listed}.")
    if p.name == RECORDS:
        return _load_run(p.parent)
    return _load_baseline_file(p)


def _load_run(run_dir: Path) -> Side:
    run = RunFolder(run_dir).load()
    side = side_from_records(run.records, path=_display(run_dir), kind="run", meta=run.meta, env=run.env)
    side.run_dir = run_dir
    return side


def side_from_records(records: Iterable[Record], path: str = "<records>", kind: str = "run",
                      meta: RunMeta | dict | None = None, env: dict | None = None) -> Side:
    """A Side from result records (what a run folder holds). `meta` is the run's matrix.json
    (guard, source, cell order and labels; typed, or as parsed JSON), `env` its env.json."""
    records = list(records)
    meta = meta if isinstance(meta, RunMeta) else RunMeta.from_json(meta)
    order = [c.get("cell_id") for c in meta.cells]
    side = Side(path=path, kind=kind, matrix=meta.name, source=meta.source, guard=dict(meta.guard),
                env=dict(env or {}))
    side.labels.update(meta.labels())
    env_taken = False
    edited: list[str] = []
    for r in sorted(records, key=lambda r: (order.index(r.cell_id) if r.cell_id in order else len(order),
                                            r.cell_id, r.repeat)):
        side.matrix = side.matrix or r.matrix
        side.run_id = side.run_id or r.run_id
        side.labels.setdefault(r.cell_id, r.label or r.cell_id)
        if r.status != "ok":
            side.not_ok.setdefault(r.cell_id, []).append(f"repeat {r.repeat}: {r.status}")
            continue
        if not env_taken and r.env:
            side.env = {**side.env, **r.env}
            env_taken = True
        cell = side.cells.get(r.cell_id)
        if cell is None:
            cell = side.cells[r.cell_id] = CellSamples(r.cell_id, side.labels[r.cell_id], r.config)
        rep = _repeat_from_metrics(r.repeat, r.metrics)
        if _rescale_if_edited(rep):
            edited.append(f"{cell.label} repeat {r.repeat}")
        cell.repeats.append(rep)
    if edited:
        side.notes.append(
            f"{path}: the recorded tokens_per_s of {', '.join(edited[:5])}"
            f"{' and others' if len(edited) > 5 else ''} disagrees with its own step_times_s by more than "
            f"{CONSISTENCY_TOLERANCE:.0%} (edited by hand?); its step samples were scaled to the recorded "
            f"tokens_per_s, which the guard treats as authoritative.")
    return side


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _repeat_from_metrics(repeat: int, m: dict[str, Any]) -> RepeatSamples:
    steps = m.get("step_times_s")
    steps = [float(t) for t in steps] if isinstance(steps, list) and steps and all(
        isinstance(t, (int, float)) and t > 0 for t in steps) else None
    return RepeatSamples(
        repeat=repeat, step_times_s=steps,
        tokens_per_step=_num(m.get("tokens_per_step")), samples_per_step=_num(m.get("samples_per_step")),
        flops_per_token=_num(m.get("flops_per_token")), peak_flops=_num(m.get("peak_flops")),
        peak_mem_bytes=_num(m.get("peak_mem_bytes")), val_loss=_num(m.get("val_loss")),
        summary={k: _num(m.get(k)) for k in SUMMARY_KEYS if _num(m.get(k)) is not None})


def _rescale_if_edited(rep: RepeatSamples) -> bool:
    """Records hold tokens_per_s twice: as the summary and implied by the step times. If they
    disagree (a hand-edited record), scale the step times to the summary. Returns True if so."""
    recorded = rep.summary.get("tokens_per_s")
    if not rep.step_times_s or not recorded or not rep.tokens_per_step:
        return False
    implied = statistics.median(rep.tokens_per_step / t for t in rep.step_times_s)
    if abs(recorded / implied - 1.0) <= CONSISTENCY_TOLERANCE:
        return False
    factor = implied / recorded
    rep.step_times_s = [t * factor for t in rep.step_times_s]
    return True


def _load_baseline_file(p: Path) -> Side:
    shown = _display(p)
    try:
        data = json.loads(p.read_text())
    except UnicodeDecodeError:
        raise GuardInputError(f"{shown} is not a baseline file (not text); give a run folder or a "
                              f"file written by `txsuite baseline`.") from None
    except ValueError as exc:
        raise GuardInputError(f"{shown} is not a baseline file: it is not valid JSON ({exc}). Write one "
                              f"with `txsuite baseline RUN -o {shown}`.") from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
        raise GuardInputError(f"{shown} is JSON but not a txsuite baseline (no \"format\": "
                              f"\"{BASELINE_FORMAT}\"); write one with `txsuite baseline RUN -o {shown}`.")
    schema = data.get("schema")
    if not isinstance(schema, int) or schema > BASELINE_SCHEMA or schema < 1:
        raise GuardInputError(f"{shown} has baseline schema {schema!r}; this txsuite reads schema "
                              f"{BASELINE_SCHEMA} (upgrade txsuite, or re-create the baseline with this one).")
    cells = data.get("cells")
    if not isinstance(cells, list):
        raise GuardInputError(f"{shown}: \"cells\" must be a list of cells.")
    side = Side(path=shown, kind="baseline", matrix=data.get("matrix"), run_id=data.get("run_id"),
                source=data.get("source"), guard=dict(data.get("guard") or {}), env=dict(data.get("env") or {}))
    for i, c in enumerate(cells):
        if not isinstance(c, dict) or not c.get("cell_id") or not isinstance(c.get("repeats"), list):
            raise GuardInputError(f"{shown}: cells[{i}] needs \"cell_id\" and a list \"repeats\".")
        try:
            repeats = [RepeatSamples.from_json(r) for r in c["repeats"]]
        except (TypeError, ValueError, AttributeError) as exc:
            raise GuardInputError(f"{shown}: cells[{i}] ({c.get('label') or c['cell_id']}) has a malformed "
                                  f"repetition ({exc}).") from None
        for r in repeats:
            st = r.step_times_s
            if st is not None and (not isinstance(st, list) or not all(
                    isinstance(t, (int, float)) and t > 0 for t in st)):
                raise GuardInputError(f"{shown}: cells[{i}] repeat {r.repeat}: step_times_s must be a "
                                      f"list of positive seconds.")
        label = c.get("label") or c["cell_id"]
        side.labels[c["cell_id"]] = label
        if repeats:
            side.cells[c["cell_id"]] = CellSamples(c["cell_id"], label, c.get("config") or {}, repeats)
    return side


# ------------------------------------------------------------------ writing ------------------

def baseline_json(side: Side) -> dict[str, Any]:
    return {
        "format": BASELINE_FORMAT,
        "schema": BASELINE_SCHEMA,
        "created_at": datetime.now().strftime("%Y-%m-%dT%H:%M:%S"),
        "matrix": side.matrix,
        "run_id": side.run_id,
        "source": side.source,
        "guard": side.guard,
        "env": side.env,
        "cells": [{"cell_id": c.cell_id, "label": c.label, "config": c.config,
                   "repeats": [r.to_json() for r in c.repeats]} for c in side.cells.values()],
    }


def dumps_baseline(doc: dict[str, Any]) -> str:
    """Compact, diff-friendly JSON: header keys one per line, one line per repetition."""
    one = lambda v: json.dumps(v, sort_keys=True, separators=(", ", ": "), allow_nan=False)  # noqa: E731
    lines = ["{"]
    head = [k for k in doc if k != "cells"]
    for k in head:
        lines.append(f" {json.dumps(k)}: {one(doc[k])},")
    lines.append(' "cells": [')
    for i, c in enumerate(doc["cells"]):
        lines.append(f'  {{"cell_id": {json.dumps(c["cell_id"])}, "label": {json.dumps(c["label"])},')
        lines.append(f'   "config": {one(c["config"])},')
        lines.append('   "repeats": [')
        reps = c["repeats"]
        for j, r in enumerate(reps):
            lines.append(f"    {one(r)}{',' if j < len(reps) - 1 else ''}")
        lines.append(f"   ]}}{',' if i < len(doc['cells']) - 1 else ''}")
    lines.append(" ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_baseline(run_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the compact baseline of a run (its `ok` repetitions, samples kept) to out_path."""
    side = load_side(run_dir)
    if not side.cells:
        problems = "; ".join(f"{side.labels.get(k, k)}: {', '.join(v)}" for k, v in list(side.not_ok.items())[:5])
        raise GuardInputError(f"{side.path} has no successfully measured cell to make a baseline of"
                              f"{' (' + problems + ')' if problems else ''}.")
    out = Path(out_path)
    write_atomic(out, dumps_baseline(baseline_json(side)))
    return out
