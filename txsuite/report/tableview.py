"""Tables as the HTML page shows them: formatted text for the eye, a raw sort key for the
inline sorting script, and a CSS class for status / highlight."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import pandas as pd
from markupsafe import Markup, escape

from txsuite.config.metrics import BY_NAME
from txsuite.report import formatting as fmt
from txsuite.report.frame import METRICS, CellTable
from txsuite.report.pareto import FRONT, NEAR_FRONT
from txsuite.verdict.words import is_better, is_worse


# Where a cell label or a header may wrap besides its spaces: after a dot between names
# (train.micro_batch), an underscore, an equals sign. Without these the browser
# wraps "memory.activation_checkpointing=none" anywhere ("checkpoi / nting") or not at all.
_BREAK_AFTER = re.compile(r"(\.(?=[A-Za-z_])|[_=])")


def breakable(text: Any) -> Markup:
    """Escaped text that wraps at its spaces first: each word is an inline block (class "w" in
    base.j2) that moves to the next line whole when it fits there, and only a word longer than
    its column wraps inside, at a <wbr> (a line-break opportunity that copies and filters as
    nothing) after each point where a dotted, snake_case or key=value name may wrap."""
    words = []
    for word in str(text).split(" "):
        parts = _BREAK_AFTER.split(word)  # text, break point, text, ...
        chunks = [escape("".join(parts[i:i + 2])) for i in range(0, len(parts), 2)]
        inner = Markup("<wbr>").join(chunk for chunk in chunks if chunk)
        words.append(Markup('<span class="w">%s</span>') % inner if len(chunks) > 1 else inner)
    return Markup(" ").join(words)


@dataclass
class Column:
    title: str
    numeric: bool = False
    hint: str = ""  # header tooltip

    @property
    def html(self) -> Markup:
        """The title as the page writes it (the view keeps plain text: the markdown export reads it)."""
        return breakable(self.title)


@dataclass
class TableCell:
    text: str
    sort: str = ""  # raw value for sorting; empty sorts last
    cls: str = ""
    sub: str = ""  # small secondary text (spread, cell id)
    title: str = ""  # tooltip: the whole text where the cell shows a short one

    @property
    def html(self) -> Markup | str:
        """The text as the page writes it: a cell label wraps between its names (breakable)."""
        return breakable(self.text) if "label" in self.cls.split() else self.text


@dataclass
class TableView:
    columns: list[Column]
    rows: list[list[TableCell]] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)
    more: "TableView | None" = None  # a second table of the same rows (cell_table_view's diagnostics)


# The metrics of the "All cells" table: what the charts, the leader cards and the verdicts judge a
# cell by. Every other metric a run measured goes to a second table of the same rows
# (TableView.more): twenty-five columns do not fit a page, and most readers sort by these.
HEADLINE = ("tokens_per_s", "peak_mem_bytes", "train_mem_bytes", "mfu", "val_loss", "time_to_target_s",
            "energy_per_token_j")


def cell_table_view(table: CellTable) -> TableView:
    cells = table.cells
    # The axes that vary among measured cells: one that only a skipped include changes
    # (device=cuda) is in that cell's label already.
    axes = [k for k in table.axes if k in table.measured_axes]
    columns = [Column("cell", hint="axis values of the cell; the cell id is below"),
               Column("status"), Column("repeats", True, "ok repeats / repeats run")]
    columns += [Column(key, _is_numeric(cells[key]), "varying axis") for key in axes]
    measured = [(name, title, kind) for name, title, kind in METRICS if name in cells and cells[name].notna().any()]
    shown_metrics = [m for m in measured if m[0] in HEADLINE]
    for name, title, kind in shown_metrics:
        columns.append(Column(title, True, BY_NAME[name].description))
        if name == "tokens_per_s" and cells["speedup"].notna().any():
            columns.append(Column("speed-up", True, "tokens/s ÷ the reference's"))
        if name == table.memory_metric and cells["mem_ratio"].notna().any():
            columns.append(Column("memory ratio", True, f"{BY_NAME[name].title} ÷ the reference's"))
    columns.append(Column("Pareto", hint="✓: no other cell is both faster and lighter; ≈: another is, on the "
                                         "medians, but not beyond noise (paired by round)"))
    view = TableView(columns)

    for row in cells.to_dict("records"):  # plain dicts: a DataFrame's rows one by one cost seconds at thousands
        line = [_label_cell(row),
                TableCell(row["status"], row["status"], f"status status-{row['status']}"),
                TableCell(f"{row['repeats_ok']}/{row['repeats']}", sort_key(row["repeats_ok"]))]
        for key in axes:
            line.append(TableCell(fmt.plain(row[key]), sort_key(row[key]) if _is_numeric(cells[key]) else fmt.plain(row[key])))
        for name, _, kind in shown_metrics:
            line.append(_metric_cell(row, name, kind))
            if name == "tokens_per_s" and columns_has(columns, "speed-up"):
                line.append(TableCell(fmt.ratio(row["speedup"]), sort_key(row["speedup"]), "num " + verdict_class(row["speed_verdict"])))
            if name == table.memory_metric and columns_has(columns, "memory ratio"):
                line.append(TableCell(fmt.ratio(row["mem_ratio"]), sort_key(row["mem_ratio"]), "num " + verdict_class(row["memory_verdict"])))
        line.append(front_flag(row["front"]))
        view.rows.append(line)
        view.row_classes.append(_row_class(row))
    view.more = _diagnostics_view(table, [m for m in measured if m[0] not in HEADLINE])
    return view


def _diagnostics_view(table: CellTable, metrics: list[tuple[str, str, str]]) -> TableView | None:
    """The other metrics the run measured, one row per cell as in the main table."""
    if not metrics:
        return None
    view = TableView([Column("cell", hint="axis values of the cell; the cell id is below")] +
                     [Column(title, True, BY_NAME[name].description) for name, title, _ in metrics])
    for row in table.cells.to_dict("records"):
        view.rows.append([_label_cell(row)] + [_metric_cell(row, name, kind) for name, _, kind in metrics])
        view.row_classes.append(_row_class(row))
    return view


def _label_cell(row: Mapping[str, Any]) -> TableCell:
    return TableCell(row["label"] or row["short_label"], row["label"] or row["short_label"], "label",
                     sub=row["cell_id"] + (" · reference" if row["is_reference"] else ""))


def _metric_cell(row: Mapping[str, Any], name: str, kind: str) -> TableCell:
    sub = ""
    if name == "tokens_per_s" and fmt.is_number(row.get("tokens_per_s_spread_pct")) and row["repeats_ok"] > 1:
        sub = f"±{row['tokens_per_s_spread_pct'] / 2:.1f}%"
    return TableCell(fmt.by_kind(row[name], kind), sort_key(row[name]), "num", sub=sub)


def _row_class(row: Mapping[str, Any]) -> str:
    return " ".join(c for c in ("reference" if row["is_reference"] else "", "pareto" if row["pareto"] else "",
                                "not-ok" if row["repeats_ok"] == 0 else "") if c)


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
