"""The regression guard on synthetic samples: right both ways, evidence in the table, inputs
checked. Fast (no training, no torch): samples are drawn from seeded distributions shaped like
real step times (log-normal step noise, a per-repetition offset, a busy-neighbour tail)."""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import numpy as np
import pytest

from txsuite.config.record import Record
from txsuite.guard import (GuardInputError, cells_to_confirm, compare, load_side, merge_confirmation, parse_threshold,
                         side_from_records, write_baseline)
from txsuite.guard.paired import decide_pairs, look_schedule, paired_cells
from txsuite.guard.side import RepeatSamples
from txsuite.verdict.runs import RunNoise, run_level_sd
from txsuite.guard.state import state_adjusted, state_factor
from txsuite.verdict.stats import mann_whitney_p, mean_log_difference_p, pooled_log_sd
from txsuite.verdict.distributions import t_isf, t_sf
from txsuite.results import RunFolder, write_atomic

ENV = {"host": "ci-1", "cpu": "AMD EPYC", "cpu_flags": ["avx2", "avx512f"], "cpu_count": 2, "gpus": [],
       "packages": {"torch": "2.13.0+cpu", "numpy": "2.4.6"}, "torch": "2.13.0+cpu", "torch_threads": 2,
       "device": "cpu", "device_name": "AMD EPYC", "python": "3.11.7", "txsuite_commit": "abc"}
TOKENS_PER_STEP, SAMPLES_PER_STEP, FLOPS_PER_TOKEN = 256, 4, 1.0e6
CELLS = {"c0fp32": "precision=fp32", "c1bf16": "precision=bf16"}


def step_times(rng, n, center=0.010, noise=0.03, repeat_sd=0.0, busy=0.0):
    """n step times around `center` s: log-normal step noise, one log-normal offset for the whole
    repetition (run-to-run variation), and a share `busy` of steps slowed 30-80 % by load."""
    offset = rng.normal(0.0, repeat_sd) if repeat_sd else 0.0
    t = center * np.exp(offset + rng.normal(0.0, noise, n))
    if busy:
        hit = rng.random(n) < busy
        t[hit] *= 1.3 + 0.5 * rng.random(hit.sum())
    return [float(x) for x in t]


def record(cell_id, repeat, steps, *, peak_mem=4.0e8, train_mem=1.0e8, peak_flops=1.0e12, env=ENV, val_loss=2.0,
           run_id="r1", slowdown=1.1, counts=None, kernels=None):
    """A record as the worker writes it; `slowdown`: the machine state its probe saw (None: no probe)."""
    tps = statistics.median(TOKENS_PER_STEP / t for t in steps)
    metrics = {"step_times_s": steps, "tokens_per_s": tps, "samples_per_s": tps / 64,
               "step_time_p50_s": statistics.median(steps), "step_time_p90_s": max(steps),
               "tokens_per_step": TOKENS_PER_STEP, "samples_per_step": SAMPLES_PER_STEP,
               "flops_per_token": FLOPS_PER_TOKEN, "peak_flops": peak_flops,
               "mfu": tps * FLOPS_PER_TOKEN / peak_flops, "peak_mem_bytes": peak_mem, "train_mem_bytes": train_mem,
               "val_loss": val_loss}
    if slowdown is not None:
        metrics.update({"probe_before_s": 0.020, "probe_after_s": 0.020 * slowdown, "probe_best_s": 0.020})
    counts = counts or {"aten.mm.default(256x128,128x128)": 12, "aten.gelu.default(4x64x512)": 2}
    metrics.update({"step_op_counts": counts, "step_ops": sum(counts.values()),
                    "step_flops": sum(counts.values()) * 1.0e6})
    metrics.update(kernels or {})  # e.g. {"attention": "sdpa", "linear": "torch"}, as build_training states them
    precision = CELLS.get(cell_id, "precision=fp32").split("=")[1]
    return Record(matrix="m", run_id=run_id, cell_id=cell_id, repeat=repeat, config={"precision": precision},
                  status="ok", label=CELLS.get(cell_id, cell_id), env=dict(env), metrics=metrics)


def make_side(rng, *, scale=1.0, repeats=2, steps=30, cells=("c0fp32",), guard=None, path="run", slowdowns=None,
              **kw):
    """A Side of `cells`, each `repeats` x `steps`, step times multiplied by `scale`; `slowdowns`:
    the machine state of each repetition (default: a good state)."""
    extra = {k: kw.pop(k) for k in ("peak_mem", "train_mem", "peak_flops", "env", "val_loss", "counts", "kernels")
             if k in kw}
    states = slowdowns or [1.1] * repeats
    recs = [record(c, r, [t * scale * (states[r] or 1.0) ** 0 for t in step_times(rng, steps, **kw)],
                   slowdown=states[r], **extra)
            for c in cells for r in range(repeats)]
    meta = {"name": "m", "guard": guard if guard is not None else {"tokens_per_s": "-5%"},
            "cells": [{"cell_id": c, "label": CELLS.get(c, c)} for c in cells]}
    return side_from_records(recs, path=path, meta=meta)


def write_run(run_dir, records, guard=None):
    write_atomic(run_dir / "records.jsonl", "".join(r.to_json() + "\n" for r in records))
    cells = sorted({r.cell_id for r in records})
    RunFolder(run_dir).write_json("matrix.json", {
        "name": "m", "source": "matrices/m.yaml", "guard": guard or {"tokens_per_s": "-5%"},
        "cells": [{"cell_id": c, "label": CELLS.get(c, c), "config": {}} for c in cells]})
    return run_dir


# ------------------------------------------------------------------ statistics ---------------

def test_scipy_backed_statistics():
    assert mann_whitney_p([1, 2, 3], [4, 5, 6], "less") == pytest.approx(1 / 20)  # exact: 1 / C(6, 3)
    assert mann_whitney_p([4, 5, 6], [1, 2, 3], "greater") == pytest.approx(1 / 20)
    assert mann_whitney_p([4, 5, 6], [1, 2, 3], "less") == pytest.approx(1.0)
    assert t_sf(2.0, 5) == pytest.approx(0.050970, abs=1e-6)
    assert t_isf(0.01, math.inf) == pytest.approx(2.3263, abs=1e-4)
    assert t_isf(0.01, 4) == pytest.approx(3.7469, abs=1e-4)
    sd, df = pooled_log_sd([[1.0, math.e ** 0.1], [5.0], [2.0, 2.0 * math.e ** 0.1]])
    assert df == 2 and sd == pytest.approx(math.sqrt(0.01 / 2))
    p = mean_log_difference_p([0.9], [1.0], se=0.03 * math.sqrt(2), df=math.inf)
    assert p == pytest.approx(0.0065, abs=5e-4)


def test_a_whole_run_level_is_not_averaged_out_by_repetitions():
    """The two-level noise (txsuite.verdict.runs): the repetition part shrinks with repetitions,
    the run part only with the baseline's runs; degrees of freedom by Welch-Satterthwaite."""
    one_level = RunNoise(rep_sigma=0.03, rep_df=10)
    assert one_level.se(3, 3) == pytest.approx(0.03 * math.sqrt(2 / 3)) and one_level.test_df(3, 3) == 10
    two = RunNoise(rep_sigma=0.03, rep_df=10, run_sigma=0.10, prior_df=4)
    a, b = 0.03 ** 2 * (2 / 3), 0.10 ** 2 * 2
    assert two.se(3, 3) == pytest.approx(math.sqrt(a + b))
    assert two.test_df(3, 3) == pytest.approx((a + b) ** 2 / (a * a / 10 + b * b / 4))
    assert two.se(300, 300) > 0.10 * math.sqrt(2)  # more repetitions: the run part stays
    five_runs = RunNoise(rep_sigma=0.03, rep_df=10, run_sigma=0.10, prior_df=4, base_runs=5)
    assert five_runs.se(3, 15) == pytest.approx(math.sqrt(0.03 ** 2 * (1 / 3 + 1 / 15) + 0.10 ** 2 * 1.2))
    # measured from runs whose means differ by 0.1 in log, repetitions without noise: sd 0.1/sqrt(2)
    e = math.e
    sd, df, most = run_level_sd([[[1.0, 1.0], [e ** 0.1, e ** 0.1]], [[2.0], [2.0]]], rep_sd=0.0)
    assert (df, most) == (2, 2) and sd == pytest.approx(math.sqrt(0.005 / 2))
    # what the repetitions' own noise explains is taken out (never below 0)
    assert run_level_sd([[[1.0, 1.0], [e ** 0.1, e ** 0.1]]], rep_sd=1.0)[0] == 0.0
    moderated = RunNoise.two_level([[1.0, 1.0]], 0.16, [[[1.0, 1.0], [e ** 0.1, e ** 0.1]]])
    assert moderated.run_sigma == pytest.approx(math.sqrt((19 * 0.16 ** 2 + 1 * 0.005) / 20))
    assert moderated.base_runs == 2 and "measured 7.1% over the baseline's 2 runs" in moderated.describe()


def test_same_code_on_a_machine_whose_level_moves_between_runs_does_not_fail():
    """What a shared runner does (txsuite.verdict.runs): every repetition of a run shares the run's
    level, drawn anew for each run (sd 16 %, as measured), on top of the repetitions' own noise.
    With the run part in the model no same-code pair FAILs beyond alpha; left out (run noise 0:
    the repetitions' spread taken for the whole noise), pairs of the same code fail many times
    alpha, as 2 of 19 real pairs did."""
    rng = np.random.default_rng(11)
    fails_model = fails_without = 0
    for seed in range(200):
        levels = np.exp(rng.normal(0.0, 0.16, 2))
        run = make_side(rng, repeats=3, steps=25, noise=0.05, repeat_sd=0.07, scale=levels[0])
        base = make_side(rng, repeats=3, steps=25, noise=0.05, repeat_sd=0.07, scale=levels[1], path="base")
        modelled = compare(run, base, seed=seed, n_boot=200)
        fails_model += modelled.verdict == "FAIL"
        fails_without += compare(run, base, seed=seed, n_boot=200, run_noise=0.0).verdict == "FAIL"
    assert fails_model <= 2, fails_model  # alpha 0.01
    assert fails_without >= 20, fails_without
    # undecided because of the run part: the advice is not "more repetitions"
    (row,) = modelled.rows
    assert row.verdict == "INCONCLUSIVE" and "more repetitions do not average out" in row.resolve


# ------------------------------------------------------------------ three verdicts -----------

def test_same_code_never_fails_and_passes_only_with_evidence():
    """Null hypothesis true (one distribution, run-to-run variation between repetitions). Over
    200 trials no check FAILs beyond alpha; the verdict is PASS only where the interval lies
    within the limit: with 4 tight repetitions a side on a quiet machine (run noise 0.5 %) it
    mostly passes; with the default 16 % run noise, or 2 noisy repetitions, the interval is too wide
    to place within -5 % and the verdict is INCONCLUSIVE, never PASS without evidence."""
    rng = np.random.default_rng(1)
    fails = passes_tight = 0
    for seed in range(200):
        run = make_side(rng, repeats=4, steps=30, noise=0.03, repeat_sd=0.01)
        base = make_side(rng, repeats=4, steps=30, noise=0.03, repeat_sd=0.01, path="base")
        result = compare(run, base, seed=seed, n_boot=300, run_noise=0.005)
        fails += result.verdict == "FAIL"
        passes_tight += result.verdict == "PASS"
        if result.verdict == "PASS":
            assert result.rows[0].ci[0] >= 0.95
    assert fails <= 2, fails  # alpha 0.01 per side
    assert passes_tight >= 150, passes_tight
    floored = compare(make_side(rng, repeats=4, steps=30, noise=0.03, repeat_sd=0.01),
                      make_side(rng, repeats=4, steps=30, noise=0.03, repeat_sd=0.01, path="base"), n_boot=300)
    assert floored.verdict == "INCONCLUSIVE" and floored.rows[0].ci[0] < 0.95 < floored.rows[0].ci[1]
    noisy = [compare(make_side(rng, repeats=2, steps=6, noise=0.25, repeat_sd=0.15),
                     make_side(rng, repeats=2, steps=6, noise=0.25, repeat_sd=0.15, path="base"), seed=s, n_boot=300)
             for s in range(20)]
    assert all(r.verdict != "FAIL" for r in noisy)
    assert all(r.rows[0].ci[0] >= 0.95 for r in noisy if r.verdict == "PASS")
    assert sum(r.verdict == "INCONCLUSIVE" for r in noisy) >= 18
    undecided = next(r for r in noisy if r.verdict == "INCONCLUSIVE")
    assert undecided.exit_code == 3 and "contains the limit" in undecided.rows[0].detail
    assert "INCONCLUSIVE: 1 of 1 checks undecided; to resolve:" in undecided.to_text()


def test_a_baseline_30_percent_faster_fails_with_the_evidence():
    rng = np.random.default_rng(3)
    run = make_side(rng, repeats=2, steps=8, noise=0.05)
    base = make_side(rng, repeats=2, steps=8, noise=0.05, scale=1 / 1.3, path="baselines/smoke.json")
    result = compare(run, base, run_noise=0.02)  # a machine whose runs move by 2 %
    assert result.verdict == "FAIL" and result.exit_code == 1
    (fail,) = result.failures
    assert fail.metric == "tokens_per_s" and fail.verdict == "FAIL"
    assert fail.ratio == pytest.approx(1 / 1.3, rel=0.08) and fail.ci[1] < 0.95
    text = result.to_text()
    for needle in ("FAIL: 1 of 1 checks", "baseline", "now", "ratio", "98% CI", f"{fail.ratio:.3f}",
                   f"[{fail.ci[0]:.3f}, {fail.ci[1]:.3f}]", f"{fail.baseline:,.0f} tok/s", "lies beyond the limit"):
        assert needle in text, needle
    assert "| **FAIL** |" in result.to_markdown()
    assert json.loads(json.dumps(result.to_dict()))["failures"][0]["metric"] == "tokens_per_s"


def test_threshold_decides_a_precisely_measured_small_drop():
    """A 3 % slowdown measured tightly (run noise 0.2 %): within a -5 % limit it PASSes, beyond
    a -1 % limit it FAILs. With the default 16 % run noise the same data cannot
    place it on either side of -1 %: INCONCLUSIVE, not PASS."""
    rng = np.random.default_rng(5)
    base = make_side(rng, repeats=3, steps=60, noise=0.01, path="base")
    run = make_side(rng, repeats=3, steps=60, noise=0.01, scale=1.03)
    five = compare(run, base, {"tokens_per_s": "-5%"}, run_noise=0.002)
    one = compare(run, base, {"tokens_per_s": "-1%"}, run_noise=0.002)
    assert five.verdict == "PASS" and five.rows[0].ratio == pytest.approx(1 / 1.03, rel=0.01)
    assert one.verdict == "FAIL"
    noisy = compare(run, base, {"tokens_per_s": "-1%"})
    assert noisy.verdict == "INCONCLUSIVE"
    assert any("noise of tokens_per_s: repetitions within a run 0.1%" in n and "whole runs 16.0%" in n
               for n in noisy.notes)


# ------------------------------------------------------------------ machine state -----------

def test_repetitions_in_a_slow_machine_state_are_left_out_and_said_so():
    """Two of four repetitions ran while the machine was 9x slower than its best, every step of
    them slow (a neighbour held the cores): they are excluded, the verdict says how many and
    how slow, and the good repetitions decide."""
    rng = np.random.default_rng(7)
    base = make_side(rng, repeats=4, steps=30, noise=0.02, path="base")
    run = make_side(rng, repeats=4, steps=30, noise=0.02, slowdowns=[1.1, 9.0, 1.2, 9.0])
    for rep in run.cells["c0fp32"].repeats:
        if rep.repeat in (1, 3):
            rep.step_times_s = [t * 9.0 for t in rep.step_times_s]
    result = compare(run, base)
    assert result.verdict != "FAIL"
    assert "2 of 4 repetitions of the run ran while this machine was 9.0x slower than its best" in result.to_text()
    assert result.rows[0].samples_run == "2x30"
    every = make_side(rng, repeats=2, steps=30, noise=0.02, slowdowns=[5.0, 6.0])
    stuck = compare(every, base)
    assert stuck.verdict == "INCONCLUSIVE" and "slow state" in stuck.rows[0].detail


def test_a_baseline_that_cannot_support_a_time_verdict_gives_none():
    rng = np.random.default_rng(8)
    run = make_side(rng, repeats=2)
    for name, base, words in (
            ("slow", make_side(rng, repeats=2, slowdowns=[4.0, 5.0], path="base"), "slower than its best"),
            ("no probe", make_side(rng, repeats=2, slowdowns=[None, None], path="base"), "no machine state"),
            ("one repetition", make_side(rng, repeats=1, path="base"), "noise is unknown")):
        result = compare(run, base)
        assert result.verdict == "INCONCLUSIVE", name
        assert words in result.rows[0].detail and "re-create the baseline" in result.rows[0].resolve, name


# ------------------------------------------------------------------ memory, counters ----------

def test_memory_is_judged_on_what_the_cell_controls():
    """Peak RSS 12 % apart because the interpreter started bigger, the part training added the
    same: no FAIL, and the table says which measure decided. A real +20 % of training memory
    fails."""
    rng = np.random.default_rng(4)
    guard = {"peak_mem_bytes": "+10%"}
    base = make_side(rng, repeats=2, peak_mem=5.9e8, train_mem=2.35e8, path="base")
    bigger_start = compare(make_side(rng, repeats=2, peak_mem=6.6e8, train_mem=2.36e8), base, guard)
    assert bigger_start.verdict == "PASS" and bigger_start.rows[0].judged_on == "train_mem_bytes"
    assert "peak_mem_bytes (on train_mem_bytes)" in bigger_start.to_text()
    grown = compare(make_side(rng, repeats=2, peak_mem=6.4e8, train_mem=2.82e8), base, guard)
    assert grown.verdict == "FAIL" and grown.rows[0].ratio == pytest.approx(1.2, rel=0.01)
    assert "MiB" in grown.to_text()


def test_step_counters_report_the_change_exactly_whatever_the_noise():
    """One extra matmul per step: reported by name and shape even when timing is too noisy to
    say anything, and a `step_flops: +0%` guard fails on it exactly."""
    rng = np.random.default_rng(9)
    counts = {"aten.mm.default(256x128,128x128)": 12, "aten.gelu.default(4x64x512)": 2}
    extra = {**counts, "aten.mm.default(384x384,384x384)": 1}
    base = make_side(rng, repeats=2, steps=6, noise=0.3, counts=counts, path="base")
    run = make_side(rng, repeats=2, steps=6, noise=0.3, counts=extra)
    result = compare(run, base, {"tokens_per_s": "-5%", "step_flops": "+0%"})
    assert result.counters == ["precision=fp32: per step +1 aten.mm.default(384x384,384x384); FLOPs per step +7.14%"]
    assert "+1 aten.mm.default(384x384,384x384)" in result.to_text()
    flops = next(r for r in result.rows if r.metric == "step_flops")
    assert flops.verdict == "FAIL" and flops.ci_label == "exact"
    same = compare(make_side(rng, counts=counts), base, {"step_flops": "+0%"})
    assert same.counters == [] and same.verdict == "PASS"


# ------------------------------------------------------------------ across machines -----------

def test_environment_differences_are_reported():
    rng = np.random.default_rng(8)
    other = {**ENV, "cpu": "Intel Xeon", "cpu_flags": ["avx2"], "torch": "2.6.0+cpu",
             "packages": {"torch": "2.6.0+cpu", "numpy": "2.4.6"}, "txsuite_commit": "def"}
    result = compare(make_side(rng, env=other), make_side(rng, path="base"))
    text = "\n".join(result.env_differences)
    assert "CPU differs: baseline 'AMD EPYC', run 'Intel Xeon'" in text
    assert "only the baseline has avx512f" in text
    assert "torch differs: baseline '2.13.0+cpu', run '2.6.0+cpu'" in text
    assert "DIFFERENT hardware, libraries or kernels" in result.to_text()
    assert any("txsuite commit" in n for n in result.notes)
    same = compare(make_side(rng), make_side(rng, path="base"))
    assert same.env_differences == [] and "same hardware" in same.to_text()


def test_a_baseline_from_before_the_host_allocator_setting_counts_as_glibcs_defaults():
    rng = np.random.default_rng(8)
    old = make_side(rng, path="base")  # ENV has no host_allocator: written before the setting
    cached = compare(make_side(rng, env={**ENV, "host_allocator": "cache"}), old)
    assert cached.env_differences == [
        "library: host memory allocator (measure.host_allocator) differs: baseline 'system', run 'cache'"]
    assert compare(make_side(rng, env={**ENV, "host_allocator": "system"}), old).env_differences == []


def test_a_kernel_an_auto_setting_chose_differently_is_named_and_survives_the_baseline_file(tmp_path):
    from txsuite.guard.baseline import baseline_json, dumps_baseline
    rng = np.random.default_rng(9)
    baseline = make_side(rng, path="base", cells=("c0fp32", "c1bf16"), kernels={"attention": "sdpa", "linear": "torch"})
    run = make_side(rng, scale=0.25, cells=("c0fp32", "c1bf16"),
                    kernels={"attention": "sdpa", "linear": "transposed-weight"})
    line = ("kernel: model.linear ran torch in the baseline and transposed-weight in the run "
            "(precision=fp32, precision=bf16); its speed is the kernel's as much as the code's — pin "
            "model.linear to compare code alone")
    assert compare(run, baseline).env_differences == [line]
    stored = tmp_path / "baseline.json"  # as `txsuite baseline` writes it
    write_atomic(stored, dumps_baseline(baseline_json(baseline)))
    assert compare(run, load_side(stored)).env_differences == [line]
    old = make_side(rng, path="old", cells=("c0fp32", "c1bf16"))  # records from before the facts existed
    assert compare(run, old).env_differences == [line]  # they ran torch's Linear; their attention is unknown
    same = make_side(rng, cells=("c0fp32", "c1bf16"), kernels={"attention": "matmul", "linear": "torch"})
    assert compare(same, old).env_differences == []


def test_peak_normalisation_changes_the_verdict_across_machines():
    """Machine B is 30 % slower at matmuls and trains 30 % slower: same code, same MFU. Raw
    throughput calls it a FAIL; normalised by each machine's measured peak, it passes."""
    rng = np.random.default_rng(9)
    env_b = {**ENV, "cpu": "Slower CPU"}
    base = make_side(rng, repeats=4, peak_flops=1.0e12, path="base")
    run = make_side(rng, repeats=4, peak_flops=0.7e12, env=env_b, scale=1 / 0.7)
    raw = compare(run, base, normalize="none", run_noise=0.01)
    peak = compare(run, base, normalize="peak", run_noise=0.01)
    auto = compare(run, base, normalize="auto", run_noise=0.01)
    assert raw.verdict == "FAIL" and raw.normalization.startswith("none")
    assert any("--normalize peak" in n for n in raw.notes)
    assert peak.verdict == "PASS" and peak.normalization.startswith("peak")
    assert peak.rows[0].ratio == pytest.approx(1.0, abs=0.05)
    assert auto.verdict == "PASS" and auto.normalization.startswith("peak (auto")
    assert any("matmul peak differs" in d for d in raw.env_differences)
    assert "per TFLOP/s" in peak.to_text()
    slow = make_side(rng, repeats=4, peak_flops=0.7e12, env=env_b, scale=1.3 / 0.7)
    assert compare(slow, base, normalize="peak", run_noise=0.01).verdict == "FAIL"


def test_state_normalisation_takes_the_machine_out_and_leaves_the_code_in():
    """One machine, the run measured in a spell 30 % slower (its probes say so: the geometric
    mean of before and after is 1.3x the best) and its steps 30 % longer. Raw, that is a -23 %
    throughput change; brought to the machine's best state, none. A real 30 % slowdown of the
    code (probes as in the baseline) stays a 30 % slowdown."""
    rng = np.random.default_rng(23)
    base = make_side(rng, repeats=3, steps=30, noise=0.01, path="base", slowdowns=[1.0] * 3)
    spell = make_side(rng, repeats=3, steps=30, noise=0.01, scale=1.3, slowdowns=[1.3 ** 2] * 3)
    code = make_side(rng, repeats=3, steps=30, noise=0.01, scale=1.3, slowdowns=[1.0] * 3)
    raw = compare(spell, base, run_noise=0.01)
    state = compare(spell, base, normalize="state", run_noise=0.01)
    assert raw.rows[0].ratio == pytest.approx(1 / 1.3, rel=0.02) and raw.verdict == "FAIL"
    assert state.rows[0].ratio == pytest.approx(1.0, abs=0.02) and state.verdict == "PASS"
    assert state.normalization.startswith("state: tokens_per_s brought to this machine's best state")
    slower = compare(code, base, normalize="state", run_noise=0.01)
    assert slower.rows[0].ratio == pytest.approx(1 / 1.3, rel=0.02) and slower.verdict == "FAIL"
    # a repetition's factor: probes 0.020 s and 0.0338 s around it, best 0.020 s -> sqrt(1.69) = 1.3
    rep = spell.cells["c0fp32"].repeats[0]
    assert state_factor(rep, 0.020) == pytest.approx(1.3)
    adjusted = state_adjusted(spell, 0.020).cells["c0fp32"].repeats[0]
    assert adjusted.step_times_s == pytest.approx([t / 1.3 for t in rep.step_times_s])
    # the default run noise follows the normalisation: what the runs measured after adjusting,
    # widened by half the correction when the correction is large (a 30 % spell: to 14.9 %)
    assert any("whole runs 14.9%" in n for n in compare(spell, base, normalize="state").notes)
    assert any("whole runs 7.0%" in n for n in compare(base, base, normalize="state").notes)
    # two machines have two bests: refused, naming what to use instead
    other = make_side(rng, repeats=3, env={**ENV, "cpu": "Slower CPU"})
    with pytest.raises(GuardInputError, match="ran on different hardware: use --normalize peak"):
        compare(other, base, normalize="state")
    # a side recorded without the probe cannot be brought to the best state: refused, not mixed
    unprobed = make_side(rng, repeats=2, slowdowns=[None, None])
    with pytest.raises(GuardInputError, match=r"needs the machine-state probe of every repetition.*repeat 0"):
        compare(unprobed, base, normalize="state")


def test_a_large_state_correction_widens_the_noise_instead_of_failing():
    """Beside two busy processes the short probe need not carry what the steps met: the
    baseline's probes said 1.7x slower while its steps ran as fast as the run's. Brought to the
    'best state', unchanged code looked 0.59x as fast, and the guard called it FAIL. A correction
    is now trusted to within half its size (the whole-run noise widened), and the verdict is not
    FAIL; a small correction keeps the state prior."""
    rng = np.random.default_rng(5)
    base = make_side(rng, repeats=3, steps=30, noise=0.01, path="base", slowdowns=[1.7 ** 2] * 3)
    run = make_side(rng, repeats=3, steps=30, noise=0.01, slowdowns=[1.0] * 3)
    result = compare(run, base, normalize="state", slow_state=1000)
    assert result.rows[0].ratio < 0.65  # the correction did move it
    assert result.verdict != "FAIL"
    assert any("two sides 70% apart" in n and "widened from 7.0% to 27.4%" in n for n in result.notes)
    # the old behaviour, an explicit --run-noise of the state prior: FAIL (the user's figure is kept)
    assert compare(run, base, normalize="state", slow_state=1000, run_noise=0.07).verdict == "FAIL"
    # a 4 % correction leaves the prior as it was
    near = make_side(rng, repeats=3, steps=30, noise=0.01, slowdowns=[1.04 ** 2] * 3)
    assert not any("widened" in n for n in compare(near, run, normalize="state", slow_state=1000).notes)


def test_baseline_file_round_trip_keeps_samples_and_states_its_quality(tmp_path):
    rng = np.random.default_rng(10)
    recs = [record(c, r, step_times(rng, 12)) for c in CELLS for r in range(2)]
    recs.append(Record(matrix="m", run_id="r1", cell_id="c2oom", repeat=0, config={}, status="oom",
                       label="precision=fp16", reason="out of memory"))
    run_dir = write_run(tmp_path / "results" / "m" / "r1", recs, guard={"tokens_per_s": "-5%",
                                                                         "peak_mem_bytes": "+10%"})
    out = write_baseline(run_dir, tmp_path / "baselines" / "m.json")
    doc = json.loads(out.read_text())
    assert doc["format"] == "txsuite-baseline" and doc["schema"] == 2
    assert doc["quality"]["repetitions_per_cell"] == 2 and doc["quality"]["slow_repetitions"] == 0
    assert doc["quality"]["noise"]["tokens_per_s"] > 0 and doc["quality"]["machine_slowdown_max"] == pytest.approx(1.1)
    assert doc["guard"] == {"tokens_per_s": "-5%", "peak_mem_bytes": "+10%"} and doc["source"] == "matrices/m.yaml"
    assert [c["cell_id"] for c in doc["cells"]] == list(CELLS)  # ok cells only, matrix order
    assert len(out.read_text().splitlines()) < 40  # compact: one line per repetition
    base = load_side(out)
    run = load_side(run_dir)
    assert base.kind == "baseline" and run.kind == "run"
    for cid in CELLS:
        for a, b in zip(base.cells[cid].repeats, run.cells[cid].repeats):
            assert a.step_times_s == pytest.approx(b.step_times_s, abs=1e-7)
            assert (a.train_mem_bytes, a.peak_flops, a.probe_after_s, a.step_op_counts) == (
                b.train_mem_bytes, b.peak_flops, b.probe_after_s, b.step_op_counts)
    result = compare(run, base)
    assert len(result.rows) == 4 and result.verdict != "FAIL"
    assert all(r.ratio == pytest.approx(1.0, abs=1e-6) for r in result.rows)
    assert base.env == run.env


def test_a_baseline_of_several_runs_measures_how_much_a_whole_run_moves(tmp_path):
    """Three runs of one matrix whose whole level differs (x1, x1.2, x0.85, as a shared machine's
    runs do), repetitions tight inside each: the baseline tags each repetition with its run,
    states the between-run spread it measured, and the guard judges with it."""
    rng = np.random.default_rng(21)
    levels = {"r1": 1.0, "r2": 1.2, "r3": 0.85}
    dirs = []
    for run_id, level in levels.items():
        recs = [record("c0fp32", r, [t * level for t in step_times(rng, 20, noise=0.01)], run_id=run_id)
                for r in range(3)]
        dirs.append(write_run(tmp_path / "results" / "m" / run_id, recs))
    out = write_baseline(dirs, tmp_path / "three.json")
    doc = json.loads(out.read_text())
    expected = float(np.std(np.log(list(levels.values())), ddof=1))  # the repetitions explain ~nothing
    noise = doc["quality"]["noise"]
    assert noise["runs"] == 3 and noise["between_runs_degrees_of_freedom"] == 2
    assert noise["between_runs"] == pytest.approx(expected, rel=0.05)
    assert noise["tokens_per_s"] < 0.01  # within a run: the 1 % step noise, not the levels
    base = load_side(out)
    assert sorted({r.run for r in base.cells["c0fp32"].repeats}) == ["r1", "r2", "r3"]
    result = compare(load_side(dirs[0]), base)
    note = next(n for n in result.notes if n.startswith("noise of tokens_per_s"))
    assert f"measured {noise['between_runs']:.1%} over the baseline's 3 runs" in note
    combined = math.sqrt((19 * 0.16 ** 2 + 2 * noise["between_runs"] ** 2) / 21)
    assert f"{combined:.1%} used" in note


def test_a_baseline_of_several_runs_refuses_runs_it_cannot_combine(tmp_path):
    rng = np.random.default_rng(22)
    a = write_run(tmp_path / "results" / "m" / "a", [record("c0fp32", 0, step_times(rng, 5), run_id="a")])
    other = tmp_path / "results" / "other" / "b"
    write_run(other, [record("c0fp32", 0, step_times(rng, 5), run_id="b")])
    doc = json.loads((other / "matrix.json").read_text())
    RunFolder(other).write_json("matrix.json", {**doc, "name": "other"})
    with pytest.raises(GuardInputError, match=r"a run of matrix 'other'.*needs runs of one matrix"):
        write_baseline([a, other], tmp_path / "x.json")
    with pytest.raises(GuardInputError, match="given twice"):
        write_baseline([a, a], tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_hand_edited_summary_is_noticed_and_used(tmp_path):
    """A record whose tokens_per_s was raised by hand (step times untouched) makes a 30 %
    faster baseline: the guard trusts the recorded metric, says so, and fails the run."""
    rng = np.random.default_rng(11)
    steps = [step_times(rng, 8, noise=0.03) for _ in range(4)]
    run_dir = write_run(tmp_path / "run", [record("c0fp32", r, steps[r]) for r in (0, 1)])
    edited = [record("c0fp32", r, steps[r + 2]) for r in (0, 1)]
    for rec in edited:
        rec.metrics["tokens_per_s"] *= 1.3
    base_dir = write_run(tmp_path / "base", edited)
    result = compare(load_side(run_dir), load_side(base_dir), run_noise=0.02)
    assert result.verdict == "FAIL"
    assert any("edited by hand" in n for n in result.notes)


def test_confirmation_re_decides_failed_cells():
    rng = np.random.default_rng(12)
    base = make_side(rng, cells=tuple(CELLS), path="base")
    run = make_side(rng, cells=tuple(CELLS))
    slow_fp32 = make_side(rng, cells=("c0fp32",), scale=1.3)
    first = compare(side_from_records(
        [record("c0fp32", r, t) for r, t in enumerate([s.step_times_s for s in slow_fp32.cells["c0fp32"].repeats])]
        + [record("c1bf16", r.repeat, r.step_times_s) for r in run.cells["c1bf16"].repeats],
        meta={"guard": {"tokens_per_s": "-5%"}}), base, run_noise=0.02)  # a machine whose runs move by 2 %
    assert cells_to_confirm(first) == [("c0fp32", "precision=fp32")]
    # the re-measurement is back to normal: two measurements, two answers: INCONCLUSIVE, not PASS
    cleared = merge_confirmation(first, make_side(rng, cells=("c0fp32",)))
    assert cleared.verdict == "INCONCLUSIVE" and cleared.rows[0].verdict == "INCONCLUSIVE"
    assert "re-measured 1 failed check(s) once: 0 failed again" in cleared.to_text()
    # still slow: confirmed, fails, and the text shows both measurements
    confirmed = merge_confirmation(first, make_side(rng, cells=("c0fp32",), scale=1.3))
    assert confirmed.verdict == "FAIL" and confirmed.failures[0].verdict == "FAIL (confirmed)"
    assert "first measurement" in confirmed.to_text()
    # the re-run lost the cell (crashed): the failure stands
    lost = merge_confirmation(first, make_side(rng, cells=("c1bf16",)))
    assert lost.verdict == "FAIL"


# ------------------------------------------------------------------ same-job A/B ---------------

def paired(rng, rounds, ratio=1.0, noise=0.03, states=None, counts=None, head_counts=None):
    """Base and head sides of one cell, `rounds` repetitions each, head's steps `ratio` as long."""
    states = states or [(1.1, 1.1)] * rounds
    base = [record("c0fp32", r, step_times(rng, 20, noise=noise), slowdown=states[r][0], counts=counts)
            for r in range(rounds)]
    head = [record("c0fp32", r, [t * ratio for t in step_times(rng, 20, noise=noise)], slowdown=states[r][1],
                   counts=head_counts or counts) for r in range(rounds)]
    meta = {"name": "m", "cells": [{"cell_id": "c0fp32", "label": "precision=fp32"}]}
    return paired_cells(side_from_records(base, meta=meta), side_from_records(head, meta=meta), ["precision=fp32"])


def test_look_schedule_doubles_up_to_the_maximum():
    assert look_schedule(4, 16) == [4, 8, 16]
    assert look_schedule(3, 10) == [3, 6, 10]
    assert look_schedule(4, 4) == [4]


def test_paired_decisions_keep_false_fails_below_alpha_and_catch_a_slowdown():
    rng = np.random.default_rng(14)
    thr = {"tokens_per_s": parse_threshold("-5%")}
    fails = sum(decide_pairs(paired(rng, 8, noise=0.05), thr, 0.01, 3, "base", "head").result.verdict == "FAIL"
                for _ in range(300))
    assert fails <= 3, fails
    slowed = decide_pairs(paired(rng, 4, ratio=1.25, noise=0.03), thr, 0.01, 3, "base", "head").result
    assert slowed.verdict == "FAIL" and slowed.rows[0].ratio == pytest.approx(0.8, rel=0.05)
    same = decide_pairs(paired(rng, 8, noise=0.01), thr, 0.01, 3, "base", "head").result
    assert same.verdict == "PASS"


def test_paired_decisions_leave_out_pairs_in_a_slow_state_and_compare_counters():
    rng = np.random.default_rng(15)
    thr = {"tokens_per_s": parse_threshold("-5%")}
    states = [(1.1, 1.1), (6.0, 1.1), (1.2, 1.1), (1.1, 7.5)]
    out = decide_pairs(paired(rng, 4, states=states), thr, 0.01, 3, "base", "head")
    assert out.pairs_used == {"precision=fp32": 2}
    assert "2 of 4 pairs ran while this machine was up to 7.5x slower than its best" in out.result.to_text()
    counts = {"aten.mm.default(256x128,128x128)": 12}
    extra = decide_pairs(paired(rng, 4, counts=counts, head_counts={**counts, "aten.mm.default(384x384,384x384)": 1}),
                         thr, 0.01, 3, "base", "head")
    assert extra.result.counters and "+1 aten.mm.default(384x384,384x384)" in extra.result.counters[0]


def test_paired_decisions_bring_each_side_to_the_machines_best_state():
    """Unchanged code whose two processes of a round ran in different states of the machine (the
    base's steps 1.3x slower in half the rounds, the head's in the other half, and each side's
    probes saying so): the pairs are judged as the machine at its best would have run them."""
    rng = np.random.default_rng(16)
    thr = {"tokens_per_s": parse_threshold("-5%")}
    slowdowns = [(1.69, 1.0), (1.0, 1.69)] * 4  # the slower probe; the state factor is its square root
    sides = [[record("c0fp32", r, [t * math.sqrt(s[side]) for t in step_times(rng, 20, noise=0.01)],
                     slowdown=s[side]) for r, s in enumerate(slowdowns)] for side in (0, 1)]
    meta = {"name": "m", "cells": [{"cell_id": "c0fp32", "label": "precision=fp32"}]}
    cells = paired_cells(side_from_records(sides[0], meta=meta), side_from_records(sides[1], meta=meta),
                         ["precision=fp32"])
    row = decide_pairs(cells, thr, 0.01, 3, "base", "head").result.rows[0]
    assert row.verdict == "PASS" and row.ratio == pytest.approx(1.0, abs=0.01)
    assert "8 of them with each side brought to the machine's best state" in row.detail


def test_a_repetition_is_brought_to_the_best_state_by_the_probes_its_steps_ran_between():
    """A baseline keeps each repetition's probe at the steps' median (probe_steps_s), and the
    state factor prefers it to the mean of every probe."""
    rep = RepeatSamples(repeat=0, step_times_s=[0.1, 0.1], probe_before_s=0.010, probe_after_s=0.010,
                        probe_best_s=0.010, probe_mean_s=0.013, probe_steps_s=0.011)
    again = RepeatSamples.from_json(json.loads(json.dumps(rep.to_json())))
    assert again.probe_steps_s == pytest.approx(0.011)
    assert state_factor(again, 0.010) == pytest.approx(1.1)


# ------------------------------------------------------------------ bad input ----------------

def test_bad_inputs_name_the_file(tmp_path):
    rng = np.random.default_rng(13)
    with pytest.raises(GuardInputError, match="nope.json does not exist"):
        load_side(tmp_path / "nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GuardInputError, match="empty is a folder without records.jsonl"):
        load_side(tmp_path / "empty")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(GuardInputError, match="x.json is not a baseline file: it is not valid JSON"):
        load_side(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"hello": 1}')
    with pytest.raises(GuardInputError, match="y.json is JSON but not a txsuite baseline"):
        load_side(tmp_path / "y.json")
    (tmp_path / "z.json").write_text('{"format": "txsuite-baseline", "schema": 99, "cells": []}')
    with pytest.raises(GuardInputError, match="z.json has baseline schema 99"):
        load_side(tmp_path / "z.json")
    bad_run = tmp_path / "bad"
    bad_run.mkdir()
    (bad_run / "records.jsonl").write_text('{"matrix": "m"}\n')
    # a line that is no record is a warning for a report, and for the guard an input error (it
    # would otherwise decide without that repetition)
    with pytest.raises(GuardInputError, match="records.jsonl, line 1: not a txsuite result record"):
        load_side(bad_run)
    failed = Record(matrix="m", run_id="r", cell_id="c0fp32", repeat=0, config={}, status="failed")
    (bad_run / "records.jsonl").write_text(failed.to_json() + "\n")
    side = load_side(bad_run)
    with pytest.raises(GuardInputError, match="no successfully measured cell"):
        compare(side, side, {"tokens_per_s": "-5%"})
    two = tmp_path / "two"
    write_run(two / "a", [record("c0fp32", 0, step_times(rng, 5))])
    write_run(two / "b", [record("c0fp32", 0, step_times(rng, 5))])
    with pytest.raises(GuardInputError, match="holds 2 runs"):
        load_side(two)

    run = make_side(rng, path="results/m/r1")
    other = make_side(rng, cells=("c1bf16",), path="baselines/old.json")
    with pytest.raises(GuardInputError, match="results/m/r1 and baseline file baselines/old.json have no cell in common"):
        other.kind = "baseline"
        compare(run, other)
    with pytest.raises(GuardInputError, match="cannot guard 'speed'"):
        compare(run, make_side(rng), {"speed": "-5%"})
    with pytest.raises(GuardInputError, match="signed percentage"):
        compare(run, make_side(rng), {"tokens_per_s": "5"})
    with pytest.raises(GuardInputError, match="nothing to guard"):
        compare(make_side(rng, guard={}), make_side(rng, guard={}))
    with pytest.raises(GuardInputError, match="normalize"):
        compare(run, make_side(rng), normalize="fast")
    # a metric no record measured
    no_loss = make_side(rng, path="results/m/r2")
    for cell in no_loss.cells.values():
        for rep in cell.repeats:
            rep.val_loss = None
    with pytest.raises(GuardInputError, match="results/m/r2: metric 'val_loss' is not measured"):
        compare(no_loss, make_side(rng), {"val_loss": "+2%"})
    # peak normalisation without peaks
    no_peak = make_side(rng, path="results/m/r3")
    for cell in no_peak.cells.values():
        for rep in cell.repeats:
            rep.peak_flops = None
    with pytest.raises(GuardInputError, match="results/m/r3: cell precision=fp32 repeat 0 has no measured peak_flops"):
        compare(no_peak, make_side(rng), normalize="peak")
    failed = tmp_path / "failed"
    write_run(failed, [Record(matrix="m", run_id="f", cell_id="c0fp32", repeat=0, config={}, status="oom",
                              reason="oom", label="precision=fp32")])
    with pytest.raises(GuardInputError, match="no successfully measured cell"):
        write_baseline(failed, tmp_path / "f.json")
    with pytest.raises(GuardInputError, match="no successfully measured cell to compare"):
        compare(load_side(failed), make_side(rng))


def test_guard_does_not_import_torch():
    code = ("import sys, txsuite.guard, txsuite.guard.paired; "
            "assert 'torch' not in sys.modules and 'scipy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
