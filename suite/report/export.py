"""export_table: the per-cell table of a run as csv, parquet or markdown.

csv and parquet carry the raw numbers (bytes, tokens/s, fractions) under machine-friendly
column names, for notebooks and spreadsheets; markdown carries the table exactly as the HTML
report shows it (formatted units), for pasting into a pull request or an issue.
"""
from __future__ import annotations

from pathlib import Path

from suite.report.frame import export_frame
from suite.report.run_report import table_for
from suite.report.tableview import TableView, cell_table_view
from suite.results import RunFolder, write_atomic
from suite.results.folder import ensure_replaceable

FORMATS = ("csv", "parquet", "markdown")


def export_table(run_dir: Path, out_path: Path, fmt: str) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; allowed formats: {', '.join(FORMATS)}")
    table = table_for(RunFolder(run_dir).load())
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        write_atomic(out_path, export_frame(table).to_csv(index=False))
    elif fmt == "parquet":
        ensure_replaceable(out_path)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        export_frame(table).to_parquet(tmp, index=False, engine="pyarrow")
        tmp.replace(out_path)  # atomic, like every other file txsuite writes
    else:
        write_atomic(out_path, markdown(cell_table_view(table)))
    return out_path


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
