"""How long cells took on this host, kept so that `plan` can say how long a sweep will take.

One JSON file in the txsuite cache folder (durations.json): host name -> cell id -> the last few
repetitions of the cell that ended ok, each as its wall time (process start to record: start-up,
data preparation, training and evaluation all count) and the part of it spent in training steps,
with the cell's training FLOPs. The file is advisory: an unreadable one is ignored and rewritten.

A cell that ran here before is estimated by the median of its own wall times. A cell that never
ran here is the median time outside training of every cell that did, plus its training FLOPs at
the median seconds per training FLOP of the cells of its device and precision (of any cell where
none shares them). With no measured cell, there is no estimate.
"""
from __future__ import annotations

import socket
import statistics
from dataclasses import dataclass

from txsuite.config.matrix import PlannedCell
from txsuite.config.estimate import approx_vocab, training_flops
from txsuite.measure.host_cache import locked_update

FILE = "durations.json"
KEPT = 5  # repetitions remembered per cell: the newest, so a changed host soon shows


def remember(cell: PlannedCell, seconds: float, training_s: float | None) -> None:
    """Keep one repetition of `cell` that ended ok: its wall time and the part spent training.
    Never fails a run: a cache that cannot be written is skipped."""
    flops = training_flops(cell.config, approx_vocab(cell.config))

    def update(cache: dict) -> None:
        host = cache.setdefault(socket.gethostname(), {})
        if not isinstance(host, dict):
            host = cache[socket.gethostname()] = {}
        entry = host.get(cell.cell_id)
        kept = entry.get("repetitions", []) if isinstance(entry, dict) else []
        this = {"seconds": round(seconds, 3), "training_s": round(training_s, 3) if training_s else None}
        host[cell.cell_id] = {"repetitions": [*kept, this][-KEPT:], "flops": flops, "kind": _kind(cell)}
    try:
        locked_update(FILE, update)
    except (OSError, TypeError, ValueError, AttributeError):
        pass


@dataclass
class SweepEstimate:
    seconds: float | None  # None: nothing of this host to estimate from
    measured: int  # cells with times of their own on this host
    scaled: int  # cells scaled by training FLOPs from the cells this host has times of
    cells: int  # cells that will run
    known: int  # cells of any matrix this host has times of

    def describe(self) -> str:
        if self.seconds is None:
            return "estimated time: no estimate yet (no cell has finished on this host)"
        parts = [f"{self.measured} of {self.cells} cells ran here before"] if self.measured else []
        if self.scaled:
            parts.append(f"{self.scaled} scaled by training FLOPs from the {self.known} cells this host has run")
        return f"estimated time: about {duration_text(self.seconds)} on this host ({'; '.join(parts)})"


def estimate(cells: list[PlannedCell], repetitions: int) -> SweepEstimate:
    """The sweep's wall time on this host, one repetition after another, from its past times."""
    try:
        known = locked_update(FILE, lambda cache: cache.get(socket.gethostname()) or {})
    except (OSError, TypeError, ValueError, AttributeError):
        known = {}
    known = {k: v for k, v in known.items() if isinstance(v, dict) and _wall_times(v)}
    running = [c for c in cells if not c.skip_reason]
    rates: dict[str, list[float]] = {}  # kind -> seconds per training FLOP, one per repetition
    outside: list[float] = []  # seconds outside training, one per repetition
    for entry in known.values():
        for training_s, seconds in _split_times(entry):
            rates.setdefault(entry.get("kind", ""), []).append(training_s / entry["flops"])
            outside.append(seconds - training_s)
    everything = [r for rs in rates.values() for r in rs]
    total, measured, scaled = 0.0, 0, 0
    for cell in running:
        entry = known.get(cell.cell_id)
        if entry:
            total += statistics.median(_wall_times(entry)) * repetitions
            measured += 1
            continue
        rate = rates.get(_kind(cell)) or everything
        if not rate:
            return SweepEstimate(None, 0, 0, len(running), len(known))
        flops = training_flops(cell.config, approx_vocab(cell.config))
        total += (statistics.median(outside) + statistics.median(rate) * flops) * repetitions
        scaled += 1
    return SweepEstimate(total if running else 0.0, measured, scaled, len(running), len(known))


def _kind(cell: PlannedCell) -> str:
    return f"{cell.config.device}/{cell.config.precision}"


def _repetitions(entry: dict) -> list[dict]:
    kept = entry.get("repetitions")
    return [r for r in kept if isinstance(r, dict)] if isinstance(kept, list) else []


def _wall_times(entry: dict) -> list[float]:
    return [r["seconds"] for r in _repetitions(entry) if _positive(r.get("seconds"))]


def _split_times(entry: dict) -> list[tuple[float, float]]:
    """(seconds training, seconds in all) of each repetition that recorded both."""
    if not _positive(entry.get("flops")):
        return []
    return [(r["training_s"], r["seconds"]) for r in _repetitions(entry)
            if _positive(r.get("training_s")) and _positive(r.get("seconds")) and r["seconds"] >= r["training_s"]]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


def duration_text(seconds: float) -> str:
    """3h05m, 4m10s, 12s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
