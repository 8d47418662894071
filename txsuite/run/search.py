"""The adaptive sweep, `search: pareto` (L6, never imports torch): probe every cell, prune the
cells that cannot reach the front, and let the runner run the rest in full.

1. Probe. Every cell that will run trains PROBE_ROUNDS short repetitions (`probe_config`: the
   cell with PROBE_FRACTION of its measured steps, at least MIN_PROBE_STEPS, after the same
   untimed warm-up), round-major as the full sweep runs (every cell's first probe, then every
   cell's second), so each round shares one stretch of the machine's state. Train memory peaks
   by the first optimizer step, so a probe's train memory is the cell's; its throughput is a
   median over steady steps, as a full repetition's. The probes are real measurements: they are
   stored in `probes.jsonl` beside records.jsonl (the record format with `phase: "probe"`),
   never in records.jsonl, so the report, `compare`, the guard and `txsuite.load` never mix them
   with full repetitions. Their folders are `probes/<cell id>/p<round>/`.
2. Prune (`prune`, pure). The front is the report's: throughput (higher) against the memory the
   cell controls (lower), with the validation loss as a third objective judged conservatively.
   Cell j is pruned by cell i only when, with the probes' noise pooled over every probed cell
   by the verdict engine (txsuite/verdict/rounds.py: paired by round, moderated variances):
   - i's throughput over j's has its whole interval at or above 1, and
   - i's memory over j's has its whole interval at or below 1, or both have the very same memory
     (the report's front is decided on medians: a cell lighter by any amount may be on it), and
   - i is better than j beyond noise on one of the two, and
   - their probe losses tie (within QUALITY_TIE) or i's is far better (QUALITY_FAR): a short
     probe cannot rank the losses at the full token budget, so a cell that learns better at
     the probe, or worse by a margin that could still close, is kept.
   The intervals are taken at PRUNE_LEVEL for each pruned cell, shared (Bonferroni) over the
   comparisons that could prune it: two per cell whose probe estimates dominate it. A cell with
   a probe that did not finish ok, or that starts from another cell's weights, is never pruned.
3. The pruned cells are handed back to the runner as skipped, with a reason that starts with
   "pruned:" and holds the evidence; `search.json` keeps the same evidence for the report.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from txsuite.config.matrix import Matrix, PlannedCell
from txsuite.config.metrics import BY_NAME
from txsuite.config.record import Record
from txsuite.config.spec import CellConfig
from txsuite.measure.predict import positive
from txsuite.results import RunFolder
from txsuite.results.folder import open_in_run
from txsuite.verdict import BETTER, RoundNoise, state

PROBE_FRACTION = 0.25  # of the cell's measured steps
MIN_PROBE_STEPS = 8  # measured steps a probe keeps at least: a median over steady steps
PROBE_ROUNDS = 2  # the least that gives the verdict engine a noise to pool
PRUNE_LEVEL = 0.99  # per pruned cell, over all the comparisons that could prune it
QUALITY_TIE = 0.005  # relative probe-loss difference read as "learns the same"
QUALITY_FAR = 0.10  # relative probe-loss lead that a short probe may trust to hold at the full budget
SPEED = "tokens_per_s"
LOSS = "val_loss"
PRUNED = "pruned:"  # how a pruned cell's reason starts
PROBES_FILE = "probes.jsonl"
SEARCH_FILE = "search.json"


def probe_steps(config: CellConfig) -> int:
    """The measured steps of a cell's probe: PROBE_FRACTION of its own, at least MIN_PROBE_STEPS,
    never more than it has."""
    steps = config.train.steps
    return min(steps, max(MIN_PROBE_STEPS, math.ceil(steps * PROBE_FRACTION)))


def probe_config(config: CellConfig) -> CellConfig:
    """The cell, trained for probe_steps: the same warm-up, model, batch and techniques (so the
    same speed and memory); no target to stop at, no checkpoint to save, the learning-rate
    warm-up kept within the shorter run."""
    train = config.train
    steps = probe_steps(config)
    short = dataclasses.replace(train, steps=steps, target_loss=None, stop_at_target=False, save_checkpoint=False,
                                lr_warmup_steps=min(train.lr_warmup_steps, train.warmup_steps + steps))
    return dataclasses.replace(config, train=short)


def describe_probe(matrix: Matrix) -> str:
    """What the adaptive sweep does, in one paragraph, for `txsuite plan` and `txsuite run`."""
    steps = sorted({(c.config.train.steps, probe_steps(c.config)) for c in matrix.cells})
    shown = ", ".join(f"{p} of {s}" for s, p in steps[:3]) + (" ..." if len(steps) > 3 else "")
    return (f"search: pareto — an adaptive sweep. Every cell first runs {PROBE_ROUNDS} probe repetitions "
            f"({shown} measured steps, after the same warm-up; stored in probes.jsonl, apart from the records); "
            f"then only the cells whose probe intervals can still reach the throughput/train-memory front "
            f"(with the validation loss kept as a tie-breaker) run their {matrix.repetitions} full repetitions. "
            f"The others are recorded skipped, 'pruned:' with their evidence. The time above is the grid's: the "
            f"probes add about {PROBE_ROUNDS} x {PROBE_FRACTION:.0%} of a repetition per cell, and each pruned cell "
            f"saves its full repetitions.")


# ------------------------------------------------------------------ probes on disk ----------

class ProbeFolder(RunFolder):
    """The run folder as a probe repetition sees it: records keep the run's id, and each probe
    writes into `probes/<cell id>/p<round>/` instead of a full repetition's cells/ folder."""

    def cell_dir(self, cell_id: str, repeat: int) -> Path:
        path = self.dir / "probes" / cell_id / f"p{repeat}"
        for part in (self.dir / "probes", path.parent, path):
            if part.is_symlink():
                raise OSError(f"{part} is a symbolic link; a run folder holds none")
        return path


def append_probe(run_dir: Path, record: Record) -> None:
    """One probe record as one line of probes.jsonl (the record's fields and `phase: "probe"`)."""
    line = json.loads(record.to_json())
    line["phase"] = "probe"
    fd = open_in_run(run_dir, PROBES_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def load_probes(run_dir: Path | str) -> list[Record]:
    """The probe records of a run (the last line of each (cell, round)); [] for a grid run. A
    line that is not a record (a torn last line) is skipped: its probe runs again on resume."""
    path = Path(run_dir) / PROBES_FILE
    if not path.is_file():
        return []
    out: dict[tuple[str, int], Record] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = Record.from_json(line)
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        out[record.key] = record
    return list(out.values())


# ------------------------------------------------------------------ pruning (pure) ----------

@dataclass(frozen=True)
class Probed:
    """What a cell's probes measured: medians over its ok probes."""
    cell_id: str
    label: str
    tokens_per_s: float | None
    memory_bytes: float | None
    val_loss: float | None
    rounds_ok: int


@dataclass(frozen=True)
class Pruning:
    """Why cell `cell` is pruned: `by` dominates it beyond the probes' noise. Ratios are by's over
    the cell's, with their intervals at `level`."""
    cell: Probed
    by: Probed
    speed: tuple[float, float, float]  # ratio, low, high
    memory: tuple[float, float, float]
    memory_metric: str
    level: float
    noise: str  # how the throughput noise was estimated, in words

    @property
    def reason(self) -> str:
        """The skipped record's reason: 'pruned:' and the evidence in one sentence."""
        c, b = self.cell, self.by
        loss = ("learnt as well" if _tied(b.val_loss, c.val_loss) else "learnt far better") + \
            f" (probe val loss {_loss(b.val_loss)} against {_loss(c.val_loss)})"
        return (f"{PRUNED} its probes ran {_si(c.tokens_per_s)} tokens/s with {_mib(c.memory_bytes)} "
                f"{_memory_words(self.memory_metric)}; cell {b.label or b.cell_id} ran "
                f"{_si(b.tokens_per_s)} tokens/s with {_mib(b.memory_bytes)}: "
                f"{_ratio(self.speed)} its speed and {_ratio(self.memory)} its memory at {self.level:.2%} "
                f"(the probes' noise: {self.noise}), and {loss}")

    def to_json(self) -> dict:
        return {"cell": dataclasses.asdict(self.cell), "by": dataclasses.asdict(self.by), "speed": list(self.speed),
                "memory": list(self.memory), "memory_metric": self.memory_metric, "level": self.level,
                "noise": self.noise, "reason": self.reason}


def prune(probes: Iterable[Record], protected: Iterable[str] = ()) -> tuple[list[Pruning], dict[str, Probed]]:
    """(the cells pruned, with their evidence; what every probed cell measured). `protected`:
    cell ids never pruned (they start from another cell's weights). See the module's text."""
    records = [r for r in probes if r.status == "ok"]
    failed = {r.cell_id for r in probes if r.status != "ok"}
    memory_metric = "train_mem_bytes" if records and all(
        positive(r.metrics.get("train_mem_bytes")) for r in records) else "peak_mem_bytes"
    speed_rounds, memory_rounds = by_round(records, SPEED).values, by_round(records, memory_metric).values
    speed_noise, memory_noise = RoundNoise.fit(speed_rounds), RoundNoise.fit(memory_rounds)
    probed = {c: _summary(c, [r for r in records if r.cell_id == c], memory_metric)
              for c in dict.fromkeys(r.cell_id for r in records)}
    candidates = [c for c in probed if c in speed_rounds and c in memory_rounds]
    resolution = BY_NAME[memory_metric].resolution  # for the verdict's "better" only, never as a tolerance
    never = set(protected) | failed

    def same_memory(i: str, j: str) -> bool:  # a deterministic count: the very same figure
        return probed[i].memory_bytes == probed[j].memory_bytes

    def rival(i: str, j: str) -> bool:
        """Whether i could prune j: as good on both probe estimates, and learning as well."""
        speed = speed_noise.compare(i, j, True).ratio
        memory = memory_noise.compare(i, j, False).ratio
        return (i != j and speed is not None and memory is not None and speed >= 1.0
                and (memory <= 1.0 or same_memory(i, j)) and _quality_allows(probed[i].val_loss, probed[j].val_loss))

    out = []
    for j in candidates:
        if j in never:
            continue
        rivals = [i for i in candidates if rival(i, j)]
        # Bonferroni over the comparisons that could prune j: two per rival (the report's front
        # counts its tests so too, txsuite/report/pareto.py)
        level = 1.0 - (1.0 - PRUNE_LEVEL) / max(1, 2 * len(rivals))
        best = None
        for i in rivals:
            speed = speed_noise.compare(i, j, True, level, BY_NAME[SPEED].resolution)
            memory = memory_noise.compare(i, j, False, level, resolution)
            if speed.low is None or memory.high is None:
                continue  # untested: no interval, no pruning
            # memory: lighter over the whole interval, or the very same figure (a deterministic count)
            no_heavier = memory.high <= 1.0 or same_memory(i, j)
            if speed.low >= 1.0 and no_heavier and BETTER in (speed.verdict, memory.verdict):
                if best is None or speed.low > best[1].low:
                    best = (i, speed, memory)
        if best is not None:
            i, speed, memory = best
            out.append(Pruning(probed[j], probed[i], (speed.ratio, speed.low, speed.high),
                               (memory.ratio, memory.low, memory.high), memory_metric, level, speed_noise.describe()))
    return out, probed


def by_round(records: list[Record], metric: str) -> state.StateAdjusted:
    """Cell id -> probe round -> the metric's positive value; time metrics brought to the
    machine's best state and slow-state rounds left out, as the report's verdicts do
    (txsuite/report/verdicts.py, txsuite/verdict/state.py)."""
    rows = ((r.cell_id, r.repeat, float(r.metrics[metric]), r.metrics) for r in records
            if positive(r.metrics.get(metric)))
    return state.adjusted(rows, metric)


def _quality_allows(loss_i: float | None, loss_j: float | None) -> bool:
    """Whether i's probe loss lets it dominate j on quality: a tie, or a lead far beyond what a
    short probe's ranking could lose by the full budget."""
    if loss_i is None or loss_j is None:
        return False
    return _tied(loss_i, loss_j) or (loss_j - loss_i) >= QUALITY_FAR * abs(loss_i)


def _tied(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= QUALITY_TIE * max(abs(a), abs(b))


def _summary(cell_id: str, records: list[Record], memory_metric: str) -> Probed:
    def median(metric: str) -> float | None:
        values = [float(r.metrics[metric]) for r in records if positive(r.metrics.get(metric))]
        return statistics.median(values) if values else None
    return Probed(cell_id, records[0].label if records else "", median(SPEED), median(memory_metric), median(LOSS),
                  len(records))


# ------------------------------------------------------------------ the sweep's hook ----------

def adaptive(matrix: Matrix, folder: RunFolder, cells: list[PlannedCell],
             launch: Callable[[PlannedCell, int, dict], Record], emit: Callable[[str, dict], None],
             deadline: float | None = None, protected: Iterable[str] = ()) -> list[PlannedCell]:
    """Probe the cells (`launch(cell, round, probe config)` runs one probe repetition and
    returns its record; probes already in probes.jsonl are kept), prune, write search.json, and
    return the cells with every pruned one skipped ("pruned: ..."). A probe not started before
    `deadline` (time.monotonic()) is not run: its cell is kept, and the budget skips it later."""
    # a cell that starts from another's weights needs them to train: it runs in full, unprobed
    runnable = [c for c in cells if not c.skip_reason and c.config.train.init_cell is None]
    done = {r.key: r for r in load_probes(folder.dir)}
    todo = [(c, r) for r in range(PROBE_ROUNDS) for c in runnable if (c.cell_id, r) not in done]
    emit("probe_start", {"total": len(todo), "cells": len(runnable), "rounds": PROBE_ROUNDS})
    for index, (cell, round_) in enumerate(todo):
        if deadline is not None and time.monotonic() >= deadline:
            emit("probe_budget", {"left": len(todo) - index})
            break
        emit("probe_cell_start", {"index": index, "total": len(todo), "label": cell.label, "cell_id": cell.cell_id,
                                  "round": round_})
        record = launch(cell, round_, probe_config(cell.config).to_dict())
        append_probe(folder.dir, record)
        done[record.key] = record
        emit("probe_cell_end", {"index": index, "total": len(todo), "record": record})
    pruned, probed = prune(done.values(), protected)
    slow = sum(1 for r in done.values() if r.status == "ok" and state.of(r.metrics).slow)
    folder.write_json(SEARCH_FILE, {
        "search": "pareto", "probe_fraction": PROBE_FRACTION, "min_probe_steps": MIN_PROBE_STEPS,
        "probe_rounds": PROBE_ROUNDS, "prune_level": PRUNE_LEVEL, "quality_tie": QUALITY_TIE,
        "quality_far": QUALITY_FAR, "slow_probes": slow, "slow_state": state.SLOW_STATE,
        "probe_steps": {c.cell_id: probe_steps(c.config) for c in runnable},
        "probed": {c: dataclasses.asdict(p) for c, p in probed.items()},
        "pruned": [p.to_json() for p in pruned]})
    reasons = {p.cell.cell_id: p.reason for p in pruned}
    emit("pruned", {"pruned": pruned, "kept": len(runnable) - len(pruned)})
    return [PlannedCell(c.config, c.label, c.origin, skip_reason=reasons[c.cell_id]) if c.cell_id in reasons else c
            for c in cells]


def read_search(run_dir: Path | str) -> dict | None:
    """search.json of an adaptive run (None for a grid run, or one that is unreadable)."""
    path = Path(run_dir) / SEARCH_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------ words ----------

def _si(v: float | None) -> str:
    if v is None:
        return "?"
    return f"{v / 1e3:,.1f}k" if v >= 1e3 else f"{v:,.0f}"


def _mib(v: float | None) -> str:
    return "?" if v is None else f"{v / 2**20:,.1f} MiB"


def _loss(v: float | None) -> str:
    return "?" if v is None else f"{v:.4f}"


def _ratio(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.2f}x ({r[1]:.2f}-{r[2]:.2f}x)"


def _memory_words(metric: str) -> str:
    return "train memory" if metric == "train_mem_bytes" else "peak memory"
