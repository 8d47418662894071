"""`txsuite baseline`: one run folder, or several runs of one matrix on one machine -> a compact
baseline file to commit, samples kept, with a statement of its own quality (how noisy its
repetitions were, how much a whole run moved when it holds several, and the machine's state
while they ran), so that the guard can refuse to give a time verdict from a baseline that
cannot support one, and measures the run-to-run noise it judges with."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from txsuite.guard.side import (BASELINE_FORMAT, BASELINE_SCHEMA, CellSamples, GuardInputError, Side, group_by_run,
                              load_side)
from txsuite.guard.state import SLOW_STATE, best_probe, slowdown
from txsuite.verdict.stats import pooled_log_sd
from txsuite.results import META, RunFolder, RunLock, RunMeta, write_atomic
from txsuite.results.folder import warn


def quality(side: Side) -> dict[str, Any]:
    """How much the baseline can be trusted: repetitions per cell, the measured noise of its
    throughput (sd of a repetition's log median within a run, pooled over cells; None with one
    repetition per cell) and, for a baseline of several runs, of a whole run's level
    (txsuite.verdict.runs), and the machine's state while it ran."""
    import statistics

    from txsuite.verdict.runs import run_level_sd

    reps = [r for c in side.cells.values() for r in c.repeats]
    groups, cells_by_run = [], []
    for cell in side.cells.values():
        timed = (r for r in cell.repeats if r.step_times_s and r.tokens_per_step)
        runs = [[statistics.median(r.tokens_per_step / t for t in r.step_times_s) for r in group]
                for group in group_by_run(timed)]
        groups.extend(runs)
        cells_by_run.append(runs)
    noise, df = pooled_log_sd(groups)
    between, between_df, _ = run_level_sd(cells_by_run, noise)
    best = best_probe(reps)
    slow = [s for s in (slowdown(r, best) for r in reps) if s is not None]
    run_ids = sorted({r.run for r in reps if r.run is not None})
    return {
        "repetitions_per_cell": min((len(c.repeats) for c in side.cells.values()), default=0),
        "noise": {"tokens_per_s": noise, "degrees_of_freedom": df, "runs": max(len(run_ids), 1),
                  "between_runs": between, "between_runs_degrees_of_freedom": between_df},
        "machine_probe_best_s": best,
        "machine_slowdown_max": max(slow) if slow else None,
        "slow_repetitions": sum(s > SLOW_STATE for s in slow) if slow else None,
        "slow_state_line": SLOW_STATE,
    }


def baseline_json(side: Side) -> dict[str, Any]:
    return {
        "format": BASELINE_FORMAT,
        "schema": BASELINE_SCHEMA,
        "created_at": datetime.now().strftime("%Y-%m-%dT%H:%M:%S"),
        "matrix": side.matrix,
        "run_id": side.run_id,
        "source": side.source,
        "guard": side.guard,
        "quality": quality(side),
        "env": side.env,
        "cells": [{"cell_id": c.cell_id, "label": c.label, "config": c.config,
                   "repeats": [r.to_json() for r in c.repeats]} for c in side.cells.values()],
    }


def dumps_baseline(doc: dict[str, Any]) -> str:
    """Compact, diff-friendly JSON: header keys one per line, one line per repetition."""
    one = lambda v: json.dumps(v, sort_keys=True, separators=(", ", ": "), allow_nan=False)  # noqa: E731
    lines = ["{"]
    for k in (k for k in doc if k != "cells"):
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


def write_baseline(run_dirs: str | os.PathLike | list[str | os.PathLike], out_path: str | os.PathLike) -> Path:
    """Write the compact baseline of a run, or of several runs of one matrix on one machine (their
    `ok` repetitions, samples kept, each tagged with its run), to out_path."""
    paths = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    sides = [load_side(p) for p in paths]
    for side in sides:
        check_finished(side)
        if not side.cells:
            problems = "; ".join(f"{side.labels.get(k, k)}: {', '.join(v)}" for k, v in list(side.not_ok.items())[:5])
            raise GuardInputError(f"{side.path} has no successfully measured cell to make a baseline of"
                                  f"{' (' + problems + ')' if problems else ''}.")
        if side.kind != "run":
            raise GuardInputError(f"{side.path} is a baseline file; `txsuite baseline` takes run folders "
                                  f"(results/<matrix>/<run id>).")
    side = sides[0] if len(sides) == 1 else merge_runs(sides)
    out = Path(out_path)
    write_atomic(out, dumps_baseline(baseline_json(side)))
    return out


def check_finished(side: Side) -> None:
    """A baseline is of finished runs: GuardInputError for a run whose runner still holds it (its
    lock: the baseline would hold only the cells finished so far, with no sign of it), and a
    warning (IncompleteRun) for one whose matrix.json says it stopped before its last cell
    (interrupted, --fail-fast or --only), naming what it holds of what was planned."""
    run_dir = getattr(side, "run_dir", None)
    if side.kind != "run" or run_dir is None:
        return
    holder = RunLock.holder(run_dir)
    if holder:
        raise GuardInputError(f"{side.path} is still being written: its run is held by {holder}. A baseline now "
                              f"would hold only the cells finished so far; wait for the run to finish, then run "
                              f"`txsuite baseline` again.")
    stored = RunFolder(run_dir).read_json(META, quiet=True)
    if isinstance(stored, dict) and stored.get("complete") is False:  # absent: written before runs said
        planned = len(RunMeta.from_json(stored).cells)
        warn(f"{side.path} did not finish: its matrix.json says the run stopped before its last cell (interrupted, "
             f"--fail-fast or --only), so this baseline holds {len(side.cells)} measured cell"
             f"{'s' if len(side.cells) != 1 else ''}{f' of the {planned} planned' if planned else ''}. Resume the "
             f"run (the same `txsuite run` command) and make the baseline again for one of every cell.",
             IncompleteRun)


class IncompleteRun(UserWarning):
    """A baseline made of a run that did not finish every planned cell."""


def merge_runs(sides: list[Side]) -> Side:
    """One side holding the repetitions of several runs of one matrix on one machine, each
    tagged with its run (cells matched by id)."""
    from txsuite.guard.environment import compare_env

    first = sides[0]
    seen: set[str] = set()
    for side in sides:
        name = side.run_id or side.path
        if name in seen:
            raise GuardInputError(f"{side.path}: run {name!r} is given twice; a baseline of several runs "
                                  f"needs different runs.")
        seen.add(name)
        if side.matrix != first.matrix:
            raise GuardInputError(f"{side.path} is a run of matrix {side.matrix!r}, {first.path} of "
                                  f"{first.matrix!r}: a baseline of several runs needs runs of one matrix.")
        differences, _, hardware = compare_env(side, first)
        if hardware:
            raise GuardInputError(f"{side.path} and {first.path} ran on different hardware "
                                  f"({'; '.join(d for d in differences if d.startswith('hardware'))}): a "
                                  f"baseline of several runs measures one machine's run-to-run noise.")
    merged = Side(path=" + ".join(s.path for s in sides), kind="run", matrix=first.matrix,
                  run_id=" + ".join(s.run_id or s.path for s in sides), source=first.source,
                  guard=dict(first.guard), env=dict(first.env))
    for side in sides:
        merged.labels.update(side.labels)
        for cid, cell in side.cells.items():
            into = merged.cells.setdefault(cid, CellSamples(cid, cell.label, cell.config))
            into.repeats.extend(replace(r, run=side.run_id or side.path) for r in cell.repeats)
    return merged
