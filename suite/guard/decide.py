"""The guard's decision: every cell x guarded metric of a run against the same cell of a baseline.

A cell regresses on a metric only when all of these hold (see suite.guard.stats for the tests):

1. **Large enough**: the ratio now/baseline of the metric (the median over pooled per-step
   samples for tokens/s, samples/s, MFU and the p50 step time; the 90th percentile for the p90
   step time; the median over repetitions for peak memory and validation loss) is beyond the
   guard threshold in its bad direction (`tokens_per_s: -5%`: below 0.95).
2. **Significant**: one-sided, at level alpha, by every test: Mann-Whitney U over the per-step
   samples, the hierarchical (repetitions, then steps) bootstrap of the median ratio, and a
   test of the repetition medians against the run-to-run noise (pooled over the matrix's
   cells, never below the `run_noise` floor). The reported p-value is the largest of them
   (intersection-union test), and the reported confidence interval is the wider of the
   bootstrap's and the repetition-level one, so "p < alpha" and "the interval excludes 1"
   agree.
3. **Not interference**: for the throughput-like metrics, the *fastest* steps (the best 10 %)
   must have slowed by more than the threshold too. On a shared machine other work only ever
   adds time to a step, so load from a neighbour moves the median and the slow tail while
   some steps still run at full speed; slower code moves every step, the fastest included
   (the reason `timeit` reports the minimum). A median shift that the fastest steps do not
   share is reported as "fastest steps unchanged", not as a regression.

Per-repetition metrics (peak memory, validation loss) have one value per repetition. With too
few repetitions for Mann-Whitney to reach alpha at all (1 vs 1, 2 vs 2 at alpha = 0.01) the
significance condition becomes "every repetition of the run is worse than every repetition of
the baseline"; the table then says so instead of printing a meaningless p-value.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from suite.guard.environment import compare_env
from suite.guard.metrics import METRICS, MetricSpec, Threshold, parse_threshold, per_step_values
from suite.guard.side import CellSamples, GuardInputError, RepeatSamples, Side
from suite.guard.stats import (bootstrap_p, hierarchical_bootstrap, mann_whitney_p, min_attainable_p,
                               percentile_interval, pooled_log_sd, repeat_level_p, t_isf)
from suite.config.metrics import GUARDABLE as GUARD_METRICS

NORMALIZATIONS = ("none", "peak", "auto")
N_BOOT = 2000
NOISY_SPREAD_FACTOR = 3.0  # run's relative IQR this many times the baseline's: flag a busy machine
NOISY_SPREAD_MIN = 0.10
RUN_NOISE = 0.03  # default floor of the run-to-run noise (sd of a repetition's log median)


PRIOR_DF = 4  # the floor counts as an estimate with this many degrees of freedom


@dataclass(frozen=True)
class RunNoise:
    """How much one repetition's statistic varies from run to run (sd of its logarithm).

    The floor is a prior worth PRIOR_DF degrees of freedom, combined with the pooled estimate
    from the repetitions the way limma's moderated t-statistic combines a prior variance with
    a gene's own (Smyth 2004): sigma^2 = (d0 floor^2 + df s^2) / (d0 + df), never below the
    floor, tested with d0 + df degrees of freedom. Two repetitions of one cell (df = 2) then
    neither trust their own, very uncertain spread nor are drowned by a t(2) quantile of 7."""
    sigma: float                # the value used
    measured: float | None      # pooled estimate from repetitions, None when none had two
    df: int                     # degrees of freedom of the estimate
    floor: float
    prior_df: int = PRIOR_DF

    @property
    def test_df(self) -> float:
        return float(self.prior_df + self.df) if self.prior_df + self.df > 0 else math.inf

    @classmethod
    def from_groups(cls, groups: list[list[float]], floor: float, prior_df: int = PRIOR_DF) -> "RunNoise":
        measured, df = pooled_log_sd(groups)
        var = (prior_df * floor ** 2 + df * (measured or 0.0) ** 2) / (prior_df + df) if prior_df + df else floor ** 2
        return cls(sigma=max(math.sqrt(var), floor), measured=measured, df=df, floor=floor, prior_df=prior_df)

    def describe(self) -> str:
        if self.measured is None:
            return (f"not measured (one repetition per cell): the floor {self.floor:.1%} is used, "
                    f"t-test with {self.test_df:.0f} degrees of freedom (`repeats: 2` or more measures it)")
        return (f"measured {self.measured:.1%} over the repetitions ({self.df} degrees of freedom), combined "
                f"with the floor {self.floor:.1%}: {self.sigma:.1%} used, t-test with {self.test_df:.0f} "
                f"degrees of freedom")


@dataclass
class Check:
    """One cell x metric comparison: a row of the guard's table."""
    cell_id: str
    label: str
    metric: str
    threshold: str
    baseline: float | None = None
    now: float | None = None
    ratio: float | None = None
    ci: tuple[float, float] | None = None
    ci_label: str = ""
    p_value: float | None = None
    p_parts: dict[str, float] = field(default_factory=dict)
    fastest_ratio: float | None = None
    samples_run: str = ""
    samples_base: str = ""
    regressed: bool = False
    verdict: str = "ok"
    detail: str = ""
    normalized: bool = False
    first: "Check | None" = None  # the first measurement, when this row is a re-measurement

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "first"}
        out["ci"] = list(self.ci) if self.ci else None
        if self.first is not None:
            out["first"] = self.first.to_dict()
        return out


@dataclass
class GuardResult:
    run: str
    baseline: str
    rows: list[Check]
    env_differences: list[str]
    normalization: str          # what was compared, in words (starts with "none" or "peak")
    normalize_mode: str         # "none" or "peak", as resolved
    notes: list[str]
    alpha: float
    guard: dict[str, str]
    seed: int = 0
    noise: dict[str, RunNoise] = field(default_factory=dict)  # per-step metric -> run-to-run noise used
    confirmation: list[str] = field(default_factory=list)
    run_side: Side | None = field(default=None, repr=False)
    baseline_side: Side | None = field(default=None, repr=False)

    @property
    def regressions(self) -> list[Check]:
        return [r for r in self.rows if r.regressed]

    @property
    def ok(self) -> bool:
        return not self.regressions

    def to_text(self, all_rows: bool = True, width: int = 200) -> str:
        from suite.guard.render import to_text
        return to_text(self, all_rows=all_rows, width=width)

    def to_markdown(self) -> str:
        from suite.guard.render import to_markdown
        return to_markdown(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "run": self.run, "baseline": self.baseline, "alpha": self.alpha,
            "guard": self.guard, "normalization": self.normalization,
            "env_differences": self.env_differences, "notes": self.notes,
            "confirmation": self.confirmation,
            "regressions": [r.to_dict() for r in self.regressions],
            "rows": [r.to_dict() for r in self.rows],
        }


# ------------------------------------------------------------------ samples -----------------

def _rep_scale(rep: RepeatSamples, spec: MetricSpec, normalize: str) -> float:
    if normalize != "peak" or not spec.scales_with_peak:
        return 1.0
    if not rep.peak_flops:
        raise KeyError("peak_flops")
    return rep.peak_flops ** spec.scales_with_peak


def _per_step_groups(cell: CellSamples, spec: MetricSpec, normalize: str) -> list[np.ndarray] | None:
    groups = []
    for rep in cell.repeats:
        if not rep.step_times_s:
            return None
        values = per_step_values(spec.name, np.asarray(rep.step_times_s, dtype=float), rep)
        if values is None:
            return None
        groups.append(values * _rep_scale(rep, spec, normalize))
    return groups


def _per_repeat_values(cell: CellSamples, spec: MetricSpec, normalize: str) -> list[float] | None:
    out = []
    for rep in cell.repeats:
        if spec.per_step:
            value = rep.summary.get(spec.name)
        else:
            value = getattr(rep, spec.name, None)
        if value is None or not math.isfinite(value):
            return None
        out.append(float(value) * _rep_scale(rep, spec, normalize))
    return out


def _shape(groups: list[np.ndarray]) -> str:
    lengths = sorted({len(g) for g in groups})
    steps = str(lengths[0]) if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}"
    return f"{len(groups)}x{steps}"


def _rel_iqr(x: np.ndarray) -> float:
    q1, q2, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    return float((q3 - q1) / q2) if q2 else 0.0


def _fmt_change(ratio: float) -> str:
    return f"{ratio - 1.0:+.1%}"


# ------------------------------------------------------------------ one check ---------------

def check_per_step(cell_id: str, label: str, metric: str, thr: Threshold, run: list[np.ndarray],
                   base: list[np.ndarray], alpha: float, seed: int = 0, n_boot: int = N_BOOT,
                   normalized: bool = False, noise: RunNoise | None = None) -> Check:
    """Decide one per-step metric from per-repetition arrays of per-step samples. `noise`: the
    run-to-run noise pooled over the matrix (default: estimated from this cell alone, with the
    default floor)."""
    spec = METRICS[metric]
    run = [np.asarray(g, dtype=float) for g in run]
    base = [np.asarray(g, dtype=float) for g in base]
    pooled_r, pooled_b = np.concatenate(run), np.concatenate(base)
    now = float(spec.stat(pooled_r[None, :])[0])
    was = float(spec.stat(pooled_b[None, :])[0])
    ratio = now / was
    alt = "less" if thr.worse_when_below else "greater"
    parts = {"mann-whitney (steps)": mann_whitney_p(pooled_r, pooled_b, alt)}
    ratios = hierarchical_bootstrap(run, base, spec.stat, n_boot=n_boot, seed=seed)
    confidence = 1.0 - 2.0 * alpha
    boot_lo, boot_hi = percentile_interval(ratios, confidence)
    parts["bootstrap (repeats, steps)"] = bootstrap_p(ratios, thr.worse_when_below)
    stats_r = [float(spec.stat(g[None, :])[0]) for g in run]
    stats_b = [float(spec.stat(g[None, :])[0]) for g in base]
    if noise is None:
        noise = RunNoise.from_groups([stats_r, stats_b], RUN_NOISE)
    p_rep, se = repeat_level_p(stats_r, stats_b, noise.sigma, noise.test_df, alt)
    parts["repeats vs run-to-run noise"] = p_rep
    half = t_isf(alpha, noise.test_df) * se
    ci = (min(boot_lo, ratio * math.exp(-half)), max(boot_hi, ratio * math.exp(half)))
    p = max(parts.values())
    fastest = None
    if spec.edge_q is not None and thr.sign == spec.natural_sign:
        fastest = float(np.quantile(pooled_r, spec.edge_q) / np.quantile(pooled_b, spec.edge_q))
    check = Check(cell_id=cell_id, label=label, metric=metric, threshold=thr.text, baseline=was, now=now,
                  ratio=ratio, ci=ci, ci_label=f"{confidence:.0%} CI", p_value=p, p_parts=parts,
                  fastest_ratio=fastest, samples_run=_shape(run), samples_base=_shape(base),
                  normalized=normalized)
    _verdict(check, thr, alpha, significant=p < alpha, improved_sure=(
        ci[0] > 1.0 if thr.worse_when_below else ci[1] < 1.0))
    sr, sb = _rel_iqr(pooled_r), _rel_iqr(pooled_b)
    if sr > NOISY_SPREAD_MIN and sr > NOISY_SPREAD_FACTOR * sb:
        check.detail = _join(check.detail, f"the run's steps vary far more than the baseline's (IQR "
                                           f"{sr:.0%} vs {sb:.0%} of the median): was the machine busy?")
    return check


def check_per_repeat(cell_id: str, label: str, metric: str, thr: Threshold, run: list[float],
                     base: list[float], alpha: float, normalized: bool = False) -> Check:
    """Decide a metric with one value per repetition (peak memory, validation loss, or any
    metric of records without per-step samples)."""
    spec = METRICS[metric]
    now = float(np.median(run))
    was = float(np.median(base))
    ratio = now / was
    alt = "less" if thr.worse_when_below else "greater"
    p = mann_whitney_p(run, base, alt)
    pairs = [r / b for r in run for b in base]
    ci = (min(pairs), max(pairs))
    testable = min_attainable_p(len(run), len(base)) < alpha
    separated = all(x < 1.0 for x in pairs) if thr.worse_when_below else all(x > 1.0 for x in pairs)
    better_separated = all(x > 1.0 for x in pairs) if thr.worse_when_below else all(x < 1.0 for x in pairs)
    check = Check(cell_id=cell_id, label=label, metric=metric, threshold=thr.text, baseline=was, now=now,
                  ratio=ratio, ci=ci, ci_label="range", p_value=p, p_parts={"mann-whitney (repeats)": p},
                  samples_run=f"{len(run)} rep", samples_base=f"{len(base)} rep", normalized=normalized)
    if testable:
        _verdict(check, thr, alpha, significant=p < alpha, improved_sure=better_separated)
    else:
        check.p_parts = {}  # no p-value is shown: the test cannot reach alpha with so few values
        _verdict(check, thr, alpha, significant=separated, improved_sure=better_separated)
        how = ("every run repetition is worse than every baseline repetition" if separated
               else "the repetitions overlap")
        check.detail = _join(check.detail, f"{len(run)} vs {len(base)} repetitions are too few for a test at "
                                           f"alpha={alpha:g} (best possible p = "
                                           f"{min_attainable_p(len(run), len(base)):.2g}); decided on "
                                           f"separation: {how}")
    if spec.per_step:
        check.detail = _join(check.detail, "no per-step samples: decided on per-repetition values")
    return check


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _verdict(check: Check, thr: Threshold, alpha: float, significant: bool, improved_sure: bool) -> None:
    ratio = check.ratio
    change = _fmt_change(ratio)
    if thr.beyond(ratio):
        if not significant:
            check.verdict = "ok: not significant"
            if check.p_parts:
                check.detail = (f"{change} is beyond {thr.text} but not significant (p = {check.p_value:.2g}, "
                                f"alpha = {alpha:g})")
            else:
                check.detail = f"{change} is beyond {thr.text} but not consistent across repetitions"
        elif check.fastest_ratio is not None and not thr.beyond(check.fastest_ratio):
            check.verdict = "ok: fastest steps unchanged"
            check.detail = (f"the median moved {change} but the fastest 10% of steps only "
                            f"{_fmt_change(check.fastest_ratio)}: other load slowed some steps; the "
                            f"code did not slow every step")
        else:
            check.regressed = True
            check.verdict = "REGRESSION"
            check.detail = (f"{change}, beyond {thr.text} and significant" if check.p_parts
                            else f"{change}, beyond {thr.text}, and every repetition worse")
    elif thr.improved(ratio) and improved_sure:
        check.verdict = "improved"
        check.detail = f"{change}: consider refreshing the baseline"
    else:
        check.verdict = "ok"


# ------------------------------------------------------------------ compare -----------------

def resolve_guard(run: Side, baseline: Side, guard: dict[str, str] | None) -> tuple[dict[str, Threshold], list[str]]:
    notes = []
    if guard is None:
        if run.guard and baseline.guard and run.guard != baseline.guard:
            notes.append(f"the run's matrix guards {run.guard}, the baseline was made with {baseline.guard}: "
                         f"the run's is used")
        guard = run.guard or baseline.guard
        origin = run.describe() if run.guard else baseline.describe()
    else:
        origin = "the thresholds given"
    if not guard:
        raise GuardInputError(
            f"nothing to guard: neither {run.describe()} nor {baseline.describe()} has a `guard:` block "
            f"(add e.g. `guard: {{tokens_per_s: -5%}}` to the matrix) and no thresholds were given.")
    out = {}
    for metric, text in guard.items():
        if metric not in GUARD_METRICS:
            raise GuardInputError(f"{origin}: cannot guard '{metric}'. Allowed: {', '.join(GUARD_METRICS)}.")
        try:
            thr = parse_threshold(text)
        except ValueError as exc:
            raise GuardInputError(f"{origin}: guard '{metric}': {exc}.") from None
        spec = METRICS[metric]
        if thr.sign != spec.natural_sign:
            better = "higher" if spec.natural_sign < 0 else "lower"
            notes.append(f"guard {metric}: {thr.text} flags a {'fall' if thr.sign < 0 else 'rise'}, but "
                         f"{metric} is better when {better}: is the sign intended?")
        out[metric] = thr
    return out, notes


def _needs_peak(thresholds: dict[str, Threshold]) -> bool:
    return any(METRICS[m].scales_with_peak for m in thresholds)


def compare(run: Side, baseline: Side, guard: dict[str, str] | None = None, normalize: str = "none",
            alpha: float = 0.01, seed: int = 0, n_boot: int = N_BOOT, run_noise: float = RUN_NOISE) -> GuardResult:
    """Compare every cell of `run` with the same cell of `baseline` on the guarded metrics.

    guard: metric -> signed percentage ("-5%"); None: the run's matrix guard block (else the
    baseline's). normalize: "none" (raw values), "peak" (throughput / the host's measured matmul
    peak at the cell's precision: MFU-like, for two machines of different speed) or "auto"
    (peak when the hardware or the measured peaks differ, none otherwise). alpha: the false-alarm
    level of each check. run_noise: the smallest run-to-run noise assumed (sd of a repetition's
    log median; the measured one is used when larger)."""
    if normalize not in NORMALIZATIONS:
        raise GuardInputError(f"--normalize {normalize!r} is not one of {', '.join(NORMALIZATIONS)}.")
    if not 0.0 < alpha < 0.5:
        raise GuardInputError(f"alpha must be between 0 and 0.5, got {alpha}.")
    if not 0.0 <= run_noise < 1.0:
        raise GuardInputError(f"run noise must be a fraction between 0 and 1 (e.g. 0.03 for 3%), got {run_noise}.")
    thresholds, notes = resolve_guard(run, baseline, guard)
    notes = list(baseline.notes) + list(run.notes) + notes
    common = [cid for cid in run.cells if cid in baseline.cells]
    if not common:
        raise GuardInputError(_no_common_cells(run, baseline))
    _note_unmatched(run, baseline, notes)
    env_diffs, env_notes, hardware = compare_env(run, baseline)
    notes.extend(env_notes)
    mode = normalize
    if normalize == "auto":
        mode = "peak" if hardware and _needs_peak(thresholds) and _has_peaks(run, baseline, common) else "none"
    if mode == "peak" and _needs_peak(thresholds):
        _require_peaks(run, baseline, common, thresholds)
    description = _describe_normalization(mode, normalize, hardware, thresholds)
    if mode == "none" and hardware and _needs_peak(thresholds):
        notes.append("the two sides ran on different hardware and throughput was compared raw: "
                     "`--normalize peak` compares it relative to each machine's measured matmul peak")
    noise = {m: _run_noise(run, baseline, common, METRICS[m], mode, run_noise)
             for m in thresholds if METRICS[m].per_step}
    described = {}
    for m, nz in noise.items():
        described.setdefault(nz.describe(), []).append(m)
    for text, ms in described.items():
        notes.append(f"run-to-run noise of {', '.join(ms)}: {text}")
    rows: list[Check] = []
    measured: dict[str, dict[str, bool]] = {m: {"run": False, "baseline": False} for m in thresholds}
    for cid in common:
        for metric, thr in thresholds.items():
            row = _decide_metric(run.cells[cid], baseline.cells[cid], metric, thr, mode, alpha, seed, n_boot,
                              measured, noise.get(metric))
            rows.append(row)
    for metric, seen in measured.items():
        for side_name, side in (("run", run), ("baseline", baseline)):
            if not seen[side_name]:
                raise GuardInputError(
                    f"{side.describe()}: metric '{metric}' is not measured in any of the compared cells "
                    f"({', '.join(run.cells[c].label for c in common[:5])}), so it cannot be guarded. "
                    f"Remove it from the guard or re-measure with this txsuite.")
    return GuardResult(run=run.path, baseline=baseline.path, rows=rows, env_differences=env_diffs,
                       normalization=description, normalize_mode=mode, notes=notes, alpha=alpha,
                       guard={m: t.text for m, t in thresholds.items()}, seed=seed, noise=noise,
                       run_side=run, baseline_side=baseline)


def _run_noise(run: Side, baseline: Side, common: list[str], spec: MetricSpec, mode: str,
               floor: float) -> RunNoise:
    """Pooled over every compared cell and both sides: each (cell, side) is a group of
    per-repetition statistics."""
    groups = []
    for cid in common:
        for side in (run, baseline):
            g = _per_step_groups(side.cells[cid], spec, mode)
            if g is not None:
                groups.append([float(spec.stat(x[None, :])[0]) for x in g])
    return RunNoise.from_groups(groups, floor)


def _decide_metric(rc: CellSamples, bc: CellSamples, metric: str, thr: Threshold, mode: str, alpha: float,
                seed: int, n_boot: int, measured: dict[str, dict[str, bool]],
                noise: RunNoise | None = None) -> Check:
    spec = METRICS[metric]
    normalized = mode == "peak" and bool(spec.scales_with_peak)
    cell_seed = (zlib.crc32(f"{rc.cell_id}/{metric}".encode()) + seed) % 2**32
    if spec.per_step:
        gr, gb = _per_step_groups(rc, spec, mode), _per_step_groups(bc, spec, mode)
        measured[metric]["run"] |= gr is not None
        measured[metric]["baseline"] |= gb is not None
        if gr is not None and gb is not None:
            return check_per_step(rc.cell_id, rc.label, metric, thr, gr, gb, alpha, cell_seed, n_boot, normalized,
                                  noise)
    vr, vb = _per_repeat_values(rc, spec, mode), _per_repeat_values(bc, spec, mode)
    measured[metric]["run"] |= vr is not None
    measured[metric]["baseline"] |= vb is not None
    if vr is not None and vb is not None:
        return check_per_repeat(rc.cell_id, rc.label, metric, thr, vr, vb, alpha, normalized)
    run_has = vr is not None or (spec.per_step and _per_step_groups(rc, spec, mode) is not None)
    missing = "the baseline" if run_has else "the run"
    return Check(cell_id=rc.cell_id, label=rc.label, metric=metric, threshold=thr.text, verdict="no data",
                 detail=f"{metric} is not measured in {missing} for this cell", normalized=normalized)


def _has_peaks(run: Side, baseline: Side, common: list[str]) -> bool:
    return all(rep.peak_flops for side in (run, baseline) for cid in common for rep in side.cells[cid].repeats)


def _require_peaks(run: Side, baseline: Side, common: list[str], thresholds: dict[str, Threshold]) -> None:
    for side in (run, baseline):
        for cid in common:
            for rep in side.cells[cid].repeats:
                if not rep.peak_flops:
                    metrics = ", ".join(m for m in thresholds if METRICS[m].scales_with_peak)
                    raise GuardInputError(
                        f"{side.describe()}: cell {side.cells[cid].label} repeat {rep.repeat} has no measured "
                        f"peak_flops, so {metrics} cannot be normalised by the host's peak; use "
                        f"--normalize none.")


def _describe_normalization(mode: str, asked: str, hardware: bool, thresholds: dict[str, Threshold]) -> str:
    why = ""
    if asked == "auto":
        why = " (auto: the hardware differs)" if mode == "peak" else " (auto: same hardware)"
    if mode == "peak":
        affected = [m for m in thresholds if METRICS[m].scales_with_peak]
        raw = [m for m in thresholds if not METRICS[m].scales_with_peak]
        text = (f"peak{why}: {', '.join(affected) or 'no guarded metric'} compared relative to each "
                f"repetition's measured matmul peak at the cell's precision (tokens/s / peak FLOP/s: MFU-like)")
        if raw:
            text += f"; {', '.join(raw)} compared raw"
        return text
    return f"none{why}: raw values compared"


def _no_common_cells(run: Side, baseline: Side) -> str:
    def few(side: Side) -> str:
        labels = [c.label for c in side.cells.values()][:4]
        return ", ".join(labels) + (" ..." if len(side.cells) > 4 else "") if labels else "none measured"
    if not run.cells:
        failed = "; ".join(f"{run.labels.get(k, k)}: {', '.join(v)}" for k, v in list(run.not_ok.items())[:4])
        return (f"{run.describe()} has no successfully measured cell to compare"
                f"{' (' + failed + ')' if failed else ''}.")
    return (f"{run.describe()} and {baseline.describe()} have no cell in common (cells are matched by "
            f"their id, a hash of the resolved configuration). Run: {few(run)}. Baseline: {few(baseline)}. "
            f"Was the baseline made from another matrix, or did the matrix change? Re-create it with "
            f"`txsuite baseline`.")


def _note_unmatched(run: Side, baseline: Side, notes: list[str]) -> None:
    if run.matrix and baseline.matrix and run.matrix != baseline.matrix:
        notes.append(f"matrix names differ: run {run.matrix!r}, baseline {baseline.matrix!r} "
                     f"(cells are matched by id)")
    new = [run.cells[c].label for c in run.cells if c not in baseline.cells]
    if new:
        notes.append(f"not in the baseline, not guarded: {', '.join(new[:6])}{' ...' if len(new) > 6 else ''}")
    for cid, cell in baseline.cells.items():
        if cid in run.cells:
            continue
        if cid in run.not_ok:
            notes.append(f"{cell.label}: no ok repetition in the run ({', '.join(run.not_ok[cid])}); not compared")
        else:
            notes.append(f"{cell.label}: in the baseline but not in the run; not compared")
    for cid, problems in run.not_ok.items():
        if cid in run.cells:
            notes.append(f"{run.cells[cid].label}: some repetitions did not finish ({', '.join(problems)}); "
                         f"compared on the others")


# ------------------------------------------------------------------ --confirm -----------------

def cells_to_confirm(result: GuardResult) -> list[tuple[str, str]]:
    """(cell id, label) of each cell with a regression, in table order, once each."""
    out: list[tuple[str, str]] = []
    for row in result.regressions:
        if (row.cell_id, row.label) not in out:
            out.append((row.cell_id, row.label))
    return out


def merge_confirmation(result_before: GuardResult, rerun_side: Side) -> GuardResult:
    """Re-decide each flagged (cell, metric) on a fresh measurement of the cell (`rerun_side`,
    e.g. a run of the matrix restricted to those cells). A cell still fails only if the fresh
    measurement regresses too; every other row is kept as it was."""
    before = result_before
    if before.baseline_side is None:
        raise ValueError("merge_confirmation needs the GuardResult returned by compare()")
    baseline = before.baseline_side
    thresholds = {m: parse_threshold(t) for m, t in before.guard.items()}
    rows: list[Check] = []
    lines: list[str] = []
    confirmed = cleared = 0
    for row in before.rows:
        if not row.regressed:
            rows.append(row)
            continue
        rc = rerun_side.cells.get(row.cell_id)
        if rc is None:
            problems = ", ".join(rerun_side.not_ok.get(row.cell_id, [])) or "not in the re-run"
            kept = replace(row, verdict="REGRESSION (not re-measured)", first=row,
                           detail=_join(row.detail, f"the re-measurement produced no result ({problems})"))
            rows.append(kept)
            confirmed += 1
            continue
        measured: dict[str, dict[str, bool]] = {row.metric: {"run": False, "baseline": False}}
        try:
            again = _decide_metric(rc, baseline.cells[row.cell_id], row.metric, thresholds[row.metric],
                                before.normalize_mode, before.alpha, before.seed + 1, N_BOOT, measured,
                                before.noise.get(row.metric))
        except KeyError:  # the re-measurement lacks the measured peak that normalisation needs
            again = replace(row, verdict="no data", regressed=False)
        if again.verdict == "no data":
            rows.append(replace(row, verdict="REGRESSION (not re-measured)", first=row, detail=_join(
                row.detail, f"the re-measurement of {row.label} lacks {row.metric} (or its peak)")))
            confirmed += 1
            continue
        again.first = row
        first = f"first measurement {_fmt_change(row.ratio)} (p = {row.p_value:.2g})" if row.ratio else ""
        if again.regressed:
            again.verdict = "REGRESSION (confirmed)"
            again.detail = _join(again.detail, f"confirmed by a re-measurement; {first}")
            confirmed += 1
        else:
            again.verdict = f"{again.verdict} (not confirmed)" if again.verdict != "ok" else "ok (not confirmed)"
            again.detail = _join(again.detail, f"the re-measurement did not regress; {first}")
            cleared += 1
        rows.append(again)
    flagged = confirmed + cleared
    if flagged:
        lines.append(f"re-measured {flagged} flagged check(s) once: {confirmed} regressed again, "
                     f"{cleared} did not (a cell fails only if the re-measurement regresses too)")
    env_diffs, _, _ = compare_env(rerun_side, before.run_side) if before.run_side else ([], [], False)
    notes = list(before.notes) + [f"re-measurement vs first run: {d}" for d in env_diffs]
    return replace(before, rows=rows, confirmation=before.confirmation + lines, notes=notes)
