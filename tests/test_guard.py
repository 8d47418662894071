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

from suite.results.folder import RecordsWarning
from suite.guard import (GuardInputError, cells_to_confirm, compare, load_side, merge_confirmation,
                         side_from_records, write_baseline)
from suite.guard.stats import mann_whitney_p, pooled_log_sd, repeat_level_p, t_isf, t_sf
from suite.config.record import Record
from suite.results import RunFolder, write_atomic

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


def record(cell_id, repeat, steps, *, peak_mem=4.0e8, peak_flops=1.0e12, env=ENV, val_loss=2.0, run_id="r1"):
    tps = statistics.median(TOKENS_PER_STEP / t for t in steps)
    metrics = {"step_times_s": steps, "tokens_per_s": tps, "samples_per_s": tps / 64,
               "step_time_p50_s": statistics.median(steps), "step_time_p90_s": max(steps),
               "tokens_per_step": TOKENS_PER_STEP, "samples_per_step": SAMPLES_PER_STEP,
               "flops_per_token": FLOPS_PER_TOKEN, "peak_flops": peak_flops,
               "mfu": tps * FLOPS_PER_TOKEN / peak_flops, "peak_mem_bytes": peak_mem, "val_loss": val_loss}
    precision = CELLS.get(cell_id, "precision=fp32").split("=")[1]
    return Record(matrix="m", run_id=run_id, cell_id=cell_id, repeat=repeat, config={"precision": precision},
                  status="ok", label=CELLS.get(cell_id, cell_id), env=dict(env), metrics=metrics)


def make_side(rng, *, scale=1.0, repeats=2, steps=30, cells=("c0fp32",), guard=None, path="run", **kw):
    """A Side of `cells`, each `repeats` x `steps`, step times multiplied by `scale`."""
    extra = {k: kw.pop(k) for k in ("peak_mem", "peak_flops", "env", "val_loss") if k in kw}
    recs = [record(c, r, [t * scale for t in step_times(rng, steps, **kw)], **extra)
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

def test_mann_whitney_exact_matches_enumeration():
    # 3 vs 3 with x entirely below y: U = 0, p = 1 / C(6, 3)
    assert mann_whitney_p([1, 2, 3], [4, 5, 6], "less") == pytest.approx(1 / 20)
    assert mann_whitney_p([4, 5, 6], [1, 2, 3], "greater") == pytest.approx(1 / 20)
    assert mann_whitney_p([4, 5, 6], [1, 2, 3], "less") == pytest.approx(1.0)
    assert t_sf(2.0, 5) == pytest.approx(0.050970, abs=1e-6)
    assert t_isf(0.01, math.inf) == pytest.approx(2.3263, abs=1e-4)
    assert t_isf(0.01, 4) == pytest.approx(3.7469, abs=1e-4)
    sd, df = pooled_log_sd([[1.0, math.e ** 0.1], [5.0], [2.0, 2.0 * math.e ** 0.1]])
    assert df == 2 and sd == pytest.approx(math.sqrt(0.01 / 2))
    p, se = repeat_level_p([0.9], [1.0], sigma=0.03, df=math.inf)
    assert se == pytest.approx(0.03 * math.sqrt(2)) and p == pytest.approx(0.0065, abs=5e-4)


def test_same_distribution_twice_passes_and_false_alarms_stay_below_alpha():
    """Null hypothesis true: baseline and run drawn from one distribution, with run-to-run
    variation between repetitions. With the -5 % threshold and the default alpha (0.01) almost
    nothing is flagged; with a 0 % threshold (significance alone, alpha 0.05) the false-alarm
    rate stays at or below alpha."""
    rng = np.random.default_rng(1)
    trials, alpha = 200, 0.05
    flagged_5 = flagged_0 = 0
    for seed in range(trials):
        run = make_side(rng, repeats=2, steps=30, noise=0.05, repeat_sd=0.02)
        base = make_side(rng, repeats=2, steps=30, noise=0.05, repeat_sd=0.02, path="base")
        flagged_5 += not compare(run, base, seed=seed, n_boot=500).ok
        flagged_0 += not compare(run, base, {"tokens_per_s": "-0%"}, alpha=alpha, seed=seed, n_boot=500).ok
    assert flagged_5 <= 1, flagged_5
    assert flagged_0 / trials <= alpha + 0.03, flagged_0


def test_single_repetition_false_alarm_rate_below_alpha():
    rng = np.random.default_rng(2)
    trials, alpha = 200, 0.05
    flagged = sum(not compare(make_side(rng, repeats=1, steps=20), make_side(rng, repeats=1, steps=20),
                              {"tokens_per_s": "-0%"}, alpha=alpha, seed=s, n_boot=500).ok
                  for s in range(trials))
    assert flagged / trials <= alpha + 0.03, flagged


def test_baseline_30_percent_faster_fails_with_the_evidence():
    rng = np.random.default_rng(3)
    run = make_side(rng, repeats=1, steps=8, noise=0.05)
    base = make_side(rng, repeats=1, steps=8, noise=0.05, scale=1 / 1.3, path="baselines/smoke.json")
    result = compare(run, base)
    assert not result.ok
    (reg,) = result.regressions
    assert reg.metric == "tokens_per_s" and reg.verdict == "REGRESSION"
    assert reg.ratio == pytest.approx(1 / 1.3, rel=0.08)
    assert reg.ci[1] < 0.95 and reg.p_value < 0.01
    text = result.to_text()
    for needle in ("REGRESSIONS: 1 of 1", "baseline", "now", "ratio", "98% CI", "p-value",
                   f"{reg.ratio:.3f}", f"[{reg.ci[0]:.3f}, {reg.ci[1]:.3f}]", "FAIL",
                   f"{reg.baseline:,.0f} tok/s", f"{reg.now:,.0f} tok/s"):
        assert needle in text, needle
    assert "| **REGRESSION** |" in result.to_markdown()
    assert json.loads(json.dumps(result.to_dict()))["regressions"][0]["metric"] == "tokens_per_s"


def test_memory_direction_and_threshold():
    rng = np.random.default_rng(4)
    guard = {"peak_mem_bytes": "+10%"}
    base = make_side(rng, repeats=2, peak_mem=4.0e8, path="base")
    up = compare(make_side(rng, repeats=2, peak_mem=4.8e8), base, guard)
    down = compare(make_side(rng, repeats=2, peak_mem=3.2e8), base, guard)
    small = compare(make_side(rng, repeats=2, peak_mem=4.2e8), base, guard)
    assert not up.ok and up.regressions[0].ratio == pytest.approx(1.2)
    assert "peak_mem_bytes" in up.to_text() and "MiB" in up.to_text()
    assert down.ok and down.rows[0].verdict == "improved"
    assert small.ok and small.rows[0].verdict == "ok"


def test_threshold_respected_for_a_significant_small_drop():
    """A 3 % slowdown measured precisely on a quiet machine (run-to-run noise floor 0.5 %) is
    significant, but below a -5 % threshold: passes. The same data against a -2 % threshold
    fails, so the pass is the threshold's doing. With the default 3 % noise floor, 3 repetitions
    a side cannot call a 3 % change significant at all."""
    rng = np.random.default_rng(5)
    base = make_side(rng, repeats=3, steps=60, noise=0.01, path="base")
    run = make_side(rng, repeats=3, steps=60, noise=0.01, scale=1.03)
    five = compare(run, base, {"tokens_per_s": "-5%"}, run_noise=0.005)
    two = compare(run, base, {"tokens_per_s": "-2%"}, run_noise=0.005)
    assert five.ok and five.rows[0].p_value < 0.01 and five.rows[0].ratio == pytest.approx(1 / 1.03, rel=0.01)
    assert five.rows[0].verdict == "ok"
    assert not two.ok
    noisy = compare(run, base, {"tokens_per_s": "-2%"})
    assert noisy.ok and noisy.rows[0].verdict == "ok: not significant"
    assert any("run-to-run noise of tokens_per_s: measured 0.1%" in n and "3.0% used" in n for n in noisy.notes)


def test_not_significant_when_noise_swamps_the_change():
    rng = np.random.default_rng(6)
    base = make_side(rng, repeats=2, steps=6, noise=0.25, repeat_sd=0.15, path="base")
    run = make_side(rng, repeats=2, steps=6, noise=0.25, repeat_sd=0.15, scale=1.08)
    result = compare(run, base)
    assert result.ok
    assert result.rows[0].verdict in ("ok", "ok: not significant", "ok: fastest steps unchanged")


def test_busy_neighbour_slowing_some_steps_is_not_a_regression():
    """Load from other processes adds time to some steps; the fastest steps keep their speed.
    Slower code slows every step. Same median shift, opposite verdicts."""
    rng = np.random.default_rng(7)
    base = make_side(rng, repeats=1, steps=40, noise=0.02, path="base")
    busy = make_side(rng, repeats=1, steps=40, noise=0.02, busy=0.6)
    slower = make_side(rng, repeats=1, steps=40, noise=0.02, scale=1.3)
    r_busy, r_slow = compare(busy, base), compare(slower, base)
    assert r_busy.rows[0].ratio < 0.95
    assert r_busy.ok and r_busy.rows[0].verdict == "ok: fastest steps unchanged"
    assert not r_slow.ok


def test_environment_differences_are_reported():
    rng = np.random.default_rng(8)
    other = {**ENV, "cpu": "Intel Xeon", "cpu_flags": ["avx2"], "torch": "2.6.0+cpu",
             "packages": {"torch": "2.6.0+cpu", "numpy": "2.4.6"}, "txsuite_commit": "def"}
    result = compare(make_side(rng, env=other), make_side(rng, path="base"))
    text = "\n".join(result.env_differences)
    assert "CPU differs: baseline 'AMD EPYC', run 'Intel Xeon'" in text
    assert "only the baseline has avx512f" in text
    assert "torch differs: baseline '2.13.0+cpu', run '2.6.0+cpu'" in text
    assert "DIFFERENT hardware or libraries" in result.to_text()
    assert any("txsuite commit" in n for n in result.notes)
    same = compare(make_side(rng), make_side(rng, path="base"))
    assert same.env_differences == [] and "same hardware" in same.to_text()


def test_peak_normalisation_changes_the_verdict_across_machines():
    """Machine B is 30 % slower at matmuls and trains 30 % slower: same code, same MFU. Raw
    throughput calls it a regression; normalised by each machine's measured peak, it is not."""
    rng = np.random.default_rng(9)
    env_b = {**ENV, "cpu": "Slower CPU"}
    base = make_side(rng, peak_flops=1.0e12, path="base")
    run = make_side(rng, peak_flops=0.7e12, env=env_b, scale=1 / 0.7)
    raw = compare(run, base, normalize="none")
    peak = compare(run, base, normalize="peak")
    auto = compare(run, base, normalize="auto")
    assert not raw.ok and raw.normalization.startswith("none")
    assert any("--normalize peak" in n for n in raw.notes)
    assert peak.ok and peak.normalization.startswith("peak")
    assert peak.rows[0].ratio == pytest.approx(1.0, abs=0.05)
    assert auto.ok and auto.normalization.startswith("peak (auto")
    assert any("matmul peak differs" in d for d in raw.env_differences)
    assert "per TFLOP/s" in peak.to_text()
    # a real regression still shows through the normalisation
    slow = make_side(rng, peak_flops=0.7e12, env=env_b, scale=1.3 / 0.7)
    assert not compare(slow, base, normalize="peak").ok


def test_baseline_file_round_trip_keeps_samples(tmp_path):
    rng = np.random.default_rng(10)
    recs = [record(c, r, step_times(rng, 12)) for c in CELLS for r in range(2)]
    recs.append(Record(matrix="m", run_id="r1", cell_id="c2oom", repeat=0, config={}, status="oom",
                       label="precision=fp16", reason="out of memory"))
    run_dir = write_run(tmp_path / "results" / "m" / "r1", recs, guard={"tokens_per_s": "-5%",
                                                                         "peak_mem_bytes": "+10%"})
    out = write_baseline(run_dir, tmp_path / "baselines" / "m.json")
    doc = json.loads(out.read_text())
    assert doc["format"] == "txsuite-baseline" and doc["schema"] == 1
    assert doc["guard"] == {"tokens_per_s": "-5%", "peak_mem_bytes": "+10%"} and doc["source"] == "matrices/m.yaml"
    assert [c["cell_id"] for c in doc["cells"]] == list(CELLS)  # ok cells only, matrix order
    assert len(out.read_text().splitlines()) < 40  # compact: one line per repetition
    base = load_side(out)
    run = load_side(run_dir)
    assert base.kind == "baseline" and run.kind == "run"
    for cid in CELLS:
        for a, b in zip(base.cells[cid].repeats, run.cells[cid].repeats):
            assert a.step_times_s == pytest.approx(b.step_times_s, abs=1e-7)
            assert (a.peak_mem_bytes, a.peak_flops, a.tokens_per_step) == (b.peak_mem_bytes, b.peak_flops,
                                                                           b.tokens_per_step)
    result = compare(run, base)
    assert result.ok and len(result.rows) == 4
    assert all(r.ratio == pytest.approx(1.0, abs=1e-6) for r in result.rows)
    assert base.env == run.env


def test_hand_edited_summary_is_noticed_and_used(tmp_path):
    """A record whose tokens_per_s was raised by hand (step times untouched) makes a 30 %
    faster baseline: the guard trusts the recorded metric, says so, and fails the run."""
    rng = np.random.default_rng(11)
    steps = [step_times(rng, 8, noise=0.03) for _ in range(2)]
    run_dir = write_run(tmp_path / "run", [record("c0fp32", 0, steps[0])])
    edited = record("c0fp32", 0, steps[1])
    edited.metrics["tokens_per_s"] *= 1.3
    base_dir = write_run(tmp_path / "base", [edited])
    result = compare(load_side(run_dir), load_side(base_dir))
    assert not result.ok
    assert any("edited by hand" in n for n in result.notes)


def test_confirmation_re_decides_flagged_cells():
    rng = np.random.default_rng(12)
    base = make_side(rng, cells=tuple(CELLS), path="base")
    run = make_side(rng, cells=tuple(CELLS))
    slow_fp32 = make_side(rng, cells=("c0fp32",), scale=1.3)
    first = compare(side_from_records(
        [record("c0fp32", r, t) for r, t in enumerate([s.step_times_s for s in slow_fp32.cells["c0fp32"].repeats])]
        + [record("c1bf16", r.repeat, r.step_times_s) for r in run.cells["c1bf16"].repeats],
        meta={"guard": {"tokens_per_s": "-5%"}}), base)
    assert cells_to_confirm(first) == [("c0fp32", "precision=fp32")]
    # the re-measurement is back to normal: not confirmed, passes
    cleared = merge_confirmation(first, make_side(rng, cells=("c0fp32",)))
    assert cleared.ok and "not confirmed" in cleared.rows[0].verdict
    assert "re-measured 1 flagged check(s) once: 0 regressed again" in cleared.to_text()
    # still slow: confirmed, fails, and the table shows both measurements
    confirmed = merge_confirmation(first, make_side(rng, cells=("c0fp32",), scale=1.3))
    assert not confirmed.ok and confirmed.regressions[0].verdict == "REGRESSION (confirmed)"
    assert "first measurement" in confirmed.to_text()
    # the re-run lost the cell (crashed): the regression stands
    lost = merge_confirmation(first, make_side(rng, cells=("c1bf16",)))
    assert not lost.ok


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
    with pytest.warns(RecordsWarning, match="records.jsonl, line 1: not a txsuite result record"):
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
    code = "import sys, suite.guard; assert 'torch' not in sys.modules and 'scipy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
