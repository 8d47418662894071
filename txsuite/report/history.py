"""render_history: every run of a matrix across commits as one static site, with the steps the
verdict engine finds marked (txsuite/verdict/series.py).

Runs are grouped by matrix and by host (from env.json: host name, CPU model, GPUs), since a
series of runs is only comparable on one machine; each group is ordered by the time its run
started. Per run and cell, a metric's value is the median over the run's ok repetitions, time
metrics brought to the machine's best state by each repetition's probe and repetitions measured
in a slow state left out (as the run report does). The site:

    index.html            every series (matrix x host), its runs and its steps
    <series>.html         per cell, a chart per metric over the runs, steps marked; the runs
    regressions.html      every step, worse first: cell, metric, the runs around it, the evidence
    compare/<a>_vs_<b>.html  the two runs around each step side by side (txsuite compare)
    history.json          the same steps, for tools
"""
from __future__ import annotations

import json
import os
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from txsuite.config.metrics import BY_NAME
from txsuite.report import formatting as fmt
from txsuite.report.compare import render_runs
from txsuite.report.export import provenance
from txsuite.report.render import render_to_file
from txsuite.report.svg import plot_text, report_style, subplots, to_svg
from txsuite.results import Run, RunFolder, find_runs
from txsuite.verdict import state
from txsuite.verdict.series import find_steps, newest_outlier
from txsuite.verdict.words import in_words, is_worse

# What each series charts, in this order: the headline metrics, then the step counters (exact:
# any change is a step), which are comparable across hosts too.
METRICS = ("tokens_per_s", "train_mem_bytes", "mfu", "val_loss", "step_flops", "step_ops", "step_alloc_bytes")


@dataclass
class RunPoint:
    """One run of a series, as the site shows it."""
    run: Run
    started: str
    commit: str  # short, "-dirty" kept
    report_href: str | None = None  # the run's own report, where one was found

    @property
    def run_id(self) -> str:
        return self.run.run_id


@dataclass
class Change:
    """A step in one cell's metric: the runs before against the runs after."""
    series: str
    cell: str
    metric: str
    before: RunPoint  # the last run before the step
    after: RunPoint  # the first run after it
    ratio: float
    low: float | None
    high: float | None
    words: str  # "slower", "faster", "heavier", ...
    worse: bool
    confirmed: bool = True  # False: the newest run alone, beyond the spread (one more run tells)
    compare_href: str | None = None

    def to_dict(self) -> dict:
        return {"series": self.series, "cell": self.cell, "metric": self.metric, "words": self.words,
                "worse": self.worse, "confirmed": self.confirmed, "ratio": self.ratio, "low": self.low,
                "high": self.high, "before": {"run_id": self.before.run_id, "commit": self.before.commit},
                "after": {"run_id": self.after.run_id, "commit": self.after.commit}}


@dataclass
class Series:
    """The runs of one matrix on one host, oldest first, and each cell's values per run."""
    matrix: str
    host: str
    runs: list[RunPoint] = field(default_factory=list)
    values: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)  # cell -> metric -> per run
    changes: list[Change] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{self.matrix}--{self.host}").strip("-")[:120]


@dataclass
class HistorySite:
    index: Path
    series: list[Series]

    @property
    def changes(self) -> list[Change]:
        return [c for s in self.series for c in s.changes]


def render_history(paths: list[Path | str], out_dir: Path | str, reports_dir: Path | str | None = None,
                   on_progress: Callable[[str], None] | None = None) -> HistorySite:
    """The site of every run at or below `paths`, written into `out_dir`."""
    say = on_progress or (lambda text: None)
    out_dir = Path(out_dir)
    runs = [RunFolder(d).load() for p in paths for d in find_runs(p)]
    runs = [r for r in runs if r.records]
    say(f"{len(runs)} runs read")
    series = group_series(runs, out_dir, Path(reports_dir) if reports_dir else None)
    for s in series:
        s.changes = find_changes(s)
    compared: dict[tuple[str, str], str] = {}
    for s in series:
        for change in s.changes:
            key = (str(change.before.run.dir), str(change.after.run.dir))
            if key not in compared:
                name = f"{_slug(change.before.run_id)}_vs_{_slug(change.after.run_id)}--{s.slug}.html"
                render_runs(change.before.run, change.after.run, out_dir / "compare" / name)
                compared[key] = f"compare/{name}"
            change.compare_href = compared[key]
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for i, s in enumerate(series, 1):
        say(f"series {i} of {len(series)}: {s.matrix} on {s.host} ({len(s.runs)} runs)")
        render_to_file("history_series.j2", out_dir / f"{s.slug}.html", series=s, charts=series_charts(s),
                       generated=generated, fmt=fmt)
    changes = sorted((c for s in series for c in s.changes), key=lambda c: (not c.worse, not c.confirmed, c.series))
    render_to_file("history_changes.j2", out_dir / "regressions.html", changes=changes, generated=generated)
    index = render_to_file("history_index.j2", out_dir / "index.html", series=series, changes=changes,
                           generated=generated)
    (out_dir / "history.json").write_text(json.dumps({"generated": generated, "changes": [c.to_dict() for c in changes]},
                                                     indent=1) + "\n")
    return HistorySite(index, series)


def group_series(runs: list[Run], out_dir: Path, reports_dir: Path | None) -> list[Series]:
    """Runs grouped by matrix and host, each group oldest first, with each cell's values."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.name, host_key(run))].append(run)
    out = []
    for (matrix, host), members in sorted(groups.items()):
        members.sort(key=lambda r: (r.time_span[0] or "", r.run_id))
        series = Series(matrix, host)
        for position, run in enumerate(members):
            series.runs.append(RunPoint(run, run.time_span[0] or "", _commit(run), _report_href(run, out_dir, reports_dir)))
            for cell, metrics in run_values(run).items():
                for metric, value in metrics.items():
                    column = series.values.setdefault(cell, {}).setdefault(metric, [None] * len(members))
                    column[position] = value
        out.append(series)
    return out


def host_key(run: Run) -> str:
    """What makes runs of one matrix comparable: the machine (name, CPU, GPUs)."""
    env = run.env or next((r.env for r in run.records if r.env), {}) or {}
    gpus = env.get("gpus") or []
    names = sorted({str(g.get("name")) for g in gpus if isinstance(g, dict) and g.get("name")})
    parts = [str(env.get("host") or "unknown host"), str(env.get("cpu") or "")] + names
    return " · ".join(p for p in parts if p)


def run_values(run: Run) -> dict[str, dict[str, float]]:
    """cell label -> metric -> the run's value: the median over its ok repetitions (time metrics
    state-adjusted; repetitions in a slow machine state left out)."""
    ok = [r for r in run.records if r.status == "ok"]
    samples: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for metric in METRICS:
        rows = ((r.label or r.cell_id, r.repeat, float(value), r.metrics) for r in ok
                if fmt.is_number(value := r.metrics.get(metric)) and value > 0)  # is_number: finite
        for cell, by_repeat in state.adjusted(rows, metric).values.items():
            samples[cell][metric] = list(by_repeat.values())
    return {cell: {metric: statistics.median(vals) for metric, vals in metrics.items()}
            for cell, metrics in samples.items()}


def find_changes(series: Series) -> list[Change]:
    """Every step of every cell's metric in the series, and the newest run where it alone lies
    beyond the spread of the runs before it."""
    out = []
    for cell, metrics in series.values.items():
        for metric, column in metrics.items():
            spec = BY_NAME[metric]
            present = [i for i, v in enumerate(column) if v is not None]
            values = [column[i] for i in present]
            steps = find_steps(values, spec.higher_is_better, spec.resolution, exact=spec.exact)
            for step in steps:
                out.append(_change(series, cell, metric, present[step.index - 1], present[step.index],
                                   step.comparison, True))
            if not spec.exact and present and present[-1] == len(series.runs) - 1:
                newest = newest_outlier(values, steps, spec.higher_is_better, spec.resolution)
                if newest is not None:
                    out.append(_change(series, cell, metric, present[-2], present[-1], newest, False))
    return out


def _change(series: Series, cell: str, metric: str, before: int, after: int, comparison, confirmed: bool) -> Change:
    if BY_NAME[metric].exact:  # a counter: fewer or more of what a step dispatches (fewer is better)
        words, worse = ("more" if comparison.ratio > 1 else "fewer"), comparison.ratio > 1
    else:
        words, worse = in_words(comparison.verdict, metric), is_worse(comparison.verdict)
    return Change(series.slug, cell, metric, series.runs[before], series.runs[after], comparison.ratio,
                  comparison.low, comparison.high, words, worse, confirmed)


def series_charts(series: Series) -> list[tuple[str, object]]:
    """(cell, inline SVG): one figure per cell, a small chart per metric over the runs, each step
    marked where it happened (red: worse, green: better; dashed: the newest run, to confirm)."""
    charts = []
    x = list(range(len(series.runs)))
    ticks = [r.commit[:7] or r.run_id[-6:] for r in series.runs]
    with report_style():
        for cell, metrics in series.values.items():
            shown = [m for m in METRICS if m in metrics]
            fig, axes = subplots(1, len(shown), figsize=(3.2 * len(shown), 2.6), squeeze=False)
            for ax, metric in zip(axes[0], shown):
                column = metrics[metric]
                points = [(i, v) for i, v in zip(x, column) if v is not None]
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, linewidth=1.2)
                for change in series.changes:
                    if change.cell == cell and change.metric == metric:
                        where = series.runs.index(change.after) - 0.5
                        ax.axvline(where, color="#b00020" if change.worse else "#1b7f3b",
                                   linestyle="-" if change.confirmed else "--", linewidth=1.4)
                ax.set_title(BY_NAME[metric].title, fontsize=10)
                step = max(1, len(x) // 6)
                ax.set_xticks(x[::step])
                ax.set_xticklabels([plot_text(t) for t in ticks[::step]], rotation=45, ha="right", fontsize=7.5)
                ax.yaxis.set_major_formatter(_formatter(BY_NAME[metric].kind))
            fig.tight_layout()
            charts.append((cell, to_svg(fig)))
    return charts


def _formatter(kind: str):
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(lambda value, _: fmt.by_kind(value, kind))


def _commit(run: Run) -> str:
    commit = provenance(run)["txsuite_commit"]
    if not commit:
        return ""
    head, dirty, _ = str(commit).partition("-dirty")
    return head[:10] + ("-dirty" if dirty or str(commit).endswith("-dirty") else "")


def _report_href(run: Run, out_dir: Path, reports_dir: Path | None) -> str | None:
    if reports_dir is None:
        return None
    report = reports_dir / run.name / f"{run.dir.name}.html"
    return os.path.relpath(report, out_dir) if report.exists() else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:60]
