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

Memory. Train memory is modelled as what the training holds beyond what was resident before
it, times a factor, plus a constant:

    train_mem = k * (optimizer state + activations + logits [+ parameters and gradients on CUDA]) + m

The optimizer state and the logits are the estimate's (txsuite/config/estimate.py), exact for
the reference model. The activations are this host's own: bytes per token x d_model x kept
layer, the median of what earlier repetitions measured at their profiled step's peak
(txsuite/measure/memory_roles.py) for the same activation width (32 or 16 bit) and attention
setting; a checkpointed layer keeps its input and, in the backward pass, one layer's
recomputed activations. With no such measurement (and for tensor- or pipeline-parallel cells,
whose shards the unit does not describe) the estimate's activation term stands in. On CPU the
parameters are resident before the training window opens, so they are not in train memory;
on CUDA the allocator's peak holds them and their gradients. k models what the heap holds
beyond the tensors, m what the first steps initialise; both >= 0, fitted like the speed terms.
With no record, the estimate as it is.
"""
from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Iterable

from txsuite.config.spec import CellConfig
from txsuite.config.estimate import (approx_vocab, estimate_memory, kept_layers, logits_bytes, optimizer_state_bytes,
                                     parameter_shapes)

BAND_FLOOR = 0.10  # the least relative half-width a band may claim: runs of one cell move that much
MEMORY_PARTS = ("params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes")  # the estimate's
MATMUL_DTYPE = {"fp32": "float32", "tf32": "tf32", "bf16": "bfloat16", "bf16-pure": "bfloat16",
                "fp16": "float16", "fp8": "float8"}  # the dtype measure/peak.py keys its peaks by


@dataclass(frozen=True)
class Observation:
    """One earlier repetition on this host: its cell, its median step time, its train memory,
    the matmul peak it ran against, and the activations live at its profiled step's peak."""
    config: CellConfig
    step_s: float | None
    train_mem_bytes: float | None
    peak_flops: float | None
    activations_bytes: float | None = None


@dataclass
class Prediction:
    tokens_per_s: float | None = None
    low: float | None = None  # the band of tokens/s
    high: float | None = None
    step_s: float | None = None
    train_mem_bytes: float | None = None
    # the estimate's MEMORY_PARTS on a new host; once fitted, held_parts() and "heap_bytes"
    memory_parts: dict[str, float] = field(default_factory=dict)
    speed_source: str = ""  # "fitted on N repetitions of this host" / "uncorrected roofline" / why none
    memory_source: str = ""


@dataclass
class HostModel:
    speed: list[float] | None  # a, b, c, d; None: the uncorrected roofline
    speed_error: float  # relative sd of the fit (log scale)
    speed_fitted_on: int
    memory: list[float] | None  # k and m of the module's docstring
    memory_error: float
    memory_fitted_on: int
    activation_units: dict[tuple[str, str], float] = field(default_factory=dict)  # activation_units()

    @classmethod
    def fit(cls, observations: Iterable[Observation]) -> "HostModel":
        observations = list(observations)
        timed = [o for o in observations if positive(o.step_s) and positive(o.peak_flops)]
        speed, speed_error = _nnls([speed_features(o.config, o.peak_flops) for o in timed],
                                   [o.step_s for o in timed])
        units = activation_units(observations)
        sized = [o for o in observations if positive(o.train_mem_bytes)]
        # with fewer repetitions than three, memory stays the estimate
        memory, memory_error = (_nnls([memory_features(o.config, units) for o in sized],
                                      [o.train_mem_bytes for o in sized]) if len(sized) >= 3 else (None, math.nan))
        return cls(speed, speed_error, len(timed), memory, memory_error, len(sized), units)

    def predict(self, cell: CellConfig, peak_flops: float | None) -> Prediction:
        out = Prediction()
        if self.memory is not None:
            k, m = self.memory
            held = held_parts(cell, self.activation_units)
            # the tensors as they are, so each part compares with the role measured at the peak; what
            # the heap holds beyond them (negative where the fit says the parts' peaks do not coincide)
            out.memory_parts = {**held, "heap_bytes": (k - 1) * sum(held.values()) + m}
            measured = _measured_unit(cell, self.activation_units) is not None
            out.memory_source = (f"fitted on {self.memory_fitted_on} repetitions of this host; activations "
                                 + ("as measured here per token" if measured else "the estimate's (none measured "
                                    "here for this precision and attention)"))
        else:
            estimate = estimate_memory(cell, approx_vocab(cell))
            out.memory_parts = {name: float(estimate[name]) for name in MEMORY_PARTS}
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
    recomputed = kept_layers(cell)[1] / max(1, n_layer)  # a recomputed layer runs its forward twice
    flops = per_token * cell.tokens_per_step * (1 + recomputed / 3)
    passes = n_layer * cell.train.grad_accum
    return [flops / peak_flops, float(passes), optimizer_state_bytes(cell, vocab), 1.0]


def activation_units(observations: Iterable[Observation]) -> dict[tuple[str, str], float]:
    """(activation width, attention setting) -> bytes per token x d_model x kept layer that the
    observations measured live at their profiled step's peak (the median), from single-process
    cells that kept at least one layer."""
    measured: dict[tuple[str, str], list[float]] = {}
    for o in observations:
        kept = kept_layers(o.config)[0]
        if positive(o.activations_bytes) and kept and _unit_applies(o.config):
            measured.setdefault(_unit_key(o.config), []).append(o.activations_bytes / (_unit(o.config) * kept))
    return {key: statistics.median(values) for key, values in measured.items()}


def held_parts(cell: CellConfig, units: dict[tuple[str, str], float]) -> dict[str, float]:
    """What the training holds beyond what was resident before it (the module's docstring), by
    part: optimizer state, activations (with the logits), and on CUDA parameters and gradients."""
    vocab = approx_vocab(cell)
    estimate = estimate_memory(cell, vocab)
    logits = logits_bytes(cell, vocab)
    unit = _measured_unit(cell, units)
    if unit is None:
        activations = estimate["activations_bytes"]
    else:
        kept, checkpointed = kept_layers(cell)
        width = 4 if _unit_key(cell)[0] == "32 bit" else 2
        # a checkpointed layer keeps its input; one layer is recomputed at a time in the backward pass
        recomputed = checkpointed * width * _unit(cell) + unit * _unit(cell) if checkpointed else 0.0
        activations = unit * _unit(cell) * kept + recomputed + logits
    parts = {"optimizer_bytes": float(estimate["optimizer_bytes"]), "activations_bytes": float(activations)}
    if cell.device == "cuda":
        parts.update(params_bytes=float(estimate["params_bytes"]), grads_bytes=float(estimate["grads_bytes"]))
    return parts


def memory_features(cell: CellConfig, units: dict[tuple[str, str], float]) -> list[float]:
    """[what the training holds (held_parts, summed), 1 for the constant]."""
    return [sum(held_parts(cell, units).values()), 1.0]


def _unit_key(cell: CellConfig) -> tuple[str, str]:
    width = "32 bit" if cell.precision in ("fp32", "tf32") else "16 bit"
    return width, cell.model.attention


def _unit(cell: CellConfig) -> int:
    """Tokens x d_model of one micro-batch: what one layer's activations scale with."""
    return cell.data.seq_len * cell.train.micro_batch * cell.model.dims[2]


def _measured_unit(cell: CellConfig, units: dict[tuple[str, str], float]) -> float | None:
    """The activation bytes per unit this host measured for the cell's kind, or None."""
    return units.get(_unit_key(cell)) if _unit_applies(cell) else None


def _unit_applies(cell: CellConfig) -> bool:
    return cell.parallel.tp == 1 and cell.parallel.pp == 1


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
