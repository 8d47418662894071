"""Pruning while training (`compress.pruning: magnitude-<s>` with `compress.phase: train`): a
model converter plus a step hook.

All-ones masks are attached to the target weights before the optimizer is built (so it trains
`weight_orig`), and a step hook raises the sparsity along the cubic schedule of Zhu & Gupta
(2017) between `prune_start` and `prune_end` (fractions of the run), every `prune_every`
steps, inside the timed region: its cost is part of the technique's. After training the
compression technique completes the schedule and makes the masks permanent.

Ordering: a converter, with float8 and qat, before anything wraps or traces the model.
"""
from __future__ import annotations

from txsuite.compress import prune
from txsuite.compress.plan import plan_for
from txsuite.techniques.setup import TrainSetup


def apply(setup: TrainSetup, cell) -> TrainSetup:
    plan = plan_for(cell)
    if plan.pruning_phase != "train":
        return setup
    k, t = cell.compress, cell.train
    schedule = prune.GradualMagnitude(setup.model, plan.pruning_amount, round(k.prune_start * t.total_steps),
                                      round(k.prune_end * t.total_steps), k.prune_every)
    setup.step_hooks.append(schedule)
    setup.facts["prune_schedule"] = schedule.describe()
    return setup
