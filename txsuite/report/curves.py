"""Loss curves over seeds, drawn by seaborn: the training loss of the Charts section and the
validation loss of the Convergence section.

    long frame      one row per (cell, seed, step): the loss of that seed's model, the step's
                    tokens, and the step's training wall time as the median over the cell's ok
                    repetitions (repetitions of one seed train the same model; their clocks differ)
    panels          seaborn's lineplot per panel, one panel per x (steps or tokens, wall time): the
                    line is the mean over seeds; on the first panel seaborn's errorbar band spans the
                    lowest to the highest seed (on the wall-time panel it would repeat it, shifted)
    small multiples one row of panels per value of a varying axis that the colour and the line
                    style do not show, so that no two cells share a line's look in one panel
    coinciding      lines that lie on each other (a precision that does not move the loss) are
                    drawn as one striped line of their colours, and named in the chart's note

seaborn's figure-level relplot would draw the same grid through pyplot (a global figure manager
and a GUI backend resolved on first use); these panels are the pyplot-free figure of svg.subplots
with seaborn's axes-level lineplot in each, which is what relplot calls per facet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from txsuite.report import formatting as fmt
from txsuite.report.encoding import Encoding, _key, _tail, ordered_values
from txsuite.report.quality import seed_records
from txsuite.report.svg import plot_text, subplots

MAX_FACETS = 4  # rows of small multiples; an axis with more values is not faceted
MAX_CURVE_POINTS = 300  # per line; a loss curve needs no more to show its shape
POINT_BUDGET = 6000  # points over all the lines of one panel
MIN_CURVE_POINTS = 40
# seaborn computes a band point by point in Python (~0.4 ms each on a 2-core host): the points of
# all the banded lines of a chart, and the cells beyond which a chart draws no band (their bands
# would cover each other; the table has every cell's interval)
BAND_BUDGET = 800
MAX_BAND_CELLS = 24
# lines one chart draws at most: beyond a few dozen no line can be told from another, and
# seaborn's cost grows with every line; the reference, the Pareto front and the lowest final
# losses are the ones kept, and the note says how many of how many
MAX_CURVES = 40
COINCIDE = 0.01  # lines closer than this share of the y axis at every x are drawn striped
STRIPE = 4.0  # stripe length, in line widths


@dataclass
class XSpec:
    column: str  # in the long frame
    label: str
    format: Callable | None = None  # tick formatter


@dataclass
class Curves:
    """Per cell: its rows in `frame` (cell, seed, step, tokens, time, loss) and whether it
    diverged (drawn up to where it stopped, marked ×)."""
    frame: pd.DataFrame
    cells: pd.DataFrame  # the cells drawn, in drawing order, indexed like table.cells
    diverged: set = field(default_factory=set)
    band_seeds: int = 1  # most seeds of any cell, where the chart draws their band (1: no band)
    seeds: int = 1  # most seeds of any cell
    left_out: int = 0  # cells with a curve that the chart does not draw (MAX_CURVES)


def collect(table_cells: pd.DataFrame, repeats: pd.DataFrame, curve_column: str,
            tokens_per_step: bool = True, min_steps: int = 1) -> Curves | None:
    """The long frame of `curve_column` ([step, wall_s, loss] points) over each cell's seeds;
    None when no cell has a curve of `min_steps` steps or more."""
    if curve_column not in repeats:
        return None
    with_curve = set(repeats.loc[repeats[curve_column].map(lambda c: isinstance(c, list) and bool(c)), "cell_id"])
    table_cells = table_cells[table_cells["cell_id"].isin(with_curve)]
    left_out = max(0, len(table_cells) - MAX_CURVES)
    table_cells = _most_telling(table_cells, MAX_CURVES)
    by_cell = {cid: g for cid, g in repeats.groupby("cell_id", sort=False)}
    parts, drawn, diverged = [], [], set()
    for idx, cell in table_cells.iterrows():
        group = by_cell.get(cell["cell_id"])
        if group is None:
            continue
        per_seed = {k: _points(rec[curve_column]) for k, rec in seed_records(group).items()}
        per_seed = {k: p for k, p in per_seed.items() if p is not None and len(p) >= min_steps}
        timing = [_points(rec[curve_column]) for _, rec in group[group["status"] == "ok"].iterrows()]
        if not per_seed:
            bad = group[group["status"] == "diverged"]
            points = _points(bad.iloc[0][curve_column]) if len(bad) else None
            if points is None or len(points) < min_steps:
                continue
            per_seed, timing = {0: points}, [points]
            diverged.add(cell["cell_id"])
        time_at = _median_time(t for t in timing if t is not None)
        tps = _tokens_per_step(group) if tokens_per_step else 0.0
        for seed, points in per_seed.items():
            parts.append(pd.DataFrame({
                "cell": cell["cell_id"], "seed": seed, "step": points[:, 0], "tokens": points[:, 0] * tps,
                "time": [time_at.get(s, w) for s, w in points[:, :2]], "loss": points[:, 2]}))
        drawn.append(idx)
    if not parts:
        return None
    frame = pd.concat(parts, ignore_index=True)
    seeds = int(frame.groupby("cell")["seed"].nunique().max())
    cells = frame["cell"].nunique()
    banded = seeds > 1 and cells <= MAX_BAND_CELLS
    return Curves(_thin(frame, BAND_BUDGET if banded else POINT_BUDGET), table_cells.loc[drawn], diverged,
                  seeds if banded else 1, seeds, left_out)


def _most_telling(cells: pd.DataFrame, limit: int) -> pd.DataFrame:
    """At most `limit` cells, in their order: the reference, the Pareto front, then the lowest
    final validation losses."""
    if len(cells) <= limit:
        return cells
    rank = pd.DataFrame({"reference": ~cells.get("is_reference", pd.Series(False, cells.index)).fillna(False).astype(bool),
                         "front": ~cells.get("pareto", pd.Series(False, cells.index)).fillna(False).astype(bool),
                         "loss": pd.to_numeric(cells.get("val_loss", pd.Series(np.nan, cells.index)), errors="coerce")},
                        index=cells.index)
    keep = rank.sort_values(["reference", "front", "loss"], na_position="last").index[:limit]
    return cells.loc[[i for i in cells.index if i in set(keep)]]


def facet_axis(cells: pd.DataFrame, axes: list[str], enc: Encoding) -> str | None:
    """The first varying axis whose value the colour and the line style do not tell (some colour
    and style pair holds cells of two values of it), when it has 2..MAX_FACETS values."""
    shown = [k for k in (enc.hue_key, enc.style_key) if k]
    for key in axes:
        if key in shown:
            continue
        values = cells[key].map(_key).astype(str)
        if not 2 <= values.nunique() <= MAX_FACETS:
            continue
        groups = cells[shown].map(lambda v: str(_key(v))).agg("|".join, axis=1) if shown else pd.Series("", cells.index)
        if values.groupby(groups).nunique().max() > 1:
            return key
    return None


def draw(curves: Curves, enc: Encoding, xs: list[XSpec], ylabel: str, facet: str | None, axes: list[str],
         y_include: tuple[float, ...] = (), width: float = 11.0, height: float = 4.4
         ) -> tuple[Any, np.ndarray, list[str]]:
    """The grid of panels: a row per facet value, a column per x; the y axis spans the losses
    (up to their 99th percentile) and `y_include` (a target line). Returns the figure, its axes
    and the groups of coinciding lines (as text, for the chart's note)."""
    import seaborn as sns

    cells = curves.cells
    rows = ([(None, cells)] if facet is None else
            [(v, cells[cells[facet].map(_key) == v]) for v in ordered_values(cells[facet])])
    row_height = height if len(rows) == 1 else max(2.6, height * 0.72)
    fig, grid = subplots(len(rows), len(xs), sharey=True, sharex="col", squeeze=False,
                         figsize=(width, 0.4 + row_height * len(rows)),
                         gridspec_kw={"wspace": 0.06, "hspace": 0.28})
    lw = 1.4 if len(cells) <= 20 else 0.9
    frame = curves.frame
    bottom, top = _y_range(frame["loss"].to_numpy())
    bottom, top = min([bottom, *y_include]), max([top, *y_include])
    span = max(top - bottom, 1e-9)
    coincide_notes = []
    for (value, members), panels in zip(rows, grid):
        order = members["cell_id"].tolist()
        data = frame[frame["cell"].isin(order)]
        palette = {row["cell_id"]: enc.color(row) for _, row in members.iterrows()}
        plain = {row["cell_id"]: _dashes(enc.dash(row)) for _, row in members.iterrows()}
        for k_panel, (ax, x) in enumerate(zip(panels, xs)):
            band = k_panel == 0 and curves.band_seeds > 1
            # Without a band seaborn still averages the seeds point by point: give it the means.
            drawn = data if band else data.groupby(["cell", x.column], as_index=False, sort=False)["loss"].mean()
            dashes = dict(plain)
            for group in coinciding(drawn, x.column, order, COINCIDE * span):
                styles = {enc.dash(members[members["cell_id"] == cid].iloc[0]) for cid in group}
                gap = STRIPE / 2 if len(styles) == 1 and styles != {"-"} else 0.0  # dashed lines stay dashed
                for k, cid in enumerate(group):
                    dashes[cid] = _stripe(k, len(group), gap)
                name = _group_name(cells, group, axes)
                if name not in coincide_notes:
                    coincide_notes.append(name)
            sns.lineplot(data=drawn, x=x.column, y="loss", hue="cell", hue_order=order, palette=palette,
                         style="cell", style_order=order, dashes=dashes, estimator="mean",
                         errorbar=_seed_range if band else None, err_kws={"alpha": 0.18, "lw": 0},
                         legend=False, lw=lw, ax=ax)
            for cid in curves.diverged & set(order):
                last = data[data["cell"] == cid].sort_values("step").iloc[-1]
                ax.plot(last[x.column], last["loss"], marker="x", color=palette[cid], ms=8, mew=2)
            ax.set_xlabel(x.label)
            ax.set_ylabel("")
            if x.format:
                ax.xaxis.set_major_formatter(x.format)
        panels[0].set_ylabel(ylabel)
        if value is not None:
            panels[0].set_title(plot_text(f"{_tail(facet)} = {fmt.plain(value)}"), loc="left", fontsize=10)
    for ax in grid[:-1].flat:  # shared x: the bottom row says what it is
        ax.set_xlabel("")
    grid[0][0].set_ylim(bottom - 0.04 * span, top + 0.04 * span)
    if enc.hue_key or enc.style_key:
        grid[0][-1].legend(handles=enc.legend_handles("line"), loc="upper left", bbox_to_anchor=(1.01, 1),
                           frameon=False)
    return fig, grid, coincide_notes


def coinciding(data: pd.DataFrame, x: str, order: list[str], tolerance: float) -> list[list[str]]:
    """Groups (2 or more, in `order`) of cells whose mean lines have the same x values and lie
    within `tolerance` of each other at every one of them."""
    means = {cid: g.groupby(x)["loss"].mean() for cid, g in data.groupby("cell", sort=False)}
    groups: list[list[str]] = []
    for cid in order:
        line = means.get(cid)
        if line is None or len(line) < 2:
            continue
        for group in groups:
            first = means[group[0]]
            if len(first) == len(line) and np.allclose(first.index, line.index) \
                    and float(np.max(np.abs(first.to_numpy() - line.to_numpy()))) <= tolerance:
                group.append(cid)
                break
        else:
            groups.append([cid])
    return [g for g in groups if len(g) > 1]


def note(curves: Curves, groups: list[str]) -> str | None:
    """The chart's note: which lines are drawn striped, and why there is no band if there is none."""
    notes = []
    if curves.left_out:
        notes.append(f"{len(curves.cells)} of {len(curves.cells) + curves.left_out} cells drawn (the reference, the "
                     f"Pareto front and the lowest final losses); the table has every cell.")
    if groups:
        notes.append(f"Lines within {COINCIDE:.0%} of the loss axis of each other at every point are drawn as one "
                     "line striped in their colours: " + "; ".join(groups) + ".")
    if curves.seeds > 1 and curves.band_seeds == 1:
        notes.append(f"No seed bands: {len(curves.cells)} cells (bands are drawn for up to {MAX_BAND_CELLS}, "
                     "beyond that they cover each other); the table gives each cell's interval.")
    return " ".join(notes) or None


# ------------------------------------------------------------------ pieces

def _points(curve: Any) -> np.ndarray | None:
    """[step, wall_s, loss] rows with finite numbers, or None."""
    if not isinstance(curve, list) or not curve:
        return None
    rows = [p[:3] for p in curve if isinstance(p, (list, tuple)) and len(p) >= 3
            and all(fmt.is_number(v) for v in p[:3])]
    return np.asarray(rows, dtype=float) if rows else None


def _median_time(curves) -> dict[float, float]:
    """step -> the median wall time over the repetitions that reached it."""
    times: dict[float, list[float]] = {}
    for points in curves:
        for step, wall in points[:, :2]:
            times.setdefault(float(step), []).append(float(wall))
    return {step: float(np.median(walls)) for step, walls in times.items()}


def _tokens_per_step(group: pd.DataFrame) -> float:
    values = pd.to_numeric(group["tokens_per_step"], errors="coerce").dropna() if "tokens_per_step" in group else []
    return float(values.iloc[0]) if len(values) else 0.0


def _thin(frame: pd.DataFrame, budget: int) -> pd.DataFrame:
    """At most MAX_CURVE_POINTS steps per cell, fewer when many cells share the budget; the same
    steps for every seed of a cell, so that seaborn finds each step's seeds together."""
    cells = frame["cell"].nunique()
    limit = int(np.clip(budget // max(cells, 1), MIN_CURVE_POINTS, MAX_CURVE_POINTS))
    keep = []
    for _, g in frame.groupby("cell", sort=False):
        steps = np.unique(g["step"].to_numpy())
        if len(steps) > limit:
            steps = steps[np.unique(np.linspace(0, len(steps) - 1, limit).astype(int))]
            g = g[g["step"].isin(steps)]
        keep.append(g)
    return pd.concat(keep)


def _y_range(values: np.ndarray) -> tuple[float, float]:
    """Early spikes hide the rest: the top is the 99th percentile when there are many points."""
    values = values[np.isfinite(values)]
    if not len(values):
        return 0.0, 1.0
    top = float(np.percentile(values, 99)) if len(values) > 50 else float(values.max())
    return float(values.min()), top


def _seed_range(values: pd.Series) -> tuple[float, float]:
    """seaborn's errorbar as a callable: the lowest to the highest seed (what ("pi", 100) gives,
    without a percentile per point)."""
    return values.min(), values.max()


def _dashes(style: str) -> tuple | str:
    """A matplotlib line style as seaborn's dash spec ("" is solid)."""
    return {"-": "", "--": (3.7, 1.6), ":": (1, 1.65), "-.": (6.4, 1.6, 1, 1.6)}.get(style, "")


def _stripe(k: int, n: int, gap: float = 0.0) -> tuple:
    """Member k of n coinciding lines: a dash of STRIPE, then the other members' dashes, each
    followed by `gap` (a gap keeps a dashed line dashed); shifted by k stripes (a zero-length
    dash first: seaborn's dash spec has no offset)."""
    cycle = n * (STRIPE + gap)
    if k == 0:
        return (STRIPE, cycle - STRIPE)
    before = k * (STRIPE + gap)
    return (0.0, before, STRIPE, cycle - before - STRIPE)


def _group_name(cells: pd.DataFrame, group: list[str], axes: list[str]) -> str:
    """'precision=fp32 and precision=bf16 at micro_batch=4 steps=400': the axes the coinciding
    cells differ in, then (two of) those they share; their short labels when no axis differs."""
    rows = cells.set_index("cell_id").loc[group]
    differ = [k for k in axes if k in rows and rows[k].map(lambda v: str(_key(v))).nunique() > 1]
    if not differ:
        return " and ".join(str(label) for label in rows["short_label"])
    names = [" ".join(f"{_tail(k)}={fmt.plain(row[k])}" for k in differ) for _, row in rows.iterrows()]
    same = [k for k in axes if k in rows and k not in differ][:2]
    shared = " ".join(f"{_tail(k)}={fmt.plain(rows.iloc[0][k])}" for k in same)
    text = ", ".join(names[:-1]) + " and " + names[-1]
    return f"{text} at {shared}" if shared else text
