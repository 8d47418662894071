"""Summary statistics of per-step samples (stdlib only)."""
from __future__ import annotations

import statistics


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), q in [0, 1]."""
    if not values:
        raise ValueError("quantile of no values")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize_steps(step_times_s: list[float], tokens_per_step: int, samples_per_step: int) -> dict:
    """Throughput is the median over measured steps of per-step rates; spread is their
    inter-quartile range and the min/max, so one slow step (a GC pause, a noisy neighbour)
    shows up in the spread instead of shifting the centre."""
    tok = [tokens_per_step / t for t in step_times_s]
    smp = [samples_per_step / t for t in step_times_s]
    return {
        "tokens_per_s": statistics.median(tok),
        "tokens_per_s_iqr": quantile(tok, 0.75) - quantile(tok, 0.25),
        "tokens_per_s_min": min(tok),
        "tokens_per_s_max": max(tok),
        "samples_per_s": statistics.median(smp),
        "samples_per_s_iqr": quantile(smp, 0.75) - quantile(smp, 0.25),
        "step_time_p50_s": quantile(step_times_s, 0.5),
        "step_time_p90_s": quantile(step_times_s, 0.9),
        "step_time_mean_s": statistics.fmean(step_times_s),
        "measured_steps": len(step_times_s),
    }
