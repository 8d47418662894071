"""Faults a cell can hit get their own status, and the sweep goes on (or stops, with
--fail-fast); --retry-failed re-runs only what did not finish well."""
import subprocess
import sys
import textwrap

import psutil

from txsuite.results import RunFolder
from cli_helpers import txsuite




FAULTS = textwrap.dedent("""\
    name: faults
    fixed:
      model: {preset: tiny, n_layer: 1}
      data: {dataset: markov, seq_len: 128, symbols: 16}
      train: {steps: 4, warmup_steps: 1, micro_batch: 2, lr_warmup_steps: 0}
    include:                                    # the healthy default cell runs first, then:
      - {train.lr: 1.0e+6}                      # diverges
      - {train.micro_batch: 4096}               # far beyond the memory cap below
      - {train.lr: 1.0e-3}                      # healthy, runs after both
    """)


def test_diverged_and_oom_get_their_status_and_the_next_cell_runs(tmp_path):
    (tmp_path / "f.yaml").write_text(FAULTS)
    out = txsuite("run", "f.yaml", "--run-id", "x", "--memory-limit", "3GiB", "--no-predict-skip", cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    recs = RunFolder(tmp_path / "results/faults/x").records()
    by_label = {r.label: r for r in recs}
    diverged = next(r for r in recs if "1000000" in r.label or "1e+06" in r.label)
    assert diverged.status == "diverged", diverged.reason
    assert "loss" in diverged.reason and diverged.metrics["loss_curve"]  # the curve up to the blow-up is kept
    oom = next(r for r in recs if "4096" in r.label)
    assert oom.status == "oom", oom.reason
    healthy = next(r for r in recs if "0.001" in r.label)
    assert healthy.status == "ok"
    assert by_label["default"].status == "ok" and len(by_label) == 4


def test_fail_fast_stops_and_retry_failed_reruns_only_failures(tmp_path):
    (tmp_path / "f.yaml").write_text(FAULTS)
    first = txsuite("run", "f.yaml", "--run-id", "y", "--fail-fast", cwd=tmp_path)
    assert first.returncode == 1 and "stopped early" in first.stdout
    store = RunFolder(tmp_path / "results/faults/y")
    assert [r.status for r in store.records()] == ["ok", "diverged"]
    # resume without the flag: finished cells are kept, the rest run
    second = txsuite("run", "f.yaml", "--run-id", "y", "--memory-limit", "3GiB", "--no-predict-skip", cwd=tmp_path)
    assert "2 repetitions were already finished" in second.stdout
    assert sorted(r.status for r in store.records()) == ["diverged", "ok", "ok", "oom"]
    ok_before = {r.cell_id: r.finished_at for r in store.records() if r.status == "ok"}
    # --retry-failed: only the two bad cells run again (and fail again); ok ones are untouched
    third = txsuite("run", "f.yaml", "--run-id", "y", "--retry-failed", "--memory-limit", "3GiB", "--no-predict-skip", cwd=tmp_path)
    assert "2 repetitions were already finished" in third.stdout
    recs = store.records()
    assert len(recs) == 4 and sorted(r.status for r in recs) == ["diverged", "ok", "ok", "oom"]
    assert {r.cell_id: r.finished_at for r in recs if r.status == "ok"} == ok_before


def test_kill_9_of_the_runner_then_the_same_command_finishes_every_cell_once(tmp_path):
    import signal
    import time
    (tmp_path / "k.yaml").write_text(textwrap.dedent("""\
        name: killed
        fixed:
          model: {preset: tiny, n_layer: 1}
          data: {dataset: markov, seq_len: 64, symbols: 16}
          train: {steps: 150, warmup_steps: 1, micro_batch: 4}
          measure: {threads: 1}
        axes:
          train.seed: [1, 2, 3]
        """))
    # One thread: a second would only contend with the tests beside this one. 150 steps: about a
    # second of training per cell. With 30 steps a warm worker finished the other two cells inside
    # the second this test used to wait, and the kill found nothing to cut.
    runner = subprocess.Popen([sys.executable, "-m", "txsuite.cli", "run", "k.yaml"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the first finished cell, then kill mid-sweep
        found = list((tmp_path / "results/killed").glob("*/records.jsonl"))
        if found:
            records = found[0]
            break
        time.sleep(0.2)
    assert records is not None
    # A cell runs in a process forked by the runner's fork server (txsuite/run/forkserver.py):
    # wait until the runner has both, then kill it mid-cell.
    descendants: list[psutil.Process] = []
    while time.monotonic() < deadline and len(descendants) < 2:
        descendants = psutil.Process(runner.pid).children(recursive=True)
        time.sleep(0.05)
    assert len(descendants) >= 2, "no cell was running after the first record"
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    _, alive = psutil.wait_procs(descendants, timeout=10)
    assert not alive  # the fork server and the running cell died with the runner (PDEATHSIG)
    done_before = len(RunFolder(records.parent).records())
    assert 1 <= done_before < 3
    again = txsuite("run", "k.yaml", cwd=tmp_path)  # same command, no run id: resumes that run
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming" in again.stdout
    recs = RunFolder(records.parent).records()
    assert sorted(r.config["train"]["seed"] for r in recs) == [1, 2, 3]
    assert all(r.status == "ok" for r in recs)


def test_after_an_oom_larger_cells_on_the_same_axis_are_skipped(tmp_path):
    (tmp_path / "o.yaml").write_text(textwrap.dedent("""\
        name: oomplan
        fixed:
          model: {preset: tiny, n_layer: 1}
          data: {dataset: markov, seq_len: 128, symbols: 16}
          train: {steps: 2, warmup_steps: 0}
        axes:
          train.micro_batch: [2, 4096, 8192]
        """))
    out = txsuite("run", "o.yaml", "--run-id", "z", "--memory-limit", "3GiB", "--no-predict-skip", cwd=tmp_path)
    recs = {r.config["train"]["micro_batch"]: r for r in RunFolder(tmp_path / "results/oomplan/z").records()}
    assert (recs[2].status, recs[4096].status, recs[8192].status) == ("ok", "oom", "skipped"), out.stdout
    assert recs[4096].cell_id in recs[8192].reason and "ran out of memory" in recs[8192].reason
    assert out.returncode == 1


def test_oom_rule_needs_all_else_equal():
    from txsuite.config.matrix import PlannedCell as Cell
    from txsuite.run.runner import _needs_more_than_an_oom
    from txsuite.config.spec import CellConfig, DataSpec, TrainSpec

    def cell(mb, seq, lr=1e-3):
        return Cell(CellConfig(train=TrainSpec(micro_batch=mb, lr=lr), data=DataSpec(seq_len=seq)), f"{mb}/{seq}", "axes")
    oom = cell(8, 256)
    assert _needs_more_than_an_oom(cell(16, 256), [oom]) is oom
    assert _needs_more_than_an_oom(cell(8, 512), [oom]) is oom
    assert _needs_more_than_an_oom(cell(8, 256), [oom]) is None        # the same cell is re-measured
    assert _needs_more_than_an_oom(cell(16, 128), [oom]) is None       # smaller on another axis
    assert _needs_more_than_an_oom(cell(16, 256, lr=1e-4), [oom]) is None  # differs elsewhere


def test_memory_estimate_tracks_the_techniques():
    from txsuite.config.estimate import estimate_memory
    from txsuite.config.spec import CellConfig, MemorySpec, ModelSpec, TrainSpec
    base = CellConfig(model=ModelSpec(preset="small"), train=TrainSpec(micro_batch=8))
    e = estimate_memory(base)
    # AdamW state is twice the parameters plus one fp32 step counter per parameter tensor;
    # gradients equal the parameters
    from txsuite.config.estimate import parameter_shapes
    counters = 4 * len(parameter_shapes(base, 256))
    assert e["optimizer_bytes"] == 2 * e["params_bytes"] + counters and e["params_bytes"] == e["grads_bytes"]
    full = estimate_memory(CellConfig(model=base.model, train=base.train,
                                      memory=MemorySpec(activation_checkpointing="full")))
    assert full["activations_bytes"] < 0.5 * e["activations_bytes"]
    double = estimate_memory(CellConfig(model=base.model, train=TrainSpec(micro_batch=16)))
    assert double["activations_bytes"] == 2 * e["activations_bytes"]
    pure = estimate_memory(CellConfig(model=base.model, train=base.train, precision="bf16-pure"))
    assert pure["params_bytes"] * 2 == e["params_bytes"]
