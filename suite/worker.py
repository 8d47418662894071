"""Runs one cell repetition in its own process and writes its result (L3).

    python -m suite.worker CELL_JSON RESULT_JSON

CELL_JSON holds {"config": resolved cell config, ...}; RESULT_JSON receives
{"status", "reason", "metrics", "env"} (written atomically). The runner turns that into the
record. Anything this process cannot report (killed, hung, crashed before writing) the runner
reports from the outside.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path

from suite.measure.memory import host_current_rss_bytes, host_peak_rss_bytes
from suite.measure.stats import summarize_steps
from suite.record import Unsupported
from suite.spec import CellConfig
from suite.store import write_atomic


class Diverged(Exception):
    """Loss became non-finite or exploded; carries the curve so far for the record."""

    def __init__(self, message: str, loss_curve: list):
        super().__init__(message)
        self.loss_curve = loss_curve


# A loss this many times the first step's loss is an explosion, not noise: at initialisation the
# loss is about ln(vocab), and a healthy run only falls from there.
EXPLODE_FACTOR = 4.0
EVAL_BATCH = 8  # sequences per validation batch (train.eval_batches of them)


def run_cell(cell: CellConfig, gpu_memory_limit: int | None = None) -> dict:
    """Train and measure one cell. gpu_memory_limit: bytes torch may allocate on the GPU
    (`txsuite run --memory-limit` for a CUDA cell), None for the whole device."""
    import numpy as np
    import torch

    from suite.compress import CompressContext, apply_during_training, finish_after_training
    from suite.data import build_dataset
    from suite.measure.nvml import Telemetry
    from suite.measure.peak import peak_flops, utilization
    from suite.model import GPT, flops_per_token, resolve_model
    from suite.techniques import TrainSetup, apply_all
    from suite.techniques.compilation import eager
    from suite.techniques.mesh import build_mesh, coordinate
    from suite.trainer import build_optimizer, build_schedule, val_losses

    device = torch.device(cell.device)
    env = device_fingerprint(torch, device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Unsupported("device 'cuda' was asked for but torch sees no CUDA device on this host")
    if cell.precision == "tf32" and device.type != "cuda":
        raise Unsupported("tf32 is a CUDA tensor-core matmul mode; on cpu it would silently be fp32")

    _, world = init_distributed(torch, cell, device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if device.type == "cuda" and gpu_memory_limit:
        # the caching allocator refuses to grow past this share of the device (OutOfMemoryError:
        # the cell is `oom`), as if the GPU were that small; the CUDA context is not counted
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_memory_limit / total), device)
    t = cell.train
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)
    rss_start = host_current_rss_bytes()

    dataset = build_dataset(cell.data, seed=t.seed)
    model_cfg = resolve_model(cell.model, dataset.vocab_size, cell.data.seq_len)
    model = GPT(model_cfg).to(device)  # the same initial weights on every rank (same seed)
    n_params = model.num_params()
    mesh = build_mesh(cell, device)
    setup = apply_all(TrainSetup(model=model, device=device, mesh=mesh), cell)
    del model  # setup holds what this rank trains; under pipelining, the other stages' blocks go
    setup = apply_during_training(setup, cell)  # QAT, fp8, prune-while-training: before the optimizer
    optimizer = build_optimizer(setup.model, t, device)
    trainer = make_trainer(setup, optimizer, build_schedule(optimizer, t), cell)
    # tp ranks and pipeline stages of one data-parallel replica read the same samples
    dp_rank = coordinate(mesh, "dp")
    batches = step_batches(dataset, t.micro_batch, t.grad_accum, t.seed, rank=dp_rank, dp=cell.parallel.dp,
                           pin=device.type == "cuda")
    # The same validation windows for every cell, whatever its micro-batch: val losses compare.
    val_batches = dataset.val_batches(EVAL_BATCH, t.eval_batches)
    rss_before_train = host_current_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    total_steps = t.warmup_steps + t.steps
    target = t.target_loss
    comm = CommWindow(world, t.warmup_steps, device.type)
    telemetry = Telemetry.for_device(torch, device)  # NVML in a background thread; nulls without it
    try:
        loss_curve, evals, step_times, reached, train_wall = _train_loop(
            torch, cell, trainer, setup, batches, val_batches, sync, comm, telemetry, world)
    finally:
        # energy of the measured steps only: the window was restarted after the warm-up
        telemetry_fields = telemetry.stop(tokens=t.steps * cell.tokens_per_step // world)

    peak_rss = host_peak_rss_bytes()  # read before evaluation/peak measurement can add to it
    metrics = summarize_steps(step_times, cell.tokens_per_step, cell.samples_per_step)
    metrics.update(telemetry_fields)
    if device.type == "cuda":
        from suite.measure.memory import cuda_memory
        metrics.update(cuda_memory(torch, device))
        metrics["peak_mem_bytes"] = metrics["cuda_max_reserved_bytes"]
    else:
        metrics["peak_mem_bytes"] = peak_rss
    if world == 1:  # per-sequence losses too, for paired comparisons between cells
        val_loss, val_seq = val_losses(eager(setup.model), val_batches, device, setup.autocast)
    else:
        val_loss, val_seq = trainer.evaluate(val_batches), None
    evals.append([total_steps, round(train_wall, 6), val_loss])
    if t.eval_every and target is not None and reached is None and val_loss <= target:
        reached = (total_steps, train_wall)
    if world == 1:
        # Post-training compression, then the model's quality, size and inference speed (for an
        # uncompressed cell too: it is the dense control the compressed cells compare with).
        # The latest evaluation keeps its per-sequence losses: compression evaluates the
        # compressed model last (CompressContext.evaluate).
        latest: dict[str, list[float]] = {}

        def evaluate(module) -> float:
            mean, latest["per_sequence"] = val_losses(module, val_batches, device, setup.autocast)
            return mean

        metrics.update(finish_after_training(CompressContext(
            model=setup.model, cell=cell, device=device, evaluate=evaluate,
            train_batches=batches, dense_val_loss=val_loss,
            make_optimizer=lambda module: build_optimizer(module, t, device), autocast=setup.autocast,
            step_hooks=setup.step_hooks)))
        compressed = metrics.get("compressed_val_loss")
        if compressed is not None and compressed != val_loss:
            # the cell's model is the compressed one: its val_loss is the compressed model's,
            # and the trained model's is kept beside it (the eval curve ends with it)
            metrics["trained_val_loss"] = val_loss
            val_loss = compressed
            val_seq = latest["per_sequence"]

    if world > 1:  # memory is per rank, throughput global: keep every rank's view
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, {"peak_mem_bytes": metrics["peak_mem_bytes"],
                                                       "step_time_p50_s": metrics["step_time_p50_s"]})
        metrics["per_rank_peak_mem_bytes"] = [g["peak_mem_bytes"] for g in gathered]
        metrics["per_rank_step_time_p50_s"] = [g["step_time_p50_s"] for g in gathered]
        metrics["peak_mem_bytes"] = max(metrics["per_rank_peak_mem_bytes"])
    metrics["world_size"] = world
    metrics["comm_share"] = comm.share
    metrics["comm_share_steps"] = comm.steps
    metrics["tokens_per_s_per_device"] = metrics["tokens_per_s"] / world
    recompute = setup.facts.get("recompute_layers", 0)
    if world > 1:  # pipeline stages each recompute their own blocks: count the whole model's
        total = torch.tensor(float(recompute), device=device)
        torch.distributed.all_reduce(total)
        recompute = setup.facts["recompute_layers"] = round(float(total) / (cell.parallel.dp * cell.parallel.tp))
    flops = flops_per_token(model_cfg, cell.data.seq_len, recompute)
    peak = peak_flops(torch, device, cell.precision, env["device_name"])
    achieved = metrics["tokens_per_s"] * flops["train"]
    # the peak is one rank's (one device, or this rank's CPU threads); the run used `world`
    mfu, hfu = utilization(metrics["tokens_per_s"], flops["train"], flops["hardware"], peak["peak_flops"], world)
    mfu_nominal, _ = utilization(metrics["tokens_per_s"], flops["train"], None, peak.get("nominal_peak_flops"), world)
    metrics.update({
        "host_rss_peak_bytes": peak_rss,
        "host_rss_start_bytes": rss_start,
        "host_rss_before_train_bytes": rss_before_train,
        "loss_curve": loss_curve,
        "eval_curve": evals,
        "step_times_s": [round(s, 6) for s in step_times],
        "val_loss": val_loss,
        "val_ppl": math.exp(val_loss) if val_loss < 700 else None,
        # mean loss of each fixed validation sequence (the same windows in every cell)
        "val_seq_losses": None if val_seq is None else [round(v, 7) for v in val_seq],
        "optimal_loss": dataset.optimal_loss,
        "time_to_target_s": reached[1] if reached else None,
        "steps_to_target": reached[0] if reached else None,
        "target_metric": None if target is None else ("val_loss" if t.eval_every else "train_loss"),
        "train_wall_s": train_wall,
        "tokens_per_step": cell.tokens_per_step,
        "samples_per_step": cell.samples_per_step,
        "params": n_params,
        "flops_per_token": flops["train"],
        "achieved_flops": achieved,
        "peak_flops": peak["peak_flops"],
        "peak_flops_key": peak["peak_key"],
        "mfu": mfu,
        "hfu": hfu,
        "nominal_peak_flops": peak.get("nominal_peak_flops"),
        "mfu_nominal": mfu_nominal,
        "data": dataset.info,
        **setup.facts,
    })
    return {"status": "ok", "reason": None, "metrics": metrics, "env": env}


def _train_loop(torch, cell: CellConfig, trainer, setup, batches, val_batches, sync, comm, telemetry, world):
    """Warm-up and measured steps. Returns (loss_curve, evals, step_times, reached, train_wall)."""
    t = cell.train
    loss_curve: list[list[float]] = []
    evals: list[list[float]] = []
    step_times: list[float] = []
    target = t.target_loss
    reached: tuple[int, float] | None = None
    train_wall = 0.0  # training time only: evaluation pauses this clock
    total_steps = t.warmup_steps + t.steps
    for step in range(total_steps):
        if step == t.warmup_steps:
            telemetry.mark()  # the previous step synced: energy/clocks from here are the measured steps'
        comm.before(step)
        start = time.perf_counter()
        loss_t = trainer.step(batches)
        for hook in setup.step_hooks:
            hook(step + 1)
        sync()  # the one host sync per step, needed to time it
        elapsed = time.perf_counter() - start
        comm.after(step)
        train_wall += elapsed
        if world > 1:  # after the clock: the curve shows the mean loss of the ranks that hold one
            loss_t = global_mean(torch, loss_t, trainer.holds_loss)
        loss = float(loss_t)
        loss_curve.append([step + 1, round(train_wall, 6), loss])
        # after the clock stopped: one line per step for the log and the live progress display
        print(f"[txsuite step {step + 1}/{total_steps}] loss {loss:.4f}", flush=True)
        if step >= t.warmup_steps:
            step_times.append(elapsed)
        if not math.isfinite(loss):
            raise Diverged(f"training loss became {loss} at step {step + 1}", loss_curve)
        if loss > EXPLODE_FACTOR * loss_curve[0][2]:
            raise Diverged(f"training loss exploded to {loss:.4g} at step {step + 1} "
                           f"(more than {EXPLODE_FACTOR:g}x the first step's {loss_curve[0][2]:.4g})", loss_curve)
        if t.eval_every and (step + 1) % t.eval_every == 0 and step + 1 < total_steps:
            with telemetry.paused():  # evaluation is outside train_wall, so outside energy per token too
                eval_loss = trainer.evaluate(val_batches)
            evals.append([step + 1, round(train_wall, 6), eval_loss])
            if target is not None and reached is None and evals[-1][2] <= target:
                reached = (step + 1, train_wall)
        elif not t.eval_every and target is not None and reached is None and loss <= target:
            reached = (step + 1, train_wall)

    return loss_curve, evals, step_times, reached, train_wall


def make_trainer(setup, optimizer, schedule, cell: CellConfig):
    """The step loop for how the cell is parallelised: DeepSpeed's engine, a pipeline
    schedule, or the plain step (one process, DDP, FSDP, tensor parallel)."""
    t = cell.train
    if cell.parallel.engine == "deepspeed":
        from suite.trainer_deepspeed import DeepSpeedTrainer
        return DeepSpeedTrainer(setup, optimizer, schedule, cell)
    if setup.pipeline is not None:
        from suite.trainer_pipeline import PipelineTrainer
        return PipelineTrainer(setup, optimizer, schedule, t.grad_accum, t.grad_clip)
    from suite.trainer import Trainer
    return Trainer(setup, optimizer, schedule, t.grad_accum, t.grad_clip)


def global_mean(torch, value, holds: bool):
    """Mean of `value` over the ranks where `holds` (e.g. the last pipeline stages)."""
    pair = torch.stack([value.float() * holds, torch.ones_like(value, dtype=torch.float32) * holds])
    torch.distributed.all_reduce(pair)
    return pair[0] / pair[1]


class CommWindow:
    """Profiles the last (up to 3) warm-up steps after the first for the communication share
    (suite.measure.comm): warm-up steps are untimed, so the profiler never slows a measured
    step. None in one process, or with fewer than 2 warm-up steps."""

    def __init__(self, world: int, warmup_steps: int, device_type: str):
        self.first = max(1, warmup_steps - 3)
        self.end = warmup_steps  # exclusive
        self.enabled = world > 1 and self.end > self.first
        self.device_type = device_type
        self.share = None
        self.steps = 0
        self._profiler = None

    def before(self, step: int) -> None:
        if self.enabled and step == self.first:
            from suite.measure.comm import CommProfiler
            self._profiler = CommProfiler(self.device_type)
            self._profiler.start()

    def after(self, step: int) -> None:
        if self._profiler is not None and step == self.end - 1:
            self.share = self._profiler.stop()
            self.steps = self.end - self.first
            self._profiler = None


def step_batches(dataset, micro_batch: int, grad_accum: int, seed: int, rank: int = 0, dp: int = 1,
                 pin: bool = False):
    """Micro-batches in training order. The samples of one optimizer step (all dp ranks) are
    drawn together, identically on every rank, and this rank takes its contiguous share before
    splitting it; so cells with the same samples per step train on identical data whatever
    their micro-batch x accumulation x data-parallel split. pin: page-locked host memory, so
    the trainer's non_blocking copies to a GPU really overlap (a no-op request otherwise)."""
    share = micro_batch * grad_accum
    for x, y in dataset.train_batches(share * dp, seed=seed):  # [dp * B * k, T] each
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        yield from zip(x.split(micro_batch), y.split(micro_batch))


def init_distributed(torch, cell: CellConfig, device) -> tuple[int, int]:
    """(rank, world size). Under torchrun join the process group: gloo on CPU, nccl on CUDA
    (DeepSpeed through its own init_distributed, which then shares the torch group)."""
    if "WORLD_SIZE" not in os.environ or not cell.parallel.distributed:
        return 0, 1
    import torch.distributed as dist
    backend = "nccl" if device.type == "cuda" else "gloo"
    if cell.parallel.engine == "deepspeed":
        import deepspeed
        deepspeed.init_distributed(dist_backend=backend)
    elif not dist.is_initialized():
        dist.init_process_group(backend)
    if dist.get_world_size() != cell.parallel.world_size:
        raise RuntimeError(f"launched with {dist.get_world_size()} ranks but dp*tp*pp = {cell.parallel.world_size}")
    return dist.get_rank(), dist.get_world_size()


def device_fingerprint(torch, device) -> dict:
    env = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        env.update({
            "device_name": props.name,
            "cuda_capability": f"{props.major}.{props.minor}",
            "cuda_runtime": torch.version.cuda,
            "gpu_memory_bytes": props.total_memory,
        })
    else:
        from suite.measure.env import cpu_model
        env["device_name"] = cpu_model()
        env["mkldnn"] = torch.backends.mkldnn.is_available()
    return env


def main(argv: list[str]) -> int:
    cell_path, result_path = Path(argv[0]), Path(argv[1])
    payload = json.loads(cell_path.read_text())
    cell = CellConfig.from_dict(payload["config"])
    memory_limit = payload.get("memory_limit_bytes")
    if cell.device != "cuda":  # a CUDA cell's limit is on the device (run_cell): the CUDA context
        _apply_memory_limit(memory_limit)  # reserves more address space than any host cap allows
    print(f"[txsuite worker] pid {os.getpid()} cell {payload.get('cell_id')} {payload.get('label', '')}",
          flush=True)
    try:
        result = run_cell(cell, gpu_memory_limit=memory_limit if cell.device == "cuda" else None)
    except Unsupported as exc:
        result = {"status": "skipped", "reason": str(exc), "metrics": {}, "env": {}}
    except Diverged as exc:
        result = {"status": "diverged", "reason": str(exc), "metrics": {"loss_curve": exc.loss_curve}, "env": {}}
    except Exception as exc:  # noqa: BLE001 - every failure becomes a record, with its traceback in the log
        traceback.print_exc()
        status = "oom" if _is_oom(exc) else "failed"
        result = {"status": status, "reason": f"{type(exc).__name__}: {exc}"[:2000], "metrics": {}, "env": {}}
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 writes the record's result
        write_atomic(result_path, json.dumps(result, allow_nan=True))
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def _apply_memory_limit(limit: int | None) -> None:
    """`txsuite run --memory-limit` for a CPU cell: let this process hold about `limit` bytes, to
    see which cells would fit a smaller machine (allocations beyond it fail and the cell is recorded as `oom`).

    The only unprivileged hard cap is the address space (RLIMIT_AS), and address space is not
    memory: a CUDA build of torch maps ~2.5 GB of libraries it never touches (VmSize 3.0 GB
    against 0.6 GB for the CPU build, both at import). So torch is imported first and the
    address space mapped then but not resident is granted on top: the limit then charges what
    is resident (interpreter, libraries) and everything mapped afterwards, whichever build."""
    if limit:
        import resource

        import torch  # noqa: F401 - its mappings are part of the baseline below

        from suite.measure.memory import mapped_not_resident_bytes
        cap = int(limit) + mapped_not_resident_bytes()
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _is_oom(exc: BaseException) -> bool:
    name = type(exc).__name__
    text = str(exc).lower()
    return (name == "OutOfMemoryError" or isinstance(exc, MemoryError) or "out of memory" in text
            or "can't allocate memory" in text)  # torch's CPU allocator when the address space runs out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
