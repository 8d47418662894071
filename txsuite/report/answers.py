"""The report's answers in a few plain lines, for the terminal at the end of `txsuite run`: the
cards (fastest, least memory, best quality, ...), the Pareto set, and what did not run and why.
The same Summary the HTML report opens with, so the terminal and the page never disagree."""
from __future__ import annotations

from collections import defaultdict

from txsuite.report.summary import Summary

MAX_REASONS = 3  # distinct reasons shown per status; the report lists every cell


def answer_lines(summary: Summary) -> list[str]:
    lines = [summary.overview]
    for finding in summary.findings:
        lines.append(f"{finding.what} — {finding.cell}: {finding.detail}")
    if summary.pareto:
        more = f" and {summary.pareto_more} more" if summary.pareto_more else ""
        lines.append(f"Pareto front (speed vs memory): {'; '.join(summary.pareto)}{more}")
    if summary.near_front:
        lines.append(f"Within noise of the front: {'; '.join(summary.near_front)}")
    by_status: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for problem in summary.problems:
        by_status[problem.status][problem.headline].append(problem.label)
    for status, reasons in by_status.items():
        cells = sum(len(labels) for labels in reasons.values())
        shown = [f"{', '.join(labels)}: {reason}" for reason, labels in list(reasons.items())[:MAX_REASONS]]
        left = len(reasons) - MAX_REASONS
        lines.append(f"{status.capitalize()} ({cells} cell{'s' if cells != 1 else ''}): {'; '.join(shown)}"
                     + (f"; {left} other reasons in the report" if left > 0 else ""))
    return lines
