"""Executors: cells through submitit (its local backend stands in for a Slurm cluster), and
single-GPU cells spread one per device on a multi-GPU host."""
import sys
import textwrap

import pytest
from cli_helpers import txsuite

from txsuite.run.executors import LocalExecutor, host_gpu_ids
from txsuite.config.host import Host
from txsuite.config.matrix import load_matrix
from txsuite.run.runner import run_matrix
from txsuite.results import RunFolder


def test_submitit_executor_runs_every_cell_as_a_job(tmp_path):
    pytest.importorskip("submitit", reason="the Slurm executor is optional (pip install submitit)")
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""\
        name: jobs
        fixed:
          model: {preset: tiny, n_layer: 1}
          data: {dataset: markov, seq_len: 32, symbols: 16}
          train: {steps: 3, warmup_steps: 1, micro_batch: 2}
        axes:
          train.seed: [1, 2]
        """))
    out = txsuite("run", "s.yaml", "--run-id", "j", "--executor", "submitit-local", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    run = tmp_path / "results/jobs/j"
    recs = RunFolder(run).records()
    assert sorted(r.config["train"]["seed"] for r in recs) == [1, 2]
    assert all(r.status == "ok" and r.metrics["tokens_per_s"] > 0 for r in recs)
    assert all("[txsuite worker]" in (run / r.log).read_text() for r in recs)  # the job's output is kept
    assert list((run / "submitit").iterdir())  # submitit's own job folder


FAKE_WORKER = """\
import json, os, sys, time
start = time.time(); time.sleep(1.0)
json.dump({"status": "ok", "metrics": {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start,
           "order": os.environ.get("CUDA_DEVICE_ORDER"),
           "end": time.time()}, "env": {}}, open(sys.argv[2], "w"))
"""


def run_on_two_fake_gpus(tmp_path, device: str, seeds: int):
    """Run `seeds` cells on `device` of a host with 2 (pretend) GPUs, through FAKE_WORKER."""
    path = tmp_path / "m.yaml"
    path.write_text(f"name: fake\nfixed: {{device: {device}}}\naxes: {{train.seed: {list(range(seeds))}}}\n")
    matrix = load_matrix(path, host=Host(has_cuda=True, gpu_count=2))
    (tmp_path / "fake.py").write_text(FAKE_WORKER)
    ids, gpu_env = host_gpu_ids(2, env={})  # two GPUs by nvidia-smi, no CUDA_VISIBLE_DEVICES
    run_matrix(matrix, tmp_path / "run", executor=LocalExecutor(gpu_ids=ids, gpu_env=gpu_env),
               worker_cmd=[sys.executable, str(tmp_path / "fake.py")])
    return RunFolder(tmp_path / "run").records()


def test_single_gpu_cells_run_concurrently_one_per_device(tmp_path):
    recs = run_on_two_fake_gpus(tmp_path, "cuda", seeds=4)
    assert len(recs) == 4 and all(r.status == "ok" for r in recs)
    spans = sorted((r.metrics["start"], r.metrics["end"], r.metrics["gpu"]) for r in recs)
    # two at a time, each on its own device: the first two overlap and differ in device
    assert spans[0][2] != spans[1][2] and spans[1][0] < spans[0][1]
    assert {s[2] for s in spans} == {"0", "1"}
    # and never two on one device at once
    for gpu in ("0", "1"):
        mine = [s for s in spans if s[2] == gpu]
        assert all(a[1] <= b[0] for a, b in zip(mine, mine[1:]))


def test_cells_get_devices_in_nvidia_smis_numbering(tmp_path):
    recs = run_on_two_fake_gpus(tmp_path, "cuda", seeds=2)
    assert {r.metrics["order"] for r in recs} == {"PCI_BUS_ID"}  # nvidia-smi's index = CUDA's index


@pytest.mark.parametrize("env, ids, extra", [
    ({}, ["0", "1", "2", "3"], {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
    ({"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}, ["0", "1", "2", "3"], {}),  # the caller's order is kept
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, ["2", "3"], {}),  # a scheduler's share: only those, as meant
    ({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}, ["GPU-aa", "GPU-bb"], {}),
    ({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, ["1"], {}),  # CUDA stops at the first invalid entry
    ({"CUDA_VISIBLE_DEVICES": ""}, [], {}),  # every device hidden
])
def test_the_gpus_a_run_may_use(env, ids, extra):
    assert host_gpu_ids(4, env=env) == (ids, extra)


def test_cpu_cells_never_share_the_host(tmp_path):
    a, b = sorted((r.metrics["start"], r.metrics["end"]) for r in run_on_two_fake_gpus(tmp_path, "cpu", seeds=2))
    assert a[1] <= b[0]


def test_a_distributed_cell_wider_than_the_hosts_gpus_is_skipped(tmp_path):
    """One rank per GPU: a dp=4 cell on a 2-GPU host cannot run and must not try."""
    path = tmp_path / "m.yaml"
    path.write_text("name: wide\nfixed: {device: cuda}\ninclude:\n  - {parallel: {engine: ddp, dp: 2}}\n"
                    "  - {parallel: {engine: ddp, dp: 4}}\n")
    matrix = load_matrix(path, host=Host(has_cuda=True, gpu_count=2))
    (tmp_path / "fake.py").write_text(FAKE_WORKER)
    run_matrix(matrix, tmp_path / "run", executor=LocalExecutor(gpu_ids=["0", "1"]),
               worker_cmd=[sys.executable, str(tmp_path / "fake.py")])
    by_dp = {r.config["parallel"]["dp"]: r for r in RunFolder(tmp_path / "run").records()}
    assert by_dp[2].status == "ok"
    assert by_dp[4].status == "skipped" and "need as many GPUs, and this host has 2" in by_dp[4].reason


def test_a_cells_start_and_end_arriving_together_are_both_read(tmp_path):
    """The fork server answers twice per cell: when it started and when it ended. A short cell's
    two answers can reach the runner in one read; the second must be taken from what was read,
    not waited for until the cell's timeout (this once failed a cell as timed out under load)."""
    server = tmp_path / "quick_server.py"
    server.write_text(textwrap.dedent("""\
        import json, os, sys
        print(json.dumps({"ready": os.getpid(), "ranks": True}), flush=True)
        for line in sys.stdin:
            pid = os.fork()
            if pid == 0:
                os.setsid()
                os._exit(3)
            os.waitpid(pid, 0)
            # both answers in one write: the runner reads them in one chunk
            sys.stdout.write(json.dumps({"pid": pid}) + "\\n" + json.dumps({"pid": pid, "status": 3}) + "\\n")
            sys.stdout.flush()
        """))
    executor = LocalExecutor()
    try:
        for _ in range(3):  # and the buffer is left empty for the next cell
            outcome = executor.execute_forked((str(server),), ["c.json", "r.json"], {}, tmp_path / "log.txt",
                                              timeout=20)
            assert outcome is not None and (outcome.returncode, outcome.timed_out) == (3, False), outcome
    finally:
        executor.close()


def test_a_fork_server_that_cannot_launch_ranks_is_not_given_a_distributed_cell(tmp_path):
    """A fork server of an older checkout (txsuite ab's base side) does not announce that it
    launches ranks; it would run a distributed cell as one process. The executor must then say
    "not forked" (None), so the runner starts the cell with torchrun instead — and still fork
    single-process cells to it."""
    old_server = tmp_path / "old_server.py"
    old_server.write_text(textwrap.dedent("""\
        import json, os, sys
        print(json.dumps({"ready": os.getpid()}), flush=True)  # no "ranks": an older protocol
        for line in sys.stdin:
            pid = os.fork()
            if pid == 0:  # a cell of its own process group, as the real server's
                os.setsid()
                os._exit(0)
            print(json.dumps({"pid": pid}), flush=True)
            os.waitpid(pid, 0)
            print(json.dumps({"pid": pid, "status": 0}), flush=True)
        """))
    executor = LocalExecutor()
    launch = (str(old_server),)  # the server is started as: python old_server.py txsuite.run.forkserver
    try:
        log = tmp_path / "log.txt"
        assert executor.execute_forked(launch, ["c.json", "r.json"], {}, log, timeout=300, ranks=2) is None
        single = executor.execute_forked(launch, ["c.json", "r.json"], {}, log, timeout=300)
        assert single is not None and single.returncode == 0 and not single.timed_out
    finally:
        executor.close()
