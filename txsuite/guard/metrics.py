"""What each guardable metric is made of: its samples, its statistic and its good direction.

A guard entry `metric: -5%` says which way is bad (the sign: `-` a fall is bad, `+` a rise is
bad) and the smallest change that counts (5 %). Which metrics can be guarded, their good
direction and whether they have per-step samples come from the metric registry
(txsuite/config/metrics.py); this module adds what only the guard needs (the statistic, the
unit it prints, how a metric scales with the machine's peak).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
import numpy as np

from txsuite.config.metrics import BY_NAME, GUARDABLE
from txsuite.verdict.stats import Statistic, median_stat, quantile_stat

THRESHOLD_RE = re.compile(r"^([+-])(\d+(?:\.\d+)?)%$")


@dataclass(frozen=True)
class Threshold:
    text: str         # as written, e.g. "-5%"
    sign: int         # -1: a fall is bad; +1: a rise is bad
    fraction: float   # 0.05

    def beyond(self, ratio: float) -> bool:
        """Is now/baseline = ratio a change in the bad direction larger than the threshold?"""
        return ratio < 1.0 - self.fraction if self.sign < 0 else ratio > 1.0 + self.fraction

    def improved(self, ratio: float) -> bool:
        """A change of at least the threshold's size in the good direction."""
        return ratio > 1.0 + self.fraction if self.sign < 0 else ratio < 1.0 - self.fraction

    @property
    def worse_when_below(self) -> bool:
        return self.sign < 0

    def describe(self) -> str:
        return f"must not {'fall' if self.sign < 0 else 'rise'} by more than {_pct(self.fraction)}"


def _pct(fraction: float) -> str:
    text = f"{fraction * 100:.2f}".rstrip("0").rstrip(".")
    return f"{text}%"


def parse_threshold(text: str) -> Threshold:
    """"-5%" -> Threshold(sign=-1, fraction=0.05). Raises ValueError for anything else."""
    if not isinstance(text, str):
        raise ValueError(f"expected a signed percentage like -5% or +10%, got {text!r}")
    m = THRESHOLD_RE.match(text.strip())
    if not m:
        raise ValueError(f"expected a signed percentage like -5% or +10%, got {text!r}")
    return Threshold(text=text.strip(), sign=-1 if m.group(1) == "-" else 1,
                     fraction=float(m.group(2)) / 100.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    per_step: bool            # samples are per optimizer step (else one value per repetition)
    natural_sign: int         # -1: higher is better (a fall is bad); +1: lower is better
    stat: Statistic           # the record's own definition of the metric over the samples
    unit: str
    scales_with_peak: int     # 0: not normalised; -1: divided by the peak; +1: multiplied


STATISTICS = {"median": median_stat, "p90": quantile_stat(0.9)}  # the registry's `statistic` names
UNITS = {"tokens_per_s": "tok/s", "samples_per_s": "samples/s", "step_time_p50_s": "s", "step_time_p90_s": "s",
         "peak_mem_bytes": "B", "train_mem_bytes": "B", "step_flops": "FLOP", "step_ops": "ops",
         "step_alloc_bytes": "B"}


def _scales_with_peak(name: str) -> int:
    """-1: a throughput, divided by the host's matmul peak under `--normalize peak`; +1: a time,
    multiplied by it; 0: compared raw (MFU is already relative to the peak)."""
    metric = BY_NAME[name]
    return 0 if metric.kind == "fraction" else -metric.speed


METRICS: dict[str, MetricSpec] = {
    name: MetricSpec(name, BY_NAME[name].per_step, -1 if BY_NAME[name].higher_is_better else +1,
                     STATISTICS[BY_NAME[name].statistic], UNITS.get(name, ""), _scales_with_peak(name))
    for name in GUARDABLE
}


def per_step_values(metric: str, step_times: np.ndarray, rep) -> np.ndarray | None:
    """Per-step samples of a per-step metric from one repetition's step times (seconds).
    `rep` is a RepeatSamples (txsuite.guard.side). None when a needed quantity is missing."""
    if metric in ("step_time_p50_s", "step_time_p90_s"):
        return step_times
    if metric == "tokens_per_s":
        return None if rep.tokens_per_step is None else rep.tokens_per_step / step_times
    if metric == "samples_per_s":
        return None if rep.samples_per_step is None else rep.samples_per_step / step_times
    if metric == "mfu":
        factor = rep.mfu_per_token_per_s()
        if factor is None or rep.tokens_per_step is None:
            return None
        return rep.tokens_per_step / step_times * factor
    raise KeyError(metric)


def fmt_value(metric: str, value: float | None, normalized: bool = False) -> str:
    """A metric value for the table, in a unit a person reads at a glance."""
    if value is None or not np.isfinite(value):
        return "-"
    spec = METRICS[metric]
    if normalized and spec.scales_with_peak:
        # throughput / peak FLOP/s: shown per TFLOP/s of peak; time x peak: in TFLOP
        if spec.scales_with_peak < 0:
            return f"{value * 1e12:,.4g} {spec.unit} per TFLOP/s"
        return f"{value / 1e12:,.4g} TFLOP-equiv"
    if metric in ("peak_mem_bytes", "train_mem_bytes", "step_alloc_bytes"):
        return f"{value / 2**20:,.1f} MiB"
    if metric in ("step_time_p50_s", "step_time_p90_s"):
        return f"{value * 1e3:,.2f} ms"
    if metric == "mfu":
        return f"{value:.2%}"
    if metric == "val_loss":
        return f"{value:.4f}"
    return f"{value:,.0f} {spec.unit}"

