"""Parallel engines on this CPU (2-4 gloo ranks launched by torchrun through the real runner).

Correctness is proved against the single-process control: every engine trains on the same
global samples, so its loss curve must equal the control's up to the noise of fp32 reduction
order. That noise is measured, not assumed: a second single-process cell sums the same step
in another order (2 micro-batches x 2 accumulation steps instead of 1 x 4)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from cli_helpers import txsuite

from suite.store import RunStore

ENGINE_MATRIX = """\
    name: engines
    fixed:
      model: {preset: tiny, n_layer: 4}
      data: {dataset: markov, seq_len: 64, symbols: 16}
      train: {steps: 10, warmup_steps: 3, micro_batch: 4, grad_accum: 1, lr: 1.0e-3}
    include:
      - {train: {micro_batch: 2, grad_accum: 2}}                                  # reduction-order noise
      - {parallel: {engine: ddp, dp: 2}, train: {micro_batch: 1, grad_accum: 2}}
      - {parallel: {engine: fsdp, dp: 2}, train: {micro_batch: 2}}
      - {parallel: {tp: 2}}
      - {parallel: {pp: 2, pp_schedule: 1f1b}, train: {micro_batch: 2, grad_accum: 2}}
      - {parallel: {pp: 2, pp_schedule: interleaved-1f1b}}
      - {parallel: {engine: deepspeed, dp: 2, zero_stage: 2}, train: {micro_batch: 2}}
      - {parallel: {engine: deepspeed, dp: 2, zero_stage: 3}, train: {micro_batch: 1, grad_accum: 2}}
      - {parallel: {engine: fsdp, dp: 2, tp: 2}, train: {micro_batch: 1, grad_accum: 2}}   # 2-D, 4 ranks
    constant: [tokens_per_step]
    """


def _curve(record):
    return [point[2] for point in record.metrics["loss_curve"]]


def _gap(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.mark.slow
def test_every_engine_reproduces_the_single_process_curve(tmp_path):
    (tmp_path / "e.yaml").write_text(textwrap.dedent(ENGINE_MATRIX))
    out = txsuite("run", "e.yaml", "--run-id", "r", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    records = RunStore(tmp_path / "results/engines/r").records()
    assert len(records) == 10 and all(r.status == "ok" for r in records), [(r.label, r.reason) for r in records]

    def single(micro_batch):
        return next(r for r in records if r.config["parallel"]["engine"] == "none"
                    and r.config["parallel"]["tp"] == r.config["parallel"]["pp"] == 1
                    and r.config["train"]["micro_batch"] == micro_batch)

    control = _curve(single(4))
    noise = _gap(_curve(single(2)), control)
    # 10x the measured reordering noise, and never below a few fp32 ulps of the loss
    tolerance = 10 * noise + 8 * 1.2e-7 * max(control)
    assert control[-1] < control[0] - 0.3  # the loss fell: matching curves mean something

    parallel = [r for r in records if r.metrics["world_size"] > 1]
    assert len(parallel) == 8
    for r in parallel:
        p, m = r.config["parallel"], r.metrics
        assert _gap(_curve(r), control) <= tolerance, (r.label, _gap(_curve(r), control), tolerance)
        assert m["val_loss"] == pytest.approx(single(4).metrics["val_loss"], abs=tolerance + 1e-6), r.label
        world = p["dp"] * p["tp"] * p["pp"]
        assert m["world_size"] == world and len(m["per_rank_peak_mem_bytes"]) == world
        assert m["tokens_per_s_per_device"] == pytest.approx(m["tokens_per_s"] / world)
        assert 0 < m["comm_share"] <= 1, r.label  # the profiled warm-up steps saw collectives
    by_schedule = {r.config["parallel"]["pp_schedule"]: r.metrics for r in parallel if r.config["parallel"]["pp"] == 2}
    assert by_schedule["1f1b"]["pp_bubble_fraction"] == pytest.approx(1 / 3)  # (p-1)/(m+p-1), m=2
    assert by_schedule["interleaved-1f1b"]["pp_bubble_fraction"] == pytest.approx(1 / 5)  # v=2 virtual stages
    assert by_schedule["interleaved-1f1b"]["pp_stages"] == 4
    zero = {r.config["parallel"]["zero_stage"]: r.metrics for r in parallel if r.config["parallel"]["engine"] == "deepspeed"}
    assert set(zero) == {2, 3}


@pytest.mark.slow
def test_a_killed_rank_fails_the_cell_and_takes_its_peers_down(tmp_path):
    (tmp_path / "k.yaml").write_text(textwrap.dedent("""\
        name: killrank
        fixed:
          model: {preset: tiny}
          data: {dataset: markov, seq_len: 64, symbols: 16}
          train: {steps: 3000, warmup_steps: 1, micro_batch: 2}
          parallel: {engine: ddp, dp: 2}
        """))
    runner = subprocess.Popen([sys.executable, "-m", "suite.cli", "run", "k.yaml", "--run-id", "r"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "results/killrank/r/cells"
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.5)
        logs = list(log.rglob("log.txt")) if log.exists() else []
        if logs and "[txsuite step 5/" in logs[0].read_text():
            victim = _rank_pid(1, "results/killrank/")
    assert victim is not None, "rank 1 never started training"
    os.kill(victim, signal.SIGKILL)
    output, _ = runner.communicate(timeout=120)
    assert runner.returncode == 1, output
    (record,) = RunStore(tmp_path / "results/killrank/r").records()
    assert record.status == "failed"
    assert record.reason.startswith("rank 1 ended first: exit -9 (SIGKILL)"), record.reason
    assert _rank_pid(0, "results/killrank/") is None  # rank 0 did not outlive its peer


def _rank_pid(rank: int, marker: str):
    """The pid of the worker process with this RANK whose command line mentions `marker`."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if "suite.worker" in cmdline and marker in cmdline and f"RANK={rank}".encode() in environ:
            return int(pid)
    return None
