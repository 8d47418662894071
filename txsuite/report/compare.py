"""render_compare: the same matrix run twice (two machines, two commits), side by side.

Cells are matched by cell id (the hash of the resolved config); a cell whose config changed
in an irrelevant way keeps its label, so unmatched cells are then paired by label. Ratios are
B / A: above 1 means run B has more of it (faster for tokens/s, heavier for memory).

A ratio is called a change (faster, slower, lighter, heavier, better, worse) only when the
verdict engine separates it (txsuite/verdict/runs.py): the two runs' repetitions of the cell, with
the repetitions' noise pooled over every matched cell, and for time the level of a whole run,
which all repetitions of a run share (`run_prior`, txsuite/verdict/run_noise.py). Every test of
the page is made at 95 % for the whole family (Bonferroni over cells x metrics), so two runs of
the same code read "no change beyond noise" at least 95 % of the time. Memory is judged on the
part the cell controls (train memory); the peak, which includes the interpreter, is shown
uncoloured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from txsuite.config.metrics import BY_NAME, REGISTRY
from txsuite.report import formatting as fmt, palettes
from txsuite.report.charts import Chart, si_formatter
from txsuite.report.environment import env_diff
from txsuite.report.frame import CellTable
from txsuite.report.render import render_to_file
from txsuite.report.run_report import table_for
from txsuite.results import Run, RunFolder
from txsuite.report.svg import formatter, plot_text, report_style, subplots, to_svg
from txsuite.report.tableview import Column, TableCell, TableView, sort_key, verdict_class
from txsuite.verdict import Comparison, in_words
from txsuite.verdict.words import is_better, is_worse
from txsuite.verdict.run_noise import run_prior
from txsuite.verdict.runs import RunNoise

# (metric, title, kind, higher is better), from the metric registry (txsuite/config/metrics.py)
COMPARED = [(m.name, m.title, m.kind, m.higher_is_better) for m in REGISTRY if m.compared]
FAMILY_LEVEL = 0.95  # the chance that two runs of the same code show no change beyond noise anywhere
MAX_COMPARE_BARS = 40


@dataclass
class RunComparison:
    pairs: pd.DataFrame  # one row per matched cell: label, a_/b_ metrics, <metric>_ratio, <metric>_verdict
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    matched_by_label: int = 0
    tests: int = 0  # cell x metric comparisons the engine made (the Bonferroni family)
    noise: dict[str, RunNoise] = field(default_factory=dict)  # metric judged -> its noise model


def compare_tables(a: CellTable, b: CellTable) -> RunComparison:
    cells_a, cells_b = a.cells, b.cells
    if cells_a.empty or cells_b.empty:
        empty = pd.DataFrame(columns=["cell_id", "label"])
        return RunComparison(empty, only_a=_labels(cells_a), only_b=_labels(cells_b))
    matches: list[tuple[int, int, str]] = []
    ids_b = {cid: i for i, cid in enumerate(cells_b["cell_id"])}
    used_b: set[int] = set()
    unmatched_a = []
    for i, cid in enumerate(cells_a["cell_id"]):
        if cid in ids_b:
            matches.append((i, ids_b[cid], "cell id"))
            used_b.add(ids_b[cid])
        else:
            unmatched_a.append(i)
    # Fallback: a unique label on both sides names the same cell.
    labels_b: dict[str, list[int]] = {}
    for j, label in enumerate(cells_b["label"]):
        if j not in used_b and label:
            labels_b.setdefault(_norm(label), []).append(j)
    still_a = []
    by_label = 0
    for i in unmatched_a:
        label = _norm(cells_a["label"].iloc[i])
        hits = labels_b.get(label, []) if label else []
        if len(hits) == 1 and hits[0] not in used_b:
            matches.append((i, hits[0], "label"))
            used_b.add(hits[0])
            by_label += 1
        else:
            still_a.append(i)

    rows = []
    for i, j, how in matches:
        ra, rb = cells_a.iloc[i], cells_b.iloc[j]
        row = {"cell_id": ra["cell_id"], "cell_id_b": rb["cell_id"], "label": ra["label"] or ra["short_label"],
               "matched_by": how, "status_a": ra["status"], "status_b": rb["status"],
               "repeats_a": ra["repeats_ok"], "repeats_b": rb["repeats_ok"]}
        for metric, _, _, _ in COMPARED:
            va, vb = ra[metric], rb[metric]
            row[f"a_{metric}"], row[f"b_{metric}"] = va, vb
            row[f"{metric}_ratio"] = vb / va if fmt.is_number(va) and fmt.is_number(vb) and va else np.nan
        rows.append(row)
    only_b = [j for j in range(len(cells_b)) if j not in used_b]
    out = RunComparison(pd.DataFrame(rows), only_a=[_label(cells_a.iloc[i]) for i in still_a],
                        only_b=[_label(cells_b.iloc[j]) for j in only_b], matched_by_label=by_label)
    _judge(out, a.repeats, b.repeats)
    return out


def _repetitions(repeats: pd.DataFrame, cell_id: str, metric: str) -> list[float]:
    """The metric's positive values over the cell's ok repetitions."""
    if metric not in repeats:
        return []
    ok = repeats[(repeats["cell_id"] == cell_id) & (repeats["status"] == "ok")]
    return [float(v) for v in ok[metric] if fmt.is_number(v) and v > 0]


def _judge(c: RunComparison, reps_a: pd.DataFrame, reps_b: pd.DataFrame) -> None:
    """`<metric>_verdict` (B than A, in the metric's words; None for a metric judged through
    another, and where a run lacks the cell's values) for every matched cell and compared
    metric: one family of tests at FAMILY_LEVEL."""
    p = c.pairs
    judged = {metric: BY_NAME[metric].judged_on or metric for metric, _, _, _ in COMPARED}
    values = {(k, metric): (_repetitions(reps_a, row["cell_id"], judged[metric]),
                            _repetitions(reps_b, row["cell_id_b"], judged[metric]))
              for k, row in p.iterrows() for metric in judged if judged[metric] == metric}
    for metric in set(judged.values()):
        groups = [g for (_, m), pair in values.items() if m == metric for g in pair if len(g) >= 2]
        prior = run_prior(metric)
        c.noise[metric] = RunNoise.two_level(groups, prior) if prior else RunNoise.measured_only(groups)
    # a comparison is tested when both runs have the cell and its metric's repetition noise is known
    c.tests = sum(1 for (_, metric), (va, vb) in values.items() if va and vb and c.noise[metric].rep_sigma is not None)
    level = 1.0 - (1.0 - FAMILY_LEVEL) / max(c.tests, 1)
    for metric in judged:
        verdicts = []
        for k, _ in p.iterrows():
            va, vb = values.get((k, metric), ([], []))
            if judged[metric] != metric or not va or not vb:
                verdicts.append(None)  # the whole peak: shown, judged through train memory
                continue
            spec = BY_NAME[metric]
            comparison: Comparison = c.noise[metric].compare(vb, va, bool(spec.higher_is_better), level, spec.resolution)
            verdicts.append(in_words(comparison.verdict, metric))
        p[f"{metric}_verdict"] = verdicts


def render_compare(run_a: Path, run_b: Path, out_path: Path) -> Path:
    return render_runs(RunFolder(run_a).load(), RunFolder(run_b).load(), out_path)[0]


def render_runs(a: Run, b: Run, out_path: Path) -> tuple[Path, list[str]]:
    """Write the comparison page of two loaded runs; -> (its path, the summary's sentences)."""
    comparison = compare_tables(table_for(a), table_for(b))
    with report_style():
        charts = [ratio_bars(comparison), throughput_a_vs_b(comparison, _name(a), _name(b))]
    diff = env_diff(a, b)
    findings = compare_findings(comparison)
    path = render_to_file(
        "compare.j2", out_path, a=a, b=b, name_a=_name(a), name_b=_name(b),
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        findings=different_experiments(a, b) + findings, comparison=comparison,
        table=comparison_view(comparison), charts=charts, env=diff,
        env_differences=[row.key for row in diff if row.differs],
    )
    return path, findings


def different_experiments(a: Run, b: Run) -> list[str]:
    """A warning when the two runs are not of one matrix: their ratios then compare two
    experiments, not two machines or two commits."""
    if a.name == b.name:
        return []
    return [f"Warning: these are runs of different matrices (A: {a.name}, B: {b.name}); cells are matched by "
            f"their settings, so a ratio compares two experiments, not two machines or two commits."]


def compare_findings(c: RunComparison) -> list[str]:
    """Plain sentences for the top of the compare report: what changed beyond noise, and only that."""
    p = c.pairs
    out = [f"{len(p)} cell{'s' if len(p) != 1 else ''} in both runs"
           + (f" ({c.matched_by_label} matched by label because their config changed)" if c.matched_by_label else "")
           + f"; {len(c.only_a)} only in A, {len(c.only_b)} only in B."]
    if p.empty:
        return out
    changes = []
    for metric, title, _, _ in COMPARED:
        column = f"{metric}_verdict"
        if column not in p:
            continue
        moved = p[p[column].map(lambda v: is_better(v) or is_worse(v))]
        for word in dict.fromkeys(moved[column]):
            rows = moved[moved[column] == word]
            listed = ", ".join(f"{r['label']} {_ratio_text(r[f'{metric}_ratio'], metric)}" for _, r in rows.iterrows())
            changes.append(f"{title}: {word} beyond noise in {len(rows)} cell{'s' if len(rows) != 1 else ''} "
                           f"({listed}).")
    if changes:
        out += changes
    elif c.tests:
        out.append(f"No change beyond noise: none of the {c.tests} comparisons (cells x metrics) separates the two "
                   f"runs at {FAMILY_LEVEL:.0%} for the whole family.")
    else:
        out.append("Not tested against noise: a cell needs two repetitions in each run.")
    out.append(_spread_sentence(p, c))
    changed = p[p["status_a"] != p["status_b"]]
    for _, row in changed.iterrows():
        out.append(f"Status changed for {row['label']}: {row['status_a']} in A, {row['status_b']} in B.")
    return out


def _spread_sentence(p: pd.DataFrame, c: RunComparison) -> str:
    """How far throughput moved overall, against how far a whole run moves by itself."""
    tok = p["tokens_per_s_ratio"].dropna()
    if not len(tok):
        return "No cell has a throughput in both runs."
    noise = c.noise.get("tokens_per_s")
    run = (f"; a whole run's throughput moves by {noise.run_sigma:.0%} (sd) between runs of the same code "
           f"({noise.describe_run_part()})") if noise is not None and noise.run_sigma else ""
    return (f"Throughput B/A: geometric mean {math.exp(np.log(tok).mean()):.3f}× over {len(tok)} cells "
            f"(range {tok.min():.2f}× to {tok.max():.2f}×){run}.")


def _ratio_text(ratio: object, metric: str) -> str:
    return f"{float(ratio):.3f}×" if metric == "val_loss" and fmt.is_number(ratio) else \
        f"{float(ratio):.2f}×" if fmt.is_number(ratio) else fmt.MISSING


def comparison_view(c: RunComparison) -> TableView:
    columns = [Column("cell")]
    for _, title, _, _ in COMPARED:
        columns += [Column(f"{title} A", True), Column(f"{title} B", True), Column(f"{title} B/A", True)]
    columns += [Column("status A"), Column("status B")]
    view = TableView(columns)
    for _, row in c.pairs.iterrows():
        line = [TableCell(row["label"], row["label"], "label",
                     sub=row["cell_id"] + (" · matched by label" if row["matched_by"] == "label" else ""))]
        for metric, _, kind, higher_better in COMPARED:
            ratio = row[f"{metric}_ratio"]
            line += [TableCell(fmt.by_kind(row[f"a_{metric}"], kind), sort_key(row[f"a_{metric}"]), "num"),
                     TableCell(fmt.by_kind(row[f"b_{metric}"], kind), sort_key(row[f"b_{metric}"]), "num"),
                     TableCell(fmt.ratio(ratio) if metric != "val_loss" else _ratio3(ratio), sort_key(ratio),
                               "num ratio " + verdict_class(row.get(f"{metric}_verdict")),
                               sub=_verdict_sub(row.get(f"{metric}_verdict")))]
        line += [TableCell(row["status_a"], row["status_a"], f"status-{row['status_a']}"),
                 TableCell(row["status_b"], row["status_b"], f"status-{row['status_b']}")]
        view.rows.append(line)
        view.row_classes.append("status-changed" if row["status_a"] != row["status_b"] else "")
    return view


# ------------------------------------------------------------------ charts

def ratio_bars(c: RunComparison) -> Chart:
    chart = Chart("compare-ratios", "Ratios B / A per cell",
                  "Bars right of 1× mean run B has more: faster for tokens/s, heavier for memory, "
                  "worse for validation loss.")
    p = c.pairs
    ratio_cols = [f"{m}_ratio" for m, _, _, _ in COMPARED]
    if p.empty or p[ratio_cols].notna().sum().sum() == 0:
        chart.note = "no cell has a metric in both runs"
        return chart
    p = p[p[ratio_cols].notna().any(axis=1)]
    if ((p[ratio_cols] - 1.0).abs() < 0.005).where(p[ratio_cols].notna(), True).all().all():
        chart.note = "every ratio is within 0.5% of 1×: the two runs measured the same"
        return chart
    if len(p) > MAX_COMPARE_BARS:
        # The cells that moved most (in either direction) are the ones worth a look.
        moved = (np.log(p["tokens_per_s_ratio"].fillna(1.0))).abs()
        p = p.loc[moved.sort_values(ascending=False).index[:MAX_COMPARE_BARS]]
        chart.note = f"showing the {MAX_COMPARE_BARS} cells whose throughput moved most; every cell is in the table"
    # Bars grow from 1× (no change) so a 3% shift is visible; three bars per cell, one per metric.
    colors = palettes.deep(len(COMPARED))
    n, height = len(p), 0.8 / len(COMPARED)
    fig, ax = subplots(figsize=(9, 1.2 + 0.5 * n))
    centre = np.arange(n)[::-1].astype(float)
    values_seen = [1.0]
    for k, ((metric, title, _, _), color) in enumerate(zip(COMPARED, colors)):
        ratios = p[f"{metric}_ratio"].to_numpy(dtype=float)
        y = centre + 0.4 - height * (k + 0.5)
        ax.barh(y, np.nan_to_num(ratios - 1.0), left=1.0, height=height * 0.92, color=color, label=title)
        for yv, r in zip(y, ratios):
            if np.isfinite(r):
                values_seen.append(r)
            if np.isfinite(r) and abs(r - 1.0) >= 0.005:  # no bar, no text: "unchanged" reads clearer
                ax.annotate(f"{r:.2f}×", (r, yv), xytext=(3 if r >= 1 else -3, 0), textcoords="offset points",
                            ha="left" if r >= 1 else "right", va="center", fontsize=7)
    lo, hi = min(values_seen), max(values_seen)
    pad = max(hi - lo, 0.05) * 0.18
    ax.set_xlim(lo - pad, hi + pad)
    ax.axvline(1.0, color="#222", lw=1)
    ax.set_yticks(centre)
    ax.set_yticklabels([plot_text(s if len(s) <= 42 else s[:41] + "…") for s in p["label"]])
    ax.set_ylim(-0.6, n - 0.4)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("B / A")
    ax.xaxis.set_major_formatter(formatter(lambda v, _: f"{v:g}×"))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, title="metric")
    chart.svg = to_svg(fig)
    return chart


def throughput_a_vs_b(c: RunComparison, name_a: str, name_b: str) -> Chart:
    chart = Chart("compare-scatter", "Throughput, run A against run B",
                  "One dot per cell. On the diagonal the two runs agree; above it B is faster.")
    p = c.pairs.dropna(subset=["a_tokens_per_s", "b_tokens_per_s"]) if not c.pairs.empty else c.pairs
    if p.empty:
        chart.note = "no cell has a throughput in both runs"
        return chart
    fig, ax = subplots(figsize=(5.6, 5.0))
    ax.scatter(p["a_tokens_per_s"], p["b_tokens_per_s"], s=36, color="#4c72b0", edgecolors="white", zorder=3)
    lo = min(p["a_tokens_per_s"].min(), p["b_tokens_per_s"].min()) * 0.9
    hi = max(p["a_tokens_per_s"].max(), p["b_tokens_per_s"].max()) * 1.1
    ax.plot([lo, hi], [lo, hi], color="#888", ls="--", lw=1)
    if hi / lo > 20:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(plot_text(f"A: {name_a} (tokens/s)"))
    ax.set_ylabel(plot_text(f"B: {name_b} (tokens/s)"))
    ax.xaxis.set_major_formatter(si_formatter())
    ax.yaxis.set_major_formatter(si_formatter())
    chart.svg = to_svg(fig)
    return chart


# ------------------------------------------------------------------ helpers

def _name(run: Run) -> str:
    return f"{run.name} / {run.run_id}"


def _norm(label: object) -> str:
    return " ".join(str(label or "").split())


def _label(row: pd.Series) -> str:
    return f"{row['label'] or row['short_label']} ({row['cell_id']})"


def _labels(cells: pd.DataFrame) -> list[str]:
    return [_label(row) for _, row in cells.iterrows()]


def _verdict_sub(verdict: object) -> str:
    """Below a ratio: the verdict when it separates, so the table reads without the colours."""
    return str(verdict) if is_better(verdict) or is_worse(verdict) else ""


def _ratio3(value: object) -> str:
    return f"{float(value):.3f}×" if fmt.is_number(value) else fmt.MISSING
