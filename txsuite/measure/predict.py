"""A cell's speed and memory predicted before it runs, from what this host has measured
(L1, no torch: the plan uses it).

Speed. A training step's time is modelled as

    step_s = a * matmul FLOPs / the host's matmul peak at the cell's precision
           + b * layer passes (layers x micro-batches: the per-operator overhead of every block)
           + c * optimizer state bytes (what the optimizer step reads and writes)
           + d

The matmul FLOPs are the model's (6 per parameter and token, attention scores, the forward of
every recomputed layer); the peak is the one `measure/peak.py` measured and cached on this host.
a, b, c, d >= 0 are fitted (non-negative least squares, relative errors) on this host's earlier
records of the same device; with no record (a new host) a = 1 and the others 0: the uncorrected
roofline, and the prediction says so. Tokens/s = tokens per step / step_s, with a band of twice
the fit's relative error (at least BAND_FLOOR).

Memory. Train memory is modelled as the estimate's parts (txsuite/config/estimate.py:
parameters, gradients, optimizer state, activations and logits), each with a factor, plus a
constant, fitted likewise; with no record, the estimate as it is.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable

from txsuite.config.spec import CellConfig
from txsuite.config.estimate import approx_vocab, estimate_memory, optimizer_state_bytes, parameter_shapes

BAND_FLOOR = 0.10  # the least relative half-width a band may claim: runs of one cell move that much
MEMORY_PARTS = ("params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes")
MATMUL_DTYPE = {"fp32": "float32", "tf32": "tf32", "bf16": "bfloat16", "bf16-pure": "bfloat16",
                "fp16": "float16", "fp8": "float8"}  # the dtype measure/peak.py keys its peaks by


@dataclass(frozen=True)
class Observation:
    """One earlier repetition on this host: its cell, its median step time, its train memory,
    and the matmul peak it ran against."""
    config: CellConfig
    step_s: float | None
    train_mem_bytes: float | None
    peak_flops: float | None


@dataclass
class Prediction:
    tokens_per_s: float | None = None
    low: float | None = None  # the band of tokens/s
    high: float | None = None
    step_s: float | None = None
    train_mem_bytes: float | None = None
    memory_parts: dict[str, float] = field(default_factory=dict)
    speed_source: str = ""  # "fitted on N repetitions of this host" / "uncorrected roofline" / why none
    memory_source: str = ""


@dataclass
class HostModel:
    speed: list[float] | None  # a, b, c, d; None: the uncorrected roofline
    speed_error: float  # relative sd of the fit (log scale)
    speed_fitted_on: int
    memory: list[float] | None  # a factor per MEMORY_PARTS, then the constant
    memory_error: float
    memory_fitted_on: int

    @classmethod
    def fit(cls, observations: Iterable[Observation]) -> "HostModel":
        observations = list(observations)
        timed = [o for o in observations if positive(o.step_s) and positive(o.peak_flops)]
        speed, speed_error = _nnls([speed_features(o.config, o.peak_flops) for o in timed],
                                   [o.step_s for o in timed])
        sized = [o for o in observations if positive(o.train_mem_bytes)]
        # memory has no main term to fit alone: with too few repetitions it stays the estimate
        memory, memory_error = (_nnls([memory_features(o.config) for o in sized], [o.train_mem_bytes for o in sized])
                                if len(sized) >= len(MEMORY_PARTS) + 1 else (None, math.nan))
        return cls(speed, speed_error, len(timed), memory, memory_error, len(sized))

    def predict(self, cell: CellConfig, peak_flops: float | None) -> Prediction:
        out = Prediction()
        parts = memory_features(cell)
        if self.memory is not None:
            out.memory_parts = {name: factor * x for name, factor, x in zip(MEMORY_PARTS, self.memory, parts)}
            out.memory_parts["other_bytes"] = self.memory[-1]
            out.memory_source = f"fitted on {self.memory_fitted_on} repetitions of this host"
        else:
            out.memory_parts = dict(zip(MEMORY_PARTS, parts))
            out.memory_source = "the estimate, uncorrected (no repetition measured here yet)"
        out.train_mem_bytes = sum(out.memory_parts.values())
        if not positive(peak_flops):
            out.speed_source = f"no matmul peak measured here at {cell.precision} yet"
            return out
        x = speed_features(cell, peak_flops)
        coefficients = self.speed if self.speed is not None else [1.0, 0.0, 0.0, 0.0]
        out.step_s = sum(c * v for c, v in zip(coefficients, x))
        if not positive(out.step_s):
            out.speed_source = "the fit predicts no time for this cell"
            return out
        out.tokens_per_s = cell.tokens_per_step / out.step_s
        half = max(BAND_FLOOR, 2 * self.speed_error) if self.speed is not None else None
        if half is not None:
            out.low, out.high = out.tokens_per_s * math.exp(-half), out.tokens_per_s * math.exp(half)
        out.speed_source = (f"fitted on {self.speed_fitted_on} repetitions of this host" if self.speed is not None
                            else "the uncorrected roofline (no repetition measured here yet)")
        return out


def speed_features(cell: CellConfig, peak_flops: float) -> list[float]:
    """[matmul seconds at the peak, layer passes, optimizer state bytes, 1] of one step."""
    vocab = approx_vocab(cell)
    n_layer, _, d, _ = cell.model.dims
    matmul = sum(shape[0] * shape[1] for shape, hidden in parameter_shapes(cell, vocab) if hidden) + vocab * d
    per_token = 6 * matmul + 12 * n_layer * cell.data.seq_len * d
    recomputed = _recomputed_layers(cell) / max(1, n_layer)  # a recomputed layer runs its forward twice
    flops = per_token * cell.tokens_per_step * (1 + recomputed / 3)
    passes = n_layer * cell.train.grad_accum
    return [flops / peak_flops, float(passes), optimizer_state_bytes(cell, vocab), 1.0]


def memory_features(cell: CellConfig) -> list[float]:
    """The estimate's parts (MEMORY_PARTS order), then 1 for the constant."""
    estimate = estimate_memory(cell, approx_vocab(cell))
    return [float(estimate[name]) for name in MEMORY_PARTS] + [1.0]


def peak_key(cell: CellConfig, device_name: str, torch_version: str) -> str:
    """The key measure/peak.py caches the cell's matmul peak under (threads and OpenMP spin
    setting as the runner gives the cell's worker)."""
    from txsuite.measure.peak import cell_openmp_env, format_peak_key, spin_setting
    if cell.device != "cpu":
        return format_peak_key(device_name, torch_version, 0, MATMUL_DTYPE[cell.precision])
    threads = cell.measure.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                       else os.cpu_count() or 1)
    spin = spin_setting({**os.environ, **cell_openmp_env(os.environ)})
    return format_peak_key(device_name, torch_version, threads, MATMUL_DTYPE[cell.precision], spin)


def _recomputed_layers(cell: CellConfig) -> int:
    n_layer = cell.model.dims[0]
    mode = cell.memory.activation_checkpointing
    if mode == "none":
        return 0
    if mode == "full":
        return n_layer
    return len(range(0, n_layer, cell.memory.checkpoint_every))


def _nnls(rows: list[list[float]], targets: list[float]) -> tuple[list[float] | None, float]:
    """Coefficients >= 0 minimising the relative error (rows scaled by 1/target), and the sd of
    log(target / fitted); (None, nan) with fewer observations than coefficients would need."""
    if not rows:
        return None, math.nan
    import numpy as np
    from scipy.optimize import nnls

    x = np.asarray(rows, dtype=float)
    y = np.asarray(targets, dtype=float)
    used = list(range(x.shape[1]))
    if len(rows) < x.shape[1]:  # too few to fit every term: the first (the main) term and the constant
        used = [0, x.shape[1] - 1]
    scale = x[:, used].max(axis=0)
    scale[scale == 0] = 1.0
    coefficients, _ = nnls(x[:, used] / scale / y[:, None], np.ones(len(y)))
    full = [0.0] * x.shape[1]
    for i, c in zip(used, coefficients / scale):
        full[i] = float(c)
    fitted = x @ np.asarray(full)
    if (fitted <= 0).any():
        return None, math.nan
    residuals = np.log(y / fitted)
    spread = float(np.sqrt(np.mean(residuals ** 2)) * math.sqrt(len(y) / max(1, len(y) - len(used))))
    return full, spread


def positive(value) -> bool:
    """A finite number above 0 (not a bool): a figure a fit or an estimate can use."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf
