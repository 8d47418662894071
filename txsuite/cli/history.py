"""`txsuite history`: every run of each matrix across commits as a static site, steps marked."""
from __future__ import annotations

import click

from txsuite.cli.common import UsageProblem, console, print_lines


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="The folder to write the site into (index.html and a page per matrix and host).")
@click.option("--reports-dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Where the runs' own reports are, to link each run to its report.")
def history(results: tuple[str, ...], out_dir: str, reports_dir: str) -> None:
    """A site over every run under RESULTS (run, matrix or results folders): per matrix and host,
    each cell's metrics over the runs, with the steps the verdict engine finds, and a page of every
    step with the two runs around it compared."""
    from txsuite.report.history import render_history

    try:
        site = render_history(list(results), out_dir, reports_dir,
                              on_progress=lambda text: console.print(text, markup=False, highlight=False))
    except OSError as exc:
        raise UsageProblem(f"cannot write the history site to {exc.filename or out_dir}: {exc.strerror or exc}; "
                           f"give a writable -o folder (the runs are untouched).") from None
    worse = [c for c in site.changes if c.worse]
    lines = [f"{len(site.series)} series, {sum(len(s.runs) for s in site.series)} runs; "
             f"{len(worse)} step{'s' if len(worse) != 1 else ''} for the worse, "
             f"{len(site.changes) - len(worse)} for the better."]
    lines += [f"{c.cell}: {c.metric} {c.words} {c.ratio:.3f}x between {c.before.commit or c.before.run_id} and "
              f"{c.after.commit or c.after.run_id}" + ("" if c.confirmed else " (the newest run alone: to confirm)")
              for c in worse[:10]]
    print_lines(lines)
    console.print(f"wrote {site.index}", markup=False)
