"""render_report: one run folder -> one self-contained HTML file."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from txsuite.report import formatting as fmt
from txsuite.report.answers import answer_lines
from txsuite.report.charts import build_charts
from txsuite.report.compression_view import compression_section
from txsuite.report.convergence_view import convergence_section
from txsuite.report.encoding import ordered_values
from txsuite.report.environment import env_rows
from txsuite.report.frame import CellTable, build_cell_table
from txsuite.report.parallel_view import parallel_section
from txsuite.report.predictions_view import predictions_section
from txsuite.report.render import render_to_file
from txsuite.report.search_view import search_section
from txsuite.results import Run, RunFolder
from txsuite.report.summary import summarize
from txsuite.report.tableview import cell_table_view


# a run with more cells than this says what the report is doing while it renders
PROGRESS_FROM_CELLS = 200


def render_report(run_dir: Path, out_path: Path, on_progress: Callable[[str], None] | None = None) -> Path:
    return render_run(run_dir, out_path, on_progress)[0]


def render_run(run_dir: Path, out_path: Path, on_progress: Callable[[str], None] | None = None
               ) -> tuple[Path, list[str]]:
    """(the report written, its answers as plain lines for a terminal). `on_progress` hears
    each stage of a large run's rendering, with how long the stage before it took."""
    started = [time.monotonic()]
    run = RunFolder(run_dir).load()
    large = on_progress is not None and len({r.cell_id for r in run.records}) > PROGRESS_FROM_CELLS

    def stage(text: str) -> None:
        if large:
            now = time.monotonic()
            on_progress(f"report: {text} ({now - started[0]:.1f} s)")
            started[0] = now

    stage(f"read {len(run.records):,} records")
    table = table_for(run)
    stage(f"summarised {len(table.cells):,} cells")
    summary = summarize(table, run.meta)
    stage("verdicts and the Pareto front")
    charts = build_charts(table)
    stage(f"{len(charts)} charts drawn")
    sections = dict(table=cell_table_view(table), convergence=convergence_section(table),
                    compression=compression_section(table), parallel=parallel_section(run.records),
                    predictions=predictions_section(table), search=search_section(run.dir),
                    matrix=matrix_view(run, table), env=env_rows(run))
    stage("tables laid out")
    path = render_to_file("report.j2", out_path, run=run, started=run.time_span[0], finished=run.time_span[1],
                          generated=_now(), summary=summary, charts=charts, **sections)
    stage(f"written to {path}")
    return path, answer_lines(summary)


def table_for(run: Run) -> CellTable:
    return build_cell_table(run.records, run.meta.axes, run.meta.reference)


def matrix_view(run: Run, table: CellTable) -> dict[str, Any]:
    """What was varied and what was held fixed, as text pairs. Axes come from matrix.json when
    present (what the user declared), else from the records (what actually varied)."""
    if run.meta.axes:
        axes = [(k, " · ".join(fmt.axis_value(v) for v in values)) for k, values in run.meta.axes.items()]
    else:
        axes = [(k, " · ".join(fmt.plain(v) for v in ordered_values(table.cells[k]))) for k in table.axes]
    reference = table.row(table.reference) if table.reference else None
    return {
        "axes": axes,
        "fixed": [(k, fmt.plain(v)) for k, v in sorted(table.fixed.items())],
        "repeats": run.meta.repeats,
        "guard": [(k, str(v)) for k, v in run.meta.guard.items()],
        "reference": (reference["label"] or reference["short_label"]) if reference is not None else None,
        "notes": run.meta.notes,
        "source": run.meta.source,
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
