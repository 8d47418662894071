"""Do two runs of the same matrix agree field for field, timings aside?

    python bench/compare_records.py RUN_A RUN_B [--ignore-config KEY ...]

Used to check that a refactoring preserves behaviour: run a fixed matrix before and after
(same seeds, same host), then compare. Cells are matched by their label (a refactoring that
changes the config schema changes the cell id, not the label). Every metric is compared
exactly except the ones that measure time, memory or the machine (TIMING_LIKE, and any name
matching TIMING_PATTERNS), whose values differ between two runs of identical code. Exits 1
and lists the differing fields when the records disagree.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

# Fields that measure time, memory, the machine or the run itself: they differ between two runs
# of identical code, so they are compared for presence only.
TIMING_PATTERNS = (r"_s$", r"_per_s", r"_per_s_", r"time", r"wall", r"mfu", r"hfu", r"achieved_flops",
                   r"peak_flops", r"rss", r"mem", r"comm_share", r"^energy", r"telemetry", r"_ms_",
                   r"duration", r"started", r"finished", r"cached", r"_at$")
RECORD_FIELDS_IGNORED = ("run_id", "started_at", "finished_at", "duration_s", "log", "env", "cell_id", "config")


def _timing_like(name: str) -> bool:
    return any(re.search(p, name) for p in TIMING_PATTERNS)


def _strip_curve_times(name: str, value):
    """loss_curve / eval_curve rows are [step, wall_s, loss]: drop the wall time."""
    if name in ("loss_curve", "eval_curve") and isinstance(value, list):
        return [[row[0], row[2]] for row in value if isinstance(row, list) and len(row) == 3]
    return value


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def load(run: Path) -> dict[tuple[str, int], dict]:
    out = {}
    for line in (run / "records.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[(r["label"], r["repeat"])] = r
    return out


def compare(a: dict, b: dict) -> list[str]:
    problems = []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            problems.append(f"{key[0]} repeat {key[1]}: only in {'B' if key not in a else 'A'}")
            continue
        ra, rb = a[key], b[key]
        for field in sorted(set(ra) | set(rb)):
            if field in RECORD_FIELDS_IGNORED or field == "metrics":
                continue
            if not _same(ra.get(field), rb.get(field)):
                problems.append(f"{key[0]}: {field}: {ra.get(field)!r} != {rb.get(field)!r}")
        ma, mb = ra.get("metrics") or {}, rb.get("metrics") or {}
        for name in sorted(set(ma) | set(mb)):
            if name not in ma or name not in mb:
                problems.append(f"{key[0]}: metric {name} only in {'B' if name not in ma else 'A'}")
                continue
            if _timing_like(name):
                continue
            va, vb = _strip_curve_times(name, ma[name]), _strip_curve_times(name, mb[name])
            if not _same(va, vb):
                problems.append(f"{key[0]}: metric {name}: {str(va)[:80]} != {str(vb)[:80]}")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--label", action="append", default=[], metavar="A->B",
                        help="a cell labelled A in RUN_A is labelled B in RUN_B (a renamed setting)")
    args = parser.parse_args(argv)
    a, b = load(args.run_a), load(args.run_b)
    for pair in args.label:
        old, _, new = pair.partition("->")
        for key in [k for k in a if k[0] == old]:
            a[(new, key[1])] = a.pop(key)
    problems = compare(a, b)
    for line in problems:
        print(line)
    print(f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
