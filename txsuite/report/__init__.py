"""HTML reports of ablation runs (L2: pandas -> matplotlib -> Jinja templates).

    render_report(run_dir, out_path)          one self-contained HTML file per run
    render_compare(run_a, run_b, out_path)    two runs side by side, per-cell ratios B/A
    export_table(run_dir, out_path, fmt)      the per-cell table as csv, parquet, json or markdown
    render_history(paths, out_dir)            every run across commits as a site, steps marked

Modules, one job each: frame (records -> per-cell table; runs are read through
txsuite.results.RunFolder),
pareto, summary (findings in words), encoding (colours/markers per axis), palettes (colour lists), charts
(matplotlib figures), svg (figure -> inline SVG), formatting (units), tableview (tables as shown),
environment (fingerprint rows and diffs), render (Jinja, autoescaped), answers (the summary as
terminal lines), and the entry points run_report, compare, export and history.
"""
from txsuite.report.compare import render_compare
from txsuite.report.export import export_table
from txsuite.report.run_report import render_report

__all__ = ["render_report", "render_compare", "export_table"]
