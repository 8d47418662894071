"""Every headline metric of a record, described once (L0: stdlib only).

The record (which metrics every record carries), the matrix (which metrics a `guard:` block
may name), the guard (which way is bad, whether there are per-step samples), the report (the
per-cell table, its titles, formats and spreads) and the comparison report all read this
table instead of keeping their own lists. A metric a record carries but this table does not
describe is still stored and exported; it is simply not summarised.

    name        the key in a record's `metrics`
    title       column title in reports
    kind        how a value is written (txsuite.report.formatting.by_kind): rate, seconds,
                bytes, fraction, loss, plain, energy
    better      "higher", "lower", or None (no direction: a fact, not a score)
    per_step    measured at every optimizer step (the guard resamples the steps), else one
                value per repetition
    required    every record carries it (null when not measured)
    guardable   a `guard:` block may set a threshold on it
    spread      reports keep its min/max over repetitions (error bars)
    compared    `txsuite compare` shows its ratio between two runs
    exact       deterministic for a given code and configuration (the step counters): compared
                exactly, no noise model
    resolution  the smallest relative difference a verdict calls a difference at all (0: any
                difference the noise separates); see txsuite/verdict/rounds.py
    statistic   how a repetition's per-step samples make its value: "median", or "p90"
    speed       how the value moves with the machine's speed: +1 a rate (twice as fast, twice
                the value), -1 a duration, 0 not at all (memory, loss, counters); the verdicts
                bring a repetition to the machine's best state with it (txsuite/verdict/state.py)
    judged_on   another metric that measures the part of this one the cell controls; the guard
                and `compare` judge that one instead, and say so (peak memory -> train memory)
    description what the number is, for table headers
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    title: str
    kind: str
    better: str | None = None
    per_step: bool = False
    required: bool = False
    guardable: bool = False
    spread: bool = False
    compared: bool = False
    exact: bool = False
    resolution: float = 0.0
    statistic: str = "median"
    speed: int = 0
    judged_on: str | None = None
    description: str = "median over repeats"

    @property
    def higher_is_better(self) -> bool | None:
        return None if self.better is None else self.better == "higher"


REGISTRY: tuple[Metric, ...] = (
    Metric("tokens_per_s", "tokens/s", "rate", "higher", per_step=True, required=True, guardable=True,
           spread=True, compared=True, speed=+1,
           description="median over repeats of each repeat's median per-step rate; ± is half the range over repeats"),
    Metric("samples_per_s", "samples/s", "rate", "higher", per_step=True, required=True, guardable=True, speed=+1),
    Metric("step_time_p50_s", "step p50", "seconds", "lower", per_step=True, required=True, guardable=True,
           speed=-1),
    Metric("step_time_p90_s", "step p90", "seconds", "lower", per_step=True, required=True, guardable=True,
           statistic="p90", speed=-1),
    Metric("peak_mem_bytes", "peak memory", "bytes", "lower", required=True, guardable=True, spread=True,
           compared=True, judged_on="train_mem_bytes", resolution=0.001,
           description="device memory reserved on GPU, peak resident set on CPU"),
    Metric("train_mem_bytes", "train memory", "bytes", "lower", guardable=True, spread=True, compared=True,
           resolution=0.001,
           description="the memory the cell controls: peak resident set minus the resident set before "
                       "training (CPU), the allocator's peak of live tensors (CUDA)"),
    Metric("optimizer_state_bytes", "optimizer state", "bytes", "lower",
           description="bytes of the optimizer's state tensors after training, measured (quantized states "
                       "opened to their codes and scales; one rank's share under ZeRO / FSDP)"),
    Metric("mfu", "MFU", "fraction", "higher", per_step=True, required=True, guardable=True, speed=+1,
           description="model FLOPs utilisation against the peak measured on this host"),
    Metric("val_loss", "val loss", "loss", "lower", required=True, guardable=True, spread=True, compared=True,
           resolution=1e-4),
    Metric("val_ppl", "val ppl", "plain", "lower"),
    Metric("time_to_target_s", "time to target", "seconds", "lower", required=True,
           description="training wall time until the target loss was reached"),
    Metric("cell_overhead_s", "overhead", "seconds", "lower",
           description="the repetition's wall time outside its training steps: process start or fork, "
                       "model build, data, evaluations, inference timing, writing the result (the "
                       "record's phase_s says which took what)"),
    Metric("compile_s", "compile", "seconds", "lower",
           description="torch.compile's cost: warm-up wall time minus as many compiled steps at the "
                       "measured median (compiled cells only)"),
    Metric("energy_per_token_j", "energy/token", "energy", "lower"),
    Metric("machine_slowdown", "machine state", "plain", "lower",
           description="how much slower than its best this machine ran the probe workload around the "
                       "measured steps (1.0: its best state)"),
    Metric("host_page_faults_per_step", "page faults/step", "plain", "lower",
           description="minor page faults of the cell's process per measured step: host memory the "
                       "kernel mapped and zero-filled afresh (measure.host_allocator: cache removes "
                       "those of blocks freed and taken again every step)"),
    Metric("step_flops", "FLOPs/step", "rate", "lower", guardable=True, exact=True,
           description="FLOPs one training step dispatches (torch's flop counter)"),
    Metric("step_ops", "ops/step", "plain", "lower", guardable=True, exact=True,
           description="operators one training step dispatches"),
    Metric("step_alloc_bytes", "alloc/step", "bytes", "lower", guardable=True, exact=True,
           description="bytes of the new tensors one training step's operators return"),
)
# loss_curve is required too, but it is a list, not a scalar summarised per cell
REQUIRED_LIST_METRICS = ("loss_curve",)

BY_NAME: dict[str, Metric] = {m.name: m for m in REGISTRY}
REQUIRED = tuple(m.name for m in REGISTRY if m.required) + REQUIRED_LIST_METRICS
GUARDABLE = tuple(m.name for m in REGISTRY if m.guardable)
SPREAD = tuple(m.name for m in REGISTRY if m.spread)
COMPARED = tuple(m.name for m in REGISTRY if m.compared)


def metric(name: str) -> Metric:
    """The description of a metric; KeyError names the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(BY_NAME)}") from None
