"""One side of a guard comparison: a run folder or a committed baseline file, as samples.

The baseline file (`txsuite baseline RUN -o FILE`, written by txsuite/guard/baseline.py) is JSON,
schema-versioned, and keeps the samples the guard decides on, not summaries: per cell and
repetition the measured step times, the quantities that turn them into throughput and MFU,
the memory, the validation loss, the machine-state probe and the step counters. Everything the
guard reports (medians, ratios) is recomputed from these samples, so there is one source of
truth in the file. Layout (one repetition per line, so a diff stays readable):

    {
     "format": "txsuite-baseline",
     "schema": 2,
     "created_at": "<when the file was written>",
     "matrix": "smoke", "run_id": "<the run's id>", "source": "matrices/smoke.yaml",
     "guard": {"tokens_per_s": "-5%"},
     "quality": {"repetitions_per_cell": 2, "noise": {"tokens_per_s": 0.021}, "machine_slowdown_max": 1.3, ...},
     "env": {... the environment fingerprint of the run ...},
     "cells": [
      {"cell_id": "738cb88548", "label": "precision=fp32", "config": {...},
       "repeats": [
        {"repeat": 0, "step_times_s": [0.0134, ...], "tokens_per_step": 256, "samples_per_step": 4,
         "flops_per_token": 1234567, "peak_flops": 2.1e11, "peak_mem_bytes": 377192448,
         "train_mem_bytes": 98566144, "val_loss": 2.71, "probe_before_s": 0.021, "probe_after_s": 0.022,
         "probe_best_s": 0.019, "step_flops": 6.5e8, "step_ops": 259, "step_op_counts": {...}}
       ]}
     ]
    }

Schema 1 files (no probe, no counters) still load; the guard then gives no time verdict from
them, since whether they were recorded in a slow spell is unknown.

A repetition without per-step samples (records written before step times were kept) stores
its recorded `tokens_per_s`, `samples_per_s`, `step_time_p50_s`, `step_time_p90_s` and `mfu`
instead; the guard then decides on per-repetition values.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from txsuite.config.metrics import REGISTRY
from txsuite.config.record import Record
from txsuite.results import RECORDS, RecordsWarning, RunFolder, RunMeta, find_runs

BASELINE_FORMAT = "txsuite-baseline"
BASELINE_SCHEMA = 2  # 2: machine state, train memory and step counters per repetition; quality
# the per-step metrics a record also summarises per repetition (used when it has no step samples)
SUMMARY_KEYS = tuple(m.name for m in REGISTRY if m.per_step and m.guardable)
# a record whose summary tokens/s disagrees with its own step times by more than this was edited
CONSISTENCY_TOLERANCE = 0.01


class GuardInputError(Exception):
    """Input the guard cannot use (exit code 2): one paragraph naming the file and the problem."""


# the kernels a repetition ran, where `auto` settings choose them per host (model.attention,
# model.linear): a change between baseline and run is named (txsuite.guard.environment)
KERNEL_FACTS = ("attention", "linear")
# what a record written before a fact existed ran: every record written before model.linear
# existed ran torch's nn.Linear (the attention kernel of older records is not known: not assumed)
KERNELS_WHEN_ABSENT = {"linear": "torch"}
# per-repetition numbers kept as they are (besides the step samples and the summaries)
REPEAT_FIELDS = ("tokens_per_step", "samples_per_step", "flops_per_token", "peak_flops", "peak_mem_bytes",
                 "train_mem_bytes", "val_loss", "probe_before_s", "probe_after_s", "probe_best_s",
                 "probe_mean_s", "probe_steps_s", "step_flops", "step_ops", "step_alloc_bytes")


@dataclass
class RepeatSamples:
    repeat: int
    step_times_s: list[float] | None = None
    tokens_per_step: float | None = None
    samples_per_step: float | None = None
    flops_per_token: float | None = None
    peak_flops: float | None = None
    peak_mem_bytes: float | None = None
    train_mem_bytes: float | None = None  # the part of the memory the cell controls
    val_loss: float | None = None
    # the machine-state probe around the measured steps (txsuite.measure.probe); None: not recorded
    probe_before_s: float | None = None
    probe_after_s: float | None = None
    probe_best_s: float | None = None
    probe_mean_s: float | None = None  # every probe of the repetition, those during the steps too
    probe_steps_s: float | None = None  # the probes each step ran between, at the steps' median
    # what one step dispatched (txsuite.measure.counters); None: not counted
    step_flops: float | None = None
    step_ops: float | None = None
    step_alloc_bytes: float | None = None
    step_op_counts: dict[str, int] | None = None
    # KERNEL_FACTS -> the kernel's name; None: the record predates the fact
    kernels: dict[str, str] | None = None
    # recorded per-repetition summaries: used only when there are no per-step samples
    summary: dict[str, float | None] = field(default_factory=dict)
    # the run it was measured in, in a baseline of several runs (`txsuite baseline RUN RUN ...`);
    # None: the side's only run
    run: str | None = None

    @property
    def probe_s(self) -> float | None:
        """The slower of the two probes around the measured steps."""
        times = [t for t in (self.probe_before_s, self.probe_after_s) if t]
        return max(times) if times else None

    def mfu_per_token_per_s(self) -> float | None:
        """MFU = tokens/s x this factor (FLOPs per token / peak FLOP/s)."""
        if self.flops_per_token and self.peak_flops:
            return self.flops_per_token / self.peak_flops
        mfu, tps = self.summary.get("mfu"), self.summary.get("tokens_per_s")
        return mfu / tps if mfu and tps else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"repeat": self.repeat}
        if self.run is not None:
            out["run"] = self.run
        if self.step_times_s:
            out["step_times_s"] = [float(t) for t in self.step_times_s]
        for key in REPEAT_FIELDS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.step_op_counts is not None:
            out["step_op_counts"] = dict(self.step_op_counts)
        if self.kernels:
            out["kernels"] = dict(self.kernels)
        if not self.step_times_s:
            out.update({k: v for k, v in self.summary.items() if v is not None})
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RepeatSamples":
        counts = d.get("step_op_counts")
        return cls(repeat=int(d.get("repeat", 0)), step_times_s=d.get("step_times_s"),
                   **{k: _num(d.get(k)) for k in REPEAT_FIELDS},
                   step_op_counts=dict(counts) if isinstance(counts, dict) else None,
                   kernels=_kernels(d.get("kernels") or {}),
                   summary={k: d[k] for k in SUMMARY_KEYS if d.get(k) is not None},
                   run=str(d["run"]) if d.get("run") is not None else None)


def group_by_run(reps: Iterable[RepeatSamples]) -> list[list[RepeatSamples]]:
    """Repetitions grouped by the run they came from (a baseline may hold several runs), in
    first-seen order."""
    out: dict[str | None, list[RepeatSamples]] = {}
    for r in reps:
        out.setdefault(r.run, []).append(r)
    return list(out.values())


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
    overrides: tuple[str, ...] = ()  # the `key=value` settings the run was given on the command line
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
    # The reader skips a record it cannot use with a warning, so that a report still shows the
    # rest; a verdict must not silently leave out an edited or damaged repetition (a negative
    # tokens/s), so for the guard such a record is an input error. A half-written last line
    # (its cell runs again on resume) and repeated lines stay warnings.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecordsWarning)
        run = RunFolder(run_dir).load()
    damaged = [str(w.message) for w in caught if issubclass(w.category, RecordsWarning)
               and "not a txsuite result record" in str(w.message)]
    for w in caught:
        if str(w.message) not in damaged:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if damaged:
        raise GuardInputError(f"{damaged[0].removesuffix('; skipped')}"
                              f"{f' (and {len(damaged) - 1} more such lines)' if len(damaged) > 1 else ''}: the guard "
                              f"decides on every repetition of a run, and this one was edited or damaged. Re-measure "
                              f"that cell, or remove the line, and guard again.")
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
    side = Side(path=path, kind=kind, matrix=meta.name, source=meta.source, overrides=tuple(meta.overrides),
                guard=dict(meta.guard), env=dict(env or {}))
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
        _refuse_impossible(path, side.labels[r.cell_id], r.repeat, r.metrics)
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


# Every quantity the guard reads is a finite number >= 0, and these are above 0 (a rate, a time,
# a batch): a record or baseline holding anything else was edited or damaged, and a verdict on
# it would be made up (a negative tokens/s FAILed; NaN printed "+nan%"). Such input exits 2.
POSITIVE_FIELDS = ("tokens_per_s", "samples_per_s", "step_time_p50_s", "step_time_p90_s", "tokens_per_step",
                   "samples_per_step")


def impossible_value(values: dict[str, Any]) -> str | None:
    """What in one repetition's numbers (a record's metrics, a baseline file's repetition) no
    measurement can be, in words, or None."""
    def problem(key: str, v: Any) -> str | None:
        above = key in POSITIVE_FIELDS or key == "step_times_s"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{key} is {v!r}, not a number"
        try:
            x = float(v)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x) or x < 0 or (above and x == 0):
            return f"{key} is {x:g}, which no measurement can be (a finite number {'above' if above else '>='} 0)"
        return None
    steps = values.get("step_times_s")
    if steps is not None and not isinstance(steps, list):
        return f"step_times_s is {type(steps).__name__}, not a list of seconds"
    for t in steps or ():
        found = problem("step_times_s", t)
        if found:
            return found
    for key in REPEAT_FIELDS + SUMMARY_KEYS:
        if values.get(key) is not None:
            found = problem(key, values[key])
            if found:
                return found
    return None


def _refuse_impossible(path: str, label: str, repeat: Any, values: dict[str, Any]) -> None:
    found = impossible_value(values)
    if found:
        raise GuardInputError(f"{path}: cell {label!r} repeat {repeat}: {found}; the file was edited or damaged, "
                              f"and no verdict can be made from it. Re-measure that cell, or remove the repetition.")


def _repeat_from_metrics(repeat: int, m: dict[str, Any]) -> RepeatSamples:
    steps = m.get("step_times_s")
    steps = [float(t) for t in steps] if isinstance(steps, list) and steps and all(
        isinstance(t, (int, float)) and t > 0 for t in steps) else None
    counts = m.get("step_op_counts")
    return RepeatSamples(
        repeat=repeat, step_times_s=steps, **{k: _num(m.get(k)) for k in REPEAT_FIELDS},
        step_op_counts=dict(counts) if isinstance(counts, dict) else None,
        kernels=_kernels(m),
        summary={k: _num(m.get(k)) for k in SUMMARY_KEYS if _num(m.get(k)) is not None})


def _kernels(facts: dict[str, Any]) -> dict[str, str] | None:
    """The KERNEL_FACTS among a record's metrics (or a baseline's "kernels"), those it lacks from
    KERNELS_WHEN_ABSENT; None if none."""
    facts = {**KERNELS_WHEN_ABSENT, **facts}
    found = {k: facts[k] for k in KERNEL_FACTS if isinstance(facts.get(k), str)}
    return found or None


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
        for r in c["repeats"]:
            if isinstance(r, dict):
                _refuse_impossible(shown, c.get("label") or c["cell_id"], r.get("repeat"), r)
        try:
            repeats = [RepeatSamples.from_json(r) for r in c["repeats"]]
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
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
