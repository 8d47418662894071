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
records of the same device. With no record (a new host) the prediction is the uncorrected
roofline, and says so: the matmul FLOPs at the peak plus the bytes the step moves outside its
matmuls (step_traffic_bytes) at the host's memory bandwidth, also measured once and cached
(`measure/peak.py`); on a CPU the two run one after the other, so their times add. Tokens/s =
tokens per step / step_s, with a band of twice the fit's relative error (at least BAND_FLOOR).

Memory. Train memory is modelled as what the training holds at its peak beyond what was
resident before it, times a factor, plus what one layer's backward pass passes through, plus
what checkpointing's recomputation and accumulation leave in the heap, plus a constant:

    train_mem = k * held + t * one layer's activations + r * unplaced recomputation
              + u * displaced micro-batch + m

`held` (held_parts) is the larger of a step's two phases, plus the optimizer's state held
throughout: the backward pass (activations and logits; gradients too once micro-batches
accumulate) or the optimizer's step (every gradient and the temporaries a foreach step makes for
all parameters at once, or a low-bit step its dequantized moments); on CUDA the parameters,
gradients, state and activations, as the caching allocator's peak holds them. Every part is the
estimate's (txsuite/config/estimate.py), which counts what the reference model keeps for its
backward pass tensor by tensor; `model.attention: auto` counts as the kernel auto ran on this
host for the cell's precision (the T x T scores of `matmul` are a large part), and as SDPA,
auto's default, where it never ran here.
On CPU the parameters are resident before the training window opens, so they are not in train
memory. k models what the heap holds beyond the tensors; t the blocks one layer's backward pass
allocates and frees (its activations' gradients, a checkpointed layer's recomputation), which
glibc keeps, so they weigh most in shallow models; r the part of the unplaced recomputation the
heap keeps. The backward pass allocates each checkpointed layer's activations afresh. Where a
layer that kept its activations has freed them first, the recomputation takes their place; the
checkpointed layers beyond the kept ones (`unplaced`, each one layer's activations) find no such
place, and glibc keeps much of what they free, so a fully checkpointed step's resident set grows
towards the plain step's while every-2nd checkpointing stays near its tensors
(docs/measurements.md, "Predictions"); u the part of the displaced micro-batch the heap keeps:
when micro-batches accumulate, the gradients are allocated during the first one's backward pass,
among its activations, and the next micro-batch's activations (`displaced`: one micro-batch's)
no longer fit where those were; m what the first steps initialise. All >= 0, fitted like the
speed terms on this host's records.

On CPU the heap prior HEAP_PRIOR (the coefficients fitted on the records of the project's
reference host, docs/predictions.md: glibc and torch allocate alike on every host of a torch
version) joins the fit as a Gaussian prior (_nnls): the records of one matrix decide the total
they measured, the prior the split between the terms that one matrix's sizes cannot tell apart.
With fewer than three records it is the prediction, and the prediction's source says so. On
CUDA, whose caching allocator the prior never saw: the fit alone, and with fewer than three
records the estimate as it is.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable

from txsuite.config.spec import OPTIMIZERS, CellConfig
from txsuite.config.estimate import (approx_vocab, estimate_memory, kept_layers, layer_activation_bytes, logits_bytes,
                                     optimizer_state_bytes, parameter_shapes)

BAND_FLOOR = 0.10  # the least relative half-width a band may claim: runs of one cell move that much
MEMORY_PARTS = ("params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes")  # the estimate's
# k, t, r, u and m of the module's docstring for a CPU host with no records of its own: fitted on the
# reference host's records (docs/predictions.md, "The heap prior"), not on this host's
HEAP_PRIOR = (1.20, 0.93, 0.61, 0.51, 40.3 * 2**20)
PRIOR_SD = (0.10, 0.25, 0.25, 0.25, 0.25)  # how far (relative sd) another CPU host's k, t, r, u and m are believed to lie
# the least relative error a fit credits its records with: the model's error on a matrix it was
# not fitted on (docs/predictions.md), however closely it fits the matrix it was
MODEL_ERROR = 0.05
MATMUL_DTYPE = {"fp32": "float32", "tf32": "tf32", "bf16": "bfloat16", "bf16-pure": "bfloat16",
                "fp16": "float16", "fp8": "float8"}  # the dtype measure/peak.py keys its peaks by


@dataclass(frozen=True)
class Observation:
    """One earlier repetition on this host: its cell, its median step time, its train memory,
    the matmul peak it ran against, and the attention kernel it ran."""
    config: CellConfig
    step_s: float | None
    train_mem_bytes: float | None
    peak_flops: float | None
    attention: str | None = None


@dataclass
class Prediction:
    tokens_per_s: float | None = None
    low: float | None = None  # the band of tokens/s
    high: float | None = None
    step_s: float | None = None
    train_mem_bytes: float | None = None
    # held_parts() and "heap_bytes"; the estimate's MEMORY_PARTS on a new CUDA host
    memory_parts: dict[str, float] = field(default_factory=dict)
    speed_source: str = ""  # "fitted on N repetitions of this host" / "uncorrected roofline" / why none
    memory_source: str = ""


@dataclass
class HostModel:
    speed: list[float] | None  # a, b, c, d; None: the uncorrected roofline
    speed_error: float  # relative sd of the fit (log scale)
    speed_fitted_on: int
    memory: list[float] | None  # k, t, r, u and m of the module's docstring; None: fewer than three records
    memory_error: float
    memory_fitted_on: int
    auto_attention: dict[str, str] = field(default_factory=dict)  # precision -> the kernel auto ran here

    heap_prior: tuple[float, ...] = HEAP_PRIOR  # what a CPU host's memory fit is drawn towards

    @classmethod
    def fit(cls, observations: Iterable[Observation], heap_prior: tuple[float, ...] = HEAP_PRIOR) -> "HostModel":
        """The host's model from its earlier repetitions; `heap_prior`: the CPU memory prior (another
        one only to measure how the model generalises, bench/predict_holdout.py)."""
        observations = list(observations)
        timed = [o for o in observations if positive(o.step_s) and positive(o.peak_flops)]
        speed, speed_error = _nnls([speed_features(o.config, o.peak_flops) for o in timed],
                                   [o.step_s for o in timed])
        sized = [o for o in observations if positive(o.train_mem_bytes)]
        # each record's parts with the kernel it ran; with fewer records than three, the prior
        prior = heap_prior if all(o.config.device == "cpu" for o in sized) else None
        memory, memory_error = (_nnls([memory_features(o.config, o.attention) for o in sized],
                                      [o.train_mem_bytes for o in sized], prior)
                                if len(sized) >= 3 else (None, math.nan))
        return cls(speed, speed_error, len(timed), memory, memory_error, len(sized), auto_attention(observations),
                   heap_prior)

    def predict(self, cell: CellConfig, peak_flops: float | None, bandwidth: float | None = None) -> Prediction:
        """`peak_flops`: this host's matmul peak at the cell's precision; `bandwidth`: its memory
        bandwidth in bytes per second (the uncorrected roofline's second term), when measured."""
        out = Prediction()
        attention = self.auto_attention.get(cell.precision) if cell.model.attention == "auto" else None
        if self.memory is not None or cell.device == "cpu":
            coefficients = self.memory if self.memory is not None else self.heap_prior
            # the tensors as they are, so each part compares with the role measured at the peak; what
            # the heap holds beyond them (negative where the fit says the parts' peaks do not coincide)
            held = held_parts(cell, attention)
            features = memory_features(cell, attention, held)
            out.memory_parts = {**held, "heap_bytes": sum(c * x for c, x in zip(coefficients, features))
                                - sum(held.values())}
            out.memory_source = (f"fitted on {self.memory_fitted_on} repetitions of this host"
                                 if self.memory is not None
                                 else "the estimate with the heap prior of the reference host (nothing measured "
                                      "here yet)")
        else:
            estimate = estimate_memory(cell, approx_vocab(cell), attention)
            out.memory_parts = {name: float(estimate[name]) for name in MEMORY_PARTS}
            out.memory_source = "the estimate, uncorrected (no repetition measured here yet)"
        if cell.model.attention == "auto":
            out.memory_source += f"; attention: auto as {attention or 'sdpa'}" + (
                " (what auto ran here)" if attention else " (its default: auto never ran here at this precision)")
        out.train_mem_bytes = sum(out.memory_parts.values())
        if not positive(peak_flops):
            out.speed_source = f"no matmul peak measured here at {cell.precision} yet"
            return out
        x = speed_features(cell, peak_flops)
        if self.speed is not None:
            out.step_s = sum(c * v for c, v in zip(self.speed, x))
        else:  # the uncorrected roofline: the matmuls at the peak, the rest at the memory bandwidth
            out.step_s = x[0] + (step_traffic_bytes(cell, attention) / bandwidth if positive(bandwidth) else 0.0)
        if not positive(out.step_s):
            out.speed_source = "the fit predicts no time for this cell"
            return out
        out.tokens_per_s = cell.tokens_per_step / out.step_s
        half = max(BAND_FLOOR, 2 * self.speed_error) if self.speed is not None else None
        if half is not None:
            out.low, out.high = out.tokens_per_s * math.exp(-half), out.tokens_per_s * math.exp(half)
        out.speed_source = (f"fitted on {self.speed_fitted_on} repetitions of this host" if self.speed is not None
                            else "the uncorrected roofline (no repetition measured here yet)" if positive(bandwidth)
                            else "the uncorrected roofline of the matmuls alone (no repetition and no memory "
                                 "bandwidth measured here yet)")
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


def step_traffic_bytes(cell: CellConfig, attention: str | None = None) -> float:
    """The bytes a training step moves through memory outside its matmuls (whose reads the
    compute term counts): every block's saved activations written in the forward pass and read
    in the backward, their gradients written and read once (a checkpointed block's recomputation
    writes and reads them once more), the logits and their gradient written and read, per
    micro-batch; and the optimizer's step, which reads the parameters and gradients, writes the
    parameters, and reads and writes its state. An order of magnitude for the uncorrected
    roofline, not a count of every kernel's traffic."""
    vocab = approx_vocab(cell)
    layers, checkpointed = cell.model.dims[0], kept_layers(cell)[1]
    per_micro_batch = ((4 * layers + 2 * checkpointed) * layer_activation_bytes(cell, attention)
                       + 2 * logits_bytes(cell, vocab))
    estimate = estimate_memory(cell, vocab, attention)
    step = 2 * estimate["params_bytes"] + estimate["grads_bytes"] + 2 * estimate["optimizer_bytes"]
    return float(per_micro_batch * cell.train.grad_accum + step)


def auto_attention(observations: Iterable[Observation]) -> dict[str, str]:
    """precision -> the kernel `model.attention: auto` ran in most of the observations of that
    precision (ties: the later one)."""
    ran: dict[str, list[str]] = {}
    for o in observations:
        if o.config.model.attention == "auto" and o.attention in ("sdpa", "matmul"):
            ran.setdefault(o.config.precision, []).append(o.attention)
    return {precision: max(reversed(kernels), key=kernels.count) for precision, kernels in ran.items()}


def held_parts(cell: CellConfig, attention: str | None = None) -> dict[str, float]:
    """What the training holds beyond what was resident before it at its peak (the module's
    docstring), by part. A step peaks in one of two phases: the backward pass, holding the
    activations (with the logits; gradients too once a step accumulates micro-batches), or the
    optimizer's step, holding every gradient and the temporaries its step makes for all
    parameters at once (OptimizerInfo.step_temporaries); the optimizer's state is held
    throughout, and on CUDA the parameters and gradients too. `attention`: the kernel auto
    resolves to (estimate_memory)."""
    estimate = estimate_memory(cell, approx_vocab(cell), attention)
    grads = float(estimate["grads_bytes"])
    parts = {"optimizer_bytes": float(estimate["optimizer_bytes"])}
    if cell.device == "cuda":
        return {**parts, "params_bytes": float(estimate["params_bytes"]), "grads_bytes": grads,
                "activations_bytes": float(estimate["activations_bytes"])}
    backward = {"activations_bytes": float(estimate["activations_bytes"])}
    if cell.train.grad_accum > 1:
        backward["grads_bytes"] = grads
    step = {"grads_bytes": grads,
            # the step's temporaries: what the measured roles call other (txsuite/measure/memory_roles.py)
            "other_bytes": OPTIMIZERS[cell.train.optimizer].step_temporaries * estimate["params_bytes"]}
    return {**parts, **max(backward, step, key=lambda phase: sum(phase.values()))}


def memory_features(cell: CellConfig, attention: str | None = None, held: dict[str, float] | None = None
                    ) -> list[float]:
    """[what the training holds (held_parts, summed; `held` where the caller has them), one layer's
    activations, the unplaced recomputation, the displaced micro-batch (the module's docstring),
    1 for the constant]."""
    held = held_parts(cell, attention) if held is None else held
    layer = float(layer_activation_bytes(cell, attention))
    kept, checkpointed = kept_layers(cell)
    displaced = (float(estimate_memory(cell, approx_vocab(cell), attention)["activations_bytes"])
                 if cell.train.grad_accum > 1 else 0.0)
    return [sum(held.values()), layer, max(0, checkpointed - kept) * layer, displaced, 1.0]


def heap_fit(observations: Iterable[Observation]) -> tuple[float, ...] | None:
    """The memory coefficients (k, t, r, u, m) the records alone give, with no prior: how HEAP_PRIOR
    was made from the reference host's records (bench/predict_holdout.py)."""
    sized = [o for o in observations if positive(o.train_mem_bytes)]
    coefficients, _ = _nnls([memory_features(o.config, o.attention) for o in sized], [o.train_mem_bytes for o in sized])
    return None if coefficients is None else tuple(coefficients)


def peak_key(cell: CellConfig, device_name: str, torch_version: str, op: str = "linear") -> str:
    """The key measure/peak.py caches the cell's matmul peak (`op` "linear") or the memory
    bandwidth (`op` "copy") under: threads and OpenMP spin setting as the runner gives the cell's
    worker."""
    from txsuite.measure.peak import BANDWIDTH_KIND, cell_openmp_env, format_peak_key, spin_setting
    kind = BANDWIDTH_KIND if op == "copy" else MATMUL_DTYPE[cell.precision]
    if cell.device != "cpu":
        return format_peak_key(device_name, torch_version, 0, kind, op=op)
    threads = cell.measure.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                       else os.cpu_count() or 1)
    spin = spin_setting({**os.environ, **cell_openmp_env(os.environ)})
    return format_peak_key(device_name, torch_version, threads, kind, spin, op=op)


def _nnls(rows: list[list[float]], targets: list[float], prior: tuple[float, ...] | None = None
          ) -> tuple[list[float] | None, float]:
    """Coefficients >= 0 minimising the relative error (rows scaled by 1/target), and the sd of
    log(target / fitted); (None, nan) with fewer observations than coefficients would need.
    `prior`: coefficients believed before the data (HEAP_PRIOR), each costing ((c / c0 - 1) /
    its PRIOR_SD)^2 beside the records' squared relative errors over their variance (at least
    MODEL_ERROR^2): a Gaussian prior, so the records decide what they determine and the prior
    the split they cannot tell (one matrix's records span too few sizes to tell k from m)."""
    if not rows:
        return None, math.nan
    import numpy as np
    from scipy.optimize import nnls

    x = np.asarray(rows, dtype=float)
    y = np.asarray(targets, dtype=float)
    used = list(range(x.shape[1]))
    if len(rows) < x.shape[1] and prior is None:  # too few for every term: the first (the main) and the constant
        used = [0, x.shape[1] - 1]
    scale = x[:, used].max(axis=0)
    scale[scale == 0] = 1.0
    a, b = x[:, used] / scale / y[:, None], np.ones(len(y))
    coefficients, _ = nnls(a, b)
    if prior is not None:  # every coefficient kept (used), each drawn towards its prior value
        noise = max(MODEL_ERROR, float(np.sqrt(np.mean((a @ coefficients - 1) ** 2))))
        sd = np.asarray(PRIOR_SD)
        belief = np.diag(1 / (sd * np.asarray(prior) * scale))  # row i: (c_i / c0_i) / sd_i, in scaled units
        coefficients, _ = nnls(np.vstack([a / noise, belief]), np.concatenate([b / noise, 1 / sd]))
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
