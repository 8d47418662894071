"""The report's opening in words: what is fastest, lightest, best-learning, what is on the
Pareto front, and every cell that did not finish, with its reason.

Sentences are returned as small structures (not HTML) so the template escapes every user
string (labels, reasons) and decides the markup.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from txsuite.report import formatting as fmt
from txsuite.report.frame import CellTable
from txsuite.report.pareto import DOMINATED, NEAR_FRONT, UNTESTED_OFF_FRONT
from txsuite.results import RunMeta
from txsuite.verdict import BETTER, UNTESTED, WITHIN_NOISE
from txsuite.verdict.state import SLOW_STATE

NOISY_SPREAD_PCT = 10.0  # tokens/s range over repeats above this share of the median: flag it
MAX_LISTED = 20
MOST_ROUNDS_HINTED = 10  # a not-separated card projects the repetitions that would tell, up to this many


@dataclass
class Finding:
    what: str  # "Fastest"
    cell: str  # the cell's label
    detail: str  # numbers, already formatted
    cell_id: str | None = None  # the cell the card is about, where one is


@dataclass
class Problem:
    label: str
    cell_id: str
    status: str
    repeats: str  # "2 of 3 repeats"
    reason: str

    @property
    def headline(self) -> str:
        """First line of the reason; the rest (a log tail) is shown folded."""
        return self.reason.strip().splitlines()[0] if self.reason.strip() else "no reason recorded"

    @property
    def details(self) -> str:
        lines = self.reason.strip().splitlines()
        return "\n".join(lines[1:]) if len(lines) > 1 else ""


@dataclass
class Summary:
    overview: str
    findings: list[Finding] = field(default_factory=list)
    pareto: list[str] = field(default_factory=list)
    pareto_more: int = 0
    # Cells off the front on the estimates that no cell beats beyond noise (pareto.NEAR_FRONT).
    near_front: list[str] = field(default_factory=list)
    front_note: str = ""  # why the front could not be tested against noise, where it could not
    noisy: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    method: str = ""  # how the verdicts between cells were reached
    status_counts: dict[str, int] = field(default_factory=dict)


def summarize(table: CellTable, meta: RunMeta | None = None) -> Summary:
    """The report's first screen; `meta`: the run's matrix.json (how many rounds it ran and why)."""
    cells, reps = table.cells, table.repeats
    counts = Counter(reps["status"]) if len(reps) else Counter()
    summary = Summary(overview=_overview(table, counts), status_counts=dict(counts))
    if cells.empty:
        summary.notes.append("The run folder holds no records yet.")
        return summary
    base = table.row(table.reference) if table.reference else None

    def vs_base(row: pd.Series) -> str:
        if base is None or row["cell_id"] == base["cell_id"]:
            return " (the reference)" if base is not None else ""
        return (f", {fmt.ratio(row['speedup'])} the reference's speed{_untested(row, 'speed_verdict')} and "
                f"{fmt.ratio(row['mem_ratio'])} its memory{_untested(row, 'memory_verdict')}")

    ok = table.ok
    for finding in (fastest_finding(table), least_memory_finding(table)):
        if finding is not None:
            finding.detail += vs_base(table.row(finding.cell_id))
            summary.findings.append(finding)
    best_loss = best_loss_finding(table)
    if best_loss is not None:
        summary.findings.append(best_loss)
    soonest = soonest_finding(ok)
    if soonest is not None:
        summary.findings.append(soonest)
    mfu = leader_finding(table, "mfu", highest=True, what="Highest MFU", better="higher",
                         detail=lambda r: fmt.percent(r["mfu"]))
    if mfu is not None:
        summary.findings.append(mfu)
    if base is not None:
        summary.findings.append(Finding("Reference", base["label"] or base["short_label"],
                                        f"{fmt.si(base['tokens_per_s'])} tokens/s, "
                                        f"{_memory_text(table, base)}; every ratio is against it"))
    if table.reference_note:
        summary.notes.append(table.reference_note[0].upper() + table.reference_note[1:] + ".")

    front = ok[ok["pareto"]].sort_values("tokens_per_s", ascending=False)
    labels = _labels(front)
    summary.pareto, summary.pareto_more = labels[:MAX_LISTED], max(0, len(labels) - MAX_LISTED)
    summary.near_front = _labels(ok[ok["front"] == NEAR_FRONT])[:MAX_LISTED]
    off_front = ok[ok["front"].isin([NEAR_FRONT, DOMINATED, UNTESTED_OFF_FRONT])]
    if len(off_front) and (off_front["front"] == UNTESTED_OFF_FRONT).all():
        summary.front_note = "one repetition per cell: the cells off the front were not tested against noise"
    noisy = ok[ok["tokens_per_s_spread_pct"] > NOISY_SPREAD_PCT]
    summary.noisy = [f"{name} (±{spread / 2:.0f}%)"
                     for name, spread in zip(_labels(noisy), noisy["tokens_per_s_spread_pct"])][:MAX_LISTED]
    summary.problems = problems(table)
    summary.method = verdict_note(table) + rounds_note(meta)
    return summary


def verdict_note(table: CellTable) -> str:
    """How the verdicts between cells were reached: the noise they used, what was left out."""
    noise = table.verdicts.noise("tokens_per_s")
    slow = table.verdicts.slow.get("tokens_per_s", 0)
    left = f"; {_slow_left_out(slow)}" if slow else ""
    return (f"Verdicts between cells: paired by round, 95 % intervals; throughput noise: {noise.describe()}; "
            f"time brought to the machine's best state by each repetition's probe{left}.")


def rounds_note(meta: RunMeta | None) -> str:
    """' Rounds: ...' for a run with `repeats: {min, max, detect}`: what the rounds it ran detect."""
    if meta is None or meta.detect is None or not meta.detected:
        return ""
    return (f" Rounds: {meta.repeats} and more, up to {meta.max_repeats}, while a {meta.detect:.0%} tokens/s gap "
            f"to the reference was not detectable; {meta.detected}.")


def fastest_finding(table: CellTable) -> Finding | None:
    """The cell with the highest tokens/s, tested against every other cell (`leader_finding`)."""
    return leader_finding(table, "tokens_per_s", highest=True, what="Fastest", better="faster",
                          detail=lambda r: f"{fmt.si(r['tokens_per_s'])} tokens/s, {_memory_text(table, r)}")


def least_memory_finding(table: CellTable) -> Finding | None:
    """The cell with the least memory, judged on the memory the cell controls (train memory)
    where the records have it, tested against every other cell (`leader_finding`)."""
    return leader_finding(table, table.memory_metric, highest=False, what="Least memory", better="lighter",
                          detail=lambda r: f"{_memory_text(table, r)}, {fmt.si(r['tokens_per_s'])} tokens/s")


def _slow_left_out(slow: int) -> str:
    """'N repetitions measured while the machine ran over 2x slower than its best left out'."""
    return (f"{slow} repetition{'s' if slow != 1 else ''} measured while the machine ran over "
            f"{SLOW_STATE:g}x slower than its best left out")


def _untested(row: pd.Series, verdict_column: str) -> str:
    """' (untested)' after a ratio the engine could not test (no two rounds to pair: the medians'
    ratio as measured, which a slow machine state can move far), else nothing."""
    return " (untested)" if row.get(verdict_column) == UNTESTED else ""


def _labels(cells: pd.DataFrame) -> list[str]:
    """Each row's name as the summary writes it: its label, else its short label."""
    return [label or short for label, short in zip(cells["label"], cells["short_label"])]


def _memory_text(table: CellTable, row: pd.Series) -> str:
    """'412 MiB train memory (1.2 GiB peak)', or the peak alone for records without train memory."""
    if table.memory_metric == "train_mem_bytes":
        return f"{fmt.bytes_(row['train_mem_bytes'])} train memory ({fmt.bytes_(row['peak_mem_bytes'])} peak)"
    return f"{fmt.bytes_(row['peak_mem_bytes'])} peak"


def leader_finding(table: CellTable, metric: str, highest: bool, what: str, better: str,
                   detail: Callable[[pd.Series], str]) -> Finding | None:
    """The cell that leads on `metric`, tested against every other cell by the verdict engine
    (paired by round, with the run's pooled noise: txsuite/verdict/rounds.py). A cell the leader
    does not beat beyond noise is not separated from
    it, and the card names it; with one round there is no interval, and the card says so."""
    ok = table.ok
    if not ok[metric].notna().any():
        return None
    row = ok.loc[_leader_index(table, ok, metric, highest)]
    label, text = row["label"] or row["short_label"], detail(row)
    others = ok[(ok["cell_id"] != row["cell_id"]) & ok[metric].notna()]
    if others.empty:
        return Finding(what, label, text, cell_id=row["cell_id"])
    other_names = _labels(others)
    judged = table.verdicts.verdicts([row["cell_id"]] * len(others), others["cell_id"].tolist(), metric)
    verdicts = dict(zip(other_names, judged))
    if all(v == UNTESTED for v in verdicts.values()):
        slow = table.verdicts.slow.get(metric, 0)
        why = _slow_left_out(slow) if slow else "one repetition per cell"
        return Finding(what, label, text + f" ({why}: not tested against noise)", cell_id=row["cell_id"])
    tied = [name for name, verdict in verdicts.items() if verdict != BETTER]
    if not tied:
        return Finding(what, label, text + f"; {better} than every other cell beyond noise",
                       cell_id=row["cell_id"])
    names = ", ".join(tied[:MAX_LISTED]) + (f" and {len(tied) - MAX_LISTED} more" if len(tied) > MAX_LISTED else "")
    tied_names = set(tied)
    ratios = [_ratio_to(table, cell_id, row, metric) for cell_id, name in zip(others["cell_id"], other_names)
              if name in tied_names]
    span = f"{min(ratios):.2f}×" if len(ratios) == 1 else f"{min(ratios):.2f}–{max(ratios):.2f}×"
    return Finding(f"{what}: not separated", f"{label}, {names}",
                   text + f"; {'these reach' if len(tied) > 1 else 'the other reaches'} {span} of it, within noise: "
                          f"no single leader" + _rounds_hint(table, row, others, tied_names, metric),
                   cell_id=row["cell_id"])


def _leader_index(table: CellTable, ok: pd.DataFrame, metric: str, highest: bool):
    """The leading row: on the engine's values (each cell's mean over its rounds, time brought to
    the machine's best state) where every cell has them, so that the leader is the cell the
    comparisons are about; else on the medians as measured."""
    logs = table.verdicts.noise(metric).logs
    candidates = ok[ok[metric].notna()]
    if all(cell_id in logs for cell_id in candidates["cell_id"]):
        centres = pd.Series([statistics.fmean(logs[c].values()) for c in candidates["cell_id"]], index=candidates.index)
        return centres.idxmax() if highest else centres.idxmin()
    return ok[metric].idxmax() if highest else ok[metric].idxmin()


def _ratio_to(table: CellTable, cell_id: str, leader: pd.Series, metric: str) -> float:
    """A tied cell's value over the leader's: the comparison's ratio (rounds paired, time at the
    machine's best state), else the medians' ratio (no round to pair)."""
    ratio = table.verdicts.compare(cell_id, leader["cell_id"], metric).ratio
    if ratio is not None and math.isfinite(ratio):
        return ratio
    value = table.cells.loc[table.cells["cell_id"] == cell_id, metric].iloc[0]
    return float(value) / float(leader[metric])


def _rounds_hint(table: CellTable, leader: pd.Series, others: pd.DataFrame, tied: set[str], metric: str) -> str:
    """What more rounds would tell, projected from this run's noise (Comparison.rounds_to_separate)
    for the tied cell nearest the leader on the medians: the smallest gap, which every other
    separation needs too. One comparison, however many cells tie."""
    leading = float(leader[metric])
    candidates = [(abs(math.log(float(value) / leading)), cell_id)
                  for cell_id, name, value in zip(others["cell_id"], _labels(others), others[metric])
                  if name in tied and float(value) > 0]
    if not candidates or not leading > 0:
        return ""
    nearest = table.verdicts.compare(leader["cell_id"], min(candidates)[1], metric)
    if nearest.verdict != WITHIN_NOISE or nearest.samples < 2:
        return ""
    rounds = nearest.rounds_to_separate(most=MOST_ROUNDS_HINTED)
    if rounds is None:
        return f" (at this run's noise, more than {MOST_ROUNDS_HINTED} repetitions would be needed to separate them)"
    return f" (at this run's noise, `repeats: {rounds}` would separate the nearest, if its gap holds: a projection)"


def best_loss_finding(table: CellTable) -> Finding | None:
    """The cell with the lowest validation loss, unless its lead is within noise: then the card
    names the tie (every cell whose paired difference to it is not significantly worse)."""
    from txsuite.report.quality import tied_with_best

    best, tied = tied_with_best(table.cells, table.repeats)
    if best is None:
        return None
    row = table.row(best)
    label = row["label"] or row["short_label"]
    loss = f"{fmt.plain(row['val_loss_mean'], 4)}" + _interval_text(row, "val_loss", lambda v: fmt.plain(v, 4))
    if tied and table.ok["seeds"].max() < 2:
        return Finding("Lowest validation loss: untested", label,
                       f"{loss}; one seed per cell: training noise is not measured, so no cell is called better or "
                       f"worse (`seeds: 3` measures it)", cell_id=best)
    if not tied:
        return Finding("Best validation loss", label, f"{loss}; every other cell is worse beyond noise "
                                                      f"({row['seeds']} seed{'s' if row['seeds'] != 1 else ''})")
    others = [table.row(c) for c in tied]
    names = ", ".join(r["label"] or r["short_label"] for r in others[:MAX_LISTED])
    more = f" and {len(others) - MAX_LISTED} more" if len(others) > MAX_LISTED else ""
    return Finding("Best validation loss: a tie", f"{label}, {names}{more}",
                   f"lowest {loss}, but the difference to {'each of these' if len(others) > 1 else 'it'} is within "
                   f"noise; no single best")


def soonest_finding(ok: pd.DataFrame) -> Finding | None:
    """The cell that reached the target loss in the least training time. Cells whose 95 %
    intervals over seeds overlap its own are not separated from it: the card names them too
    (with one seed there is no interval, and the card says so)."""
    if not ok["time_to_target_s"].notna().any():
        return None
    row = ok.loc[ok["time_to_target_s"].idxmin()]
    label = row["label"] or row["short_label"]
    detail = f"{fmt.seconds(row['time_to_target_s'])} of training" + _interval_text(row, "time_to_target", fmt.seconds)
    high = row.get("time_to_target_ci_high")
    if not fmt.is_number(high):
        return Finding("Soonest to the target loss", label, detail + " (one seed: no interval, not tested against noise)")
    others = ok[(ok["cell_id"] != row["cell_id"]) & ok["time_to_target_s"].notna()]
    overlapping = [r["label"] or r["short_label"] for _, r in others.iterrows()
                   if not fmt.is_number(r.get("time_to_target_ci_low")) or r["time_to_target_ci_low"] <= high]
    if not overlapping:
        return Finding("Soonest to the target loss", label, detail + "; every other cell's interval lies above")
    names = ", ".join(overlapping[:MAX_LISTED]) + (f" and {len(overlapping) - MAX_LISTED} more"
                                                   if len(overlapping) > MAX_LISTED else "")
    return Finding("Soonest to the target loss: not separated", f"{label}, {names}",
                   detail + "; the intervals of the others overlap it")


def _interval_text(row: pd.Series, column: str, show) -> str:
    lo, hi = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    return f" (95% CI {show(lo)} to {show(hi)})" if fmt.is_number(lo) and fmt.is_number(hi) else ""


def problems(table: CellTable) -> list[Problem]:
    """Every cell repetition that is not ok, grouped per cell, status and reason."""
    reps = table.repeats
    bad = reps[reps["status"] != "ok"]
    out = []
    labels = dict(zip(table.cells["cell_id"], table.cells["label"]))
    totals = dict(zip(table.cells["cell_id"], table.cells["repeats"]))
    groups: dict[tuple, int] = {}
    for cell_id, status, reason in zip(bad["cell_id"], bad["status"], bad["reason"]):
        key = (cell_id, status, reason if isinstance(reason, str) else "")
        groups[key] = groups.get(key, 0) + 1
    for (cell_id, status, reason), n in groups.items():
        total = totals.get(cell_id, n)
        out.append(Problem(label=labels.get(cell_id) or cell_id, cell_id=cell_id, status=status,
                           repeats="every repeat" if n == total else f"{n} of {total} repeats",
                           reason=reason))
    # Failures first (they need action), skips last (they are expected on this host).
    order = {"failed": 0, "oom": 1, "diverged": 2, "timeout": 3, "skipped": 4}
    return sorted(out, key=lambda p: order.get(p.status, 5))


def _overview(table: CellTable, counts: Counter) -> str:
    n_cells = len(table.cells)
    n_records = sum(counts.values())
    if not n_cells:
        return "No cell has finished yet."
    per = table.cells["repeats"]
    repeats = f"{per.iloc[0]} repeat{'s' if per.iloc[0] != 1 else ''} each" if per.nunique() == 1 \
        else f"{per.min()}–{per.max()} repeats each"
    axes = (f" varying {', '.join(table.axes)}" if table.axes else "")
    order = ["ok", "failed", "oom", "diverged", "timeout", "skipped"]
    status = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))
    return f"{n_cells} cell{'s' if n_cells != 1 else ''}{axes}; {repeats}; {n_records} records: {status}."
