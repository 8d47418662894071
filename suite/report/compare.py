"""render_compare: the same matrix run twice (two machines, two commits), side by side.

Cells are matched by cell id (the hash of the resolved config); a cell whose config changed
in an irrelevant way keeps its label, so unmatched cells are then paired by label. Ratios are
B / A: above 1 means run B has more of it (faster for tokens/s, heavier for memory).

A ratio is coloured better or worse only when the runs' repetitions back it: two or more on each
side, every repetition of B beyond every repetition of A, and a change of at least 3 %. A
throughput ratio must also lie beyond what a whole run's level moves between two runs of
unchanged code (suite.guard.noise: 16 % sd on a shared 2-core runner, so beyond 0.59x-1.69x at
the guard's 1 % level): the repetitions of one run share its level, so their separation alone
says little. Memory is judged on the part the cell
controls (train memory: peak minus the memory before training); the peak, which includes the
interpreter's own start-up size, is shown uncoloured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from suite.config.metrics import BY_NAME, REGISTRY
from suite.measure.run_noise import RUN_NOISE
from suite.report import formatting as fmt, palettes
from suite.report.charts import Chart, si_formatter
from suite.report.environment import env_diff
from suite.report.frame import CellTable
from suite.report.render import render_to_file
from suite.report.run_report import table_for
from suite.results import Run, RunFolder
from suite.report.svg import formatter, plot_text, report_style, subplots, to_svg
from suite.report.tableview import Column, TableCell, TableView, ratio_class, sort_key

# (metric, title, kind, higher is better), from the metric registry (suite/config/metrics.py)
COMPARED = [(m.name, m.title, m.kind, m.higher_is_better) for m in REGISTRY if m.compared]
RUN_BAND_Z = 2.326  # one-sided 1 %, the guard's default alpha: the band a run-to-run ratio of time stays in
MAX_COMPARE_BARS = 40


@dataclass
class Comparison:
    pairs: pd.DataFrame  # one row per matched cell: label, a_/b_ metrics, <metric>_ratio
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    matched_by_label: int = 0


def compare_tables(a: CellTable, b: CellTable) -> Comparison:
    cells_a, cells_b = a.cells, b.cells
    if cells_a.empty or cells_b.empty:
        empty = pd.DataFrame(columns=["cell_id", "label"])
        return Comparison(empty, only_a=_labels(cells_a), only_b=_labels(cells_b))
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
            row[f"{metric}_separated"] = _separated(ra, rb, metric)
        rows.append(row)
    only_b = [j for j in range(len(cells_b)) if j not in used_b]
    return Comparison(pd.DataFrame(rows), only_a=[_label(cells_a.iloc[i]) for i in still_a],
                      only_b=[_label(cells_b.iloc[j]) for j in only_b], matched_by_label=by_label)


def render_compare(run_a: Path, run_b: Path, out_path: Path) -> Path:
    a, b = RunFolder(run_a).load(), RunFolder(run_b).load()
    comparison = compare_tables(table_for(a), table_for(b))
    with report_style():
        charts = [ratio_bars(comparison), throughput_a_vs_b(comparison, _name(a), _name(b))]
    diff = env_diff(a, b)
    return render_to_file(
        "compare.j2", out_path, a=a, b=b, name_a=_name(a), name_b=_name(b),
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        findings=different_experiments(a, b) + compare_findings(comparison), comparison=comparison,
        table=comparison_view(comparison), charts=charts, env=diff,
        env_differences=[row.key for row in diff if row.differs],
    )


def different_experiments(a: Run, b: Run) -> list[str]:
    """A warning when the two runs are not of one matrix: their ratios then compare two
    experiments, not two machines or two commits."""
    if a.name == b.name:
        return []
    return [f"Warning: these are runs of different matrices (A: {a.name}, B: {b.name}); cells are matched by "
            f"their settings, so a ratio compares two experiments, not two machines or two commits."]


def _separated(ra: pd.Series, rb: pd.Series, metric: str) -> bool:
    """Two or more repetitions a side, every repetition of one run beyond every repetition of
    the other, and for time the ratio beyond the run-level band: then, and only then, is a
    ratio a change rather than noise."""
    lo_a, hi_a = ra.get(f"{metric}_min"), ra.get(f"{metric}_max")
    lo_b, hi_b = rb.get(f"{metric}_min"), rb.get(f"{metric}_max")
    if min(ra["repeats_ok"], rb["repeats_ok"]) < 2 or not all(fmt.is_number(v) for v in (lo_a, hi_a, lo_b, hi_b)):
        return False
    if not (lo_b > hi_a or hi_b < lo_a):
        return False
    if BY_NAME[metric].per_step:
        va, vb = ra[metric], rb[metric]
        return fmt.is_number(va) and fmt.is_number(vb) and va > 0 and vb > 0 and \
            abs(math.log(vb / va)) > RUN_BAND_Z * math.sqrt(2.0) * RUN_NOISE
    return True


def compare_findings(c: Comparison) -> list[str]:
    """Plain sentences for the top of the compare report."""
    p = c.pairs
    out = [f"{len(p)} cell{'s' if len(p) != 1 else ''} in both runs"
           + (f" ({c.matched_by_label} matched by label because their config changed)" if c.matched_by_label else "")
           + f"; {len(c.only_a)} only in A, {len(c.only_b)} only in B."]
    if p.empty:
        return out
    tok = p["tokens_per_s_ratio"].dropna()
    if len(tok):
        geo = math.exp(np.log(tok).mean())
        out.append(f"Throughput B/A: geometric mean {geo:.3f}× over {len(tok)} cells "
                   f"(range {tok.min():.2f}× to {tok.max():.2f}×).")
        worst, best = p.loc[tok.idxmin()], p.loc[tok.idxmax()]
        if tok.min() < 0.97:
            out.append(f"Largest slow-down: {worst['label']} at {tok.min():.2f}×.")
        if tok.max() > 1.03:
            out.append(f"Largest speed-up: {best['label']} at {tok.max():.2f}×.")
    mem = p["peak_mem_bytes_ratio"].dropna()
    if len(mem):
        out.append(f"Peak memory B/A: geometric mean {math.exp(np.log(mem).mean()):.3f}× "
                   f"(range {mem.min():.2f}× to {mem.max():.2f}×).")
    val = p["val_loss_ratio"].dropna()
    if len(val):
        out.append(f"Validation loss B/A: {val.min():.3f}× to {val.max():.3f}×.")
    changed = p[p["status_a"] != p["status_b"]]
    for _, row in changed.iterrows():
        out.append(f"Status changed for {row['label']}: {row['status_a']} in A, {row['status_b']} in B.")
    return out


def comparison_view(c: Comparison) -> TableView:
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
            judged = BY_NAME[metric].judged_on is None and row[f"{metric}_separated"]
            line += [TableCell(fmt.by_kind(row[f"a_{metric}"], kind), sort_key(row[f"a_{metric}"]), "num"),
                     TableCell(fmt.by_kind(row[f"b_{metric}"], kind), sort_key(row[f"b_{metric}"]), "num"),
                     TableCell(fmt.ratio(ratio) if metric != "val_loss" else _ratio3(ratio), sort_key(ratio),
                               "num ratio " + (ratio_class(ratio, higher_better) if judged else ""))]
        line += [TableCell(row["status_a"], row["status_a"], f"status-{row['status_a']}"),
                 TableCell(row["status_b"], row["status_b"], f"status-{row['status_b']}")]
        view.rows.append(line)
        view.row_classes.append("status-changed" if row["status_a"] != row["status_b"] else "")
    return view


# ------------------------------------------------------------------ charts

def ratio_bars(c: Comparison) -> Chart:
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


def throughput_a_vs_b(c: Comparison, name_a: str, name_b: str) -> Chart:
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


def _ratio3(value: object) -> str:
    return f"{float(value):.3f}×" if fmt.is_number(value) else fmt.MISSING
