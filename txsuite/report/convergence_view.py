"""The report's Convergence section: how good each cell's model is, with its noise, and how
fast it got there (numbers: txsuite.report.quality).

    verdict table   final validation loss (mean, 95 % CI over seeds), the paired difference to
                    the reference with its CI and verdict, the target and time / tokens to it,
                    the gap to the known optimum, the gradient noise scale
    curves          validation loss against tokens and against training wall time (report/curves.py,
                    seaborn's lineplot): the line is the mean over seeds, the band spans the lowest
                    and highest seed
    to target       time and tokens to the target as bars with their 95 % CIs over seeds
    batch           the gradient noise scale B_simple beside steps to the target, against the
                    batch size: where the batch passes B_simple, doubling it stops halving the steps
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from txsuite.report import curves, formatting as fmt
from txsuite.report.charts import Chart, cap_rows, known_optimum, mark_gaps, si_formatter
from txsuite.report.encoding import choose_encoding
from txsuite.report.frame import CellTable
from txsuite.report.svg import plot_text, report_style, subplots, to_svg
from txsuite.report.tableview import Column, TableCell, TableView, sort_key

VERDICT_CLASS = {"better": "better", "worse": "worse"}


def convergence_section(table: CellTable) -> dict[str, Any] | None:
    """None when no cell measured a validation loss (nothing to say about quality)."""
    cells = table.cells
    if "val_loss_mean" not in cells or not cells["val_loss_mean"].notna().any():
        return None
    measured = cells[cells["val_loss_mean"].notna()]
    with report_style():
        charts = [validation_curves(table), to_target_bars(table), noise_scale_vs_batch(table)]
    seeds = sorted({int(s) for s in measured["seeds"] if fmt.is_number(s)})
    return {"table": verdict_table(table, measured), "charts": charts, "notes": _notes(table, measured, seeds),
            "noise": noise_footnotes(measured)}


def _notes(table: CellTable, measured: pd.DataFrame, seeds: list[int]) -> list[str]:
    notes = []
    if seeds == [1]:
        notes.append("One seed per cell: the intervals are validation-set noise only (how much the loss would move "
                     "on other validation sequences), not seed-to-seed training noise. Set seeds: 3 in the matrix "
                     "to measure that.")
    if table.reference is None:
        notes.append("No reference cell, so no differences or verdicts; set reference: in the matrix.")
    targets = measured["target_loss"].dropna().unique() if "target_loss" in measured else []
    if len(targets) == 1:
        notes.append(f"Target validation loss: {fmt.plain(targets[0], 4)} (train.target_loss).")
    never = [r["label"] or r["short_label"] for _, r in measured.iterrows()
             if isinstance(r.get("target_reached"), str) and r["target_reached"].startswith("0 of")]
    if never:
        notes.append("Never reached the target within its steps: " + ", ".join(never) + ".")
    return notes


def verdict_table(table: CellTable, rows: pd.DataFrame) -> TableView:
    columns = [Column("cell", hint="the cell id is below; the reference is marked"),
               Column("seeds", True, "distinct training seeds with an ok repetition"),
               Column("val loss", True, "final validation loss, mean over seeds; below: its 95% CI"),
               Column("Δ vs reference", True, "paired by seed: this cell's loss minus the reference's; below: 95% CI"),
               Column("verdict", hint="better / worse: the CI of Δ excludes 0; within noise: it does not"),
               Column("noise used", hint="what the interval measures"),
               Column("tokens to target", True, "interpolated between evaluations; mean over seeds, 95% CI below"),
               Column("time to target", True, "training seconds (evaluation excluded); mean over seeds, 95% CI below"),
               Column("Δ tokens to target", True, "tokens to target minus the reference's, paired by seed; 95% CI "
                                                  "below; < 0: this cell got there on fewer tokens"),
               Column("reached", hint="seeds that reached the target within the steps"),
               Column("gap to optimum", True, "val loss minus the task's known optimum (synthetic tasks)"),
               Column("B_simple", True, "gradient noise scale in sequences (measure.noise_scale)")]
    view = TableView(columns)
    for _, row in rows.iterrows():
        verdict = row.get("quality_verdict") if isinstance(row.get("quality_verdict"), str) else fmt.MISSING
        view.rows.append([
            TableCell(row["label"] or row["short_label"], row["label"] or row["short_label"], "label",
                      sub=row["cell_id"] + (" · reference" if row["is_reference"] else "")),
            TableCell(fmt.plain(row["seeds"]), sort_key(row["seeds"]), "num"),
            TableCell(fmt.plain(row["val_loss_mean"], 5), sort_key(row["val_loss_mean"]), "num",
                      sub=_ci(row, "val_loss_ci", lambda v: fmt.plain(v, 5))),
            TableCell(fmt.signed(row.get("val_loss_delta")), sort_key(row.get("val_loss_delta")),
                      "num " + VERDICT_CLASS.get(verdict, ""), sub=_ci(row, "val_loss_delta_ci", fmt.signed)),
            TableCell(verdict, verdict, VERDICT_CLASS.get(verdict, "")),
            _noise_cell(row.get("quality_noise")),
            TableCell(fmt.si(row.get("tokens_to_target")), sort_key(row.get("tokens_to_target")), "num",
                      sub=_ci(row, "tokens_to_target_ci", fmt.si)),
            TableCell(fmt.seconds(row.get("time_to_target_s")), sort_key(row.get("time_to_target_s")), "num",
                      sub=_ci(row, "time_to_target_ci", fmt.seconds)),
            TableCell(fmt.signed(row.get("tokens_to_target_delta")), sort_key(row.get("tokens_to_target_delta")),
                      "num " + _saving_class(row), sub=_ci(row, "tokens_to_target_delta_ci", fmt.si)),
            TableCell(_text(row.get("target_reached")), _text(row.get("target_reached"))),
            TableCell(fmt.plain(row.get("gap_to_optimum"), 3), sort_key(row.get("gap_to_optimum")), "num"),
            TableCell(fmt.si(row.get("grad_noise_scale")), sort_key(row.get("grad_noise_scale")), "num"),
        ])
        view.row_classes.append("reference" if row["is_reference"] else "")
    return _without_empty_columns(view)


def _without_empty_columns(view: TableView) -> TableView:
    """Leave out the columns no row has a value in (a run without a target has no tokens to
    target): a column of dashes only widens the table."""
    keep = [j for j, _ in enumerate(view.columns)
            if j == 0 or any(row[j].text not in (fmt.MISSING, "") or row[j].sub for row in view.rows)]
    return TableView([view.columns[j] for j in keep], [[row[j] for j in keep] for row in view.rows],
                     view.row_classes)


# The noise a verdict used (txsuite/verdict/seeds.py, report/quality.py) in a few words, for the
# table; the whole sentence is the cell's tooltip and a footnote under the table.
_NOISE_SHORT = [
    (re.compile(r"^seeds \(t interval over (\d+) seeds, paired\)"), r"\1 seeds, paired"),
    (re.compile(r"^one seed; training noise from the run's"), "1 seed + the run's seed noise"),
    (re.compile(r"^one seed: training noise is not measured"), "1 seed: not measured"),
    (re.compile(r"^not compared: the cells saw different numbers of tokens"), "not compared: unequal tokens"),
]
_AT_BUDGET = re.compile(r" at the common budget of (\S+) tokens")


def short_noise(text: str) -> str:
    for pattern, short in _NOISE_SHORT:
        match = pattern.match(text)
        if match:
            words = match.expand(short)
            break
    else:
        words = re.split(r"[:;(]", text, maxsplit=1)[0].strip()
        words = words if len(words) <= 32 else words[:31] + "…"
    budget = _AT_BUDGET.search(text)
    return words + (f", at {budget.group(1)} tokens" if budget else "")


def _noise_cell(noise: Any) -> TableCell:
    text = _text(noise)
    if text == fmt.MISSING:
        return TableCell(text, text, "small")
    return TableCell(short_noise(text), text, "small noise", title=text)


def noise_footnotes(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(short words, whole sentence) for each distinct noise in the table."""
    texts = [t for t in dict.fromkeys(rows["quality_noise"]) if isinstance(t, str) and t] \
        if "quality_noise" in rows else []
    return [(short_noise(t), t) for t in texts]


def validation_curves(table: CellTable) -> Chart:
    chart = Chart("convergence", "Validation loss against tokens and against training time",
                  "Line: the mean over seeds at each evaluation; band (over tokens): the lowest to the highest "
                  "seed. Over "
                  "training time (evaluation excluded; the median over the cell's repetitions), a faster cell "
                  "reaches a given loss sooner. Dashed: the target; dotted: the task's known optimum.")
    data = curves.collect(table.cells, table.repeats, "eval_curve", min_steps=2)
    if data is None:
        chart.note = "no cell evaluated more than once (set train.eval_every to draw validation curves)"
        return chart
    enc = choose_encoding(data.cells, table.measured_axes)
    facet = curves.facet_axis(data.cells, table.measured_axes, enc)
    targets = table.cells["target_loss"].dropna().unique() if "target_loss" in table.cells else []
    optimum = known_optimum(table)
    lines = ([float(targets[0])] if len(targets) == 1 else []) + ([optimum] if optimum is not None else [])
    fig, grid, coinciding = curves.draw(
        data, enc, [curves.XSpec("tokens", "tokens", format=si_formatter()),
                    curves.XSpec("time", "training wall time (s)")], "validation loss", facet,
        table.measured_axes, y_include=tuple(lines))
    for ax in grid.flat:
        if len(targets) == 1:
            ax.axhline(float(targets[0]), color="#444", ls="--", lw=1)
        if optimum is not None:
            ax.axhline(optimum, color="#888", ls=":", lw=1.2)
    chart.note = curves.note(data, coinciding)
    chart.svg = to_svg(fig)
    return chart


def to_target_bars(table: CellTable) -> Chart:
    chart = Chart("to-target", "Tokens and time to the target loss",
                  "Mean over seeds; whiskers: 95% CI over seeds (none with one seed). Shorter is better. "
                  "Cells that never reached the target are listed below the chart.")
    cells = table.cells
    if "tokens_to_target" not in cells or not cells["tokens_to_target"].notna().any():
        chart.note = "no cell reached a target loss (set train.target_loss and train.eval_every)"
        return chart
    shown, chart.note = cap_rows(cells[cells["tokens_to_target"].notna()], "tokens_to_target", ascending=True,
                                 keep={table.reference})
    never = [r["label"] or r["short_label"] for _, r in cells.iterrows()
             if isinstance(r.get("target_reached"), str) and not fmt.is_number(r.get("tokens_to_target"))]
    if never:
        chart.note = "; ".join(filter(None, [chart.note, "not reached: " + ", ".join(never)]))
    n = len(shown)
    fig, (left, right) = subplots(1, 2, sharey=True, figsize=(10, 1.0 + 0.32 * n), gridspec_kw={"wspace": 0.08})
    ypos = np.arange(n)[::-1]
    colors = ["#c8553d" if r["is_reference"] else "#3b6fb6" for _, r in shown.iterrows()]
    for ax, col, prefix, text, title in (
            (left, "tokens_to_target", "tokens_to_target", fmt.si, "tokens to target"),
            (right, "time_to_target_s", "time_to_target", fmt.seconds, "training time to target (s)")):
        values = shown[col].to_numpy(dtype=float)
        lo = shown[f"{prefix}_ci_low"].to_numpy(dtype=float)
        hi = shown[f"{prefix}_ci_high"].to_numpy(dtype=float)
        err = np.nan_to_num(np.clip(np.vstack([values - lo, hi - values]), 0, None))
        ax.barh(ypos, values, xerr=err, color=colors, height=0.7,
                error_kw={"ecolor": "#333", "elinewidth": 0.9, "capsize": 2})
        ends = np.fmax(values, np.nan_to_num(hi))
        for y, v, end in zip(ypos, values, ends):
            ax.annotate(text(v), (end, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
        ax.set_xlim(0, float(np.nanmax(ends)) * 1.25)
        ax.set_title(title)
        ax.xaxis.set_major_formatter(si_formatter())
        ax.grid(axis="y", visible=False)
        mark_gaps(ax, shown, ypos)
    left.set_yticks(ypos)
    left.set_yticklabels([plot_text(t) for t in shown["short_label"]])
    left.set_ylim(-0.6, n - 0.4)
    chart.svg = to_svg(fig)
    return chart


def noise_scale_vs_batch(table: CellTable) -> Chart:
    chart = Chart("noise-scale", "Gradient noise scale beside steps to target, by batch size",
                  "Left: B_simple (McCandlish et al. 2018) measured in each cell, in sequences, with the line "
                  "B = batch. Right: optimizer steps to the target loss; dashed: B_simple. Below B_simple, "
                  "doubling the batch about halves the steps; above it the steps stop falling, and the extra "
                  "samples buy little.")
    cells = table.cells
    if "grad_noise_scale" not in cells or not cells["grad_noise_scale"].notna().any():
        chart.note = "no cell measured the gradient noise scale (measure.noise_scale: true, grad_accum >= 2)"
        return chart
    rows = cells.assign(batch=cells["cell_id"].map(_batch_sizes(table)))
    rows = rows[rows["batch"].notna()].sort_values("batch", kind="stable")
    if rows["batch"].nunique() < 2:
        chart.note = "drawn when the batch size varies; B_simple of each cell is in the table above"
        return chart
    others = [k for k in table.measured_axes if not _follows(rows, k, "batch")]  # one line per setting of these
    enc = choose_encoding(rows, others)
    fig, (left, right) = subplots(1, 2, figsize=(10.5, 4.0), gridspec_kw={"wspace": 0.25})
    span = np.array([rows["batch"].min() / 1.5, rows["batch"].max() * 1.5])
    left.plot(span, span, color="#888", ls=":", lw=1, label="B = batch")
    groups = rows.groupby([rows[k].map(str) for k in others], sort=False) if others else [("", rows)]
    for _, line in groups:
        first = line.iloc[0]
        style = dict(color=enc.color(first), ls=enc.dash(first), marker="o", lw=1.2)
        noise = line[line["grad_noise_scale"].notna()]
        left.plot(noise["batch"], noise["grad_noise_scale"], **style)
        steps = line[line["steps_to_target"].notna()] if "steps_to_target" in line else line.iloc[0:0]
        right.plot(steps["batch"], steps["steps_to_target"], **style)
        if len(noise):
            right.axvline(float(noise["grad_noise_scale"].median()), color=style["color"], ls="--", lw=0.9)
    for ax, ylabel in ((left, "B_simple (sequences)"), (right, "steps to target")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (sequences per optimizer step)")
        ax.set_ylabel(ylabel)
    if not ("steps_to_target" in rows and rows["steps_to_target"].notna().any()):
        right.text(0.5, 0.5, "no cell reached the target loss", ha="center", va="center", transform=right.transAxes,
                   color="#777")
    handles = enc.legend_handles("line") if (enc.hue_key or enc.style_key) else []
    left.legend(handles=left.get_legend_handles_labels()[0] + handles, frameon=False, loc="upper left")
    chart.svg = to_svg(fig)
    return chart


def _follows(rows: pd.DataFrame, axis: str, by: str) -> bool:
    """Whether an axis only moves with `by` (each batch size has one value of it): e.g. steps
    scaled to keep tokens equal, or a learning rate scaled with the batch."""
    pairs = rows[[axis, by]].astype(str).drop_duplicates()
    return axis.endswith(("micro_batch", "grad_accum", ".dp")) or len(pairs) == rows[by].nunique()


def _batch_sizes(table: CellTable) -> dict[str, float]:
    reps = table.repeats
    if "samples_per_step" not in reps:
        return {}
    values = pd.to_numeric(reps["samples_per_step"], errors="coerce")
    return {cid: float(v) for cid, v in values.groupby(reps["cell_id"]).median().items() if np.isfinite(v)}


def _saving_class(row: pd.Series) -> str:
    """Colour a tokens-to-target difference only when its interval excludes 0."""
    lo, hi = row.get("tokens_to_target_delta_ci_low"), row.get("tokens_to_target_delta_ci_high")
    if fmt.is_number(hi) and hi < 0:
        return "better"
    if fmt.is_number(lo) and lo > 0:
        return "worse"
    return ""


def _ci(row: pd.Series, prefix: str, show) -> str:
    lo, hi = row.get(f"{prefix}_low"), row.get(f"{prefix}_high")
    return f"[{show(lo)}, {show(hi)}]" if fmt.is_number(lo) and fmt.is_number(hi) else ""


def _text(value: Any) -> str:
    return value if isinstance(value, str) and value else fmt.MISSING
