"""A cell's speed and memory predicted before it runs, from what this host has measured
(L1, no torch: the plan uses it).

Speed. A training step's time is modelled as

    step_s = a * matmul FLOPs / the host's matmul peak at the cell's precision
           + e * (the bytes the step moves outside its matmuls / the host's memory bandwidth
                  + the per-operator overhead of its layer passes and micro-batches)
           + the optimizer step, as measured at the cell's parameter shapes

The matmul FLOPs are the model's (6 per parameter and token, attention scores, the forward of
every recomputed layer); the bytes are activation_traffic_bytes' (activations, their gradients,
the logits); the per-operator overhead is what a layer pass and a micro-batch cost at a tiny
shape, in the cell's precision; the optimizer step is timed on the cell's own parameters, as
optimizers differ far more than their bytes say (a 4-bit AdamW, Muon, Adafactor). The peak and
the bandwidth (measure/peak.py), the overhead and the optimizer step (train/step_costs.py) are
measured once per host and cached (HostCosts); where the optimizer step was not measured (a
distributed cell), its bytes at the bandwidth join the second term. On a CPU the parts run one
after the other, so their times add.

a, e >= 0 are fitted (non-negative least squares, relative errors) on this host's earlier
records of the same device: the matmuls and everything else, the two parts every host weighs
differently, each scaled from a measured figure, so that one matrix of one shape carries over to
others. Each record's step time is first brought to the machine's best state by its probe's
state factor (txsuite.verdict.state, as the verdicts bring tokens/s), so a matrix that ran while
the machine was slow does not slow every later prediction; the prediction is made in the median
state of the records fitted on, the state this host's cells usually run in. On CPU the speed
prior SPEED_PRIOR (a and e fitted on every record of the project's reference host,
docs/predictions.md) joins the fit as the heap prior joins memory's, and is the prediction of a
CPU host with no record yet (in that host's typical state, SPEED_PRIOR_STATE), which says so; a
CUDA host with no record gets the uncorrected sum (a = e = 1). Tokens/s = tokens per step /
step_s, with a band of twice the fit's relative error (at least BAND_FLOOR).

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
import statistics
from dataclasses import dataclass, field
from typing import Iterable

from txsuite.config.spec import OPTIMIZERS, CellConfig
from txsuite.config.estimate import (approx_vocab, estimate_memory, kept_layers, layer_activation_bytes, logits_bytes,
                                     parameter_shapes)
# the keys' parts, as the measuring side builds them (a stdlib-only module: no torch)
from txsuite.measure.peak import BANDWIDTH_KIND, MATMUL_DTYPE, cell_openmp_env, format_peak_key, spin_setting

BAND_FLOOR = 0.10  # the least relative half-width a band may claim: runs of one cell move that much
MEMORY_PARTS = ("params_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes")  # the estimate's
# k, t, r, u and m of the module's docstring for a CPU host with no records of its own: fitted on the
# reference host's records (docs/predictions.md, "The heap prior"), not on this host's
HEAP_PRIOR = (1.20, 0.93, 0.61, 0.51, 40.3 * 2**20)
# how far (relative sd) another CPU host's k, t, r, u and m are believed to lie from HEAP_PRIOR
HEAP_PRIOR_SD = (0.10, 0.25, 0.25, 0.25, 0.25)
# a and e of the speed model fitted on every record of the reference host (docs/predictions.md): the
# matmuls run about at the measured peak, the rest of the step about SPEED_PRIOR[1] times its bytes at
# the bandwidth plus its overhead; and how far (relative sd) another CPU host's are believed to lie
SPEED_PRIOR = (0.94, 3.07)
SPEED_PRIOR_SD = (0.25, 0.50)
# the median state factor (txsuite.verdict.state) of those records: the fit is on step times brought to
# the machine's best state, and a new CPU host's prediction is made in the reference host's typical state
SPEED_PRIOR_STATE = 1.10
# the least relative error a fit credits its records with: the model's error on a matrix it was
# not fitted on (docs/predictions.md), however closely it fits the matrix it was
MODEL_ERROR = 0.05


@dataclass(frozen=True)
class HostCosts:
    """What this host measured that a cell's step time is built from; None where not measured yet."""
    peak_flops: float | None = None  # matmul FLOP/s at the cell's precision (measure/peak.py)
    bandwidth: float | None = None  # bytes read and written per second (measure/peak.py)
    layer_s: float | None = None  # per-operator overhead of one layer pass (train/step_costs.py)
    micro_batch_s: float | None = None  # per-operator overhead of a micro-batch outside its layers
    optimizer_s: float | None = None  # one optimizer step at the cell's parameter shapes (train/step_costs.py)


@dataclass(frozen=True)
class Observation:
    """One earlier repetition on this host: its cell, its median step time, its train memory,
    what the host measured for its step (the peak it ran against), and the attention kernel it ran."""
    config: CellConfig
    step_s: float | None
    train_mem_bytes: float | None
    costs: HostCosts = HostCosts()
    attention: str | None = None
    state: float = 1.0  # how much slower than its best the machine ran around it (its probe's state factor)


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
    speed: list[float] | None  # a and e; None: nothing fitted (the prior, or the uncorrected sum)
    speed_error: float  # relative sd of the fit (log scale)
    speed_fitted_on: int
    memory: list[float] | None  # k, t, r, u and m of the module's docstring; None: fewer than three records
    memory_error: float
    memory_fitted_on: int
    auto_attention: dict[str, str] = field(default_factory=dict)  # precision -> the kernel auto ran here

    heap_prior: tuple[float, ...] = HEAP_PRIOR  # what a CPU host's memory fit is drawn towards
    # the machine's typical state over the timed repetitions (their median state factor): predictions are in it
    speed_state: float = SPEED_PRIOR_STATE

    @classmethod
    def fit(cls, observations: Iterable[Observation], heap_prior: tuple[float, ...] = HEAP_PRIOR,
            speed_prior: tuple[float, ...] | None = SPEED_PRIOR) -> "HostModel":
        """The host's model from its earlier repetitions; `heap_prior`, `speed_prior`: the CPU priors
        (others only to measure how the model generalises or to fit a prior: bench/predict_holdout.py,
        bench/predict_speed.py; a speed prior of None fits the records alone)."""
        observations = list(observations)
        # each step time brought to the machine's best state, as the verdicts bring it: a moment the
        # machine was slow, or a whole matrix run in one, is not the cells' (observed.py leaves out
        # repetitions in a slow state, as the verdicts do)
        timed = [(o, parts) for o in observations if positive(o.step_s) and positive(o.state)
                 for parts in [speed_parts(o.config, o.costs, o.attention)] if parts is not None]
        on_cpu = all(o.config.device == "cpu" for o, _ in timed)  # the prior is a CPU host's
        speed, speed_error = _nnls([features for _, (features, _) in timed], [o.step_s / o.state for o, _ in timed],
                                   speed_prior if on_cpu else None, SPEED_PRIOR_SD,
                                   offsets=[measured for _, (_, measured) in timed])
        sized = [o for o in observations if positive(o.train_mem_bytes)]
        # each record's parts with the kernel it ran; with fewer records than three, the prior
        prior = heap_prior if all(o.config.device == "cpu" for o in sized) else None
        memory, memory_error = (_nnls([memory_features(o.config, o.attention) for o in sized],
                                      [o.train_mem_bytes for o in sized], prior, HEAP_PRIOR_SD)
                                if len(sized) >= 3 else (None, math.nan))
        state = statistics.median(o.state for o, _ in timed) if timed else SPEED_PRIOR_STATE
        return cls(speed, speed_error, len(timed), memory, memory_error, len(sized), auto_attention(observations),
                   heap_prior, state)

    def predict(self, cell: CellConfig, costs: HostCosts = HostCosts()) -> Prediction:
        """`costs`: what this host measured for the cell's step (its precision's peak, the memory
        bandwidth, the overhead, the optimizer step), None where not yet."""
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
        out.step_s, out.speed_source = self._step_s(cell, costs, attention)
        if not positive(out.step_s):
            out.step_s = None
            return out
        out.tokens_per_s = cell.tokens_per_step / out.step_s
        if self.speed is not None:
            half = max(BAND_FLOOR, 2 * self.speed_error)
            out.low, out.high = out.tokens_per_s * math.exp(-half), out.tokens_per_s * math.exp(half)
        return out

    def _step_s(self, cell: CellConfig, costs: HostCosts, attention: str | None) -> tuple[float | None, str]:
        """The predicted step time and where it came from (or None and why there is none)."""
        if not positive(costs.peak_flops):
            return None, f"no matmul peak measured here at {cell.precision} yet"
        parts = speed_parts(cell, costs, attention)
        overhead_s = _overhead_s(cell, costs)
        if parts is None:  # no bandwidth yet: the matmuls, and the overhead and optimizer step where measured
            return (matmul_seconds(cell, costs.peak_flops) + (overhead_s or 0.0) + (costs.optimizer_s or 0.0),
                    "the uncorrected roofline without the step's bytes (no memory bandwidth measured here yet)")
        optimizer = ("the optimizer step measured here" if positive(costs.optimizer_s)
                     else "the optimizer's bytes at the bandwidth (its step not measured here)")
        overhead = "" if overhead_s is not None else "; no per-operator overhead measured here yet"
        (matmul_s, outside_s), optimizer_s = parts
        if self.speed is not None:
            (a, e), state = self.speed, self.speed_state
            source = f"fitted on {self.speed_fitted_on} repetitions of this host"
        elif cell.device == "cpu":
            (a, e), state, source = SPEED_PRIOR, SPEED_PRIOR_STATE, (
                "this host's measured parts with the reference host's factors (no repetition measured here yet)")
        else:
            (a, e), state, source = (1.0, 1.0), 1.0, ("the uncorrected roofline of this host's measured parts (no "
                                                      "repetition measured here yet)")
        step_s = (a * matmul_s + e * outside_s + optimizer_s) * state
        if step_s <= 0:
            return None, "the fit predicts no time for this cell"
        return step_s, f"{source}; {optimizer}{overhead}"


def speed_parts(cell: CellConfig, costs: HostCosts, attention: str | None = None
                ) -> tuple[list[float], float] | None:
    """([matmul seconds at the peak, seconds outside the matmuls], measured optimizer seconds) of
    one step: the fitted terms and the one added as measured. None without a peak or a bandwidth."""
    if not (positive(costs.peak_flops) and positive(costs.bandwidth)):
        return None
    outside = activation_traffic_bytes(cell, attention) / costs.bandwidth + (_overhead_s(cell, costs) or 0.0)
    if positive(costs.optimizer_s):
        return [matmul_seconds(cell, costs.peak_flops), outside], costs.optimizer_s
    return [matmul_seconds(cell, costs.peak_flops),
            outside + optimizer_traffic_bytes(cell, attention) / costs.bandwidth], 0.0


def matmul_seconds(cell: CellConfig, peak_flops: float) -> float:
    """Seconds of one step's matmuls at the peak."""
    return matmul_flops(cell) / peak_flops


def matmul_flops(cell: CellConfig) -> float:
    """One step's matmul FLOPs: 6 per hidden-matrix parameter and token (and the tied head), the
    attention scores, and the forward of every recomputed layer once more."""
    vocab = approx_vocab(cell)
    n_layer, _, d, _ = cell.model.dims
    matmul = sum(shape[0] * shape[1] for shape, hidden in parameter_shapes(cell, vocab) if hidden) + vocab * d
    per_token = 6 * matmul + 12 * n_layer * cell.data.seq_len * d
    recomputed = kept_layers(cell)[1] / max(1, n_layer)  # a recomputed layer runs its forward twice
    return per_token * cell.tokens_per_step * (1 + recomputed / 3)


def _overhead_s(cell: CellConfig, costs: HostCosts) -> float | None:
    """The per-operator overhead of one step: every layer pass (a recomputed layer's forward a
    third of one more) and every micro-batch; None where not measured here."""
    if costs.layer_s is None or costs.micro_batch_s is None:
        return None
    n_layer = cell.model.dims[0]
    passes = n_layer + kept_layers(cell)[1] / 3
    return (costs.layer_s * passes + costs.micro_batch_s) * cell.train.grad_accum


def activation_traffic_bytes(cell: CellConfig, attention: str | None = None) -> float:
    """The bytes a training step moves through memory outside its matmuls (whose reads the
    compute term counts) and its optimizer: per micro-batch, every block's saved activations
    written in the forward pass and read in the backward, their gradients written and read once
    (a checkpointed block's recomputation writes and reads them once more), the logits and their
    gradient written and read. An order of magnitude, not a count of every kernel's traffic."""
    vocab = approx_vocab(cell)
    layers, checkpointed = cell.model.dims[0], kept_layers(cell)[1]
    per_micro_batch = ((4 * layers + 2 * checkpointed) * layer_activation_bytes(cell, attention)
                       + 2 * logits_bytes(cell, vocab))
    return float(per_micro_batch * cell.train.grad_accum)


def optimizer_traffic_bytes(cell: CellConfig, attention: str | None = None) -> float:
    """The optimizer's step: it reads the parameters and gradients, writes the parameters, and
    reads and writes its state."""
    estimate = estimate_memory(cell, approx_vocab(cell), attention)
    return float(2 * estimate["params_bytes"] + estimate["grads_bytes"] + 2 * estimate["optimizer_bytes"])


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
    """The key a host measurement for this cell is cached under (measure/peak.py,
    train/step_costs.py): `op` "linear" its matmul peak, "copy" the memory bandwidth, "overhead"
    its precision's per-operator overhead, "optimizer" its optimizer step; threads and OpenMP spin
    setting as the runner gives the cell's worker."""
    kind = cost_kind(cell, op)
    if cell.device != "cpu":
        return format_peak_key(device_name, torch_version, 0, kind, op=op)
    threads = cell.measure.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                       else os.cpu_count() or 1)
    spin = spin_setting({**os.environ, **cell_openmp_env(os.environ)})
    return format_peak_key(device_name, torch_version, threads, kind, spin, op=op)


def cost_kind(cell: CellConfig, op: str) -> str:
    """What a host measurement of `op` depends on in the cell: the matmul dtype of a peak, nothing
    of a bandwidth, the precision of an overhead, the optimizer and every parameter shape and
    dtype of an optimizer step."""
    if op == "copy":
        return BANDWIDTH_KIND
    if op == "overhead":
        return cell.precision
    if op == "optimizer":
        n_layer, _, d, d_ff = cell.model.dims
        params = "bfloat16" if cell.precision == "bf16-pure" else "float32"
        return (f"{cell.train.optimizer} {n_layer}x{d}x{d_ff} vocab {approx_vocab(cell)} seq {cell.data.seq_len} "
                f"{params}")
    return MATMUL_DTYPE[cell.precision]


def _nnls(rows: list[list[float]], targets: list[float], prior: tuple[float, ...] | None = None,
          prior_sd: tuple[float, ...] = (), offsets: list[float] | None = None) -> tuple[list[float] | None, float]:
    """Coefficients >= 0 minimising the relative error (rows scaled by 1/target), and the sd of
    log(target / fitted); (None, nan) with fewer observations than coefficients would need.
    `prior`: coefficients believed before the data (HEAP_PRIOR, SPEED_PRIOR), each costing ((c / c0 - 1) /
    its `prior_sd`)^2 beside the records' squared relative errors over their variance (at least
    MODEL_ERROR^2): a Gaussian prior, so the records decide what they determine and the prior
    the split they cannot tell (one matrix's records span too few sizes to tell k from m).
    `offsets`: a part of each target that is known (measured), added with coefficient 1."""
    if not rows:
        return None, math.nan
    import numpy as np
    from scipy.optimize import nnls

    x = np.asarray(rows, dtype=float)
    y = np.asarray(targets, dtype=float)
    known = np.zeros(len(y)) if offsets is None else np.asarray(offsets, dtype=float)
    used = list(range(x.shape[1]))
    if len(rows) < x.shape[1] and prior is None:  # too few for every term: the first (the main) and the constant
        used = [0, x.shape[1] - 1]
    scale = x[:, used].max(axis=0)
    scale[scale == 0] = 1.0
    a, b = x[:, used] / scale / y[:, None], 1 - known / y
    coefficients, _ = nnls(a, b)
    if prior is not None:  # every coefficient kept (used), each drawn towards its prior value
        noise = max(MODEL_ERROR, float(np.sqrt(np.mean((a @ coefficients - b) ** 2))))
        sd = np.asarray(prior_sd)
        belief = np.diag(1 / (sd * np.asarray(prior) * scale))  # row i: (c_i / c0_i) / sd_i, in scaled units
        coefficients, _ = nnls(np.vstack([a / noise, belief]), np.concatenate([b / noise, 1 / sd]))
    full = [0.0] * x.shape[1]
    for i, c in zip(used, coefficients / scale):
        full[i] = float(c)
    fitted = x @ np.asarray(full) + known
    if (fitted <= 0).any():
        return None, math.nan
    residuals = np.log(y / fitted)
    spread = float(np.sqrt(np.mean(residuals ** 2)) * math.sqrt(len(y) / max(1, len(y) - len(used))))
    return full, spread


def positive(value) -> bool:
    """A finite number above 0 (not a bool): a figure a fit or an estimate can use."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf
