"""`txsuite report`: (re)render a run's report, or export its per-cell table."""
from __future__ import annotations

from pathlib import Path

import click

from txsuite.cli.common import UsageProblem, console, err_console, report_path, reports_dir_option


@click.command()
@click.argument("results", type=click.Path(exists=True, file_okay=False))
@reports_dir_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="HTML file to write.")
@click.option("--format", "fmt", type=click.Choice(["html", "csv", "parquet", "json", "markdown"]), default="html",
              show_default=True, help="html report, or the per-cell table as csv/parquet/json/markdown.")
def report(results: str, reports_dir: str, output: str | None, fmt: str) -> None:
    """(Re)render the report of a run folder (results/<matrix>/<run id>)."""
    from txsuite.report import export_table, render_report
    from txsuite.results import find_runs

    runs = find_runs(results)
    if not runs:
        raise UsageProblem(f"{results} holds no records.jsonl: give a run folder such as results/<matrix>/<run id>.")
    for run_dir in runs:
        meta_name = run_dir.parent.name
        suffix = {"html": ".html", "csv": ".csv", "parquet": ".parquet", "json": ".json", "markdown": ".md"}[fmt]
        chosen = bool(output and len(runs) == 1)
        out = Path(output) if chosen else Path(reports_dir) / meta_name / f"{run_dir.name}{suffix}"
        try:
            if not chosen:  # never over the report of another run of that id
                out, note = report_path(out.parent, run_dir.name, suffix, str(run_dir.resolve()))
                if note:
                    console.print(note, markup=False, soft_wrap=True)
            path = (render_report(run_dir, out, on_progress=_progress) if fmt == "html"
                    else export_table(run_dir, out, fmt))
        except OSError as exc:
            raise UsageProblem(f"cannot write the {fmt} report of {run_dir} to {exc.filename or out}: "
                               f"{exc.strerror or exc}; give a writable -o path or --reports-dir "
                               f"(the records are untouched).") from None
        console.print(f"wrote {path}", markup=False)


def _progress(text: str) -> None:
    err_console.print(text, markup=False, highlight=False)
