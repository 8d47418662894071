"""What cells measured on this host, kept for the plan: how long a sweep will take, and each
cell's predicted speed and memory (txsuite/measure/predict.py) before it runs.

One JSON file in the txsuite cache folder (observed.json): host name -> cell id -> the cell's
resolved settings and its last few repetitions that ended ok: wall time (process start to
record: start-up, data, training and evaluation all count), time in training steps, median step
time, train memory, the matmul peak it ran against, the attention kernel it ran and the machine's
state around it (its probe's state factor and slowdown, txsuite.verdict.state). The file is
advisory: an unreadable one is ignored and rewritten, one that cannot be written is skipped.

A sweep's time: a cell that ran here before takes the median of its own wall times; a cell that
never did takes the median time outside training of every cell that did, plus its steps at the
predicted step time. With nothing measured here, there is no estimate.
"""
from __future__ import annotations

import importlib.metadata
import socket
import statistics
from dataclasses import dataclass, replace

from txsuite.config.matrix import PlannedCell
from txsuite.config.spec import CellConfig
from txsuite.measure.env import cpu_model
from txsuite.measure.host_cache import locked_update
from txsuite.measure.predict import HostCosts, HostModel, Observation, Prediction, peak_key, positive
from txsuite.verdict import state

FILE = "observed.json"
KEPT = 5  # repetitions remembered per cell: the newest, so a changed host soon shows


def remember(cell: PlannedCell, seconds: float, metrics: dict) -> None:
    """Keep one repetition of `cell` that ended ok. Never fails a run."""
    this = {"seconds": round(seconds, 3)}
    for name, key in (("training_s", "train_wall_s"), ("step_s", "step_time_p50_s"),
                      ("train_mem_bytes", "train_mem_bytes"), ("peak_flops", "peak_flops"),
                      ("baseline_bytes", "host_rss_before_train_bytes")):
        if positive(metrics.get(key)):
            this[name] = metrics[key]
    if metrics.get("attention") in ("sdpa", "matmul"):  # what `auto` resolved to, for the memory model
        this["attention"] = metrics["attention"]
    machine = state.of(metrics)
    if machine.factor is not None and machine.slowdown is not None:  # the machine's state, for the speed model
        this["state"] = machine.factor
        this["slowdown"] = machine.slowdown

    def update(cache: dict) -> None:
        host = cache.get(socket.gethostname())
        if not isinstance(host, dict):
            host = cache[socket.gethostname()] = {}
        entry = host.get(cell.cell_id)
        kept = _repetitions(entry) if isinstance(entry, dict) else []
        host[cell.cell_id] = {"config": cell.config.to_dict(), "repetitions": [*kept, this][-KEPT:]}
    try:
        locked_update(FILE, update)
    except (OSError, TypeError, ValueError, AttributeError):
        pass


def _known() -> dict[str, dict]:
    """cell id -> entry, of this host, each with at least one usable repetition."""
    try:
        host = locked_update(FILE, lambda cache: cache.get(socket.gethostname()))
    except (OSError, TypeError, ValueError, AttributeError):
        return {}
    if not isinstance(host, dict):
        return {}
    return {k: v for k, v in host.items() if isinstance(v, dict) and isinstance(v.get("config"), dict)
            and [r for r in _repetitions(v) if positive(r.get("seconds"))]}


def _config(entry: dict) -> CellConfig | None:
    try:
        return CellConfig.from_dict(entry["config"])
    except (TypeError, ValueError, KeyError):
        return None  # written by another version of the settings


class Predictor:
    """The host model fitted once on what this host measured, and the peaks it measured."""

    def __init__(self, device_name: str | None = None) -> None:
        self.peaks = _read_peaks()
        self.device_name = device_name
        self.known = _known()
        observations = []
        for entry in self.known.values():
            config = _config(entry)
            if config is None:
                continue
            measured = self.costs(config)
            for r in _repetitions(entry):
                # the peak the repetition ran against; the rest as this host measured it
                costs = replace(measured, peak_flops=r.get("peak_flops"))
                # a repetition in a slow state tells nothing of its step time (the verdicts leave it out too)
                slow = positive(r.get("slowdown")) and r["slowdown"] > state.SLOW_STATE
                observations.append(Observation(config, None if slow else r.get("step_s"), r.get("train_mem_bytes"),
                                                costs, r.get("attention"),
                                                r["state"] if positive(r.get("state")) else 1.0))
        self.model = HostModel.fit(observations)

    def measurement(self, cell: CellConfig, op: str = "linear") -> dict | None:
        """The cache entry of what this host measured for the cell (`op` as peak_key's: "linear"
        the matmul peak, "copy" the memory bandwidth, "overhead", "optimizer"); None where not
        measured yet."""
        name = cpu_model() if cell.device == "cpu" else self.device_name
        try:
            torch_version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return None
        key = peak_key(cell, name or "", torch_version, op)
        if key not in self.peaks:  # measured since (a sweep's host setup or first cell measures it)
            self.peaks = _read_peaks()
        entry = self.peaks.get(key)
        return entry if isinstance(entry, dict) else None

    def costs(self, cell: CellConfig) -> HostCosts:
        """What this host measured for the cell's step (txsuite/measure/predict.py, HostCosts)."""
        def figure(op: str, name: str) -> float | None:
            entry = self.measurement(cell, op)
            value = entry.get(name) if entry else None
            return value if positive(value) or value == 0 else None
        return HostCosts(peak_flops=figure("linear", "flops"), bandwidth=figure("copy", "bytes_per_s"),
                         layer_s=figure("overhead", "layer_s"), micro_batch_s=figure("overhead", "micro_batch_s"),
                         optimizer_s=figure("optimizer", "seconds"))

    def predict(self, cell: CellConfig) -> Prediction:
        return self.model.predict(cell, self.costs(cell))

    def beyond_limit(self, cell: CellConfig, limit_bytes: int) -> str | None:
        """Why `cell` will not fit `--memory-limit` (the reason it is skipped with), or None. A
        CPU cell's limit also holds the process before training (the interpreter and torch: the
        median this host measured), a CUDA cell's only what the allocator holds."""
        predicted = self.predict(cell).train_mem_bytes
        if not predicted:
            return None
        baseline = 0.0
        if cell.device == "cpu":
            before = [r["baseline_bytes"] for entry in self.known.values() for r in _repetitions(entry)
                      if positive(r.get("baseline_bytes"))]
            baseline = statistics.median(before) if before else 0.0
        if predicted + baseline <= limit_bytes:
            return None
        held = f" plus {baseline / 2**20:,.0f} MiB the process holds before training here" if baseline else ""
        return (f"predicted not to fit --memory-limit {limit_bytes / 2**20:,.0f} MiB: {predicted / 2**20:,.0f} MiB of "
                f"training memory{held} (txsuite/measure/predict.py); --no-predict-skip runs it anyway")

    def sweep(self, cells: list[PlannedCell], repetitions: int) -> "SweepEstimate":
        """The sweep's wall time here, one repetition after another."""
        running = [c for c in cells if not c.skip_reason]
        outside = [r["seconds"] - r["training_s"] for entry in self.known.values() for r in _repetitions(entry)
                   if positive(r.get("seconds")) and positive(r.get("training_s")) and r["seconds"] >= r["training_s"]]
        total, measured, predicted = 0.0, 0, 0
        for cell in running:
            entry = self.known.get(cell.cell_id)
            if entry:
                total += statistics.median(r["seconds"] for r in _repetitions(entry) if positive(r.get("seconds")))
                measured += 1
                continue
            step_s = self.predict(cell.config).step_s
            if step_s is None or not outside:
                return SweepEstimate(None, measured, 0, len(running))
            total += statistics.median(outside) + step_s * cell.config.train.total_steps
            predicted += 1
        return SweepEstimate(total * repetitions if running else 0.0, measured, predicted, len(running))


@dataclass
class SweepEstimate:
    seconds: float | None  # None: nothing of this host to estimate from
    measured: int  # cells with wall times of their own on this host
    predicted: int  # cells whose time is predicted (txsuite/measure/predict.py)
    cells: int  # cells that will run

    def describe(self) -> str:
        if self.seconds is None:
            return "estimated time: no estimate yet (no cell has finished on this host)"
        parts = [f"{self.measured} of {self.cells} cells ran here before"] if self.measured else []
        if self.predicted:
            parts.append(f"{self.predicted} predicted from what this host measured")
        return f"estimated time: about {duration_text(self.seconds)} on this host ({'; '.join(parts)})"


def _read_peaks() -> dict:
    """The matmul peaks and memory bandwidths this host measured (txsuite/measure/peak.py's cache)."""
    try:
        return locked_update("peaks.json", lambda cache: dict(cache))
    except (OSError, TypeError, ValueError, AttributeError):
        return {}


def _repetitions(entry: dict) -> list[dict]:
    kept = entry.get("repetitions")
    return [r for r in kept if isinstance(r, dict)] if isinstance(kept, list) else []


def duration_text(seconds: float) -> str:
    """3h05m, 4m10s, 12s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
