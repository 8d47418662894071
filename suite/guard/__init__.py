"""The CI regression guard (L2): is this run slower or hungrier than the baseline, for real?

    side = load_side("results/smoke/ci")                 # a run folder ...
    base = load_side("baselines/smoke.json")             # ... or a baseline file
    result = compare(side, base)                         # thresholds from the matrix's guard:
    print(result.to_text()); exit(0 if result.ok else 1)

    write_baseline("results/smoke/ci", "baselines/smoke.json")   # `txsuite baseline`

`--confirm`: re-run `cells_to_confirm(result)` (the CLI runs the matrix restricted to those
cells), load that run with `load_side`, then `merge_confirmation(result, rerun)`.

How a regression is decided: suite/guard/decide.py (rules) and suite/guard/stats.py (tests),
explained for users in docs/guard.md. Never imports torch.
"""
from suite.guard.decide import (Check, GuardResult, cells_to_confirm, check_per_repeat, check_per_step,
                                compare, merge_confirmation)
from suite.guard.metrics import METRICS, Threshold, parse_threshold
from suite.guard.side import (BASELINE_FORMAT, BASELINE_SCHEMA, CellSamples, GuardInputError, RepeatSamples,
                              Side, load_side, side_from_records, write_baseline)

__all__ = [
    "BASELINE_FORMAT", "BASELINE_SCHEMA", "CellSamples", "Check", "GuardInputError", "GuardResult",
    "METRICS", "RepeatSamples", "Side", "Threshold", "cells_to_confirm", "check_per_repeat",
    "check_per_step", "compare", "load_side", "merge_confirmation", "parse_threshold",
    "side_from_records", "write_baseline",
]
