"""Records -> tidy tables: one row per repetition, then one row per cell.

The per-cell table is the single source of every number in a report (summary sentences,
charts, the sortable table and the csv/parquet/markdown export), so they cannot disagree.
Which config keys matter is read from the records themselves: a key is an *axis* of this run
when its value differs between cells, so the report adapts to any matrix.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from txsuite.config.metrics import REGISTRY, SPREAD
from txsuite.config.record import Record
from txsuite.report.compression import EXPORT_COLUMNS as COMPRESSION_COLUMNS, add_compression_columns
from txsuite.report.pareto import FRONT, front_with_noise
from txsuite.report.quality import EXPORT_COLUMNS as QUALITY_COLUMNS, add_quality_columns
from txsuite.report.values import comparable
from txsuite.report.verdicts import RunVerdicts
from txsuite.verdict import in_words
from txsuite.results import to_dataframe

# Scalar metrics summarised per cell: (record metric, column title, formatting kind), from the
# one metric registry (txsuite/config/metrics.py).
METRICS: list[tuple[str, str, str]] = [(m.name, m.title, m.kind) for m in REGISTRY]
# Metrics whose spread over repeats is kept (min/max columns): the ones charts draw error bars for.
SPREAD_METRICS = SPREAD
CONFIG = "config."
# The Pareto plot's two objectives, in front_with_noise's order: throughput (maximised) and the
# memory the cell controls (minimised; CellTable.memory_metric).
FRONT_SENSES = ("max", "min")


@dataclass
class CellTable:
    """The per-cell table plus what it was computed against."""
    cells: pd.DataFrame  # one row per cell, in first-seen order
    repeats: pd.DataFrame  # one row per record
    axes: list[str]  # varying config keys, dotted, in matrix order
    # The axes that vary among cells with measurements: a key that only an `include` cell
    # skipped on this host changes (device=cuda) would otherwise crowd every chart label.
    measured_axes: list[str]
    fixed: dict[str, Any]  # config keys equal in every cell
    reference: str | None  # cell id, None when no cell has throughput
    reference_note: str | None = None  # why the reference is not the one asked for
    # The memory the headlines judge: train memory (what the cell controls) when every measured
    # cell has it; the whole peak for records older than it. The table shows both.
    memory_metric: str = "peak_mem_bytes"
    verdicts: RunVerdicts | None = None  # every comparison between two cells of this run

    @property
    def ok(self) -> pd.DataFrame:
        return self.cells[self.cells["repeats_ok"] > 0]

    def row(self, cell_id: str) -> pd.Series:
        return self.cells.loc[self.cells["cell_id"] == cell_id].iloc[0]


def repeats_frame(records: list[Record]) -> pd.DataFrame:
    """One row per record with flattened config and numeric scalar metrics (NaN when absent)."""
    if not records:
        cols = ["cell_id", "repeat", "label", "status", "reason"] + [m for m, _, _ in METRICS]
        return pd.DataFrame(columns=cols)
    df = to_dataframe(records)
    for name, _, _ in METRICS:
        df[name] = pd.to_numeric(df[name], errors="coerce") if name in df else np.nan
        df[name] = df[name].astype(float).replace([np.inf, -np.inf], np.nan)
    # A failed repeat's leftover numbers (a partial result) must not count as a measurement.
    df.loc[df["status"] != "ok", [m for m, _, _ in METRICS]] = np.nan
    return df


def varying_keys(repeats: pd.DataFrame, axes_order: list[str] | dict[str, Any] | None = None
                 ) -> tuple[list[str], dict[str, Any]]:
    """(config keys whose value differs between cells, {key: value} of the keys that do not)."""
    config_cols = [c for c in repeats.columns if c.startswith(CONFIG)]
    per_cell = repeats.drop_duplicates("cell_id")
    varying, fixed = [], {}
    for col in config_cols:
        values = per_cell[col].map(comparable)
        if values.nunique(dropna=False) > 1:
            varying.append(col[len(CONFIG):])
        else:
            value = per_cell[col].iloc[0]
            fixed[col[len(CONFIG):]] = value.item() if isinstance(value, np.generic) else value
    labels = per_cell["label"].tolist() if "label" in per_cell else []
    return _in_matrix_order(varying, axes_order or [], labels), fixed


def build_cell_table(records: list[Record], axes_order: list[str] | dict[str, Any] | None = None,
                     reference: Any = None) -> CellTable:
    """`axes_order`: matrix.json's `axes` (or just their names), to order the varying keys."""
    repeats = repeats_frame(records)
    axes, fixed = varying_keys(repeats, axes_order)
    cells = cell_rows(repeats, axes)
    if cells.empty:
        return CellTable(cells=cells, repeats=repeats, axes=axes, measured_axes=axes, fixed=fixed, reference=None)
    for key in axes:
        cells[key] = _tidy_axis_column(cells[key])
    measured = cells[cells["repeats_ok"] > 0]
    measured_axes = [k for k in axes if measured[k].map(comparable).nunique(dropna=False) > 1] \
        if len(measured) > 1 else axes
    cells["short_label"] = short_labels(cells, measured_axes)

    base_id, note = choose_reference(cells, reference)
    verdicts = RunVerdicts(repeats)
    memory = memory_metric(measured)
    _add_ratios(cells, verdicts, base_id, memory)
    add_compression_columns(cells, repeats)  # deltas of compressed cells to their dense control
    add_quality_columns(cells, repeats, base_id)  # final loss with its noise, time to target, vs the reference
    cells["front"] = _front_with_noise(cells, verdicts, memory)
    cells["pareto"] = cells["front"] == FRONT  # Pareto-optimal on the medians
    cells["is_reference"] = cells["cell_id"] == base_id
    return CellTable(cells=cells, repeats=repeats, axes=axes, measured_axes=measured_axes, fixed=fixed,
                     reference=base_id, reference_note=note, memory_metric=memory, verdicts=verdicts)


def memory_metric(measured: pd.DataFrame) -> str:
    """train_mem_bytes when every measured cell has it, else peak_mem_bytes (older records)."""
    has = "train_mem_bytes" in measured and len(measured) and measured["train_mem_bytes"].notna().all()
    return "train_mem_bytes" if has else "peak_mem_bytes"


def cell_rows(repeats: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per cell, in first-seen order: identity, status, the axes' values (the cell's
    first record's), and each metric's median over the ok repeats (min and max for
    SPREAD_METRICS). Aggregated over the whole frame at once (a frame filtered per cell took
    minutes at 20,000 records); tests/test_report_scale.py holds it equal to the per-cell
    reading it replaced."""
    if repeats.empty:
        return pd.DataFrame(columns=["cell_id", "label", "status", "reason", "repeats", "repeats_ok", *axes])
    first = repeats.drop_duplicates("cell_id")  # each cell's first record, in first-seen order
    order = first["cell_id"]
    ok = repeats["status"] == "ok"
    bad = repeats[~ok]

    def per_cell(series: pd.Series, default: Any) -> list[Any]:
        """A Series indexed by cell id, in the cells' order, `default` where a cell has none."""
        return [default if v is None or (isinstance(v, float) and math.isnan(v)) else v
                for v in series.reindex(order).astype(object)]
    counts = repeats.groupby("cell_id", sort=False).size()
    ok_counts = ok.groupby(repeats["cell_id"], sort=False).sum()
    first_bad_status = bad.groupby("cell_id", sort=False)["status"].first()
    columns: dict[str, Any] = {
        "cell_id": order.tolist(),
        "label": per_cell(_first_texts(repeats, "label"), ""),
        # A cell with any good repeat has numbers to show; its bad repeats are listed as problems.
        "status": ["ok" if n else status for n, status in
                   zip(per_cell(ok_counts, 0), per_cell(first_bad_status, None))],
        "reason": per_cell(_first_texts(bad, "reason"), None),
        "repeats": [int(n) for n in per_cell(counts, 0)],
        "repeats_ok": [int(n) for n in per_cell(ok_counts, 0)],
    }
    for key in axes:
        columns[key] = first[CONFIG + key].tolist()
    # repeats_frame has already set the metrics of repeats that are not ok to NaN
    metrics = repeats.groupby("cell_id", sort=False)[[name for name, _, _ in METRICS]]
    medians, lows, highs = metrics.median(), metrics.min(), metrics.max()
    for name, _, _ in METRICS:
        columns[name] = medians[name].reindex(order).to_numpy(dtype=float)
        if name in SPREAD_METRICS:
            columns[f"{name}_min"] = lows[name].reindex(order).to_numpy(dtype=float)
            columns[f"{name}_max"] = highs[name].reindex(order).to_numpy(dtype=float)
    cells = pd.DataFrame(columns)
    med = cells["tokens_per_s"]
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = (cells["tokens_per_s_max"] - cells["tokens_per_s_min"]) / med * 100
    cells["tokens_per_s_spread_pct"] = spread.where(med.notna() & (med != 0), np.nan)
    return cells


def _first_texts(frame: pd.DataFrame, column: str) -> pd.Series:
    """cell id -> the first non-empty text of `column` among the cell's rows of `frame`."""
    texts = frame[column].map(lambda v: v if isinstance(v, str) and v else None)
    return texts.groupby(frame["cell_id"], sort=False).first()


def choose_reference(cells: pd.DataFrame, wanted: Any) -> tuple[str | None, str | None]:
    """The cell every ratio is taken against: matrix.json's `reference` (a cell id, a label or a
    mapping of axis values), else the first cell; it must have a throughput to divide by."""
    usable = cells[cells["tokens_per_s"].notna()]
    if usable.empty:
        return None, "no cell has a throughput, so no ratios are shown"
    if wanted in (None, "", {}):
        return str(usable["cell_id"].iloc[0]), None
    match = _match_cell(cells, wanted)
    shown = json.dumps(wanted) if isinstance(wanted, dict) else str(wanted)
    fallback = str(usable["cell_id"].iloc[0])
    fallback_label = usable["label"].iloc[0] or fallback
    if match is None:
        return fallback, f"reference {shown} matches no cell of this run; ratios use {fallback_label} instead"
    if match not in set(usable["cell_id"]):
        return fallback, (f"reference {shown} has no throughput (it did not finish); "
                          f"ratios use {fallback_label} instead")
    return match, None


def _match_cell(cells: pd.DataFrame, wanted: Any) -> str | None:
    if isinstance(wanted, dict):
        for _, row in cells.iterrows():
            if all(_same(row.get(k), v) for k, v in wanted.items() if k in row.index):
                return str(row["cell_id"])
        return None
    text = " ".join(str(wanted).split())
    for column in ("cell_id", "label"):
        hit = cells[cells[column].map(lambda v: " ".join(str(v).split())) == text]
        if len(hit):
            return str(hit["cell_id"].iloc[0])
    return None


def _front_with_noise(cells: pd.DataFrame, verdicts: RunVerdicts, memory: str) -> list[str | None]:
    """Each cell's place against the throughput/memory front, its dominance tested by the verdict
    engine. A cell is dominated when any of its `tests` comparisons (two per cell that dominates
    it on the medians) separates, so each is made at 95 % / tests (Bonferroni): the chance of
    calling an equal cell dominated stays at 5 % however many cells the run has."""
    objectives = ("tokens_per_s", memory)
    ids = cells["cell_id"].to_numpy(dtype=object)

    def judged(i: np.ndarray, j: np.ndarray, k: int, tests: np.ndarray) -> list[str]:
        return verdicts.verdicts(ids[i].tolist(), ids[j].tolist(), objectives[k], level=1 - 0.05 / tests)
    points = list(zip(*(cells[metric] for metric in objectives)))
    return front_with_noise(points, FRONT_SENSES, judged)


def _add_ratios(cells: pd.DataFrame, verdicts: RunVerdicts, base_id: str | None, memory: str) -> None:
    """Speed-up (tokens/s) and memory ratio (`memory`) against the reference cell, as the verdict
    engine compares them: the geometric mean of the rounds' ratios, time brought to the machine's
    best state (report/verdicts.py), with its 95 % interval as `_lo`/`_hi`; `speed_verdict`
    (faster / slower) and `memory_verdict` (lighter / heavier) say whether that interval leaves
    1, so a ratio and its colour never disagree. Where the engine has no paired rounds to
    compare (one round, or every round in a slow state), the ratio of the medians as measured
    and the range of the cell's repeats instead. The reference itself: 1 (no whisker), no verdict."""
    for col, verdict_col, metric in (("speedup", "speed_verdict", "tokens_per_s"),
                                     ("mem_ratio", "memory_verdict", memory)):
        base = np.nan
        if base_id is not None:
            base = float(cells.loc[cells["cell_id"] == base_id, metric].iloc[0])
        if not base or math.isnan(base):
            cells[col] = cells[f"{col}_lo"] = cells[f"{col}_hi"] = np.nan
            cells[verdict_col] = None
            continue
        cells[col] = cells[metric] / base
        cells[f"{col}_lo"] = cells[f"{metric}_min"] / base
        cells[f"{col}_hi"] = cells[f"{metric}_max"] / base
        asked = [cid != base_id and not pd.isna(value) for cid, value in zip(cells["cell_id"], cells[col])]
        columns = [cells[name].tolist() for name in (col, f"{col}_lo", f"{col}_hi")]
        words: list[str | None] = [None] * len(asked)
        for i, (cid, ask) in enumerate(zip(cells["cell_id"], asked)):
            engine = verdicts.compare(cid, base_id, metric) if ask else None
            if engine is not None:
                words[i] = in_words(engine.verdict, metric)
            if engine is not None and engine.low is not None and engine.high is not None:
                for column, value in zip(columns, (engine.ratio, engine.low, engine.high)):
                    column[i] = value
            elif cid == base_id:  # itself: 1, no interval to draw
                for column in columns:
                    column[i] = 1.0
        cells[col], cells[f"{col}_lo"], cells[f"{col}_hi"] = columns
        cells[verdict_col] = words


def short_labels(cells: pd.DataFrame, axes: list[str], limit: int = 42) -> list[str]:
    """Compact labels for charts: 'precision=bf16 micro_batch=4' from the varying keys (the
    last part of a dotted key is enough there), else the record's label, else the cell id."""
    out = []
    for row in cells[["cell_id", "label", *axes]].to_dict("records"):
        if axes:
            text = " ".join(f"{k.rsplit('.', 1)[-1]}={_compact(row[k])}" for k in axes)
        else:
            text = row["label"] or row["cell_id"]
        if row["label"] and str(row["label"]).startswith("+"):
            text = row["label"]  # an `include` cell: its own label says what was added
        out.append(text if len(text) <= limit else text[: limit - 1] + "…")
    return _deduplicate(out)


def export_frame(table: CellTable) -> pd.DataFrame:
    """The per-cell table as exported: raw numbers, machine-friendly column names."""
    keep = ["cell_id", "label", "status", "reason", "repeats", "repeats_ok", *table.axes]
    for name, _, _ in METRICS:
        keep.append(name)
        if name in SPREAD_METRICS:
            keep += [f"{name}_min", f"{name}_max"]
        if name == "tokens_per_s":
            keep.append("tokens_per_s_spread_pct")
    keep += ["speedup", "speedup_lo", "speedup_hi", "speed_verdict",
             "mem_ratio", "mem_ratio_lo", "mem_ratio_hi", "memory_verdict",
             "pareto", "front", "is_reference", *QUALITY_COLUMNS, *COMPRESSION_COLUMNS]
    keep = list(dict.fromkeys(keep))  # time_to_target_s is both a record metric and a quality column
    return table.cells[[c for c in keep if c in table.cells.columns]].reset_index(drop=True)


# ---------------------------------------------------------------- helpers

def _in_matrix_order(keys: list[str], axes: list[str] | dict[str, list[Any]], labels: list[str] = ()
                     ) -> list[str]:
    """The order the matrix declares its axes in. matrix.json is written with sorted keys, so
    the order is read from the cell labels first ('precision=bf16 train.micro_batch=4',
    'train={micro_batch: 16, grad_accum: 1}' are written in declaration order), then from
    matrix.json's axes (an axis `model` covers `model.preset`), then alphabetically."""
    label = next((text for text in labels if text and not text.startswith("+")), "")
    names = list(axes)

    def in_label(key: str) -> float:
        at = label.find(f"{key}=")
        if at >= 0:
            return at
        family, _, tail = key.partition(".")
        start = label.find(f"{family}=")
        if tail and start >= 0:
            inner = label.find(f"{tail}:", start)
            if inner >= 0:
                return inner
        return math.inf

    def in_meta(key: str) -> int:
        for i, axis in enumerate(names):
            if key == axis or key.startswith(axis + "."):
                return i
        return len(names)
    return sorted(keys, key=lambda k: (in_label(k), in_meta(k), k))


def _tidy_axis_column(column: pd.Series) -> pd.Series:
    """Numbers stay numbers (sortable, heatmap-able); anything mixed becomes text so the table
    exports cleanly to parquet."""
    values = [v for v in column if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pd.to_numeric(column)
    if values and all(isinstance(v, bool) for v in values) and len(values) == len(column):
        return column.astype(bool)
    return column.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                      else (v if isinstance(v, str) else _compact(v))).astype(object)


def _compact(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _deduplicate(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for text in labels:
        n = seen.get(text, 0)
        seen[text] = n + 1
        out.append(text if n == 0 else f"{text} ({n + 1})")
    return out
