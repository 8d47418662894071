"""The whole product through its command line: plan, run (real worker processes), records,
resume, exit codes, and errors without tracebacks."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from txsuite.config.matrix import load_matrix
from txsuite.config.record import REQUIRED_METRICS
from txsuite.run.runner import run_matrix
from txsuite.results import RunFolder, to_dataframe
from cli_helpers import txsuite

# A matrix no other test uses, written as a user would from README.md alone.
UNSEEN = """\
name: unseen
description: a user's own sweep
fixed:
  model: {preset: tiny, n_layer: 1}
  data: {dataset: markov, seq_len: 32, symbols: 16}
  train: {steps: 6, warmup_steps: 2, micro_batch: 4, lr: 3.0e-3, target_loss: 10.0}
axes:
  precision: [fp32, bf16]
  memory.activation_checkpointing: [none, full]
exclude:
  - {precision: bf16, memory.activation_checkpointing: full}
include:
  - {precision: fp8}
  - {precision: fp32, memory.activation_checkpointing: none, measure.host_allocator: cache}
repeats: 1
"""




def test_runner_and_cli_never_import_torch():
    code = "import sys, txsuite.cli, txsuite.run.runner, txsuite.config.matrix, txsuite.results, txsuite.guard; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unseen_matrix_plans_runs_records_and_resumes(tmp_path):
    (tmp_path / "unseen.yaml").write_text(UNSEEN)
    plan = txsuite("plan", "unseen.yaml", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "skipped: fp8" in plan.stdout and plan.stdout.count("will run") == 4
    # the cache cell's peak memory is not comparable with the others': the plan says so
    assert "1 cell(s) run with measure.host_allocator: cache" in " ".join(plan.stdout.split())

    first = txsuite("run", "unseen.yaml", "--run-id", "r1", cwd=tmp_path, report=True)
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = tmp_path / "results" / "unseen" / "r1"
    records = RunFolder(run_dir).records()
    assert sorted(r.status for r in records) == ["ok", "ok", "ok", "ok", "skipped"]
    for r in records:
        assert set(REQUIRED_METRICS) <= set(r.metrics)
        assert r.env["packages"]["torch"] and r.env["cpu"]
        if r.status == "skipped":
            assert "fp8" in r.reason
            continue
        # the record says which host allocator policy the cell ran with
        asked = "cache" if "host_allocator=cache" in r.label else "system"
        assert (r.env["host_allocator"], r.env["host_allocator_reason"]) == (asked, None), r.label
        m = r.metrics
        assert m["tokens_per_s"] > 0 and m["samples_per_s"] * 32 == pytest.approx(m["tokens_per_s"])
        assert m["step_time_p90_s"] >= m["step_time_p50_s"] > 0
        assert m["measured_steps"] == 6 and len(m["step_times_s"]) == 6
        assert len(m["loss_curve"]) == 8 and m["loss_curve"][-1][0] == 8
        assert m["loss_curve"][-1][1] >= m["loss_curve"][0][1]  # wall time grows
        assert m["peak_mem_bytes"] > 50 * 2**20  # the process's peak RSS: interpreter + torch at least
        assert 0 < m["mfu"] < 1 and m["peak_flops"] > 1e9
        assert m["val_loss"] < m["loss_curve"][0][2]  # it learned something
        assert m["optimal_loss"] is not None and m["val_loss"] > m["optimal_loss"] - 0.05
        assert m["time_to_target_s"] is not None and m["steps_to_target"] == 1  # target 10 nats: step 1
        # the repetition's time outside its training steps, and the warm-up's share of training
        assert m["cell_overhead_s"] == pytest.approx(r.duration_s - m["train_wall_s"], abs=2e-3)
        assert 0 < m["cell_overhead_s"] < r.duration_s and 0 < m["warmup_wall_s"] < m["train_wall_s"]
        # where the time went: the phases and the launch add up to the repetition's duration,
        # the steps are the training clock, the probe is inside training
        phases = m["phase_s"]
        worker = ("start", "build", "train", "evaluate", "finish", "measure")
        assert sum(phases[k] for k in worker) + phases["launch"] == pytest.approx(r.duration_s, abs=0.02)
        assert phases["train_steps"] == pytest.approx(m["train_wall_s"], abs=2e-3)
        assert phases["train_steps"] + phases["probe"] <= phases["train"] + 2e-3 and phases["evaluate"] > 0
        assert m["compile_s"] is None  # eager cells
        assert m["attention"] in ("sdpa", "matmul")  # attention: auto resolved, and said
        assert (run_dir / r.log).exists()
    assert (run_dir / "matrix.json").exists() and (run_dir / "env.json").exists()
    assert (tmp_path / "reports" / "unseen" / "r1.html").exists()

    # same command again: nothing re-runs, nothing is duplicated
    again = txsuite("run", "unseen.yaml", "--run-id", "r1", cwd=tmp_path)
    assert again.returncode == 0
    assert "5 repetitions were already finished" in again.stdout
    assert "not rendered (--no-report" in again.stdout  # the helper's default: records only
    assert len(RunFolder(run_dir).records()) == 5
    # without --run-id, a finished run is not resumed: a new run starts
    df = to_dataframe(tmp_path / "results")
    assert len(df) == 5 and set(df["status"]) == {"ok", "skipped"}


def test_resume_without_run_id_continues_an_interrupted_run(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(UNSEEN.replace("name: unseen", "name: partial"))
    matrix = load_matrix(path)
    # simulate an interrupted sweep: only one cell finished, run marked incomplete
    from txsuite.run.runner import choose_run_dir
    run_dir, resuming = choose_run_dir(tmp_path / "results", matrix, None)
    assert not resuming
    run_matrix(matrix, run_dir, only="fp8")  # the cheap skipped cell only: leaves the run incomplete
    again_dir, resuming = choose_run_dir(tmp_path / "results", matrix, None)
    assert resuming and again_dir == run_dir


def test_bad_matrix_exits_2_with_one_paragraph_and_no_traceback(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad\naxes:\n  train.micro_batch: [4, eight]\n")
    out = txsuite("run", "bad.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr + out.stdout
    assert "bad.yaml, line 3" in out.stderr and "train.micro_batch" in out.stderr and "'eight'" in out.stderr
    assert not (tmp_path / "results").exists()
    missing = txsuite("plan", "nope.yaml", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    (tmp_path / "short.txt").write_text("far too little text to split")
    (tmp_path / "f.yaml").write_text(textwrap.dedent("""\
        name: failing
        fixed:
          model: {preset: tiny, n_layer: 1}
          data: {seq_len: 32}
          train: {steps: 2, warmup_steps: 0, micro_batch: 2}
        axes:
          data.dataset: [short.txt, markov]
        """))
    out = txsuite("run", "f.yaml", "--run-id", "x", cwd=tmp_path)
    assert out.returncode == 1
    recs = {r.config["data"]["dataset"]: r for r in RunFolder(tmp_path / "results/failing/x").records()}
    assert recs["markov"].status == "ok"
    assert recs["short.txt"].status == "failed"
    assert "ValueError" in recs["short.txt"].reason and "seq_len" in recs["short.txt"].reason
    assert "Traceback" in (tmp_path / "results/failing/x" / recs["short.txt"].log).read_text()


def test_missing_data_is_a_plan_time_error_naming_the_line(tmp_path):
    (tmp_path / "g.yaml").write_text("name: g\naxes:\n  data.dataset: [markov, ./nothing/*.txt]\n")
    out = txsuite("plan", "g.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "g.yaml, line 3, key 'data.dataset'" in out.stderr and "./nothing/*.txt" in out.stderr


def test_a_hung_cell_times_out_and_its_process_group_is_killed(tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text("name: hang\nfixed: {train: {steps: 1}}\n")
    matrix = load_matrix(path)
    pidfile = tmp_path / "child.pid"
    # a "worker" that starts a child and hangs: both must be gone after the timeout
    hang = [sys.executable, "-c",
            f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']);"
            f" open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(300)"]
    summary = run_matrix(matrix, tmp_path / "run", timeout_s=2, worker_cmd=hang)
    rec = RunFolder(tmp_path / "run").records()[0]
    assert rec.status == "timeout" and "killed" in rec.reason and summary.counts == {"timeout": 1}
    child = int(pidfile.read_text())
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
