"""Tables as the HTML page shows them: formatted text for the eye, a raw sort key for the
inline sorting script, and a CSS class for status / highlight."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from txsuite.config.metrics import BY_NAME
from txsuite.report import formatting as fmt
from txsuite.report.frame import METRICS, CellTable
from txsuite.report.pareto import FRONT, NEAR_FRONT
from txsuite.verdict.words import is_better, is_worse


@dataclass
class Column:
    title: str
    numeric: bool = False
    hint: str = ""  # header tooltip


@dataclass
class TableCell:
    text: str
    sort: str = ""  # raw value for sorting; empty sorts last
    cls: str = ""
    sub: str = ""  # small secondary text (spread, cell id)


@dataclass
class TableView:
    columns: list[Column]
    rows: list[list[TableCell]] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)


def cell_table_view(table: CellTable) -> TableView:
    cells = table.cells
    columns = [Column("cell", hint="axis values of the cell; the cell id is below"),
               Column("status"), Column("repeats", True, "ok repeats / repeats run")]
    columns += [Column(key, _is_numeric(cells[key]), "varying axis") for key in table.axes]
    shown_metrics = [(name, title, kind) for name, title, kind in METRICS
                     if name in cells and cells[name].notna().any()]
    for name, title, kind in shown_metrics:
        columns.append(Column(title, True, BY_NAME[name].description))
        if name == "tokens_per_s" and cells["speedup"].notna().any():
            columns.append(Column("speed-up", True, "tokens/s ÷ the reference's"))
        if name == table.memory_metric and cells["mem_ratio"].notna().any():
            columns.append(Column("memory ratio", True, f"{BY_NAME[name].title} ÷ the reference's"))
    columns.append(Column("Pareto", hint="✓: no other cell is both faster and lighter; ≈: another is, on the "
                                         "medians, but not beyond noise (paired by round)"))
    view = TableView(columns)

    for _, row in cells.iterrows():
        line = [TableCell(row["label"] or row["short_label"], row["label"] or row["short_label"],
                     "label", sub=row["cell_id"] + (" · reference" if row["is_reference"] else "")),
                TableCell(row["status"], row["status"], f"status status-{row['status']}"),
                TableCell(f"{row['repeats_ok']}/{row['repeats']}", sort_key(row["repeats_ok"]))]
        for key in table.axes:
            line.append(TableCell(fmt.plain(row[key]), sort_key(row[key]) if _is_numeric(cells[key]) else fmt.plain(row[key])))
        for name, _, kind in shown_metrics:
            value = row[name]
            sub = ""
            if name == "tokens_per_s" and fmt.is_number(row.get("tokens_per_s_spread_pct")) and row["repeats_ok"] > 1:
                sub = f"±{row['tokens_per_s_spread_pct'] / 2:.1f}%"
            line.append(TableCell(fmt.by_kind(value, kind), sort_key(value), "num", sub=sub))
            if name == "tokens_per_s" and columns_has(columns, "speed-up"):
                line.append(TableCell(fmt.ratio(row["speedup"]), sort_key(row["speedup"]), "num " + verdict_class(row["speed_verdict"])))
            if name == table.memory_metric and columns_has(columns, "memory ratio"):
                line.append(TableCell(fmt.ratio(row["mem_ratio"]), sort_key(row["mem_ratio"]), "num " + verdict_class(row["memory_verdict"])))
        line.append(front_flag(row["front"]))
        view.rows.append(line)
        view.row_classes.append(" ".join(c for c in (
            "reference" if row["is_reference"] else "", "pareto" if row["pareto"] else "",
            "not-ok" if row["repeats_ok"] == 0 else "") if c))
    return view


def columns_has(columns: list[Column], title: str) -> bool:
    return any(c.title == title for c in columns)


def sort_key(value: Any) -> str:
    if not fmt.is_number(value):
        return ""
    return repr(float(value))


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


# The Pareto column's mark and sort key per place against the front (txsuite/report/pareto.py).
FRONT_FLAGS = {FRONT: ("✓", "2"), NEAR_FRONT: ("≈", "1")}


def front_flag(place: str | None) -> TableCell:
    text, key = FRONT_FLAGS.get(place, ("", "0"))
    return TableCell(text, key, "flag")


def verdict_class(verdict: str | None) -> str:
    """Colour a ratio against the reference only when the verdict engine separates the two cells
    (txsuite/verdict/rounds.py): green for better (faster, lighter), red for worse; within noise or
    untested: none."""
    return "better" if is_better(verdict) else "worse" if is_worse(verdict) else ""


def ratio_class(value: Any, higher_is_better: bool) -> str:
    """Colour a ratio only when it is a real change (±3%): green for better, red for worse."""
    if not fmt.is_number(value) or math.isclose(float(value), 1.0, abs_tol=0.03):
        return ""
    better = (float(value) > 1) == higher_is_better
    return "better" if better else "worse"
