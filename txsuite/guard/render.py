"""The guard's verdict as plain text (for a terminal or a CI log) and as Markdown (for a
GitHub job summary or a pull-request comment). Used by `txsuite guard` and `txsuite ab`."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from txsuite.guard.metrics import fmt_value

if TYPE_CHECKING:  # pragma: no cover
    from txsuite.guard.decide import Check, GuardResult

DECISION = ("each check compares the ratio now/baseline with its limit through a {level} confidence "
            "interval: PASS when the interval lies within the limit, FAIL when it lies beyond it (the change is "
            "then also significant), INCONCLUSIVE otherwise; the step counters are compared exactly")


def _ratio(r: "Check") -> str:
    return "-" if r.ratio is None else f"{r.ratio:.3f} ({r.ratio - 1:+.1%})"


def _ci(r: "Check") -> str:
    if r.ci is None:
        return "-"
    if r.ci_label == "exact":
        return "exact"
    return f"[{r.ci[0]:.3f}, {r.ci[1]:.3f}]"


def _samples(r: "Check") -> str:
    return f"{r.samples_run} / {r.samples_base}" if r.samples_run else "-"


def _metric(r: "Check") -> str:
    return f"{r.metric} (on {r.judged_on})" if r.judged_on else r.metric


def _level(result: "GuardResult") -> str:
    return f"{1 - 2 * result.alpha:.0%}"


def _table(rows: list["Check"], result: "GuardResult") -> Table:
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name, justify in (("cell", "left"), ("metric", "left"), ("limit", "right"), ("baseline", "right"),
                          ("now", "right"), ("ratio now/base", "right"), (f"{_level(result)} CI", "right"),
                          ("samples now / base", "right"), ("verdict", "left")):
        t.add_column(name, justify=justify, overflow="fold")
    for r in rows:
        shown = r.judged_on or r.metric
        t.add_row(r.label, _metric(r), r.threshold, fmt_value(shown, r.baseline, r.normalized),
                  fmt_value(shown, r.now, r.normalized), _ratio(r), _ci(r), _samples(r), r.verdict)
    return t


def summary_line(result: "GuardResult") -> str:
    rows = result.rows
    if result.verdict == "FAIL":
        fails = result.failures
        return f"FAIL: {len(fails)} of {len(rows)} checks beyond their limit, in {len({r.cell_id for r in fails})} cell(s)"
    if result.verdict == "PASS":
        return f"PASS: all {len(rows)} checks within their limits"
    open_rows = [r for r in rows if not r.passed]
    resolve = sorted({r.resolve for r in open_rows if r.resolve})
    return (f"INCONCLUSIVE: {len(open_rows)} of {len(rows)} checks undecided"
            + (f"; to resolve: {' / '.join(resolve)}" if resolve else ""))


def to_text(result: "GuardResult", all_rows: bool = True, width: int = 200) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=width, color_system=None, highlight=False, emoji=False,
                  force_terminal=False, soft_wrap=False)
    w = con.print
    w(f"txsuite guard: run {result.run} against baseline {result.baseline}")
    if result.env_differences:
        w("environment: DIFFERENT hardware, libraries or kernels; a change below may be the machine's, not the code's:")
        for d in result.env_differences:
            w(f"  - {d}")
    else:
        w("environment: same hardware and library versions")
    w(f"normalisation: {result.normalization}")
    if result.machine:
        for line in result.machine:
            w(f"machine state: {line}", soft_wrap=True)
    else:
        w(f"machine state: no repetition ran beyond {result.slow_state:g}x of this machine's best")
    w("decision: " + DECISION.format(level=_level(result)), soft_wrap=True)
    if result.counters:
        w("step counters: what one training step does differently (exact, whatever the timing noise):")
        for line in result.counters:
            w(f"  - {line}", soft_wrap=True)
    for line in result.confirmation:
        w(f"confirmation: {line}")
    w("")
    for title, rows in (("FAIL", result.failures), ("INCONCLUSIVE", [r for r in result.rows if
                                                                     r.verdict.startswith("INCONCLUSIVE")])):
        if not rows:
            continue
        w(f"{title}: {len(rows)} of {len(result.rows)} checks")
        for r in rows:
            w(f"  {r.label} / {_metric(r)}: {r.detail}", soft_wrap=True)
            if r.resolve and title == "INCONCLUSIVE":
                w(f"      would resolve it: {r.resolve}", soft_wrap=True)
            if r.first is not None and r.first.ratio is not None:
                w(f"      first measurement: ratio {_ratio(r.first)}, CI {_ci(r.first)}", soft_wrap=True)
        w("")
    if all_rows:
        w(f"all checks ({len(result.rows)}):")
        w(_table(result.rows, result))
        w("")
    if result.notes:
        w("notes:")
        for n in result.notes:
            w(f"  - {n}", soft_wrap=True)
        w("")
    w(summary_line(result), soft_wrap=True)
    return buf.getvalue()


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def to_markdown(result: "GuardResult") -> str:
    out = [f"### txsuite guard: {result.verdict}", "",
           f"run `{result.run}` against baseline `{result.baseline}`", ""]
    if result.env_differences:
        out.append("**Environment differs** (a change may be the machine's, not the code's):")
        out.extend(f"- {_md_escape(d)}" for d in result.env_differences)
    else:
        out.append("Environment: same hardware and library versions.")
    out += ["", f"Normalisation: {_md_escape(result.normalization)}.", ""]
    out.extend(f"Machine state: {_md_escape(m)}." for m in result.machine)
    out += ["", f"_{_md_escape(DECISION.format(level=_level(result)))}._", ""]
    if result.counters:
        out.append("**Step counters** (exact):")
        out.extend(f"- {_md_escape(c)}" for c in result.counters)
        out.append("")
    out.extend(f"Confirmation: {_md_escape(c)}." for c in result.confirmation)
    out += ["", f"| cell | metric | limit | baseline | now | ratio | {_level(result)} CI | samples now / base | verdict |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result.rows:
        shown = r.judged_on or r.metric
        verdict = f"**{r.verdict}**" if not r.passed else r.verdict
        out.append(f"| {_md_escape(r.label)} | {_metric(r)} | {r.threshold} | "
                   f"{fmt_value(shown, r.baseline, r.normalized)} | {fmt_value(shown, r.now, r.normalized)} | "
                   f"{_ratio(r)} | {_ci(r)} | {_samples(r)} | {verdict} |")
    details = [r for r in result.rows if not r.passed and r.detail]
    if details:
        out.append("")
        out.extend(f"- {_md_escape(r.label)} / {_metric(r)}: {_md_escape(r.detail)}"
                   + (f" (would resolve it: {_md_escape(r.resolve)})" if r.resolve else "") for r in details)
    if result.notes:
        out += ["", "Notes:"]
        out.extend(f"- {_md_escape(n)}" for n in result.notes)
    out += ["", f"**{_md_escape(summary_line(result))}**"]
    return "\n".join(out) + "\n"
