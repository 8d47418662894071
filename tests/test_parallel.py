"""Parallel engines on this CPU (2-4 gloo ranks through the real runner: forked by the fork server
on one node, started by torchrun across nodes or with TXSUITE_FORKSERVER=0).

Correctness is proved against the single-process control: every engine trains on the same
global samples, so its loss curve must equal the control's up to the noise of fp32 reduction
order. That noise is measured, not assumed: a second single-process cell sums the same step
in another order (2 micro-batches x 2 accumulation steps instead of 1 x 4)."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from cli_helpers import txsuite

from txsuite.config.matrix import MatrixError, load_matrix
from txsuite.results import RunFolder

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
    records = RunFolder(tmp_path / "results/engines/r").records()
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
        # forked by the fork server with torchrun's environment: one OpenMP thread per rank
        assert r.env["torch_threads"] == 1 and "launch" in m["phase_s"], (r.label, r.env.get("torch_threads"))
        assert r.env["launcher"].startswith("fork server"), r.env["launcher"]
    by_schedule = {r.config["parallel"]["pp_schedule"]: r.metrics for r in parallel if r.config["parallel"]["pp"] == 2}
    assert by_schedule["1f1b"]["pp_bubble_fraction"] == pytest.approx(1 / 3)  # (p-1)/(m+p-1), m=2
    assert by_schedule["interleaved-1f1b"]["pp_bubble_fraction"] == pytest.approx(1 / 5)  # v=2 virtual stages
    assert by_schedule["interleaved-1f1b"]["pp_stages"] == 4
    zero = {r.config["parallel"]["zero_stage"]: r.metrics for r in parallel if r.config["parallel"]["engine"] == "deepspeed"}
    assert set(zero) == {2, 3}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["forkserver", "torchrun"])
def test_a_killed_rank_fails_the_cell_and_takes_its_peers_down(tmp_path, launcher):
    (tmp_path / "k.yaml").write_text(textwrap.dedent("""\
        name: killrank
        fixed:
          model: {preset: tiny}
          data: {dataset: markov, seq_len: 64, symbols: 16}
          train: {steps: 3000, warmup_steps: 1, micro_batch: 2}
          parallel: {engine: ddp, dp: 2}
        """))
    env = dict(os.environ, TXSUITE_FORKSERVER="1" if launcher == "forkserver" else "0")
    runner = subprocess.Popen([sys.executable, "-m", "txsuite.cli", "run", "k.yaml", "--run-id", "r"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log = tmp_path / "results/killrank/r/cells"
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.5)
        logs = list(log.rglob("log.txt")) if log.exists() else []
        if logs and "[txsuite step 5/" in logs[0].read_text():
            victim = _rank_pid(1, log)
    assert victim is not None, "rank 1 never started training"
    os.kill(victim, signal.SIGKILL)
    output, _ = runner.communicate(timeout=120)
    assert runner.returncode == 1, output
    (record,) = RunFolder(tmp_path / "results/killrank/r").records()
    assert record.status == "failed"
    assert record.reason.startswith("rank 1 ended first: exit -9 (SIGKILL)"), record.reason
    assert _rank_pid(0, log) is None  # rank 0 did not outlive its peer


@pytest.mark.parametrize("exitcode_line", [
    "exitcode  : -9 (pid: 4242)",   # torch 2.11: the signal only in the traceback line
    "exitcode  : -9 (SIGKILL)",     # other versions name it beside the code
])
def test_the_launchers_root_cause_names_the_signal_whatever_torchrun_prints(tmp_path, exitcode_line):
    from txsuite.run.runner import _launcher_root_cause
    log = tmp_path / "log.txt"
    log.write_text("noise\nRoot Cause (first observed failure):\n[0]:\n  time      : 2026-11-29_10:37:31\n"
                   f"  host      : h\n  rank      : 1 (local_rank: 1)\n  {exitcode_line}\n"
                   "  error_file: <N/A>\n  traceback : Signal 9 (SIGKILL) received by PID 4242\n")
    assert _launcher_root_cause(log) == "rank 1 ended first: exit -9 (SIGKILL)"
    log.write_text("Root Cause (first observed failure):\n  rank      : 0 (local_rank: 0)\n  exitcode  : 1 (pid: 7)\n")
    assert _launcher_root_cause(log) == "rank 0 ended first: exit 1"


def _rank_pid(rank: int, log_dir) -> int | None:
    """The pid of the live worker with this RANK, from the line each worker prints first into its
    cell's log (ranks are forked by the fork server or started by torchrun: no command line or
    start-up environment names them either way)."""
    for log in log_dir.rglob("log.txt") if log_dir.exists() else []:
        found = re.search(rf"\[txsuite worker\] pid (\d+) rank {rank} ", log.read_text(errors="replace"))
        if found and os.path.exists(f"/proc/{found.group(1)}") and not _zombie(int(found.group(1))):
            return int(found.group(1))
    return None


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


# --- fast checks of the pieces, in one process ------------------------------------------------

@pytest.mark.parametrize("text, key, fragments", [
    ("parallel: {engine: ddp, dp: 2, tp: 2}", "parallel.tp", ["does not compose", "fsdp"]),
    ("parallel: {engine: deepspeed, dp: 2, pp: 2}", "parallel.pp", ["PipelineModule"]),
    ("parallel: {engine: fsdp, dp: 2, zero_stage: 2}", "parallel.zero_stage", ["needs engine 'deepspeed'"]),
    ("parallel: {engine: deepspeed, dp: 2, offload: optimizer}", "parallel.offload", ["stages 1-3"]),
    ("parallel: {engine: deepspeed, dp: 2, zero_stage: 2, offload: optimizer+params}", "parallel.offload",
     ["only under ZeRO stage 3"]),
    ("parallel: {tp: 3}", "parallel.tp", ["does not divide the 4 attention heads"]),
    ("parallel: {pp: 3}", "parallel.pp", ["model has 2 layers"]),
    ("parallel: {pp: 2, pp_schedule: interleaved-1f1b}", "parallel.pp", ["needs 4 stages"]),
    ("{parallel: {pp: 2, pp_microbatches: 3}, train: {micro_batch: 8}}", "parallel.pp_microbatches",
     ["does not split into 3", "divisor of train.micro_batch"]),
    ("{parallel: {engine: deepspeed, dp: 2}, precision: bf16-pure}", "precision", ["fp32, bf16, fp16"]),
    ("{parallel: {pp: 2}, precision: fp16}", "precision", ["bf16"]),
])
def test_impossible_layouts_are_rejected_at_plan_time(tmp_path, text, key, fragments):
    path = tmp_path / "m.yaml"
    fixed = text if text.startswith("{") else "{" + text + "}"
    path.write_text(f"name: x\nfixed: {fixed}\n")
    with pytest.raises(MatrixError) as info:
        load_matrix(path)
    assert info.value.key == key, str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_a_tensor_parallel_cell_needs_no_data_parallel_engine(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: x\nfixed: {parallel: {tp: 2, pp: 1}}\n")
    (cell,) = load_matrix(path).cells
    assert cell.config.parallel.world_size == 2 and not cell.skip_reason


def test_bubble_fraction_follows_the_schedule_formula():
    from txsuite.techniques.pipeline import bubble_fraction
    assert bubble_fraction(pp=4, n_microbatches=4) == pytest.approx(3 / 7)
    assert bubble_fraction(pp=4, n_microbatches=4, virtual=2) == pytest.approx(3 / 11)
    assert bubble_fraction(pp=1, n_microbatches=8) == 0


def test_layers_split_into_contiguous_balanced_stages():
    from txsuite.techniques.pipeline import layer_bounds
    assert layer_bounds(4, 2) == [(0, 2), (2, 4)]
    assert layer_bounds(5, 3) == [(0, 2), (2, 4), (4, 5)]
    assert [hi - lo for lo, hi in layer_bounds(12, 4)] == [3, 3, 3, 3]


def test_stage_modules_compose_to_the_whole_model():
    import torch
    from txsuite.model import GPT
    from txsuite.model.gpt import GPTConfig
    from txsuite.techniques.pipeline import layer_bounds, stage_module

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, max_seq_len=16, n_layer=4, n_head=2, d_model=32, d_ff=64))
    x = torch.randint(0, 32, (2, 16))
    bounds = layer_bounds(4, 3)
    stages = [stage_module(model, lo, hi, first=i == 0, last=i == 2) for i, (lo, hi) in enumerate(bounds)]
    h = x
    for stage in stages:
        h = stage(h)
    torch.testing.assert_close(h, model(x), rtol=0, atol=0)
    assert stages[0].lm_head is None and stages[2].tok_emb is None and len(stages[1].blocks) == 1


def test_grouping_heads_lets_each_column_shard_compute_its_own_heads():
    """The tensor-parallel split without processes: shard r of the regrouped qkv computes q, k
    and v of heads r*H/tp...; the row-wise halves of proj then sum to the full attention output."""
    import copy

    import torch
    from txsuite.model.gpt import CausalSelfAttention, GPTConfig
    from txsuite.techniques.tensor_parallel import group_heads_by_rank

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=8, max_seq_len=8, n_layer=1, n_head=4, d_model=32, d_ff=64)
    attn = CausalSelfAttention(cfg)
    x = torch.randn(2, 8, 32)
    full = attn(x)
    tp = 2
    grouped = copy.deepcopy(attn)
    group_heads_by_rank(grouped.qkv, tp)
    total = torch.zeros_like(full)
    for r in range(tp):
        shard = copy.deepcopy(grouped)
        rows = slice(r * 48, (r + 1) * 48)  # 3 * 32 / tp output rows
        cols = slice(r * 16, (r + 1) * 16)  # 32 / tp input features of proj
        shard.qkv = torch.nn.Linear(32, 48)
        shard.qkv.weight.data, shard.qkv.bias.data = grouped.qkv.weight[rows], grouped.qkv.bias[rows]
        shard.proj = torch.nn.Linear(16, 32, bias=r == 0)  # the row-wise bias is added once
        shard.proj.weight.data = grouped.proj.weight[:, cols]
        if r == 0:
            shard.proj.bias.data = grouped.proj.bias
        total += shard(x)
    torch.testing.assert_close(total, full, rtol=1e-5, atol=1e-6)


def test_deepspeed_config_carries_the_cell():
    from txsuite.config.spec import CellConfig, ParallelSpec, TrainSpec
    from txsuite.techniques.deepspeed import deepspeed_config

    cell = CellConfig(train=TrainSpec(micro_batch=4, grad_accum=3, grad_clip=0.5), precision="bf16",
                      parallel=ParallelSpec(engine="deepspeed", dp=2, zero_stage=3, offload="optimizer+params"))
    cpu = deepspeed_config(cell, "cpu")
    assert cpu["train_batch_size"] == 4 * 3 * 2 and cpu["gradient_accumulation_steps"] == 3
    assert cpu["gradient_clipping"] == 0.5 and cpu["bf16"] == {"enabled": True} and not cpu["fp16"]["enabled"]
    assert cpu["zero_optimization"]["stage"] == 3
    assert cpu["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cpu["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert cpu["zero_force_ds_cpu_optimizer"] is False  # no 3.5-minute C++ build on a CPU host
    gpu = deepspeed_config(cell, "cuda")
    assert "zero_force_ds_cpu_optimizer" not in gpu and gpu["zero_optimization"]["offload_param"]["pin_memory"]


def test_comm_share_merges_overlapping_transfers():
    from txsuite.measure.comm import COMM_EVENT, busy_share
    assert busy_share([(0, 10), (5, 15), (20, 30)], 100) == pytest.approx(0.25)
    assert busy_share([], 10) == 0 and busy_share([(0, 50)], 10) == 1.0
    assert all(COMM_EVENT.search(n) for n in ("gloo:all_reduce", "nccl:all_gather", "ncclDevKernel_AllReduce"))
    assert not COMM_EVENT.search("aten::mm")


def test_memory_estimate_divides_what_each_layout_shards():
    from txsuite.config.estimate import estimate_memory
    from txsuite.config.spec import CellConfig, ModelSpec, ParallelSpec

    def est(**parallel):
        return estimate_memory(CellConfig(model=ModelSpec(preset="small"), parallel=ParallelSpec(**parallel)))

    single = est()
    zero = {stage: est(engine="deepspeed", dp=2, zero_stage=stage) for stage in (0, 1, 2, 3)}
    assert zero[0]["optimizer_bytes"] == single["optimizer_bytes"]
    assert zero[1]["optimizer_bytes"] == single["optimizer_bytes"] // 2
    assert zero[2]["grads_bytes"] == single["grads_bytes"] // 2 and zero[1]["grads_bytes"] == single["grads_bytes"]
    assert zero[3]["params_bytes"] == single["params_bytes"] // 2
    assert est(engine="fsdp", dp=2)["optimizer_bytes"] == single["optimizer_bytes"] // 2
    tp = est(tp=2)
    assert tp["params_bytes"] < single["params_bytes"] and tp["activations_bytes"] < single["activations_bytes"]
    pp = est(pp=2)
    assert pp["params_bytes"] < single["params_bytes"] and pp["activations_bytes"] < single["activations_bytes"]


@pytest.mark.slow
def test_two_nodes_run_a_distributed_cell_and_only_node_0_records(tmp_path):
    """Two `txsuite run` processes stand for two hosts (each its own results folder): node 0
    leads and records, node 1 joins the distributed cell through torchrun's static rendezvous."""
    matrix = textwrap.dedent("""\
        name: nodes
        fixed:
          model: {preset: tiny}
          data: {dataset: markov, seq_len: 64, symbols: 16}
          train: {steps: 6, warmup_steps: 3, micro_batch: 4, lr: 1.0e-3}
        include:
          - {parallel: {engine: ddp, dp: 2}, train: {micro_batch: 2}}
          - {parallel: {engine: fsdp, dp: 3}, train: {micro_batch: 2}}
        """)
    for node in ("n0", "n1"):
        (tmp_path / node).mkdir()
        (tmp_path / node / "m.yaml").write_text(matrix)
    port = 29500 + os.getpid() % 1000
    args = [sys.executable, "-m", "txsuite.cli", "run", "m.yaml", "--run-id", "r", "--nnodes", "2",
            "--rdzv-endpoint", f"127.0.0.1:{port}"]
    follower = subprocess.Popen(args + ["--node-rank", "1"], cwd=tmp_path / "n1", stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    leader = txsuite(*args[3:], "--node-rank", "0", cwd=tmp_path / "n0")
    follower_out, _ = follower.communicate(timeout=120)
    assert leader.returncode == 0, leader.stdout + leader.stderr
    assert follower.returncode == 0 and "joined 1 distributed cell" in follower_out, follower_out
    records = {r.config["parallel"]["engine"]: r for r in RunFolder(tmp_path / "n0/results/nodes/r").records()}
    assert records["ddp"].status == "ok" and records["ddp"].metrics["world_size"] == 2
    assert records["ddp"].env["launcher"].startswith("torchrun")  # across nodes: torchrun's rendezvous
    assert _gap(_curve(records["ddp"]), _curve(records["none"])) < 1e-5
    assert records["fsdp"].status == "skipped" and "do not split evenly over the 2 nodes" in records["fsdp"].reason
    assert not (tmp_path / "n1/results/nodes/r/records.jsonl").exists()
    assert (tmp_path / "n1/results/nodes/r/node1.done").read_text().split() == [records["ddp"].cell_id, "0"]


def test_multi_node_options_are_checked_before_anything_runs(tmp_path):
    (tmp_path / "m.yaml").write_text("name: x\nfixed: {parallel: {engine: ddp, dp: 2}}\n")
    out = txsuite("run", "m.yaml", "--nnodes", "2", "--node-rank", "2", cwd=tmp_path)
    assert out.returncode == 2
    for fragment in ("--node-rank must be below --nnodes 2", "--rdzv-endpoint must be node 0's HOST:PORT",
                     "--run-id is needed"):
        assert fragment in out.stderr + out.stdout
    assert not (tmp_path / "results").exists()


def test_the_report_pairs_each_distributed_cell_with_its_single_process_control():
    from txsuite.config.record import Record
    from txsuite.report.formatting import bytes_
    from txsuite.report.parallel_view import parallel_section
    from txsuite.config.spec import CellConfig, ParallelSpec, TrainSpec

    def record(cell_id, config, curve, val, **metrics):
        return Record(matrix="m", run_id="r", cell_id=cell_id, repeat=0, config=config.to_dict(), status="ok",
                      label=cell_id, metrics={"loss_curve": [[i + 1, 0.1 * i, v] for i, v in enumerate(curve)],
                                              "val_loss": val, "samples_per_step": 8, "tokens_per_s": 100.0,
                                              "peak_mem_bytes": 1, **metrics})

    control = record("single", CellConfig(train=TrainSpec(micro_batch=8)), [3.0, 2.5, 2.0], 2.1)
    ddp = record("ddp", CellConfig(train=TrainSpec(micro_batch=4), parallel=ParallelSpec(engine="ddp", dp=2)),
                 [3.0, 2.5 + 2e-6, 2.0], 2.1 + 1e-7, comm_share=0.25, per_rank_peak_mem_bytes=[5, 7])
    other_lr = record("lr", CellConfig(train=TrainSpec(micro_batch=4, lr=1.0), parallel=ParallelSpec(engine="ddp", dp=2)),
                      [3.0, 2.9, 2.8], 2.7)
    section = parallel_section([control, ddp, other_lr])
    rows = {row[0].text: row for row in section["table"].rows}
    assert list(rows) == ["single", "ddp", "lr"] and section["table"].row_classes[0] == "reference"
    assert rows["ddp"][8].text == "2.0e-06" and rows["ddp"][6].text == "25.0%"
    assert rows["ddp"][5].text == bytes_(7)  # the largest rank's memory
    assert section["missing_control"] == ["lr"]  # another learning rate is not the same training
    assert parallel_section([control]) is None


@pytest.mark.slow
def test_three_dimensional_layouts_reproduce_the_control(tmp_path):
    """dp x tp x pp = 2 x 2 x 2 (8 gloo ranks on this 2-core host) and tp x pp without data
    parallelism: the mesh, the tied-embedding sync, the per-mesh norm groups and the pp norm
    reduction all at once."""
    (tmp_path / "d.yaml").write_text(textwrap.dedent("""\
        name: threed
        fixed:
          model: {preset: tiny, n_layer: 4}
          data: {dataset: markov, seq_len: 64, symbols: 16}
          train: {steps: 6, warmup_steps: 3, micro_batch: 4, lr: 1.0e-3}
        include:
          - {parallel: {engine: fsdp, dp: 2, tp: 2, pp: 2}, train: {micro_batch: 2}}
          - {parallel: {tp: 2, pp: 2}}
        constant: [tokens_per_step]
        """))
    out = txsuite("run", "d.yaml", "--run-id", "r", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    control, *layouts = RunFolder(tmp_path / "results/threed/r").records()
    assert [r.metrics["world_size"] for r in layouts] == [8, 4]
    # 32 fp32 ulps at the loss's scale: reduction order over up to 8 ranks moves the loss by a
    # few ulps (measured: 7e-7 = ~2 ulps); any real difference in the maths is orders larger
    tolerance = 32 * 1.19e-7 * max(_curve(control))
    for r in layouts:
        assert _gap(_curve(r), _curve(control)) < tolerance, (r.label, _gap(_curve(r), _curve(control)))
        assert len(r.metrics["per_rank_peak_mem_bytes"]) == r.metrics["world_size"]
