"""The CI regression guard (L2): is this code slower or hungrier than the baseline, for real?
Three verdicts: PASS (the evidence says within the limits), FAIL (beyond them), INCONCLUSIVE
(with the reason and what would resolve it); exit codes 0, 1, 3 (2: unusable input).

    side = load_side("results/smoke/ci")                 # a run folder ...
    base = load_side("baselines/smoke.json")             # ... or a baseline file
    result = compare(side, base)                         # thresholds from the matrix's guard:
    print(result.to_text()); exit(result.exit_code)

    write_baseline("results/smoke/ci", "baselines/smoke.json")   # `txsuite baseline`
    decide_pairs(...)                                    # `txsuite ab`: paired, sequential

How it decides: txsuite/guard/decide.py (run vs baseline), txsuite/guard/paired.py (same-job A/B),
txsuite/guard/state.py (the machine's state), txsuite/verdict/stats.py (statistics); explained for
users in docs/guard.md. Never imports torch.
"""
from txsuite.guard.baseline import write_baseline
from txsuite.guard.decide import (EXIT_CODES, FAIL, INCONCLUSIVE, PASS, Check, GuardResult, cells_to_confirm,
                                check_per_repeat, check_per_step, compare, merge_confirmation)
from txsuite.guard.metrics import METRICS, Threshold, parse_threshold
from txsuite.guard.side import (BASELINE_FORMAT, BASELINE_SCHEMA, CellSamples, GuardInputError, RepeatSamples,
                              Side, load_side, side_from_records)

__all__ = [
    "BASELINE_FORMAT", "BASELINE_SCHEMA", "EXIT_CODES", "FAIL", "INCONCLUSIVE", "PASS", "CellSamples", "Check",
    "GuardInputError", "GuardResult", "METRICS", "RepeatSamples", "Side", "Threshold", "cells_to_confirm",
    "check_per_repeat", "check_per_step", "compare", "load_side", "merge_confirmation", "parse_threshold",
    "side_from_records", "write_baseline",
]
