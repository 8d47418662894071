"""export_table: the per-cell table of a run as csv, parquet, json or markdown.

csv, parquet and json carry the raw numbers (bytes, tokens/s, fractions) under machine-friendly
column names, for notebooks and spreadsheets, each row led by where it came from (`matrix`,
`run_id`, `txsuite_commit`, `host`) so that rows of many runs can be stacked; json is a list of
one object per cell, missing values null. markdown carries the table exactly as the HTML report
shows it (formatted units), under a line naming the same provenance, for pasting into a pull
request or an issue.
"""
from __future__ import annotations

from pathlib import Path

from txsuite.report import formatting as fmt
from txsuite.report.frame import export_frame
from txsuite.report.quality import EXPORT_COLUMNS as QUALITY_COLUMNS
from txsuite.report.run_report import table_for
from txsuite.report.tableview import Column, TableCell, TableView, cell_table_view
from txsuite.results import RunFolder, write_atomic
from txsuite.results.folder import ensure_replaceable

FORMATS = ("csv", "parquet", "json", "markdown")
TEXT_COLUMNS = ("quality_verdict", "quality_noise", "target_reached")


def export_table(run_dir: Path, out_path: Path, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; allowed formats: {', '.join(FORMATS)}")
    run = RunFolder(run_dir).load()
    table = table_for(run)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        write_atomic(out_path, spreadsheet_safe(with_provenance(export_frame(table), run)).to_csv(index=False))
    elif fmt == "json":
        write_atomic(out_path, with_provenance(export_frame(table), run).to_json(orient="records", indent=1) + "\n")
    elif fmt == "parquet":
        ensure_replaceable(out_path)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        with_provenance(export_frame(table), run).to_parquet(tmp, index=False, engine="pyarrow")
        tmp.replace(out_path)  # atomic, like every other file txsuite writes
    else:
        origin = ", ".join(f"{name} `{value}`" for name, value in provenance(run).items() if value)
        write_atomic(out_path, f"{origin}\n\n" + markdown(cell_table_view(table))
                     + quality_markdown(export_frame(table)))
    return out_path


def provenance(run) -> dict[str, str | None]:
    """Where a run's rows came from: its matrix, run id, txsuite commit and host."""
    env = run.env or {}
    recorded = [r.env for r in run.records if r.env]  # a run folder without env.json: the records carry it
    commit = env.get("txsuite_commit") or next((e.get("txsuite_commit") for e in recorded), None)
    host = env.get("host") or next((e.get("host") for e in recorded), None)
    return {"matrix": run.name, "run_id": run.run_id, "txsuite_commit": commit, "host": host}


def with_provenance(frame, run):
    """The frame with the run's provenance (matrix, run id, txsuite commit, host) as its first columns."""
    out = frame.copy()
    for position, (column, value) in enumerate(provenance(run).items()):
        out.insert(position, column, value)
    return out


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula


def spreadsheet_safe(frame):
    """The frame with every text cell that a spreadsheet would run as a formula (a label
    `=HYPERLINK(...)`, `+1`, `@SUM`, `-x`) led by a single quote, as OWASP advises against CSV
    injection: the cell then shows the text as written. Numbers stay numbers (a negative number
    is not text); only csv needs this (parquet and json carry values, not formulas)."""
    from pandas.api.types import is_numeric_dtype
    out = frame.copy()
    for column in out.columns:
        if not is_numeric_dtype(out[column]):
            out[column] = out[column].map(
                lambda v: f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_START) else v)
    return out


def quality_markdown(frame) -> str:
    """The convergence aggregates under their export names (seeds, val_loss_mean, ...), one row
    per cell that measured a validation loss, as a second table; empty when none did."""
    columns = [c for c in QUALITY_COLUMNS if c in frame and frame[c].notna().any()]
    if "val_loss_mean" not in columns:
        return ""
    view = TableView([Column("cell")] + [Column(c, c not in TEXT_COLUMNS) for c in columns])
    for _, row in frame[frame["val_loss_mean"].notna()].iterrows():
        view.rows.append([TableCell(row["label"] or row["cell_id"])]
                         + [TableCell(fmt.plain(row[c], 5)) for c in columns])
    return "\n## Convergence\n\n" + markdown(view)


def markdown(view: TableView) -> str:
    """A GitHub-flavoured markdown table (written here: no dependency on `tabulate`)."""
    header = [_escape(c.title) for c in view.columns]
    align = ["---:" if c.numeric else "---" for c in view.columns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for row in view.rows:
        texts = []
        for col, cell in zip(view.columns, row):
            text = cell.text
            if cell.sub and col.title != "cell":  # the spread belongs with the number
                text = f"{text} {cell.sub}"
            texts.append(_escape(text))
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    # Markdown renderers pass raw HTML through: a label must not become a tag.
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
