"""`txsuite baseline`: a run folder -> a compact baseline file to commit, samples kept, with a
statement of its own quality (how noisy its repetitions were, and the machine's state while
they ran), so that the guard can refuse to give a time verdict from a baseline that cannot
support one."""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from suite.guard.side import BASELINE_FORMAT, BASELINE_SCHEMA, GuardInputError, Side, load_side
from suite.guard.state import SLOW_STATE, best_probe, slowdown
from suite.guard.stats import pooled_log_sd
from suite.results import write_atomic


def quality(side: Side) -> dict[str, Any]:
    """How much the baseline can be trusted: repetitions per cell, the measured run-to-run
    noise of its throughput (sd of a repetition's log median, pooled over cells; None with one
    repetition per cell), and the machine's state while it ran."""
    import statistics

    reps = [r for c in side.cells.values() for r in c.repeats]
    groups = []
    for cell in side.cells.values():
        medians = [statistics.median(r.tokens_per_step / t for t in r.step_times_s)
                   for r in cell.repeats if r.step_times_s and r.tokens_per_step]
        groups.append(medians)
    noise, df = pooled_log_sd(groups)
    best = best_probe(reps)
    slow = [s for s in (slowdown(r, best) for r in reps) if s is not None]
    return {
        "repetitions_per_cell": min((len(c.repeats) for c in side.cells.values()), default=0),
        "noise": {"tokens_per_s": noise, "degrees_of_freedom": df},
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
