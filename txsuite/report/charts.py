"""The charts of a run report, chosen from what the run varied and what it measured.

Each builder returns a Chart: an inline SVG, or a one-line note saying why it is not drawn
(missing data is normal: a CPU host has no energy counter, a one-axis matrix has no heatmap).
Cost matters (a 200-cell matrix must render in seconds): one figure per chart, never one per
cell; bar charts and labels are capped and say so.

Drawn by seaborn under its theme (svg.report_style): scatterplot for cells against two metrics,
lineplot for loss curves over seeds with their band and small multiples (report/curves.py),
heatmap. The bars stay matplotlib's barh: their lengths and whiskers are the table's
medians and repeat spans, which seaborn's barplot would estimate again from raw rows; the step
times stay matplotlib's boxplot (step_time_spread says why).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from txsuite.report import curves, formatting as fmt
from txsuite.report.encoding import Encoding, choose_encoding, ordered_values
from txsuite.report.frame import CellTable
from txsuite.report.pareto import NEAR_FRONT
from txsuite.report.svg import formatter, plot_text, report_style, subplots, to_svg

MAX_BARS = 40  # rows of a per-cell bar chart before it shows only the best and the worst
MAX_POINT_LABELS = 12
MAX_ANNOTATED_HEATMAP = 240
MAX_HEATMAP_SIDE = 60  # values of an axis beyond which a grid's squares and labels cannot be read
# Points of a chart beyond which its marks (dots, whiskers, rings) are drawn as one embedded image
# inside the SVG, its axes and text staying vector: thousands of cells as SVG paths made the
# page's charts several megabytes each.
RASTER_FROM = 500
# matplotlib 3.10 renamed boxplot's vert=False to orientation="horizontal" (vert goes in 3.13).
_HORIZONTAL = ({"orientation": "horizontal"}
               if "orientation" in inspect.signature(Axes.boxplot).parameters else {"vert": False})


@dataclass
class Chart:
    key: str
    title: str
    caption: str = ""
    svg: Any = None  # Markup when drawn
    note: str | None = None  # why it is not drawn / what was left out

    @property
    def drawn(self) -> bool:
        return self.svg is not None


def build_charts(table: CellTable) -> list[Chart]:
    """Every chart in reading order; each one decides for itself whether it has the data."""
    measured = table.ok if len(table.ok) else table.cells
    enc = choose_encoding(measured, table.measured_axes)  # colours only for what is plotted
    builders: list[Callable[[CellTable, Encoding], Chart]] = [
        throughput_vs_memory, ratios_vs_reference, loss_curves, val_loss_vs_throughput,
        throughput_heatmap, axis_effects, mfu_per_cell, energy_per_token, step_time_spread,
    ]
    with report_style():
        return [build(table, enc) for build in builders]


# ------------------------------------------------------------------ charts

MEMORY_TITLES = {"train_mem_bytes": "train memory", "peak_mem_bytes": "peak memory"}
MEMORY_NOTES = {"train_mem_bytes": " Train memory is what the cell controls: the peak minus the memory before "
                                   "training (the interpreter and libraries); the table also gives the whole peak.",
                "peak_mem_bytes": ""}


def throughput_vs_memory(table: CellTable, enc: Encoding) -> Chart:
    memory = table.memory_metric
    title = MEMORY_TITLES[memory]
    chart = Chart("pareto", f"Throughput vs {title}",
                  "Up and to the left is better. Ringed cells are Pareto-optimal: no other cell is "
                  "both faster and lighter; the line joins them. Cells in a dashed ring are off the "
                  "front on the medians but within noise of it (no cell beats them beyond noise, "
                  "paired by round). Whiskers span the repeats." + MEMORY_NOTES[memory])
    cells = _with(table.cells, "tokens_per_s", memory)
    if cells.empty:
        chart.note = f"no cell reported both throughput and {title}"
        return chart
    scale, unit = _bytes_scale(cells[memory].max())
    fig, ax = subplots(figsize=(8.2, 5.0))
    x, y = cells[memory] / scale, cells["tokens_per_s"]
    _whiskers(ax, cells, x, y, xcol=memory, ycol="tokens_per_s", xscale=scale)
    front = cells[cells["pareto"]].sort_values(memory)
    if len(front) > 1:
        ax.step(front[memory] / scale, front["tokens_per_s"], where="post", color="#333",
                lw=1.2, ls="--", zorder=1, label="Pareto frontier")
    _scatter(ax, cells, x, y, enc)
    ax.scatter(front[memory] / scale, front["tokens_per_s"], s=170, facecolors="none",
               edgecolors="#222", linewidths=1.3, zorder=4, rasterized=_raster(front))
    near = cells[cells["front"] == NEAR_FRONT]
    if len(near):
        ax.scatter(near[memory] / scale, near["tokens_per_s"], s=170, facecolors="none",
                   edgecolors="#555", linewidths=1.1, linestyles="--", zorder=4, label="within noise of the front",
                   rasterized=_raster(near))
    _label_points(ax, cells, x, y, _points_to_label(cells, table, ["pareto"]))
    ax.set_xlabel(f"{title} ({unit})")
    ax.set_ylabel("tokens/s")
    ax.yaxis.set_major_formatter(si_formatter())
    _corner_note(ax, "↖ better", "upper left")
    _legend(ax, enc, extra=(["Pareto frontier"] if len(front) > 1 else []) +
            (["within noise of the front"] if len(near) else []))
    chart.svg = to_svg(fig)
    return chart


def ratios_vs_reference(table: CellTable, enc: Encoding) -> Chart:
    base_label = table.row(table.reference)["short_label"] if table.reference else ""
    chart = Chart("ratios", "Speed-up and memory against the reference",
                  f"Each cell's tokens/s and {MEMORY_TITLES[table.memory_metric]} divided by the reference's "
                  f"({base_label}). "
                  "Right of 1× is faster / uses more memory. Each ratio is the one its verdict is about: the "
                  "rounds paired, time brought to the machine's best state; whiskers are its 95 % interval "
                  "(a cell with no round to pair: the medians' ratio, whiskers over its repeats).")
    if table.reference is None:
        chart.note = table.reference_note or "no reference cell with a throughput"
        return chart
    cells = _with(table.cells, "speedup")
    shown, cap_note = cap_rows(cells, "speedup", ascending=False, keep={table.reference})
    chart.note = cap_note
    n = len(shown)
    fig, (left, right) = subplots(1, 2, sharey=True, figsize=(10, 1.0 + 0.3 * n),
                                  gridspec_kw={"wspace": 0.08})
    ypos = np.arange(n)[::-1]
    colors = [enc.color(row) for _, row in shown.iterrows()]
    for ax, col, title in ((left, "speedup", "speed-up (tokens/s ÷ reference)"),
                           (right, "mem_ratio", f"{MEMORY_TITLES[table.memory_metric]} ÷ reference")):
        values = shown[col].to_numpy(dtype=float)
        err = np.vstack([values - shown[f"{col}_lo"].to_numpy(dtype=float),
                         shown[f"{col}_hi"].to_numpy(dtype=float) - values])
        err = np.where(np.isfinite(err), np.clip(err, 0, None), 0)
        ends = np.fmax(values, shown[f"{col}_hi"].to_numpy(dtype=float))  # value text goes past the whisker
        ax.barh(ypos, np.nan_to_num(values), xerr=err, color=colors, height=0.7,
                error_kw={"ecolor": "#333", "elinewidth": 0.9, "capsize": 2})
        ax.axvline(1.0, color="#222", lw=1, ls="--")
        ax.set_title(title)
        ax.xaxis.set_major_formatter(formatter(lambda v, _: f"{v:g}×"))
        ax.set_xlim(0, max(1.15, np.nanmax(np.append(ends, 1)) * 1.28))
        for yv, v, end in zip(ypos, values, ends):
            if np.isfinite(v):
                ax.annotate(f"{v:.2f}×", (end, yv), xytext=(4, 0), textcoords="offset points",
                            va="center", ha="left", fontsize=8)
        ax.grid(axis="y", visible=False)
        mark_gaps(ax, shown, ypos)
    left.set_yticks(ypos)
    left.set_yticklabels([plot_text(t) for t in shown["short_label"]])
    for tick, is_base in zip(left.get_yticklabels(), shown["is_reference"]):
        if is_base:
            tick.set_fontweight("bold")
    left.set_ylim(-0.6, n - 0.4)
    chart.svg = to_svg(fig)
    return chart


def loss_curves(table: CellTable, enc: Encoding) -> Chart:
    chart = Chart("loss", "Training loss over steps and over wall time",
                  "One line per cell: the mean over its seeds (one seed: its loss; repetitions of a seed train "
                  "the same model); over steps a band spans the lowest to the highest seed. Over wall time each "
                  "step sits at the median time the cell's repetitions took to reach it: a faster cell reaches "
                  "a given loss sooner. × marks where a diverged run stopped.")
    data = curves.collect(table.cells, table.repeats, "loss_curve", tokens_per_step=False)
    if data is None:
        chart.note = "no cell recorded a loss curve"
        return chart
    facet = curves.facet_axis(data.cells, table.measured_axes, enc)
    fig, _, coinciding = curves.draw(
        data, enc, [curves.XSpec("step", "step"),
                    curves.XSpec("time", "training wall time (s)")], "training loss", facet,
        table.measured_axes)
    chart.note = curves.note(data, coinciding)
    chart.svg = to_svg(fig)
    return chart


def val_loss_vs_throughput(table: CellTable, enc: Encoding) -> Chart:
    chart = Chart("quality", "Validation loss vs throughput",
                  "Down and to the right is better: faster cells that still learn as well. "
                  "Whiskers span the repeats.")
    cells = _with(table.cells, "tokens_per_s", "val_loss")
    if cells.empty:
        chart.note = "no cell reported both validation loss and throughput"
        return chart
    fig, ax = subplots(figsize=(8.2, 4.8))
    x, y = cells["tokens_per_s"], cells["val_loss"]
    _whiskers(ax, cells, x, y, xcol="tokens_per_s", ycol="val_loss")
    _scatter(ax, cells, x, y, enc)
    optimum = known_optimum(table)
    extra = []
    if optimum is not None:
        ax.axhline(optimum, color="#888", ls=":", lw=1.2, label="known optimum (synthetic task)")
        extra.append("known optimum (synthetic task)")
    best = cells.nsmallest(1, "val_loss")["cell_id"].tolist()
    _label_points(ax, cells, x, y, _points_to_label(cells, table, [], extra_ids=best))
    ax.set_xlabel("tokens/s")
    ax.set_ylabel("validation loss")
    ax.xaxis.set_major_formatter(si_formatter())
    _corner_note(ax, "better ↘", "lower right")
    _legend(ax, enc, extra=extra)
    chart.svg = to_svg(fig)
    return chart


def throughput_heatmap(table: CellTable, enc: Encoding) -> Chart:
    chart = Chart("heatmap", "Throughput grid",
                  "Median tokens/s of every combination of the two varying axes; empty squares "
                  "name the status of cells that produced no throughput.")
    axes = table.measured_axes
    if len(axes) != 2:
        chart.note = (f"drawn only when exactly two axes vary; this run varies {len(axes)}"
                      + (f" ({', '.join(axes)})" if axes else ""))
        return chart
    rows_key, cols_key = axes
    # Measured cells first, so a cell that differs only elsewhere (an include skipped on this
    # host) never hides a measured square.
    cells = table.cells.sort_values("repeats_ok", ascending=False, kind="stable")
    if cells["tokens_per_s"].notna().sum() == 0:
        chart.note = "no cell reported a throughput"
        return chart
    row_values, col_values = ordered_values(table.cells[rows_key]), ordered_values(table.cells[cols_key])
    combos = len(row_values) * len(col_values)
    if max(len(row_values), len(col_values)) > MAX_HEATMAP_SIDE:
        chart.note = (f"{rows_key} takes {len(row_values)} values and {cols_key} {len(col_values)}: a grid "
                      f"with more than {MAX_HEATMAP_SIDE} squares a side cannot be read; the table has every cell")
        return chart
    if len(cells) * 2 < combos:
        chart.note = (f"{rows_key} and {cols_key} vary together ({len(cells)} of {combos} combinations "
                      "were run), so a grid would be mostly empty")
        return chart
    grid = np.full((len(row_values), len(col_values)), np.nan)
    status = [[""] * len(col_values) for _ in row_values]
    for _, cell in cells.iterrows():
        i, j = row_values.index(_plain(cell[rows_key])), col_values.index(_plain(cell[cols_key]))
        if np.isfinite(grid[i, j]) or status[i][j]:
            continue
        grid[i, j] = cell["tokens_per_s"]
        status[i][j] = "" if cell["repeats_ok"] else cell["status"]
    annotate = grid.size <= MAX_ANNOTATED_HEATMAP
    row_height = 0.55 if len(row_values) <= 8 else 0.36
    fig, ax = subplots(figsize=(min(2.6 + 0.95 * len(col_values), 14),
                                min(1.4 + row_height * len(row_values), 12)))
    _draw_heatmap(ax, grid, [plot_text(_short(v, 20)) for v in row_values],
                  [plot_text(_short(v, 20)) for v in col_values], annotate=annotate,
                  fontsize=9 if grid.size <= 40 else 7.5)
    for i, line in enumerate(status):
        for j, text in enumerate(line):
            if text:
                ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=8, color="#b00020")
    ax.set_ylabel(plot_text(rows_key))
    ax.set_xlabel(plot_text(cols_key))
    ax.grid(False)
    chart.svg = to_svg(fig)
    return chart


def _draw_heatmap(ax, grid: np.ndarray, row_labels: list[str], col_labels: list[str], annotate: bool,
                  fontsize: float) -> None:
    """grid (rows x columns of tokens/s, NaN where no throughput) as seaborn's heatmap, row 0 at
    the top, each value written in its square when `annotate` (seaborn picks dark text on light
    squares); NaN squares stay grey."""
    import seaborn as sns

    ax.set_facecolor("#f1f2f4")  # combinations without a throughput read as grey, not white
    finite = grid[np.isfinite(grid)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    text = np.vectorize(lambda v: fmt.si(v) if np.isfinite(v) else "", otypes=[object])(grid) if annotate else False
    sns.heatmap(grid, mask=~np.isfinite(grid), cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1.0,
                annot=text, fmt="", annot_kws={"fontsize": fontsize}, linewidths=0.6, linecolor="white",
                cbar_kws={"format": si_formatter(), "label": "tokens/s"}, xticklabels=col_labels,
                yticklabels=row_labels, ax=ax)
    crowded = grid.shape[1] > 6 or max((len(label) for label in col_labels), default=0) > 8
    ax.set_xticks(np.arange(grid.shape[1]) + 0.5, col_labels, rotation=30 if crowded else 0,
                  ha="right" if crowded else "center")
    ax.set_yticks(np.arange(grid.shape[0]) + 0.5, row_labels, rotation=0)


def axis_effects(table: CellTable, enc: Encoding) -> Chart:
    chart = Chart("axes", "Throughput by axis value",
                  "Each dot is a cell; the bar is the median over the other axes. A wide spread "
                  "within one value means the other axes matter more than this one.")
    cells = _with(table.cells, "tokens_per_s")
    if len(table.measured_axes) < 2:
        chart.note = "needs two or more varying axes (the speed-up chart covers a single axis)"
        return chart
    if cells.empty:
        chart.note = "no cell reported a throughput"
        return chart
    axes = table.measured_axes[:6]
    fig, panels = subplots(1, len(axes), sharey=True, figsize=(min(2.0 + 2.6 * len(axes), 15), 3.8),
                           squeeze=False)
    for ax, key in zip(panels[0], axes):
        values = ordered_values(cells[key])
        position = {v: i for i, v in enumerate(values)}
        xs = cells[key].map(lambda v: position[_plain(v)]).to_numpy(dtype=float)
        jitter = (np.random.default_rng(0).random(len(xs)) - 0.5) * 0.3  # seaborn's stripplot jitters unseeded
        _scatter(ax, cells, pd.Series(xs + jitter), cells["tokens_per_s"], enc, size=26, alpha=0.8)
        medians = cells.groupby(xs)["tokens_per_s"].median()
        ax.hlines(medians.to_numpy(), medians.index - 0.3, medians.index + 0.3, color="#222", lw=2)
        every = max(1, math.ceil(len(values) / 8))  # at most ~8 tick labels per panel
        ticks = list(range(0, len(values), every))
        ax.set_xticks(ticks)
        ax.set_xticklabels([plot_text(_short(values[i])) for i in ticks], rotation=30 if len(ticks) > 4 else 0,
                           ha="right" if len(ticks) > 4 else "center")
        ax.set_xlim(-0.6, len(values) - 0.4)
        ax.set_xlabel("")
        ax.set_title(plot_text(key), fontsize=10)
    panels[0][0].set_ylabel("tokens/s")
    panels[0][0].yaxis.set_major_formatter(si_formatter())
    if len(table.measured_axes) > len(axes):
        chart.note = f"showing the first {len(axes)} of {len(table.measured_axes)} varying axes"
    chart.svg = to_svg(fig)
    return chart


def mfu_per_cell(table: CellTable, enc: Encoding) -> Chart:
    return _bar_per_cell(table, enc, "mfu", "mfu", "Model FLOPs utilisation",
                         "Achieved model FLOP/s as a share of the peak measured on this host.",
                         "MFU", lambda v: f"{v * 100:.1f}%", ascending=False,
                         missing="no cell reported MFU")


def energy_per_token(table: CellTable, enc: Encoding) -> Chart:
    return _bar_per_cell(table, enc, "energy", "energy_per_token_j", "Energy per token",
                         "GPU energy (NVML) divided by tokens trained; lower is better.",
                         "joules per token", fmt.energy, ascending=True,
                         missing="no cell reported energy per token (it needs NVML on a GPU host)")


def step_time_spread(table: CellTable, enc: Encoding) -> Chart:
    chart = Chart("steps", "Step-time distribution",
                  "Every measured step of every repeat. Long whiskers or outliers mean jitter "
                  "(data loading, GC, a noisy neighbour) rather than a slow cell.")
    reps = table.repeats
    if "step_times_s" not in reps:
        chart.note = "no cell recorded per-step times"
        return chart
    parts: dict[str, list[np.ndarray]] = {}
    ok = reps[reps["status"] == "ok"]
    for cell_id, times in zip(ok["cell_id"], ok["step_times_s"]):
        if isinstance(times, list):
            parts.setdefault(cell_id, []).append(_finite_numbers(times))
    samples = {cid: np.concatenate(arrays) for cid, arrays in parts.items()}  # each cell's steps, repeat by repeat
    cells = table.cells[table.cells["cell_id"].isin([k for k, v in samples.items() if len(v)])].copy()
    if cells.empty:
        chart.note = "no cell recorded per-step times"
        return chart
    cells["step_median"] = cells["cell_id"].map(lambda c: float(np.median(samples[c])))
    shown, chart.note = cap_rows(cells, "step_median", ascending=True, keep={table.reference}, limit=30)
    fig, ax = subplots(figsize=(8.2, 1.0 + 0.3 * len(shown)))
    data = [np.asarray(samples[c]) * 1e3 for c in shown["cell_id"]][::-1]
    # matplotlib's boxplot, not seaborn's: seaborn 0.13.2 passes bxp the vert= that matplotlib
    # 3.11 deprecates and 3.13 removes.
    box = ax.boxplot(data, **_HORIZONTAL, widths=0.6, patch_artist=True, showfliers=True,
                     flierprops={"markersize": 2.5, "alpha": 0.5}, medianprops={"color": "#222"})
    for patch, (_, row) in zip(box["boxes"], list(shown.iterrows())[::-1]):
        patch.set_facecolor(enc.color(row))
        patch.set_alpha(0.8)
    mark_gaps(ax, shown, np.arange(len(shown), 0, -1))
    ax.set_yticks(range(1, len(shown) + 1))
    ax.set_yticklabels([plot_text(t) for t in shown["short_label"]][::-1])
    ax.set_xlabel("step time (ms)")
    # log only when the times span more than 8x and are all positive (a log axis has no place
    # for 0: a record with a zero step time, as the records fuzz test writes, stays linear)
    low, high = min(d.min() for d in data), max(d.max() for d in data)
    if low > 0 and high > 8 * low:
        ax.set_xscale("log")
        log_ticks(ax.xaxis, low, high)
    chart.svg = to_svg(fig)
    return chart


def _finite_numbers(values: list) -> np.ndarray:
    """The values that are numbers (fmt.is_number), as floats, in order. A list of plain floats
    and ints, as a record read back holds, is converted at once: one call per value cost seconds
    over the millions of steps of a large run."""
    if set(map(type, values)) <= {float, int}:
        try:
            numbers = np.array(values, dtype=float)
            return numbers[np.isfinite(numbers)]
        except OverflowError:  # an int beyond a float's range: value by value
            pass
    return np.array([float(v) for v in values if fmt.is_number(v)], dtype=float)


def log_ticks(axis, low: float, high: float) -> None:
    """Labels on a log axis at 1, 2 and 5 times each power of ten (matplotlib labels only the
    powers, so an axis from 300 to 3,000 ms reads "10^3" alone), as plain numbers; at 1 and 3
    times each power over more than three decades."""
    from matplotlib.ticker import LogLocator, NullFormatter

    subs = (1.0, 2.0, 5.0) if high / low <= 1e3 else (1.0, 3.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(formatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


# ------------------------------------------------------------------ shared pieces

def _bar_per_cell(table: CellTable, enc: Encoding, key: str, metric: str, title: str, caption: str,
                  xlabel: str, text: Callable[[float], str], ascending: bool, missing: str) -> Chart:
    chart = Chart(key, title, caption)
    cells = _with(table.cells, metric)
    if cells.empty:
        chart.note = missing
        return chart
    shown, chart.note = cap_rows(cells, metric, ascending=ascending, keep={table.reference})
    n = len(shown)
    fig, ax = subplots(figsize=(8.2, 1.0 + 0.3 * n))
    ypos = np.arange(n)[::-1]
    values = shown[metric].to_numpy(dtype=float)
    ax.barh(ypos, values, color=[enc.color(row) for _, row in shown.iterrows()], height=0.7)
    for yv, v in zip(ypos, values):
        ax.annotate(text(v), (v, yv), xytext=(4, 0), textcoords="offset points", va="center",
                    ha="left", fontsize=8)
    ax.set_yticks(ypos)
    ax.set_yticklabels([plot_text(t) for t in shown["short_label"]])
    ax.set_xlim(0, values.max() * 1.22 if values.max() > 0 else 1)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_formatter(formatter(lambda v, _: text(v) if v else "0"))
    ax.grid(axis="y", visible=False)
    mark_gaps(ax, shown, ypos)
    chart.svg = to_svg(fig)
    return chart


def _with(cells: pd.DataFrame, *columns: str) -> pd.DataFrame:
    mask = np.ones(len(cells), dtype=bool)
    for col in columns:
        mask &= cells[col].notna().to_numpy() if col in cells else False
    return cells[mask]


def cap_rows(cells: pd.DataFrame, column: str, ascending: bool, keep: set, limit: int = MAX_BARS
              ) -> tuple[pd.DataFrame, str | None]:
    """Sorted rows; past `limit`, the best (limit-10) and the worst 10, plus the reference.
    The first row after the cut is marked in a `_after_gap` column, for a separator line."""
    ordered = cells.sort_values(column, ascending=ascending, kind="stable")
    if len(ordered) <= limit:
        return ordered.assign(_after_gap=False), None
    worst = 10
    head, tail = ordered.iloc[: limit - worst], ordered.iloc[-worst:]
    extra = ordered[ordered["cell_id"].isin(keep) & ~ordered.index.isin(head.index.union(tail.index))]
    shown = pd.concat([head, extra, tail]).assign(_after_gap=False)
    shown.iloc[len(head) + len(extra), shown.columns.get_loc("_after_gap")] = True
    if len(extra):
        shown.iloc[len(head), shown.columns.get_loc("_after_gap")] = True
    return shown, (f"showing the {limit - worst} best and {worst} worst of {len(ordered)} cells"
                   f"{' and the reference' if len(extra) else ''}; every cell is in the table")


def mark_gaps(ax, shown: pd.DataFrame, ypos: np.ndarray) -> None:
    """A dotted line where cap_rows left cells out, so the cut is not mistaken for a trend."""
    for y, gap in zip(ypos, shown["_after_gap"]):
        if gap:
            ax.axhline(y + 0.5, color="#999", ls=":", lw=1.2)


def _scatter(ax, cells: pd.DataFrame, x: pd.Series, y: pd.Series, enc: Encoding, size: float | None = None,
             **kwargs: Any) -> None:
    """seaborn's scatterplot, with the report's encoding as its hue and style mappings (so a
    colour or a marker means the same axis value in every chart)."""
    import seaborn as sns

    data = pd.DataFrame({"x": x.to_numpy(dtype=float), "y": y.to_numpy(dtype=float)})
    if enc.hue_key:
        data["hue"] = [str(_plain(v)) for v in cells[enc.hue_key]]
        kwargs.update(hue="hue", palette={lvl: enc.color(row) for lvl, row in zip(data["hue"], cells.to_dict("records"))})
    else:
        kwargs["color"] = enc.default_color
    if enc.style_key:
        data["style"] = [str(_plain(v)) for v in cells[enc.style_key]]
        kwargs.update(style="style",
                      markers={lvl: enc.marker(row) for lvl, row in zip(data["style"], cells.to_dict("records"))})
    size = size or (60 if len(cells) <= 50 else 28)
    sns.scatterplot(data=data, x="x", y="y", s=size, edgecolor="white", linewidth=0.6, zorder=3, legend=False,
                    ax=ax, rasterized=_raster(cells), **kwargs)


def _raster(cells: pd.DataFrame) -> bool:
    """Whether a layer of one mark per cell is drawn as an image (RASTER_FROM)."""
    return len(cells) > RASTER_FROM


def _whiskers(ax, cells: pd.DataFrame, x: pd.Series, y: pd.Series, xcol: str, ycol: str,
              xscale: float = 1.0) -> None:
    if not (cells["repeats_ok"] > 1).any():
        return
    def err(col: str, centre: pd.Series, scale: float) -> np.ndarray | None:
        if f"{col}_min" not in cells:
            return None
        lo = centre - cells[f"{col}_min"] / scale
        hi = cells[f"{col}_max"] / scale - centre
        return np.nan_to_num(np.clip(np.vstack([lo, hi]), 0, None))
    ax.errorbar(x, y, xerr=err(xcol, x, xscale), yerr=err(ycol, y, 1.0), fmt="none",
                ecolor="#999", elinewidth=0.8, zorder=2, rasterized=_raster(cells))


def _points_to_label(cells: pd.DataFrame, table: CellTable, flags: list[str],
                     extra_ids: list[str] | None = None) -> list[str]:
    """Cells to label, most important first: the reference, the fastest, the extra ones, the
    flagged ones (Pareto...), then, when there are few cells, all the others."""
    ids: list[str] = []
    if table.reference in set(cells["cell_id"]):
        ids.append(table.reference)
    ids += cells.nlargest(1, "tokens_per_s")["cell_id"].tolist() + list(extra_ids or [])
    for flag in flags:
        flagged = cells[cells[flag]].sort_values("tokens_per_s", ascending=False)["cell_id"].tolist()
        if len(flagged) > MAX_POINT_LABELS:  # evenly along the frontier, not all at one end
            step = len(flagged) / MAX_POINT_LABELS
            flagged = [flagged[int(i * step)] for i in range(MAX_POINT_LABELS)]
        ids += flagged
    if len(cells) <= MAX_POINT_LABELS:
        ids += cells["cell_id"].tolist()
    return list(dict.fromkeys(ids))[:MAX_POINT_LABELS + 2]


def _label_points(ax, cells: pd.DataFrame, x: pd.Series, y: pd.Series, ids: list[str]) -> None:
    """Label the chosen points, in the order given (most important first). Each label tries a
    few spots around its point and takes the first that overlaps no earlier label and stays
    inside the axes; a label with no free spot is left out (the table has every cell)."""
    ax.get_xlim(), ax.get_ylim()  # settle autoscaling before mapping data to pixels
    px = ax.figure.dpi / 72.0
    frame = ax.get_window_extent()
    placed: list[tuple[float, float, float, float]] = []
    order = {cid: k for k, cid in enumerate(ids)}
    chosen = sorted((row for _, row in cells[cells["cell_id"].isin(order)].iterrows()),
                    key=lambda row: order[row["cell_id"]])
    for row in chosen:
        text = row["short_label"] + (" (reference)" if row["is_reference"] else "")
        width, height = len(text) * LABEL_FONT * 0.56 * px, LABEL_FONT * 1.35 * px
        cx, cy = ax.transData.transform((x[row.name], y[row.name]))
        for dx, dy in LABEL_SPOTS:
            left = cx + dx * px if dx > 0 else cx + dx * px - width
            bottom = cy + dy * px
            box = (left, bottom, left + width, bottom + height)
            inside = frame.x0 <= box[0] and box[2] <= frame.x1 and frame.y0 <= box[1] and box[3] <= frame.y1
            if inside and not any(_overlap(box, other) for other in placed):
                placed.append(box)
                ax.annotate(plot_text(text), (x[row.name], y[row.name]), xytext=(dx, dy),
                            textcoords="offset points", fontsize=LABEL_FONT, color="#222",
                            ha="left" if dx > 0 else "right", va="bottom",
                            bbox={"boxstyle": "round,pad=0.12", "fc": "white", "ec": "none", "alpha": 0.8})
                break


# Offsets (points) from a point to its label's lower corner: right-above first, then around.
LABEL_SPOTS = [(7, 3), (7, -13), (-7, 3), (-7, -13), (7, 14), (-7, 14), (7, -24), (-7, -24), (0, 22)]
LABEL_FONT = 7.5


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _legend(ax, enc: Encoding, extra: list[str]) -> None:
    handles = enc.legend_handles("marker")
    own = [h for h in ax.get_legend_handles_labels()[0] if h.get_label() in extra]
    if handles or own:
        ax.legend(handles=handles + own, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)


def _corner_note(ax, text: str, where: str) -> None:
    """Which way is better, written outside the frame beside the corner it names (above the
    upper corners, on the x label's line below the lower ones), where no point or label is."""
    left, upper = "left" in where, "upper" in where
    ax.annotate(text, xy=(0.0 if left else 1.0, 1.0 if upper else 0.0), xycoords="axes fraction",
                xytext=(0, 4 if upper else -24), textcoords="offset points", ha="left" if left else "right",
                va="bottom" if upper else "top", fontsize=9, color="#777", style="italic")


def known_optimum(table: CellTable) -> float | None:
    reps = table.repeats
    if "optimal_loss" not in reps:
        return None
    values = pd.to_numeric(reps["optimal_loss"], errors="coerce").dropna().unique()
    return float(values[0]) if len(values) == 1 else None


def _bytes_scale(largest: float) -> tuple[float, str]:
    return (2**30, "GiB") if largest >= 2**30 else (2**20, "MiB")


def si_formatter():
    return formatter(lambda v, _: fmt.si(v) if v else "0")


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return value.item() if hasattr(value, "item") else value


def _short(value: Any, limit: int = 14) -> str:
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
