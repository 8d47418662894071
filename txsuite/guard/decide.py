"""The guard's decision: every cell x guarded metric of a run against the same cell of a
baseline, each ending in one of three verdicts (docs/guard.md):

    PASS          the evidence says the change is within the threshold: the confidence
                  interval of the ratio now/baseline lies entirely on the good side of it
    FAIL          the evidence says the change is beyond the threshold: the interval lies
                  entirely on the bad side (so the change is also significant against 1)
    INCONCLUSIVE  anything else, with the reason and what would resolve it

The interval is at level 1 - 2 alpha (each side one-sided at alpha). For the per-step metrics
(tokens/s, samples/s, MFU, step times) it is the wider of two: a hierarchical bootstrap of the
ratio (repetitions, then steps inside them) and a t interval of the repetition statistics
against two noises (txsuite.verdict.runs): the repetitions' own, pooled over the compared cells,
and the level of a whole run, which every repetition of a run shares and none averages out
(`--run-noise`, measured when the baseline holds several runs). For the per-repetition
metrics (memory, validation loss) it is the t interval alone, on their measured noise. The
step counters (FLOPs, operators, bytes per step) are deterministic: compared exactly, PASS or
FAIL. `--normalize state` first brings both sides' time metrics to the machine's best state
(txsuite.guard.state).

Before deciding on time, repetitions measured while the machine was in a slow state (its
probe, txsuite.guard.state) are left out, and a baseline recorded in a slow state, without a
probe, or with one repetition per cell (its noise unknown) gives no time verdict: INCONCLUSIVE,
with the reason. Memory is judged on the part the cell controls (`train_mem_bytes`: peak minus
the memory before training, or the allocator's peak of live tensors on a GPU).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from txsuite.config.metrics import BY_NAME, GUARDABLE
from txsuite.guard.environment import compare_env
from txsuite.config.numbers import CHANGE_ALLOWED, INT64_MAX, change_problem
from txsuite.guard.metrics import METRICS, MetricSpec, Threshold, parse_threshold, per_step_values
from txsuite.verdict.runs import RunNoise
from txsuite.guard.side import CellSamples, GuardInputError, RepeatSamples, Side, group_by_run
from txsuite.guard.state import SLOW_STATE, best_probe, correction_between, correction_noise, split_by_state, state_adjusted
from txsuite.verdict.stats import hierarchical_bootstrap, mean_log_difference_p, percentile_interval
from txsuite.verdict.distributions import t_isf
from txsuite.measure.counters import describe_difference
from txsuite.verdict.run_noise import RUN_NOISE, RUN_NOISE_STATE

NORMALIZATIONS = ("none", "peak", "auto", "state")
N_BOOT = 2000
PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
EXIT_CODES = {PASS: 0, FAIL: 1, INCONCLUSIVE: 3}


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
    p_value: float | None = None  # one-sided p of "worse than the baseline", for reference
    samples_run: str = ""
    samples_base: str = ""
    verdict: str = INCONCLUSIVE
    detail: str = ""
    resolve: str = ""  # what would turn an INCONCLUSIVE into a verdict
    judged_on: str | None = None  # the metric actually compared, when not `metric` itself
    normalized: bool = False
    first: "Check | None" = None  # the first measurement, when this row is a re-measurement

    @property
    def failed(self) -> bool:
        return self.verdict.startswith(FAIL)

    @property
    def passed(self) -> bool:
        return self.verdict.startswith(PASS)

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
    noise: dict[str, RunNoise] = field(default_factory=dict)  # metric -> run-to-run noise used
    counters: list[str] = field(default_factory=list)  # what one step does differently, exactly
    machine: list[str] = field(default_factory=list)  # repetitions left out for the machine's state
    confirmation: list[str] = field(default_factory=list)
    slow_state: float = SLOW_STATE
    run_noise: float = RUN_NOISE
    run_side: Side | None = field(default=None, repr=False)
    baseline_side: Side | None = field(default=None, repr=False)

    @property
    def failures(self) -> list[Check]:
        return [r for r in self.rows if r.failed]

    @property
    def verdict(self) -> str:
        if self.failures:
            return FAIL
        return PASS if self.rows and all(r.passed for r in self.rows) else INCONCLUSIVE

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def ok(self) -> bool:
        return self.verdict == PASS

    def to_text(self, all_rows: bool = True, width: int = 200) -> str:
        from txsuite.guard.render import to_text
        return to_text(self, all_rows=all_rows, width=width)

    def to_markdown(self) -> str:
        from txsuite.guard.render import to_markdown
        return to_markdown(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "exit_code": self.exit_code, "run": self.run, "baseline": self.baseline,
            "alpha": self.alpha, "guard": self.guard, "normalization": self.normalization,
            "env_differences": self.env_differences, "notes": self.notes, "counters": self.counters,
            "machine_state": self.machine, "confirmation": self.confirmation,
            "failures": [r.to_dict() for r in self.failures],
            "rows": [r.to_dict() for r in self.rows],
        }


# ------------------------------------------------------------------ the verdict of one check -----

def judge(check: Check, thr: Threshold, confidence: float) -> Check:
    """PASS / FAIL / INCONCLUSIVE from the check's ratio and interval (set on `check`)."""
    lo, hi = check.ci
    limit = 1.0 - thr.fraction if thr.worse_when_below else 1.0 + thr.fraction
    good_bound, bad_bound = (lo, hi) if thr.worse_when_below else (hi, lo)
    interval = f"{confidence:.0%} CI [{lo:.3f}, {hi:.3f}]"
    change = f"{check.ratio - 1.0:+.1%}"
    if thr.beyond(bad_bound):
        check.verdict = FAIL
        check.detail = _join(check.detail, f"{change}: the {interval} lies beyond the limit {limit:.3f} ({thr.text})")
    elif not thr.beyond(good_bound) and _on_good_side(good_bound, limit, thr):
        check.verdict = PASS
        better = thr.improved(check.ratio) and (lo > 1.0 if thr.worse_when_below else hi < 1.0)
        check.detail = _join(check.detail, f"{change}: the {interval} lies within the limit {limit:.3f}"
                             + ("; improved beyond the threshold: consider refreshing the baseline" if better else ""))
    else:
        check.verdict = INCONCLUSIVE
        check.detail = _join(check.detail, f"{change}: the {interval} contains the limit {limit:.3f}")
        check.resolve = check.resolve or ("more repetitions (`repeats:` in the matrix), or `txsuite ab`, which "
                                          "pairs the two versions in one job")
    return check


def _on_good_side(bound: float, limit: float, thr: Threshold) -> bool:
    return bound >= limit if thr.worse_when_below else bound <= limit


def inconclusive(check: Check, reason: str, resolve: str) -> Check:
    check.verdict = INCONCLUSIVE
    check.detail = _join(check.detail, reason)
    check.resolve = resolve
    return check


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


# ------------------------------------------------------------------ samples -----------------

def _rep_scale(rep: RepeatSamples, spec: MetricSpec, normalize: str) -> float:
    if normalize != "peak" or not spec.scales_with_peak:
        return 1.0
    if not rep.peak_flops:
        raise KeyError("peak_flops")
    return rep.peak_flops ** spec.scales_with_peak


def _per_step_groups(repeats: list[RepeatSamples], spec: MetricSpec, normalize: str) -> list[np.ndarray] | None:
    groups = []
    for rep in repeats:
        if not rep.step_times_s:
            return None
        values = per_step_values(spec.name, np.asarray(rep.step_times_s, dtype=float), rep)
        if values is None:
            return None
        groups.append(values * _rep_scale(rep, spec, normalize))
    return groups or None


def _per_repeat_values(repeats: list[RepeatSamples], spec: MetricSpec, normalize: str) -> list[float] | None:
    out = []
    for rep in repeats:
        value = rep.summary.get(spec.name) if spec.per_step else getattr(rep, spec.name, None)
        if value is None or not math.isfinite(value) or value <= 0:
            return None
        out.append(float(value) * _rep_scale(rep, spec, normalize))
    return out or None


def _shape(groups: list[np.ndarray]) -> str:
    lengths = sorted({len(g) for g in groups})
    steps = str(lengths[0]) if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}"
    return f"{len(groups)}x{steps}"


# ------------------------------------------------------------------ the three kinds of check ----

def check_per_step(cell_id: str, label: str, metric: str, thr: Threshold, run: list[np.ndarray],
                   base: list[np.ndarray], alpha: float, seed: int = 0, n_boot: int = N_BOOT,
                   normalized: bool = False, noise: RunNoise | None = None) -> Check:
    """A per-step metric from per-repetition arrays of per-step samples. `noise`: the noise
    model pooled over the matrix (default: from this cell alone, with the default run noise)."""
    spec = METRICS[metric]
    run = [np.asarray(g, dtype=float) for g in run]
    base = [np.asarray(g, dtype=float) for g in base]
    now = float(spec.stat(np.concatenate(run)[None, :])[0])
    was = float(spec.stat(np.concatenate(base)[None, :])[0])
    ratio = now / was
    confidence = 1.0 - 2.0 * alpha
    boot_lo, boot_hi = percentile_interval(hierarchical_bootstrap(run, base, spec.stat, n_boot=n_boot, seed=seed),
                                           confidence)
    stats_r = [float(spec.stat(g[None, :])[0]) for g in run]
    stats_b = [float(spec.stat(g[None, :])[0]) for g in base]
    if noise is None:
        noise = RunNoise.two_level([stats_r, stats_b], RUN_NOISE)
    se, df = noise.se(len(stats_r), len(stats_b)), noise.test_df(len(stats_r), len(stats_b))
    p = mean_log_difference_p(stats_r, stats_b, se, df, "less" if thr.worse_when_below else "greater")
    half = t_isf(alpha, df) * se
    ci = (min(boot_lo, ratio * math.exp(-half)), max(boot_hi, ratio * math.exp(half)))
    check = Check(cell_id=cell_id, label=label, metric=metric, threshold=thr.text, baseline=was, now=now,
                  ratio=ratio, ci=ci, ci_label=f"{confidence:.0%} CI", p_value=p, samples_run=_shape(run),
                  samples_base=_shape(base), normalized=normalized)
    return _advise_on_run_level(judge(check, thr, confidence), noise, len(stats_r), len(stats_b))


def check_per_repeat(cell_id: str, label: str, metric: str, thr: Threshold, run: list[float],
                     base: list[float], alpha: float, noise: RunNoise, normalized: bool = False,
                     judged_on: str | None = None) -> Check:
    """A metric with one value per repetition (memory, validation loss, or any metric of
    records without per-step samples): the ratio of medians, a t interval on the measured noise."""
    now, was = float(np.median(run)), float(np.median(base))
    ratio = now / was
    confidence = 1.0 - 2.0 * alpha
    check = Check(cell_id=cell_id, label=label, metric=metric, threshold=thr.text, baseline=was, now=now,
                  ratio=ratio, ci_label=f"{confidence:.0%} CI", samples_run=f"{len(run)} rep",
                  samples_base=f"{len(base)} rep", normalized=normalized, judged_on=judged_on)
    if noise.rep_sigma is None:
        check.ci = (ratio, ratio)
        return inconclusive(check, f"{ratio - 1:+.1%}, but one repetition per cell: the noise of "
                                   f"{judged_on or metric} is unknown",
                            "`repeats: 2` or more in the matrix, or `txsuite ab`")
    se, df = noise.se(len(run), len(base)), noise.test_df(len(run), len(base))
    p = mean_log_difference_p(run, base, se, df, "less" if thr.worse_when_below else "greater")
    half = t_isf(alpha, df) * se
    check.ci, check.p_value = (ratio * math.exp(-half), ratio * math.exp(half)), p
    return _advise_on_run_level(judge(check, thr, confidence), noise, len(run), len(base))


def _advise_on_run_level(check: Check, noise: RunNoise, n_run: int, n_base: int) -> Check:
    """An undecided check whose interval is mostly a whole run's level: more repetitions would
    not narrow it, so say what would."""
    if check.verdict == INCONCLUSIVE and noise.run_share(n_run, n_base) > 0.5:
        check.resolve = ("`txsuite ab`, which measures the two versions seconds apart: most of this interval is "
                         "how much a whole run moves on this machine, which more repetitions do not average out "
                         "(`--run-noise`; a baseline of several runs measures it)")
    return check


def check_exact(cell_id: str, label: str, metric: str, thr: Threshold, run: list[float], base: list[float]) -> Check:
    """A deterministic counter: the same in every repetition of a side, compared exactly."""
    check = Check(cell_id=cell_id, label=label, metric=metric, threshold=thr.text, ci_label="exact",
                  samples_run=f"{len(run)} rep", samples_base=f"{len(base)} rep")
    if len(set(run)) > 1 or len(set(base)) > 1:
        check.ratio = float(np.median(run)) / float(np.median(base))
        check.ci = (min(run) / max(base), max(run) / min(base))
        return inconclusive(check, f"{metric} differs between repetitions of one side (the step is not "
                                   f"deterministic)", "remove what varies between runs of the same code")
    check.now, check.baseline = run[0], base[0]
    check.ratio = run[0] / base[0]
    check.ci = (check.ratio, check.ratio)
    change = f"{check.ratio - 1:+.2%}"
    if thr.beyond(check.ratio):
        check.verdict, check.detail = FAIL, f"{change} exactly, beyond {thr.text}"
    else:
        check.verdict, check.detail = PASS, f"{change} exactly, within {thr.text}"
    return check


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
        if metric not in GUARDABLE:
            raise GuardInputError(f"{origin}: cannot guard '{metric}'. Allowed: {', '.join(GUARDABLE)}.")
        try:
            thr = parse_threshold(text)
        except ValueError as exc:
            raise GuardInputError(f"{origin}: guard '{metric}': {exc}.") from None
        impossible = change_problem(thr.sign, thr.fraction)  # -150%: never crossed, so never a FAIL
        if impossible:
            raise GuardInputError(f"{origin}: guard '{metric}': {thr.text[:12]}{'...' if len(thr.text) > 12 else ''}: "
                                  f"{impossible}. Allowed: {CHANGE_ALLOWED}.")
        spec = METRICS[metric]
        if thr.sign != spec.natural_sign:
            better = "higher" if spec.natural_sign < 0 else "lower"
            notes.append(f"guard {metric}: {thr.text} flags a {'fall' if thr.sign < 0 else 'rise'}, but "
                         f"{metric} is better when {better}: is the sign intended?")
        out[metric] = thr
    return out, notes


def _needs_peak(thresholds: dict[str, Threshold]) -> bool:
    return any(METRICS[m].scales_with_peak for m in thresholds)


@dataclass
class _Prepared:
    """Per cell, the repetitions each side keeps for time metrics, and what was left out."""
    run: dict[str, list[RepeatSamples]]
    base: dict[str, list[RepeatSamples]]
    baseline_unusable: str | None  # why the baseline gives no time verdict, or None


def compare(run: Side, baseline: Side, guard: dict[str, str] | None = None, normalize: str = "none",
            alpha: float = 0.01, seed: int = 0, n_boot: int = N_BOOT, run_noise: float | None = None,
            slow_state: float = SLOW_STATE) -> GuardResult:
    """Compare every cell of `run` with the same cell of `baseline` on the guarded metrics.

    guard: metric -> signed percentage ("-5%"); None: the run's matrix guard block (else the
    baseline's). normalize: "none" (raw values), "peak" (throughput / the host's measured matmul
    peak at the cell's precision: MFU-like, for two machines of different speed), "auto" (peak
    when the hardware or the measured peaks differ, none otherwise) or "state" (one machine:
    time metrics brought to its best state by each repetition's probe). alpha: each side of
    the interval. run_noise: how much a whole run's level of time moves from run to run (sd of
    its log; txsuite.verdict.runs), before what a baseline of several runs measures; None: the
    default for the normalisation (RUN_NOISE, or RUN_NOISE_STATE for "state"). slow_state: the
    machine-state line above which a repetition is left out."""
    if normalize not in NORMALIZATIONS:
        raise GuardInputError(f"--normalize {normalize!r} is not one of {', '.join(NORMALIZATIONS)}.")
    if not 0.0 < alpha < 0.5:
        raise GuardInputError(f"alpha must be between 0 and 0.5, got {alpha}.")
    prior_given = run_noise is not None
    if run_noise is None:
        run_noise = RUN_NOISE_STATE if normalize == "state" else RUN_NOISE
    if not 0.0 <= run_noise < 1.0:
        raise GuardInputError(f"run noise must be a fraction between 0 and 1 (e.g. 0.16 for 16%), got {run_noise}.")
    if not slow_state > 1.0:
        raise GuardInputError(f"the slow-state line must be above 1 (e.g. 2 for twice slower), got {slow_state}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= INT64_MAX:
        raise GuardInputError(f"the bootstrap seed must be an integer from 0 to 2^63-1, got {seed!r}.")
    thresholds, notes = resolve_guard(run, baseline, guard)
    notes = list(baseline.notes) + list(run.notes) + notes
    common = [cid for cid in run.cells if cid in baseline.cells]
    if not common:
        raise GuardInputError(_no_common_cells(run, baseline))
    _note_unmatched(run, baseline, notes)
    env_diffs, env_notes, hardware = compare_env(run, baseline)
    notes.extend(env_notes)
    sides = run, baseline  # as given: what a --confirm re-measurement is compared with
    if normalize == "state":
        run, baseline, correction = _state_adjusted(run, baseline, common, hardware)
        widened = math.hypot(run_noise, correction_noise(correction))
        if not prior_given and widened > run_noise + 0.005:
            notes.append(f"the probes put the two sides {math.expm1(correction):.0%} apart in the machine's state; a "
                         f"correction is trusted to within half its size, so the whole-run noise is widened from "
                         f"{run_noise:.1%} to {widened:.1%}")
            run_noise = widened
    mode = normalize
    if normalize == "auto":
        mode = "peak" if hardware and _needs_peak(thresholds) and _has_peaks(run, baseline, common) else "none"
    if mode == "peak" and _needs_peak(thresholds):
        _require_peaks(run, baseline, common, thresholds)
    description = _describe_normalization(mode, normalize, hardware, thresholds)
    if mode == "none" and hardware and _needs_peak(thresholds):
        notes.append("the two sides ran on different hardware and throughput was compared raw: "
                     "`--normalize peak` compares it relative to each machine's measured matmul peak")

    prepared, machine = _prepare(run, baseline, common, hardware, slow_state)
    noise = {m: _noise(run, baseline, common, METRICS[m], mode, run_noise, prepared) for m in thresholds
             if not BY_NAME[m].exact}
    described: dict[str, list[str]] = {}
    for m, nz in noise.items():
        described.setdefault(nz.describe(), []).append(_judged(m))
    for text, ms in described.items():
        notes.append(f"noise of {', '.join(ms)}: {text}")
    rows: list[Check] = []
    measured: dict[str, dict[str, bool]] = {m: {"run": False, "baseline": False} for m in thresholds}
    for cid in common:
        for metric, thr in thresholds.items():
            rows.append(_decide_metric(run.cells[cid], baseline.cells[cid], metric, thr, mode, alpha, seed, n_boot,
                                       measured, noise.get(metric), prepared))
    for metric, seen in measured.items():
        for side_name, side in (("run", run), ("baseline", baseline)):
            if not seen[side_name]:
                raise GuardInputError(
                    f"{side.describe()}: metric '{_judged(metric)}' is not measured in any of the compared cells "
                    f"({', '.join(run.cells[c].label for c in common[:5])}), so it cannot be guarded. "
                    f"Remove it from the guard or re-measure with this txsuite.")
    return GuardResult(run=run.path, baseline=baseline.path, rows=rows, env_differences=env_diffs,
                       normalization=description, normalize_mode=mode, notes=notes, alpha=alpha,
                       guard={m: t.text for m, t in thresholds.items()}, seed=seed, noise=noise,
                       counters=counter_differences(run, baseline, common), machine=machine,
                       slow_state=slow_state, run_noise=run_noise, run_side=sides[0], baseline_side=sides[1])


def _judged(metric: str) -> str:
    """The metric actually compared for a guarded one (peak memory is judged on train memory)."""
    return BY_NAME[metric].judged_on or metric


def _prepare(run: Side, baseline: Side, common: list[str], hardware_differs: bool,
             slow_state: float) -> tuple[_Prepared, list[str]]:
    """Leave out repetitions measured in a slow machine state, and decide whether the baseline
    can give a time verdict at all."""
    run_reps = [r for cid in common for r in run.cells[cid].repeats]
    base_reps = [r for cid in common for r in baseline.cells[cid].repeats]
    if hardware_differs:  # two machines: each is compared with its own best
        best_run, best_base = best_probe(run_reps), best_probe(base_reps)
    else:
        best_run = best_base = best_probe(run_reps + base_reps)
    lines: list[str] = []
    kept_run, kept_base = {}, {}
    slow = {"run": [], "baseline": []}
    totals = {"run": 0, "baseline": 0}
    unknown_base = 0
    for cid in common:
        for name, side, best, kept in (("run", run, best_run, kept_run), ("baseline", baseline, best_base, kept_base)):
            split = split_by_state(side.cells[cid].repeats, best, slow_state)
            kept[cid] = split.kept
            slow[name] += [s for _, s in split.slow]
            totals[name] += split.total
            if name == "baseline":
                unknown_base += split.unknown
    for name in ("run", "baseline"):
        if slow[name]:
            lines.append(f"{len(slow[name])} of {totals[name]} repetitions of the {name} ran while this machine was "
                         f"{max(slow[name]):.1f}x slower than its best (the line is {slow_state:g}x); excluded")
    unusable = None
    if base_reps and unknown_base == len(base_reps):
        unusable = ("the baseline records no machine state (made by a txsuite without the probe), so whether it "
                    "ran in a slow spell is unknown")
    elif base_reps and slow["baseline"] and len(slow["baseline"]) == totals["baseline"]:
        unusable = (f"the baseline was recorded while this machine was {min(slow['baseline']):.1f}x or more "
                    f"slower than its best")
    elif all(len(baseline.cells[cid].repeats) < 2 for cid in common):
        unusable = "the baseline has one repetition per cell, so its noise is unknown"
    return _Prepared(run=kept_run, base=kept_base, baseline_unusable=unusable), lines


def _noise(run: Side, baseline: Side, common: list[str], spec: MetricSpec, mode: str, run_noise: float,
           prepared: _Prepared) -> RunNoise:
    """Pooled over every compared cell and both sides: each (cell, side, run) is a group of
    per-repetition statistics. Time adds the level of a whole run (`run_noise`, moderated by
    what the baseline's runs measure when it holds several); memory and loss have their
    measured noise alone."""
    judged = METRICS[_judged(spec.name)]
    groups: list[list[float]] = []
    base_runs: list[list[list[float]]] = []
    for cid in common:
        run_groups, base_groups = ([v for v in (_statistics(r, judged, mode) for r in group_by_run(reps)) if v]
                                   for reps in (prepared.run[cid], prepared.base[cid]))
        groups += run_groups + base_groups
        base_runs.append(base_groups)
    if judged.per_step:
        return RunNoise.two_level(groups, run_noise, base_runs)
    return RunNoise.measured_only(groups)


def _statistics(reps: list[RepeatSamples], judged: MetricSpec, mode: str) -> list[float] | None:
    """Each repetition's statistic of the metric (its median per-step value, or its recorded value)."""
    values = None
    if judged.per_step:
        g = _per_step_groups(reps, judged, mode)
        values = [float(judged.stat(x[None, :])[0]) for x in g] if g is not None else None
    if values is None:
        values = _per_repeat_values(reps, judged, mode)
    return values


def _decide_metric(rc: CellSamples, bc: CellSamples, metric: str, thr: Threshold, mode: str, alpha: float,
                   seed: int, n_boot: int, measured: dict[str, dict[str, bool]], noise: RunNoise | None,
                   prepared: _Prepared) -> Check:
    judged = _judged(metric)
    spec = METRICS[judged]
    normalized = mode == "peak" and bool(spec.scales_with_peak)
    cell_seed = (zlib.crc32(f"{rc.cell_id}/{metric}".encode()) + seed) % 2**32
    if BY_NAME[judged].exact:
        run = [getattr(r, judged) for r in rc.repeats if getattr(r, judged) is not None]
        base = [getattr(r, judged) for r in bc.repeats if getattr(r, judged) is not None]
        measured[metric]["run"] |= bool(run)
        measured[metric]["baseline"] |= bool(base)
        if run and base:
            return check_exact(rc.cell_id, rc.label, metric, thr, run, base)
        return _no_data(rc, metric, thr, "the run" if base else "the baseline", normalized)
    run_reps, base_reps = prepared.run[rc.cell_id], prepared.base[rc.cell_id]
    if spec.per_step:
        gr, gb = _per_step_groups(rc.repeats, spec, mode), _per_step_groups(bc.repeats, spec, mode)
        measured[metric]["run"] |= gr is not None or _per_repeat_values(rc.repeats, spec, mode) is not None
        measured[metric]["baseline"] |= gb is not None or _per_repeat_values(bc.repeats, spec, mode) is not None
        if prepared.baseline_unusable:
            return _time_unusable(rc, metric, thr, normalized, prepared.baseline_unusable)
        if not run_reps or not base_reps:
            side = "run" if not run_reps else "baseline"
            return inconclusive(Check(cell_id=rc.cell_id, label=rc.label, metric=metric, threshold=thr.text,
                                      normalized=normalized),
                                f"every repetition of the {side} ran while the machine was in a slow state",
                                "run again when the machine is quieter, or use `txsuite ab`, which alternates the "
                                "two versions and keeps the pairs measured in a good state")
        gr, gb = _per_step_groups(run_reps, spec, mode), _per_step_groups(base_reps, spec, mode)
        if gr is not None and gb is not None:
            return check_per_step(rc.cell_id, rc.label, metric, thr, gr, gb, alpha, cell_seed, n_boot, normalized,
                                  noise)
    vr, vb = _per_repeat_values(run_reps, spec, mode), _per_repeat_values(base_reps, spec, mode)
    measured[metric]["run"] |= vr is not None
    measured[metric]["baseline"] |= vb is not None
    if vr is not None and vb is not None:
        check = check_per_repeat(rc.cell_id, rc.label, metric, thr, vr, vb, alpha, noise,
                                 normalized, judged_on=judged if judged != metric else None)
        if judged != metric:
            check.detail = _join(f"judged on {judged}: {BY_NAME[judged].description}", check.detail)
        if spec.per_step:
            check.detail = _join(check.detail, "no per-step samples: decided on per-repetition values")
        return check
    if judged != metric:  # records from before train memory was recorded: the whole peak, said so
        return _decide_metric_on_peak(rc, bc, metric, thr, mode, alpha, measured, prepared, normalized)
    return _no_data(rc, metric, thr, "the baseline" if vr is not None else "the run", normalized)


def _decide_metric_on_peak(rc, bc, metric, thr, mode, alpha, measured, prepared, normalized) -> Check:
    spec = METRICS[metric]
    vr, vb = _per_repeat_values(rc.repeats, spec, mode), _per_repeat_values(bc.repeats, spec, mode)
    measured[metric]["run"] |= vr is not None
    measured[metric]["baseline"] |= vb is not None
    if vr is None or vb is None:
        return _no_data(rc, metric, thr, "the baseline" if vr is not None else "the run", normalized)
    noise = RunNoise.measured_only([vr, vb])
    check = check_per_repeat(rc.cell_id, rc.label, metric, thr, vr, vb, alpha, noise, normalized)
    check.detail = _join(f"a side has no {_judged(metric)} (an older record): judged on the whole peak, which "
                         f"includes the interpreter and libraries", check.detail)
    return check


def _time_unusable(rc: CellSamples, metric: str, thr: Threshold, normalized: bool, reason: str) -> Check:
    return inconclusive(Check(cell_id=rc.cell_id, label=rc.label, metric=metric, threshold=thr.text,
                              normalized=normalized), f"no time verdict from this baseline: {reason}",
                        "re-create the baseline with this txsuite (`txsuite baseline`) from a run with `repeats: 2` "
                        "or more on a quiet machine, or use `txsuite ab`")


def _no_data(rc: CellSamples, metric: str, thr: Threshold, missing: str, normalized: bool) -> Check:
    return Check(cell_id=rc.cell_id, label=rc.label, metric=metric, threshold=thr.text, verdict=INCONCLUSIVE,
                 detail=f"{_judged(metric)} is not measured in {missing} for this cell",
                 resolve="measure both sides with this txsuite", normalized=normalized)


def counter_differences(run: Side, baseline: Side, common: list[str]) -> list[str]:
    """What one training step does differently, cell by cell, exactly (the step counters)."""
    lines = []
    for cid in common:
        now = _op_counts(run.cells[cid])
        was = _op_counts(baseline.cells[cid])
        if now is None or was is None:
            continue
        diff = describe_difference(was, now)
        if diff:
            rn, rb = run.cells[cid].repeats[0], baseline.cells[cid].repeats[0]
            flops = ""
            if rn.step_flops and rb.step_flops:
                flops = f"; FLOPs per step {rn.step_flops / rb.step_flops - 1:+.2%}"
            lines.append(f"{run.cells[cid].label}: per step {'; '.join(diff)}{flops}")
    return lines


def _op_counts(cell: CellSamples) -> dict[str, int] | None:
    counts = [r.step_op_counts for r in cell.repeats if r.step_op_counts is not None]
    return counts[0] if counts else None


# ------------------------------------------------------------------ helpers -----------------

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


def _state_adjusted(run: Side, baseline: Side, common: list[str], hardware_differs: bool) -> tuple[Side, Side, float]:
    """Both sides brought to the machine's best state (txsuite.guard.state.state_adjusted), the
    best being the fastest probe either side saw; and the size of the correction between them
    (txsuite.guard.state.correction_between), which the caller adds to the whole-run noise in
    part (correction_noise): under heavy contention a probe need not carry what the steps met."""
    if hardware_differs:
        raise GuardInputError(
            f"--normalize state compares two runs of one machine (each repetition against that machine's best "
            f"probe), but {run.describe()} and {baseline.describe()} ran on different hardware: use "
            f"--normalize peak.")
    for side in (run, baseline):
        unprobed = [f"{side.cells[cid].label} repeat {r.repeat}" for cid in common for r in side.cells[cid].repeats
                    if r.probe_s is None]
        if unprobed:
            raise GuardInputError(
                f"--normalize state needs the machine-state probe of every repetition, and {side.describe()} has "
                f"none for {', '.join(unprobed[:3])}{' ...' if len(unprobed) > 3 else ''} (recorded by an older "
                f"txsuite): use --normalize none, or re-measure it.")
    best = best_probe([r for side in (run, baseline) for cid in common for r in side.cells[cid].repeats])
    correction = correction_between((run, baseline), common, best)
    return state_adjusted(run, best), state_adjusted(baseline, best), correction


def _describe_normalization(mode: str, asked: str, hardware: bool, thresholds: dict[str, Threshold]) -> str:
    if mode == "state":
        timed = ", ".join(m for m in thresholds if METRICS[m].scales_with_peak) or "no guarded metric"
        return (f"state: {timed} brought to this machine's best state (each repetition's time x its probe's "
                f"best / its probe, the geometric mean of the probes before and after it)")
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
    """(cell id, label) of each cell with a FAIL, in table order, once each."""
    out: list[tuple[str, str]] = []
    for row in result.failures:
        if (row.cell_id, row.label) not in out:
            out.append((row.cell_id, row.label))
    return out


def merge_confirmation(result_before: GuardResult, rerun_side: Side) -> GuardResult:
    """Re-decide each failed (cell, metric) on a fresh measurement of the cell (`rerun_side`,
    e.g. a run of the matrix restricted to those cells). It stays FAIL only if the fresh
    measurement fails too; a re-measurement that disagrees makes it INCONCLUSIVE (two
    measurements, two answers), never PASS."""
    before = result_before
    if before.baseline_side is None:
        raise ValueError("merge_confirmation needs the GuardResult returned by compare()")
    baseline = before.baseline_side
    rows: list[Check] = []
    confirmed = cleared = 0
    for row in before.rows:
        if not row.failed:
            rows.append(row)
            continue
        rc = rerun_side.cells.get(row.cell_id)
        again = None
        if rc is not None:
            sub = Side(path=rerun_side.path, kind=rerun_side.kind, guard=dict(before.guard),
                       env=rerun_side.env, cells={row.cell_id: rc})
            base = Side(path=baseline.path, kind=baseline.kind, guard=dict(before.guard), env=baseline.env,
                        cells={row.cell_id: baseline.cells[row.cell_id]})
            try:
                redo = compare(sub, base, {row.metric: row.threshold}, normalize=before.normalize_mode,
                               alpha=before.alpha, seed=before.seed + 1, slow_state=before.slow_state,
                               run_noise=before.run_noise)
                again = redo.rows[0]
            except GuardInputError:
                again = None
        if again is None:
            problems = ", ".join(rerun_side.not_ok.get(row.cell_id, [])) or "not in the re-run"
            rows.append(replace(row, verdict="FAIL (not re-measured)", first=row,
                                detail=_join(row.detail, f"the re-measurement produced no result ({problems})")))
            confirmed += 1
            continue
        again.first = row
        first = f"first measurement {row.ratio - 1.0:+.1%}" if row.ratio else ""
        if again.failed:
            again.verdict = "FAIL (confirmed)"
            again.detail = _join(again.detail, f"confirmed by a re-measurement; {first}")
            confirmed += 1
        else:
            again.verdict = INCONCLUSIVE
            again.detail = _join(again.detail, f"the re-measurement did not fail; {first}")
            again.resolve = "`txsuite ab`, which pairs the two versions in one job"
            cleared += 1
        rows.append(again)
    lines = []
    if confirmed + cleared:
        lines.append(f"re-measured {confirmed + cleared} failed check(s) once: {confirmed} failed again, "
                     f"{cleared} did not (a check fails only if the re-measurement fails too)")
    env_diffs, _, _ = compare_env(rerun_side, before.run_side) if before.run_side else ([], [], False)
    notes = list(before.notes) + [f"re-measurement vs first run: {d}" for d in env_diffs]
    return replace(before, rows=rows, confirmation=before.confirmation + lines, notes=notes)
