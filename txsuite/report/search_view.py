"""The report's "Pruned by the adaptive sweep" section: for a run with `search: pareto`, each cell
the sweep pruned, its probe figures beside those of the cell that dominated it, and the intervals
that decided it (txsuite/run/search.py writes them to the run's search.json; this reads that
file by name, as the report reads records.jsonl, and never the probes into the statistics)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from txsuite.config.record import Record
from txsuite.report import formatting as fmt
from txsuite.report.tableview import Column, TableCell, TableView, sort_key

SEARCH_FILE = "search.json"  # written by txsuite/run/search.py (SEARCH_FILE there)
PROBES_FILE = "probes.jsonl"  # the probe records, idem (PROBES_FILE there)

_COLUMNS = [Column("pruned cell"), Column("its probe tokens/s", True, "median over its probe repetitions"),
            Column("its probe memory", True), Column("its probe val loss", True),
            Column("dominated by"), Column("that cell's tokens/s", True), Column("that cell's memory", True),
            Column("that cell's val loss", True),
            Column("speed ratio", True, "the dominating cell's tokens/s over the pruned cell's, with its interval"),
            Column("memory ratio", True, "the dominating cell's memory over the pruned cell's, with its interval")]


def search_section(run_dir: Path | str) -> dict[str, Any] | None:
    """The section's notes and table; None for a grid run (no search.json)."""
    try:
        data = json.loads((Path(run_dir) / SEARCH_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pruned"), list):
        return None
    pruned = [p for p in data["pruned"] if isinstance(p, dict) and isinstance(p.get("cell"), dict)]
    rows = [_row(p) for p in pruned]
    return {"notes": _notes(data, len(pruned), Path(run_dir)), "table": TableView(_COLUMNS, rows) if rows else None}


def _notes(data: dict, pruned: int, run_dir: Path) -> list[str]:
    probed = data.get("probed") if isinstance(data.get("probed"), dict) else {}
    steps = sorted({v for v in (data.get("probe_steps") or {}).values() if isinstance(v, int)})
    shown = ", ".join(map(str, steps[:4])) or "?"
    level = data.get("prune_level")
    notes = [f"This run was an adaptive sweep (search: pareto): every cell first ran {data.get('probe_rounds', '?')} "
             f"probe repetitions of {shown} measured steps; {pruned} of {len(probed)} probed cells were pruned, the "
             f"others ran their full repetitions. A cell was pruned only when another cell was, in every probe "
             f"interval, at least as fast and no heavier, better beyond noise on one of the two "
             f"({_percent(level)} per pruned cell, shared over its comparisons), and learnt as well at the probe "
             f"(or far better). The probes are stored in {PROBES_FILE}, apart from the records: no figure above "
             f"counts them."]
    slow = data.get("slow_probes")
    if isinstance(slow, int) and slow:
        notes.append(f"{slow} probe repetition{'s were' if slow != 1 else ' was'} measured while the machine ran over "
                     f"{data.get('slow_state', 2)}x slower than its best and left out of the throughput intervals "
                     f"(a cell with fewer than two probes left is tested against nothing, and kept).")
    seconds = _probe_seconds(run_dir)
    if seconds is not None:
        notes.append(f"The probes took {fmt.seconds(seconds)} of cell time.")
    return notes


def _row(p: dict) -> list[TableCell]:
    cell, by = p["cell"], p.get("by") or {}
    return [TableCell(str(cell.get("label") or cell.get("cell_id")), str(cell.get("label")), "label",
                      sub=str(cell.get("cell_id", ""))),
            _number(cell.get("tokens_per_s"), fmt.si), _number(cell.get("memory_bytes"), fmt.bytes_),
            _number(cell.get("val_loss"), lambda v: fmt.plain(v, 4)),
            TableCell(str(by.get("label") or by.get("cell_id")), str(by.get("label")), "label",
                      sub=str(by.get("cell_id", ""))),
            _number(by.get("tokens_per_s"), fmt.si), _number(by.get("memory_bytes"), fmt.bytes_),
            _number(by.get("val_loss"), lambda v: fmt.plain(v, 4)),
            _ratio(p.get("speed")), _ratio(p.get("memory"))]


def _probe_seconds(run_dir: Path) -> float | None:
    path = run_dir / PROBES_FILE
    if not path.is_file():
        return None
    total = 0.0
    for line in path.read_text(errors="replace").splitlines():
        try:
            total += Record.from_json(line).duration_s or 0.0
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return total


def _number(value: Any, show) -> TableCell:
    return TableCell(show(value) if fmt.is_number(value) else "—", sort_key(value), "num")


def _ratio(value: Any) -> TableCell:
    if not (isinstance(value, list) and len(value) == 3 and all(fmt.is_number(v) for v in value)):
        return TableCell("—", "", "num")
    ratio, low, high = value
    return TableCell(f"{ratio:.2f}×", sort_key(ratio), "num", sub=f"{low:.2f}–{high:.2f}×")


def _percent(value: Any) -> str:
    return f"{value:.0%}" if fmt.is_number(value) else "?"
