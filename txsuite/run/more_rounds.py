"""`repeats: {min: 2, max: 4, detect: 15%}`: after the first `min` rounds, whether the run's
rounds so far can detect a tokens/s gap of `detect` between any cell and the reference, judged
as the report will judge it (each repetition brought to the machine's best state, slow states
left out; txsuite/verdict/detectable.py); if not, the runner measures one more round of every
cell, up to `max`.
"""
from __future__ import annotations

import math
from typing import Iterable

from txsuite.config.matrix import Matrix
from txsuite.config.record import Record
from txsuite.measure.predict import positive
from txsuite.verdict import state
from txsuite.verdict.detectable import Detectability, detectability

METRIC = "tokens_per_s"  # the gap `detect` names is one of speed


def judge(matrix: Matrix, records: Iterable[Record]) -> Detectability:
    """What the ok repetitions in `records` detect against the matrix's reference cell (or,
    without one or when it has no throughput, the first cell that has one: the report's choice)."""
    rows = [(r.cell_id, r.repeat, float(r.metrics[METRIC]), r.metrics) for r in records
            if r.status == "ok" and positive(r.metrics.get(METRIC))]
    values = state.adjusted(rows, METRIC).values
    with_values = [c.cell_id for c in matrix.cells if values.get(c.cell_id)]
    reference = matrix.reference if matrix.reference in with_values else (with_values[0] if with_values else None)
    if reference is None:
        return Detectability(0, True, None, math.inf, None)
    return detectability(values, reference, matrix.detect or 0.0)
