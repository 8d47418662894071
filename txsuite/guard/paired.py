"""Same-job A/B (`txsuite ab`): the two versions of the code measured in one job, alternating
repetition by repetition, and decided on the paired ratios (as `asv continuous` compares two
commits on one machine).

Round i runs one repetition of each cell on each side, back to back, the order alternating
from round to round (ABBA...), so the two repetitions of a pair share the machine's state of
that minute. For each pair the statistic of each side (the median of its per-step values for
time, its value for memory and loss) gives one log ratio d_i = log(head_i / base_i). A pair
is left out when either repetition ran while the machine was in a slow state (its probe,
txsuite.guard.state), unless the round ran in lockstep (below). The two processes of a pair
can still run in different states of the machine (on a shared virtual machine the states last
seconds and change what a step costs by a quarter), which their probes see: a time metric's
d_i is brought to the machine's best state, d_i + P * (log f_head - log f_base), with each
side's state factor f and the metric's power P (1 for a rate, -1 for a duration), as the run
report does (txsuite.verdict.state). The interval of the ratio is
exp(mean d +- t * sd(d) / sqrt(n)), with Student's t on n - 1 degrees of freedom; the three
verdicts follow from it as in txsuite.guard.decide.judge. The step counters are compared exactly.

Steps in lockstep: when the two repetitions of a round ran at once, a training step at a time
(txsuite.run.lockstep), a per-step metric's d_i comes from the round's step pairs instead: the
median over ABBA blocks of the pairs' log ratios (txsuite.verdict.rounds.step_pairs_log_ratio).
A neighbour's slow spell then slows both steps of a pair, and cancels, so a round in lockstep
is kept whatever the machine's state (the machine lines say so). The round stays the unit
(its steps share two processes and are not independent samples): the interval is over rounds,
as above. Memory and loss are one value per repetition either way.

Sequential looks: the orchestrator may decide after a few rounds and, while a check is
INCONCLUSIVE, run more rounds and look again. Every look spends part of alpha (Bonferroni over
the planned looks, `looks`), so the chance of a false FAIL over all looks together stays at
most alpha, and so does the chance of a false PASS.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from txsuite.config.metrics import BY_NAME
from txsuite.guard.decide import (FAIL, INCONCLUSIVE, PASS, Check, GuardResult, Threshold, check_exact, inconclusive,
                                judge)
from txsuite.guard.metrics import METRICS, per_step_values
from txsuite.guard.side import CellSamples, Side
from txsuite.guard.state import SLOW_STATE, best_probe, slowdown, state_factor
from txsuite.verdict import state as machine_state
from txsuite.verdict import Comparison
from txsuite.verdict.rounds import step_pairs_log_ratio
from txsuite.measure.counters import describe_difference


def look_schedule(min_rounds: int, max_rounds: int) -> list[int]:
    """The rounds after which the pairs are looked at: min_rounds, then doubling, and
    max_rounds last (e.g. 4, 8, 16)."""
    looks, n = [], max(2, min_rounds)
    while n < max_rounds:
        looks.append(n)
        n *= 2
    looks.append(max_rounds)
    return sorted(set(looks))


@dataclass
class PairedCell:
    """The repetitions of one cell on both sides, round by round (the same index, one pair)."""
    label: str
    cell_id: str
    base: list  # RepeatSamples, round order
    head: list


@dataclass
class PairedOutcome:
    result: GuardResult
    pairs_used: dict[str, int] = field(default_factory=dict)  # cell label -> pairs in a good state


def _statistic(rep, metric: str) -> float | None:
    spec = METRICS[metric]
    if spec.per_step:
        if not rep.step_times_s:
            return rep.summary.get(metric)
        values = per_step_values(metric, np.asarray(rep.step_times_s, dtype=float), rep)
        return None if values is None else float(spec.stat(values[None, :])[0])
    value = getattr(rep, metric, None)
    return float(value) if value is not None and value > 0 else None


# label -> round -> (base s, head s) of each measured step pair run in lockstep
StepPairs = Mapping[str, Mapping[int, Sequence[tuple[float, float]]]]


@dataclass(frozen=True)
class RoundPair:
    """One round of one cell on one metric: each side's statistic, and the round's log ratio."""
    base: float
    head: float
    log_ratio: float
    lockstep: bool  # the log ratio comes from step pairs in lockstep
    state_adjusted: bool = False  # each side's time brought to the machine's best state by its probes


def decide_pairs(cells: list[PairedCell], thresholds: dict[str, Threshold], alpha: float, looks: int,
                 base_name: str, head_name: str, slow_state: float = SLOW_STATE,
                 lockstep: StepPairs | None = None) -> PairedOutcome:
    """Decide every cell x guarded metric on the pairs so far, spending alpha / looks.
    `lockstep`: the step pairs of the rounds whose two repetitions ran in lockstep."""
    alpha_look = alpha / max(1, looks)
    confidence = 1.0 - 2.0 * alpha_look
    all_reps = [r for c in cells for r in c.base + c.head]
    best = best_probe(all_reps)
    rows: list[Check] = []
    machine: list[str] = []
    used: dict[str, int] = {}
    for cell in cells:
        n = min(len(cell.base), len(cell.head))
        in_lockstep = (lockstep or {}).get(cell.label, {})
        worst_of = [max(s for s in (slowdown(b, best), slowdown(h, best), 1.0) if s is not None)
                    for b, h in zip(cell.base[:n], cell.head[:n])]
        slow = [worst > slow_state for worst in worst_of]
        # a slow state caught one repetition of a pair and not the other; in lockstep it caught
        # the steps of both sides alike, so such a round is kept
        kept = [bool(in_lockstep.get(b.repeat)) for b in cell.base[:n]]
        good = [not s or k for s, k in zip(slow, kept)]
        for what, picked in (("excluded", [s and not k for s, k in zip(slow, kept)]),
                             ("kept: their steps ran in lockstep, both sides alike",
                              [s and k for s, k in zip(slow, kept)])):
            if any(picked):
                worst = max(w for w, p in zip(worst_of, picked) if p)
                machine.append(f"{cell.label}: {picked.count(True)} of {n} pairs ran while this machine was up to "
                               f"{worst:.1f}x slower than its best (the line is {slow_state:g}x); {what}")
        used[cell.label] = good.count(True)
        for metric, thr in thresholds.items():
            judged = BY_NAME[metric].judged_on or metric
            check = Check(cell_id=cell.cell_id, label=cell.label, metric=metric, threshold=thr.text,
                          judged_on=judged if judged != metric else None)
            if BY_NAME[judged].exact:
                run = [getattr(r, judged) for r in cell.head[:n] if getattr(r, judged) is not None]
                base = [getattr(r, judged) for r in cell.base[:n] if getattr(r, judged) is not None]
                rows.append(check_exact(cell.cell_id, cell.label, metric, thr, run, base) if run and base else
                            inconclusive(check, f"{judged} is not counted for this cell", "a cell that is counted"))
                continue
            time_metric = METRICS[judged].per_step
            steps = (lockstep or {}).get(cell.label, {}) if time_metric else {}
            pairs = [_round_pair(b, h, judged, steps.get(b.repeat), best)
                     for (b, h), ok in zip(zip(cell.base[:n], cell.head[:n]), good) if ok or not time_metric]
            rows.append(_paired_check(check, thr, [p for p in pairs if p is not None], confidence))
    result = GuardResult(run=head_name, baseline=base_name, rows=rows, env_differences=[],
                         normalization="none: the two sides ran in one job on this machine",
                         normalize_mode="none", notes=[], alpha=alpha, guard={m: t.text for m, t in thresholds.items()},
                         counters=_counter_differences(cells), machine=machine, slow_state=slow_state)
    result.notes.append(f"paired decision: each look spends alpha/{looks} = {alpha_look:.2g} per side "
                        f"({confidence:.2%} intervals), so over all looks a false FAIL stays below {alpha:g}")
    return PairedOutcome(result=result, pairs_used=used)


def _round_pair(b, h, metric: str, steps: Sequence[tuple[float, float]] | None,
                best: float | None = None) -> RoundPair | None:
    """The round's pair on `metric`; from its step pairs when it ran in lockstep (both sides in
    one state), else from each side's statistic, time brought to the machine's best state by
    each side's probes. None when a side lacks the metric."""
    sb, sh = _statistic(b, metric), _statistic(h, metric)
    if not (sb and sh):
        return None
    if steps:
        times = np.asarray(steps, dtype=float)  # [pair, side]: base s, head s
        vb, vh = per_step_values(metric, times[:, 0], b), per_step_values(metric, times[:, 1], h)
        if vb is not None and vh is not None:
            return RoundPair(sb, sh, step_pairs_log_ratio(vh, vb), lockstep=True)
    fb, fh = state_factor(b, best), state_factor(h, best)
    if fb and fh and metric in machine_state.POWER:
        adjusted = machine_state.adjust(metric, sh, fh) / machine_state.adjust(metric, sb, fb)
        return RoundPair(sb, sh, math.log(adjusted), lockstep=False, state_adjusted=True)
    return RoundPair(sb, sh, math.log(sh / sb), lockstep=False)


def _paired_check(check: Check, thr: Threshold, pairs: list[RoundPair], confidence: float) -> Check:
    check.samples_run = check.samples_base = f"{len(pairs)} pairs"
    check.ci_label = f"{confidence:.2%} CI"
    if len(pairs) < 2:
        return inconclusive(check, f"{len(pairs)} pair(s) measured in a good machine state; at least 2 are needed",
                            "more rounds (--max-rounds), on a quieter machine")
    d = np.array([p.log_ratio for p in pairs])
    sd = float(d.std(ddof=1))
    interval = Comparison.of_log_ratio(float(d.mean()), sd / math.sqrt(len(d)), len(d) - 1.0, confidence, True)
    check.baseline = statistics.median(p.base for p in pairs)
    check.now = statistics.median(p.head for p in pairs)
    check.ratio = interval.ratio
    check.ci = (interval.low, interval.high)
    in_lockstep, adjusted = sum(p.lockstep for p in pairs), sum(p.state_adjusted for p in pairs)
    check.detail = (f"geometric mean of {len(pairs)} paired ratios, sd {sd:.1%}"
                    + (f"; {adjusted} of them with each side brought to the machine's best state by its probes"
                       if adjusted else "")
                    + (f"; {in_lockstep} of them rounds with steps in lockstep (each the median of its step pairs)"
                       if in_lockstep else ""))
    judge(check, thr, confidence)
    if check.verdict == INCONCLUSIVE:
        check.resolve = "more rounds (--max-rounds, --budget): the interval narrows as pairs accumulate"
    return check


def _counter_differences(cells: list[PairedCell]) -> list[str]:
    lines = []
    for cell in cells:
        base = next((r.step_op_counts for r in cell.base if r.step_op_counts is not None), None)
        head = next((r.step_op_counts for r in cell.head if r.step_op_counts is not None), None)
        if base is None or head is None:
            continue
        diff = describe_difference(base, head)
        if diff:
            b, h = cell.base[0], cell.head[0]
            flops = (f"; FLOPs per step {h.step_flops / b.step_flops - 1:+.2%}"
                     if h.step_flops and b.step_flops else "")
            lines.append(f"{cell.label}: per step {'; '.join(diff)}{flops}")
    return lines


def paired_cells(base: Side, head: Side, labels: list[str]) -> list[PairedCell]:
    """Cells matched by label (the two versions may hash a cell differently), repetitions in
    round order."""
    def by_label(side: Side) -> dict[str, CellSamples]:
        return {c.label: c for c in side.cells.values()}
    b, h = by_label(base), by_label(head)
    out = []
    for label in labels:
        if label in b and label in h:
            bc, hc = b[label], h[label]
            rounds = sorted({r.repeat for r in bc.repeats} & {r.repeat for r in hc.repeats})
            out.append(PairedCell(label=label, cell_id=hc.cell_id,
                                  base=[next(r for r in bc.repeats if r.repeat == i) for i in rounds],
                                  head=[next(r for r in hc.repeats if r.repeat == i) for i in rounds]))
    return out


__all__ = ["FAIL", "INCONCLUSIVE", "PASS", "PairedCell", "PairedOutcome", "RoundPair", "StepPairs", "decide_pairs",
           "look_schedule", "paired_cells"]
