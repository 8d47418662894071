"""Runs one cell repetition in its own process and writes its result (L5).

    python -m txsuite.run.worker CELL_JSON RESULT_JSON

CELL_JSON holds {"config": resolved cell config, ...}; RESULT_JSON receives
{"status", "reason", "metrics", "env"} (written atomically). The runner turns that into the
record. Anything this process cannot report (killed, hung, crashed before writing) the runner
reports from the outside.

The life of a cell, one function per phase (`run_cell` calls them in order):
    start      join the process group, pick the device, check the host, cap GPU memory
    build      txsuite.train.build_training: data, model, techniques, optimizer, trainer
    train      warm-up and measured steps, with telemetry and the communication window
    evaluate   the final validation loss (per sequence too, in one process)
    finish     what techniques registered for after training (post-training compression)
    measure    throughput, memory, FLOPs and MFU from what the phases returned
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from txsuite.config.record import Unsupported
from txsuite.config.spec import CellConfig
from txsuite.measure.memory import TrainingWindow, host_current_rss_bytes, host_peak_rss_bytes, minor_page_faults
from txsuite.measure.stats import summarize_steps
from txsuite.results.folder import write_atomic
from txsuite.train.loop import Diverged


@dataclass
class Started:
    device: Any  # torch.device this rank trains on
    env: dict[str, Any]  # the device fingerprint for the record
    world: int  # ranks in the process group (1 without one)
    rss_start: int  # resident bytes before data and model were built


@dataclass
class Trained:
    result: Any  # txsuite.train.TrainResult
    telemetry: dict[str, Any]  # NVML fields of the measured steps (nulls without NVML)
    machine: dict[str, Any]  # the machine-state probe around the measured steps
    counters: dict[str, Any]  # what one (untimed) step dispatched: operators, FLOPs, bytes
    comm_share: float | None
    comm_steps: int
    rss_before_train: int
    train_peak_rss: int | None  # the high-water mark of the training steps alone (None: not measurable here)
    peak_rss: int  # read right after training, before evaluation can add to it
    rss_after_train: int  # what the process holds then: weights, gradients, optimizer state, caches
    probe_s: float  # wall seconds of the machine-state probe before and after the measured steps


@dataclass
class FinalEval:
    val_loss: float
    val_seq: list[float] | None  # per validation sequence; single-process cells only
    evals: list[list[float]]  # the eval curve, ending with the final evaluation
    reached: tuple[int, float] | None


def run_cell(cell: CellConfig, gpu_memory_limit: int | None = None, checkpoint_dir: str | None = None) -> dict:
    """Train and measure one cell. gpu_memory_limit: bytes torch may allocate on the GPU
    (`txsuite run --memory-limit` for a CUDA cell), None for the whole device. checkpoint_dir:
    where to save the trained weights (before any post-training compression changes them)."""
    from txsuite.train import build_training

    clock = PhaseClock()
    with clock("start"):
        started = start(cell, gpu_memory_limit)
    # `txsuite ab` in lockstep: the build (its one-time host trials) and every step in turns
    gate = LockstepGate.open(cell.train.warmup_steps) if started.world == 1 else None
    try:
        if gate is not None:
            gate.wait_for_go()  # outside the build's clock: waiting is not building
        with clock("build"):
            training = build_training(cell, started.device, world=started.world)
        if gate is not None:
            gate.send("built")
        with clock("train"):
            trained = train(training, started, gate)
    finally:
        if gate is not None:
            gate.close()
    with clock("evaluate"):
        final = evaluate(training, trained)
    saved = {}
    with clock("finish"):
        if checkpoint_dir:
            from txsuite.train.checkpoint import save_weights
            saved["checkpoint"] = str(save_weights(training.setup.model, Path(checkpoint_dir)))
        metrics = finish(training, final)
    metrics.update(saved)
    with clock("measure"):
        metrics.update(measure(training, started, trained, final))
    # where the cell's time went, outside the training steps too (the runner adds the launch)
    metrics["phase_s"] = {**clock.seconds, "train_steps": round(trained.result.train_wall, 3),
                          "probe": round(trained.probe_s, 3)}
    return {"status": "ok", "reason": None, "metrics": metrics, "env": started.env}


class PhaseClock:
    """Wall seconds of each named phase of a cell: `with clock("build"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def start(cell: CellConfig, gpu_memory_limit: int | None) -> Started:
    import torch

    from txsuite.config.host import host_problems
    from txsuite.measure.device import device_fingerprint, worker_host
    from txsuite.measure.host_allocator import apply_host_allocator
    from txsuite.train.distributed import init_distributed

    # first, so that every allocation of the cell (data, model, steps) is served under it
    allocator = apply_host_allocator(cell.measure.host_allocator)
    if allocator["host_allocator"] != cell.measure.host_allocator:
        # a `cache` cell run under glibc's defaults would be a `system` cell under another label
        raise Unsupported(f"measure.host_allocator: {cell.measure.host_allocator} cannot be applied here: "
                          f"{allocator['host_allocator_reason']}")
    device = torch.device(cell.device)
    if cell.measure.threads:
        torch.set_num_threads(cell.measure.threads)
    env = {**device_fingerprint(torch, device), **allocator}
    reason = host_problems(cell, worker_host(torch, device))  # the plan's rules, as torch sees the host
    if reason:
        raise Unsupported(reason)
    _, world = init_distributed(cell, device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if device.type == "cuda" and gpu_memory_limit:
        # the caching allocator refuses to grow past this share of the device (OutOfMemoryError:
        # the cell is `oom`), as if the GPU were that small; the CUDA context is not counted
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_memory_limit / total), device)
    return Started(device=device, env=env, world=world, rss_start=host_current_rss_bytes())


def train(training, started: Started, gate=None) -> Trained:
    """The warm-up and measured steps; `gate`: the lockstep gate that holds each step until
    its turn (None: none)."""
    import torch

    from txsuite.measure.comm import CommWindow
    from txsuite.measure.nvml import Telemetry
    from txsuite.train import train_steps

    device, t = started.device, training.cell.train
    build_peak = host_peak_rss_bytes()
    window = TrainingWindow().open()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    comm = CommWindow(started.world, t.warmup_steps, device.type)
    # probes between steps only where they cannot disturb: not in lockstep (the other side's step
    # may be running), not on a GPU (its steps run asynchronously to the host's probe)
    machine, probe, between = _machine_probe(torch, window, during=gate is None and device.type == "cpu")
    counter, counters = _step_counter(training, started.world)
    profiled, memory_roles = _memory_step(training, window)
    telemetry = Telemetry.for_device(torch, device)  # NVML in a background thread; nulls without it
    try:
        result = train_steps(training, sync, comm, telemetry, around_measured=probe, between_measured=between,
                             count_step=counter, memory_step=profiled, gate=gate)
    finally:
        # energy of the measured steps only: the window was restarted after the warm-up
        telemetry_fields = telemetry.stop(tokens=t.steps * training.cell.tokens_per_step // started.world)
    return Trained(result=result, telemetry=telemetry_fields, machine=machine.metrics(result.step_times),
                   counters={**counters(), **memory_roles()}, comm_share=comm.share, comm_steps=comm.steps,
                   rss_before_train=window.before, peak_rss=max(build_peak, host_peak_rss_bytes()),
                   train_peak_rss=window.peak(),
                   rss_after_train=host_current_rss_bytes(), probe_s=machine.wall_s)


# `txsuite ab` sets this to the socket of its lockstep controller (txsuite.run.lockstep, which
# spells the same name: it cannot import this module, which imports torch); empty or unset: none
LOCKSTEP_ENV = "TXSUITE_LOCKSTEP"
LOCKSTEP_PROTOCOL = 2  # 2: the build takes a turn too (1: steps only)


class LockstepLost(RuntimeError):
    """The lockstep controller went away (its job was interrupted or ended)."""


class LockstepGate:
    """This worker's end of step lockstep (txsuite.run.lockstep): the training loop's gate
    (txsuite.train.loop.NoGate) over a Unix socket to the controller, one line a message.

        worker -> controller   hello PROTOCOL PID                     once, on connecting
        controller -> worker   go                                     a turn begins
        worker -> controller   built                                  the build's turn ended
        worker -> controller   done STEP ELAPSED MEASURED START END   a step's turn ended
        worker -> controller   end                                    the closing probe's turn ended

    The worker connects before it builds, and builds in a turn of its own (the first time on a
    host, building measures kernels and peaks: two at once would spoil both). START and END
    bound a step's turn in time.perf_counter (CLOCK_MONOTONIC: one clock for every process), so
    that the turns of the two sides can be shown never to overlap. After `end` the worker waits
    for one more `go`: both sides then run free (evaluation) together."""

    def __init__(self, sock, warmup_steps: int):
        self.sock, self.warmup_steps = sock, warmup_steps
        self.replies = sock.makefile("rb")
        self.turn_start = 0.0
        self.send(f"hello {LOCKSTEP_PROTOCOL} {os.getpid()}")

    @classmethod
    def open(cls, warmup_steps: int) -> "LockstepGate | None":
        path = os.environ.get(LOCKSTEP_ENV)
        if not path:
            return None
        import socket
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise LockstepLost(f"the lockstep controller at {path} cannot be reached: {exc}") from None
        return cls(sock, warmup_steps)

    def send(self, line: str) -> None:
        try:
            self.sock.sendall(line.encode() + b"\n")
        except OSError as exc:
            raise LockstepLost(f"the lockstep controller went away: {exc}") from None

    def wait_for_go(self) -> None:
        if self.replies.readline() != b"go\n":
            raise LockstepLost("the lockstep controller went away")
        self.turn_start = time.perf_counter()

    def before(self, step: int) -> None:
        self.wait_for_go()

    def after(self, step: int, elapsed_s: float) -> None:
        self.send(f"done {step} {elapsed_s!r} {int(step >= self.warmup_steps)} {self.turn_start!r} "
                  f"{time.perf_counter()!r}")

    def end(self) -> None:
        self.send("end")
        self.wait_for_go()

    def close(self) -> None:
        self.replies.close()
        self.sock.close()


def _machine_probe(torch, window, during: bool):
    """The machine-state probe (txsuite.measure.probe): the calibration workload just before the
    first measured step and just after the last, and with `during` between measured steps every
    PROBE_INTERVAL_S of them, each folded into this host's best time at the end; between the
    first and the last, the process's minor page faults (what the kernel zero-filled for the
    steps, the probes' own left out). The probes' own memory is left out of the training
    window's peak (`window`, a TrainingWindow). Returns (the state, around(moment),
    between(step seconds) or None)."""
    from txsuite.measure.probe import MachineState, probe, record_best

    state = MachineState()
    faults_in_probes = 0

    def around(moment: str) -> None:
        with window.excluded():
            t0 = time.perf_counter()
            if moment == "start":
                state.before_s = probe(torch)
                state.faults_at_start = minor_page_faults()  # after the probe: only the steps count
            else:
                state.page_faults = minor_page_faults() - state.faults_at_start - faults_in_probes
                state.after_s = probe(torch)
                state.best_s = record_best(torch, state.probes())
            state.wall_s += time.perf_counter() - t0

    def between(step_s: float) -> None:
        nonlocal faults_in_probes
        if not state.due(step_s):
            return
        t0, faults = time.perf_counter(), minor_page_faults()
        with window.excluded():
            state.add_during(probe(torch))
        faults_in_probes += minor_page_faults() - faults
        state.wall_s += time.perf_counter() - t0
    return state, around, (between if during else None)


def _step_counter(training, world: int):
    """(context factory for the counted step or None, () -> the counters' metrics)."""
    from txsuite.config.spec import OPTIMIZERS
    from txsuite.measure.counters import StepCounter, not_counted

    cell = training.cell
    reason = None
    if cell.compile.enabled:
        reason = "not counted: a compiled model runs fused kernels the dispatcher does not see op by op"
    elif OPTIMIZERS[cell.train.optimizer].needs == "torchao":
        # torchao compiles its low-bit optimizer step, and torch.compile refuses to trace under
        # the dispatch mode that counts operators
        reason = "not counted: torchao's low-bit optimizers compile their step, which no dispatch mode can count"
    elif world > 1:
        reason = "not counted: distributed cells"
    elif cell.train.warmup_steps < 1:
        reason = "not counted: the counted step is the last warm-up step, and this cell has none"
    if reason:
        return None, lambda: not_counted(reason)
    holder: list[StepCounter] = []

    def count():
        holder.append(StepCounter())
        return holder[-1]
    return count, lambda: holder[-1].metrics() if holder else not_counted("not counted: training ended early")


def _memory_step(training, window):
    """(context factory for one warm-up step (train.loop.profiled_step) or None, () -> the memory measured by role):
    that step runs under txsuite.measure.memory_roles; after it the training window's heap is
    trimmed and its high-water mark starts again, so the profiler's own buffers never count as
    train memory, and the warm-up steps after it settle the heap before the measured steps."""
    from txsuite.measure.memory_roles import MemoryRoles

    cell = training.cell
    if not cell.measure.memory_roles:
        return None, lambda: {"memory_roles": "not measured: measure.memory_roles is false"}
    if cell.compile.enabled:  # a compiled cell's warm-up wall time is its compile_s
        return None, lambda: {"memory_roles": "not measured: compiled cells (a profiled warm-up step would "
                                              "count in compile_s)"}
    if cell.train.warmup_steps < 2:
        return None, lambda: {"memory_roles": "not measured: the profiled step is the last warm-up step but "
                                              "one, so it needs two or more, and this cell has fewer"}
    roles: list[MemoryRoles] = []

    @contextlib.contextmanager
    def measured():
        roles.append(MemoryRoles(training.setup.model, getattr(training.trainer, "optimizer", None), training.device))
        try:
            with roles[-1]:
                yield
        finally:
            # the profiler's event tree, freed before the peak starts again: its objects go as their
            # references do, and any cycle among them is young; a full collection would walk torch's
            # ~300,000 objects (0.17 s a cell) and find nothing more (docs/measurements.md)
            gc.collect(1)
            window.restart_peak()
    return measured, lambda: roles[-1].metrics() if roles else {"memory_roles": "not measured: training ended early"}


def evaluate(training, trained: Trained) -> FinalEval:
    t, result = training.cell.train, trained.result
    evaluation = training.trainer.evaluate(training.val_batches, per_sequence=training.world == 1)
    evals = result.evals + [[t.total_steps, round(result.train_wall, 6), evaluation.loss]]
    reached = result.reached
    if t.eval_every and t.target_loss is not None and reached is None and evaluation.loss <= t.target_loss:
        reached = (t.total_steps, result.train_wall)
    return FinalEval(val_loss=evaluation.loss, val_seq=evaluation.per_sequence, evals=evals, reached=reached)


def finish(training, final: FinalEval) -> dict[str, Any]:
    """The techniques' after-training work (post-training compression, then the model's size and
    inference speed; the dense control too, since compressed cells compare with it). When it
    leaves a different model, that model is the cell's: its validation loss becomes the cell's
    and the trained model's is kept as `trained_val_loss`. Updates `final` in place."""
    from txsuite.techniques.compression import AfterTraining
    from txsuite.techniques.linear_kernel import training_kernel
    from txsuite.train.evaluation import val_losses
    from txsuite.train.finetune import finetune

    setup, cell, device = training.setup, training.cell, training.device
    if not setup.after_training:
        return {}
    latest: dict[str, list[float]] = {}
    finetuned: dict[str, str] = {}

    def evaluate_module(module) -> float:
        mean, latest["per_sequence"] = val_losses(module, training.val_batches, device, setup.autocast)
        return mean

    def run_finetune(module, steps, objective, after_step):
        with training_kernel(module, setup.facts.get("linear")) as kernel:  # the steps run training's kernel
            finetuned["finetune_linear"] = kernel
            return finetune(module, steps, training.batches, cell.train, device, objective, setup.autocast, after_step)

    context = AfterTraining(model=setup.model, cell=cell, device=device, evaluate=evaluate_module,
                            train_batches=training.batches, dense_val_loss=final.val_loss, finetune=run_finetune,
                            autocast=setup.autocast, step_hooks=setup.step_hooks)
    metrics: dict[str, Any] = {}
    for work in setup.after_training:
        metrics.update(work(context))
    metrics.update(finetuned)
    compressed = metrics.get("compressed_val_loss")
    if compressed is not None and compressed != final.val_loss:
        # the latest evaluation is the compressed model's (AfterTraining.evaluate's contract)
        metrics["trained_val_loss"] = final.val_loss
        final.val_loss, final.val_seq = compressed, latest["per_sequence"]
    return metrics


def measure(training, started: Started, trained: Trained, final: FinalEval) -> dict[str, Any]:
    """The record's metrics from the phases' results: throughput and step times, memory,
    communication, FLOPs and MFU against this host's measured peak."""
    import torch

    from txsuite.measure.peak import memory_bandwidth, peak_flops, utilization
    from txsuite.model import flops_per_token

    cell, setup, device, world = training.cell, training.setup, started.device, started.world
    result = trained.result
    metrics = summarize_steps(result.step_times, cell.tokens_per_step, cell.samples_per_step)
    metrics.update(trained.telemetry)
    metrics.update(trained.machine)
    if metrics.get("host_page_faults") is not None and metrics.get("measured_steps"):
        metrics["host_page_faults_per_step"] = metrics["host_page_faults"] / metrics["measured_steps"]
    metrics.update(trained.counters)
    if training.trainer.noise_scale is not None:
        metrics.update(training.trainer.noise_scale.metrics(cell.data.seq_len))
    metrics["optimizer_state_bytes"] = optimizer_state(training.trainer)
    metrics.update(getattr(getattr(training.trainer, "optimizer", None), "facts", {}))  # e.g. muon_ns_dtype
    if training.augmenter is not None:
        metrics.update(training.augmenter.metrics())
    if hasattr(training.trainer.objective, "metrics"):
        metrics.update(training.trainer.objective.metrics())
    if cell.train.init != "scratch":
        metrics["init_checkpoint"] = cell.train.init
    if device.type == "cuda":
        from txsuite.measure.memory import cuda_memory
        metrics.update(cuda_memory(torch, device))
        metrics["peak_mem_bytes"] = metrics["cuda_max_reserved_bytes"]
    else:
        metrics["peak_mem_bytes"] = trained.peak_rss
    if world > 1:  # memory is per rank, throughput global: keep every rank's view
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, {"peak_mem_bytes": metrics["peak_mem_bytes"],
                                                       "step_time_p50_s": metrics["step_time_p50_s"]})
        metrics["per_rank_peak_mem_bytes"] = [g["peak_mem_bytes"] for g in gathered]
        metrics["per_rank_step_time_p50_s"] = [g["step_time_p50_s"] for g in gathered]
        metrics["peak_mem_bytes"] = max(metrics["per_rank_peak_mem_bytes"])
    # the memory the cell controls: what training added to the process (CPU), or what torch's
    # allocator held for tensors at its peak (CUDA); the rest is the interpreter and libraries
    metrics["train_mem_bytes"] = (metrics.get("cuda_max_allocated_bytes") if device.type == "cuda"
                                  else max(0, (trained.train_peak_rss or trained.peak_rss) - trained.rss_before_train))
    metrics["world_size"] = world
    metrics["comm_share"] = trained.comm_share
    metrics["comm_share_steps"] = trained.comm_steps
    metrics["tokens_per_s_per_device"] = metrics["tokens_per_s"] / world
    recompute = setup.facts.get("recompute_layers", 0)
    if world > 1:  # pipeline stages each recompute their own blocks: count the whole model's
        total = torch.tensor(float(recompute), device=device)
        torch.distributed.all_reduce(total)
        recompute = setup.facts["recompute_layers"] = round(float(total) / (cell.parallel.dp * cell.parallel.tp))
    flops = flops_per_token(training.model_cfg, cell.data.seq_len, recompute)
    # what this rank achieved in model FLOP/s: a cached peak below it was measured in a bad moment
    achieved = metrics["tokens_per_s"] * flops["train"] / world if metrics.get("tokens_per_s") else None
    peak = peak_flops(torch, device, cell.precision, started.env["device_name"], at_least=achieved)
    # the peak is one rank's (one device, or this rank's CPU threads); the run used `world`
    mfu, hfu = utilization(metrics["tokens_per_s"], flops["train"], flops["hardware"], peak["peak_flops"], world)
    mfu_nominal, _ = utilization(metrics["tokens_per_s"], flops["train"], None, peak.get("nominal_peak_flops"), world)
    t, val_loss = cell.train, final.val_loss
    metrics.update({
        "host_rss_peak_bytes": trained.peak_rss,
        "host_rss_start_bytes": started.rss_start,
        "host_rss_before_train_bytes": trained.rss_before_train,
        "host_rss_after_train_bytes": trained.rss_after_train,
        "loss_curve": result.loss_curve,
        "eval_curve": final.evals,
        "step_times_s": [round(s, 6) for s in result.step_times],
        "step_cpu_times_s": [round(s, 6) for s in result.step_cpu_times],
        "val_loss": val_loss,
        "val_ppl": math.exp(val_loss) if val_loss < 700 else None,
        # mean loss of each fixed validation sequence (the same windows in every cell)
        "val_seq_losses": None if final.val_seq is None else [round(v, 7) for v in final.val_seq],
        "optimal_loss": training.dataset.optimal_loss,
        "time_to_target_s": final.reached[1] if final.reached else None,
        "steps_to_target": final.reached[0] if final.reached else None,
        "target_metric": None if t.target_loss is None else ("val_loss" if t.eval_every else "train_loss"),
        "target_loss": t.target_loss,
        "stopped_at_target_step": result.stopped_at,
        "seed": t.seed,
        "train_wall_s": result.train_wall,
        "warmup_wall_s": round(result.warmup_wall, 6),
        "compile_s": compile_seconds(cell, result),
        "tokens_per_step": cell.tokens_per_step,
        "samples_per_step": cell.samples_per_step,
        "params": training.n_params,
        "flops_per_token": flops["train"],
        "achieved_flops": metrics["tokens_per_s"] * flops["train"],
        "peak_flops": peak["peak_flops"],
        "peak_flops_key": peak["peak_key"],
        "peak_remeasured": peak["peak_remeasured"],
        "mfu_peak": peak["peak"],  # the peak mfu divides by: value, dtype, key, when measured, spread
        "mfu": mfu,
        "hfu": hfu,
        "nominal_peak_flops": peak.get("nominal_peak_flops"),
        "mfu_nominal": mfu_nominal,
        # one rank's memory bandwidth (measured once per host: txsuite.measure.peak), which the
        # plan's roofline divides a step's bytes by
        "memory_bandwidth": memory_bandwidth(torch, device, started.env["device_name"])["memory_bandwidth"],
        "data": training.dataset.info,
        **setup.facts,
    })
    return metrics


def compile_seconds(cell, result) -> float | None:
    """torch.compile's cost, measured: the warm-up steps' wall time minus what the same number of
    steps take once compiled (the measured median). Compilation happens on the first call and on
    any recompilation, all inside the untimed warm-up. None for eager cells, and for a compiled
    cell without warm-up steps or measured steps (then there is nothing to subtract from)."""
    if not cell.compile.enabled or not result.step_times or cell.train.warmup_steps < 1:
        return None
    steady = float(statistics.median(result.step_times))
    return round(max(0.0, result.warmup_wall - cell.train.warmup_steps * steady), 3)


def optimizer_state(trainer) -> int | None:
    """This rank's optimizer state bytes (txsuite.train.optimizers.state_bytes), or None where the
    engine's optimizer keeps no per-parameter `state` mapping to read (DeepSpeed's offloaded
    CPU Adam keeps its own)."""
    from txsuite.train.optimizers import state_bytes
    optimizer = getattr(trainer, "optimizer", None)
    optimizers = optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]
    try:
        return sum(state_bytes(o) for o in optimizers if o is not None)
    except (AttributeError, TypeError):
        return None


def main(argv: list[str]) -> int:
    from txsuite.train.distributed import leave_process_group

    cell_path, result_path = Path(argv[0]), Path(argv[1])
    payload = json.loads(cell_path.read_text())
    if payload.get("kind") == "host_trials":  # the sweep's one-time host measurements (txsuite.run.host_setup)
        from txsuite.train.host_trials import measure_host
        write_atomic(result_path, json.dumps(measure_host(payload)))
        return 0
    memory_limit = payload.get("memory_limit_bytes")
    print(f"[txsuite worker] pid {os.getpid()} rank {os.environ.get('RANK', '0')} cell {payload.get('cell_id')} "
          f"{payload.get('label', '')}", flush=True)
    try:
        cell = as_repetition(CellConfig.from_dict(payload["config"]), payload)
        if cell.device != "cuda":  # a CUDA cell's limit is on the device (start): the CUDA context
            _apply_memory_limit(memory_limit)  # reserves more address space than any host cap allows
        result = run_cell(cell, gpu_memory_limit=memory_limit if cell.device == "cuda" else None,
                          checkpoint_dir=payload.get("checkpoint_dir"))
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
    leave_process_group()
    return 0


def as_repetition(cell: CellConfig, payload: dict) -> CellConfig:
    """The cell as this repetition trains it, from what the runner resolved: its seed (seeds: N
    gives each repetition one; it sets initialisation and data order), an auto target (None: not
    known yet, the cell runs its full budget and the report measures the target afterwards),
    and for train.init: cell:<...> the checkpoint folder of that cell's repetition."""
    import dataclasses
    t = cell.train
    changes: dict[str, Any] = {}
    if payload.get("seed") is not None:
        changes["seed"] = int(payload["seed"])
    if t.auto_target:
        changes["target_loss"] = payload.get("target_loss")
    if t.init_cell is not None:
        if not payload.get("init_path"):
            raise ValueError(f"train.init {t.init!r}: the runner gave no checkpoint for it")
        changes["init"] = payload["init_path"]
    return dataclasses.replace(cell, train=dataclasses.replace(t, **changes)) if changes else cell


def _apply_memory_limit(limit: int | None) -> None:
    """`txsuite run --memory-limit` for a CPU cell: let this process hold about `limit` bytes, to
    see which cells would fit a smaller machine (allocations beyond it fail and the cell is recorded as `oom`).

    The only unprivileged hard cap is the address space (RLIMIT_AS), and address space is not
    memory: a CUDA build of torch maps gigabytes of libraries it never touches (its VmSize at
    import is several times the CPU build's; docs/measurements.md, "`--memory-limit`"). So
    torch is imported first and the
    address space mapped then but not resident is granted on top: the limit then charges what
    is resident (interpreter, libraries) and everything mapped afterwards, whichever build."""
    if limit:
        import resource

        import torch  # noqa: F401 - its mappings are part of the baseline below

        from txsuite.measure.memory import mapped_not_resident_bytes
        cap = int(limit) + mapped_not_resident_bytes()
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _is_oom(exc: BaseException) -> bool:
    """Out of memory, however it surfaced: torch's OutOfMemoryError, Python's MemoryError, an OS
    call refused with ENOMEM (reading a source file under a tight --memory-limit), or torch's
    CPU allocator's words when the address space runs out."""
    import errno
    name = type(exc).__name__
    text = str(exc).lower()
    return (name == "OutOfMemoryError" or isinstance(exc, MemoryError)
            or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)
            or "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
