"""The guard's verdict as plain text (for a terminal or a CI log) and as Markdown (for a
GitHub job summary or a pull-request comment)."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from suite.guard.metrics import fmt_value

if TYPE_CHECKING:  # pragma: no cover
    from suite.guard.decide import Check, GuardResult

DECISION = ("a regression is a change beyond the guard threshold that is also significant at "
            "alpha = {alpha:g}, one-sided (p = the largest of: Mann-Whitney U over per-step samples, "
            "a bootstrap over repetitions then steps, and a test of the repetition medians against "
            "the run-to-run noise) and, for throughput and the median step time, shared by the "
            "fastest 10% of steps (other load only ever adds time)")


def _ratio(r: "Check") -> str:
    return "-" if r.ratio is None else f"{r.ratio:.3f} ({r.ratio - 1:+.1%})"


def _ci(r: "Check") -> str:
    return "-" if r.ci is None else f"[{r.ci[0]:.3f}, {r.ci[1]:.3f}]"


def _p(r: "Check") -> str:
    if r.p_value is None or not r.p_parts:
        return "n/a"
    return f"{r.p_value:.1e}" if r.p_value < 0.001 else f"{r.p_value:.3f}"


def _samples(r: "Check") -> str:
    return f"{r.samples_run} / {r.samples_base}" if r.samples_run else "-"


def _ci_header(result: "GuardResult") -> str:
    return f"{1 - 2 * result.alpha:.0%} CI"


def _table(rows: list["Check"], result: "GuardResult", verdict: bool) -> Table:
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name, justify in (("cell", "left"), ("metric", "left"), ("limit", "right"), ("baseline", "right"),
                          ("now", "right"), ("ratio now/base", "right"), (_ci_header(result), "right"),
                          ("p-value", "right"), ("samples now / base", "right")):
        t.add_column(name, justify=justify, overflow="fold")
    if verdict:
        t.add_column("verdict", overflow="fold")
    for r in rows:
        cells = [r.label, r.metric, r.threshold, fmt_value(r.metric, r.baseline, r.normalized),
                 fmt_value(r.metric, r.now, r.normalized), _ratio(r),
                 _ci(r) if r.ci_label != "range" else f"range {_ci(r)}", _p(r), _samples(r)]
        if verdict:
            cells.append(r.verdict)
        t.add_row(*cells)
    return t


def to_text(result: "GuardResult", all_rows: bool = True, width: int = 200) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=width, color_system=None, highlight=False, emoji=False,
                  force_terminal=False, soft_wrap=False)
    w = con.print
    w(f"txsuite guard: run {result.run} against baseline {result.baseline}")
    if result.env_differences:
        w("environment: DIFFERENT hardware or libraries; a change below may be the machine's, not the code's:")
        for d in result.env_differences:
            w(f"  - {d}")
    else:
        w("environment: same hardware and library versions")
    w(f"normalisation: {result.normalization}")
    w("decision: " + DECISION.format(alpha=result.alpha), soft_wrap=True)
    for line in result.confirmation:
        w(f"confirmation: {line}")
    regs = result.regressions
    w("")
    if regs:
        w(f"REGRESSIONS: {len(regs)} of {len(result.rows)} checks")
        w(_table(regs, result, verdict=False))
        for r in regs:
            w(f"  {r.label} / {r.metric}: {r.detail}", soft_wrap=True)
            if r.p_parts:
                parts = ", ".join(f"{k} {v:.2g}" for k, v in r.p_parts.items())
                w(f"      p-values: {parts}"
                  + (f"; fastest 10% of steps {r.fastest_ratio - 1:+.1%}" if r.fastest_ratio else ""),
                  soft_wrap=True)
            if r.first is not None and r.first.ratio is not None:
                w(f"      first measurement: now {fmt_value(r.metric, r.first.now, r.first.normalized)}, "
                  f"ratio {_ratio(r.first)}, p {_p(r.first)}", soft_wrap=True)
        w("")
    if all_rows:
        w(f"all checks ({len(result.rows)}):")
        w(_table(result.rows, result, verdict=True))
        for r in result.rows:
            if not r.regressed and r.verdict != "ok" and r.detail:
                w(f"  {r.label} / {r.metric}: {r.verdict}: {r.detail}", soft_wrap=True)
        w("")
    if result.notes:
        w("notes:")
        for n in result.notes:
            w(f"  - {n}", soft_wrap=True)
        w("")
    if regs:
        cells = len({r.cell_id for r in regs})
        w(f"FAIL: {len(regs)} regression(s) in {cells} cell(s)")
    else:
        w(f"PASS: no regression in {len(result.rows)} checks")
    return buf.getvalue()


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def to_markdown(result: "GuardResult") -> str:
    regs = result.regressions
    out = [f"### txsuite guard: {'FAIL' if regs else 'PASS'}", "",
           f"run `{result.run}` against baseline `{result.baseline}`", ""]
    if result.env_differences:
        out.append("**Environment differs** (a change may be the machine's, not the code's):")
        out.extend(f"- {_md_escape(d)}" for d in result.env_differences)
    else:
        out.append("Environment: same hardware and library versions.")
    out += ["", f"Normalisation: {_md_escape(result.normalization)}.", ""]
    out += [f"_{_md_escape(DECISION.format(alpha=result.alpha))}._", ""]
    out.extend(f"Confirmation: {_md_escape(c)}." for c in result.confirmation)
    header = (f"| cell | metric | limit | baseline | now | ratio | {_ci_header(result)} | p-value | "
              f"samples now / base | verdict |")
    out += ["", header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result.rows:
        ci = _ci(r) if r.ci_label != "range" else f"range {_ci(r)}"
        verdict = f"**{r.verdict}**" if r.regressed else r.verdict
        out.append(f"| {_md_escape(r.label)} | {r.metric} | {r.threshold} | "
                   f"{fmt_value(r.metric, r.baseline, r.normalized)} | {fmt_value(r.metric, r.now, r.normalized)} | "
                   f"{_ratio(r)} | {ci} | {_p(r)} | {_samples(r)} | {verdict} |")
    details = [r for r in result.rows if r.verdict != "ok" and r.detail]
    if details:
        out.append("")
        out.extend(f"- {_md_escape(r.label)} / {r.metric}: {_md_escape(r.detail)}" for r in details)
    if result.notes:
        out += ["", "Notes:"]
        out.extend(f"- {_md_escape(n)}" for n in result.notes)
    return "\n".join(out) + "\n"
