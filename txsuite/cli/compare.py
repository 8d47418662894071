"""`txsuite compare`: two runs side by side; the terminal gets the summary, the page the detail."""
from __future__ import annotations

from pathlib import Path

import click

from txsuite.cli.common import UsageProblem, console, print_lines, report_path, reports_dir_option


@click.command()
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@reports_dir_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="HTML file to write (default: "
              "REPORTS_DIR/compare/A_vs_B.html).")
@click.option("--force", is_flag=True, help="Compare runs of different matrices (cells are then matched by their "
                                            "settings, and a ratio compares two experiments).")
def compare(run_a: str, run_b: str, reports_dir: str, output: str | None, force: bool) -> None:
    """Side-by-side report of two runs (same matrix on two machines or two commits)."""
    from txsuite.report.compare import different_experiments, render_runs
    from txsuite.results import RunFolder

    a, b = Path(run_a), Path(run_b)
    for run in (a, b):
        if not (run / "records.jsonl").exists():
            raise UsageProblem(f"{run} is not a run folder (no records.jsonl in it).")
    out = Path(output) if output else Path(reports_dir) / "compare" / f"{a.name}_vs_{b.name}.html"
    loaded_a, loaded_b = RunFolder(a).load(), RunFolder(b).load()
    warnings = different_experiments(loaded_a, loaded_b)
    if warnings and not force:
        raise UsageProblem(" ".join(warnings) + " Pass --force to compare them anyway.")
    print_lines(warnings)
    try:
        if not output:  # never over the comparison of two other runs of those ids
            out, note = report_path(out.parent, f"{a.name}_vs_{b.name}", ".html", f"{a.resolve()} vs {b.resolve()}")
            print_lines([note] if note else [])
        path, findings = render_runs(loaded_a, loaded_b, out)
    except OSError as exc:
        raise UsageProblem(f"cannot write the comparison to {exc.filename or out}: {exc.strerror or exc}; "
                           f"give a writable -o path or --reports-dir.") from None
    print_lines(findings)
    console.print(f"wrote {path}", markup=False)
