"""The training loop of a cell: warm-up steps, then measured steps, with evaluations between
them that the training clock does not count."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from txsuite.train.distributed import global_mean

# A loss this many times the first step's loss is an explosion, not noise: at initialisation the
# loss is about ln(vocab), and a healthy run only falls from there.
EXPLODE_FACTOR = 4.0


class Diverged(Exception):
    """Loss became non-finite or exploded; carries the curve so far for the record."""

    def __init__(self, message: str, loss_curve: list):
        super().__init__(message)
        self.loss_curve = loss_curve


@dataclass
class TrainResult:
    loss_curve: list[list[float]] = field(default_factory=list)  # [step, train wall s, loss], every step
    evals: list[list[float]] = field(default_factory=list)  # [step, train wall s, val loss]
    step_times: list[float] = field(default_factory=list)  # seconds of each measured step
    # CPU seconds of this process (all its threads) in each measured step: what a neighbour on
    # the cores slows less than wall time, recorded to be judged on real runs (docs/verdicts.md)
    step_cpu_times: list[float] = field(default_factory=list)
    reached: tuple[int, float] | None = None  # (step, train wall s) when target_loss was first reached
    train_wall: float = 0.0  # training time only: evaluation pauses this clock
    warmup_wall: float = 0.0  # the part of train_wall spent in warm-up steps (compilation included)
    stopped_at: int | None = None  # the step after which stop_at_target ended training

    def reach(self, step: int, loss: float, target: float | None) -> None:
        if target is not None and self.reached is None and loss <= target:
            self.reached = (step, self.train_wall)


class NoWindow:
    """A measurement window that measures nothing (the default for comm and telemetry)."""

    def before(self, step: int) -> None: ...
    def after(self, step: int) -> None: ...


class NoGate:
    """No lockstep (the default): every step starts as soon as the previous one ended.

    A lockstep gate (txsuite.run.worker.LockstepGate, for `txsuite ab`) has the same three
    methods. Each step is one turn: `before(step)` blocks until the controller says go, before
    the machine-state probe and the step's clock; `after(step, elapsed_s)` reports the step's
    clocked seconds once the turn's work is done (the loss read, the log line, an evaluation).
    After the last step, one more `before` gives the closing probe a turn of its own, and
    `end()` blocks until the other side has ended too. Warm-up steps are gated as well, so the
    two processes are aligned from their first step."""

    def before(self, step: int) -> None: ...
    def after(self, step: int, elapsed_s: float) -> None: ...
    def end(self) -> None: ...


def profiled_step(warmup_steps: int, world: int = 1) -> int:
    """The warm-up step whose memory is measured by role: the last but one, so that the
    optimizer's state exists when it runs (from the second step on) and one unprofiled warm-up
    step follows it to settle the heap before the measured steps (with two warm-up steps it is
    the first, which runs before the state exists). In a distributed cell the communication
    window profiles the warm-up steps after the first (txsuite/measure/comm.py), and one
    profiler runs at a time: there it is the first."""
    return 0 if world > 1 else max(0, warmup_steps - 2)


def train_steps(training, sync: Callable[[], None], comm=None, telemetry=None,
                log: Callable[[str], None] = lambda line: print(line, flush=True),
                around_measured: Callable[[str], None] | None = None,
                between_measured: Callable[[float], None] | None = None,
                count_step: Callable[[], contextlib.AbstractContextManager] | None = None,
                memory_step: Callable[[], contextlib.AbstractContextManager] | None = None,
                gate=None) -> TrainResult:
    """Run `warmup_steps + steps` optimizer steps of `training` (txsuite.train.build.Training),
    timing each step from its start to the host sync after it; only the last `steps` are the
    measured ones. Evaluates every `eval_every` steps (outside the clock). Raises Diverged.

    around_measured("start"/"end") runs just before the first measured step and just after the
    last, outside every clock (the machine-state probe); between_measured(seconds) after each
    measured step that another follows, with the step's clocked seconds, outside every clock too
    (the probe during the steps). count_step() is entered around the
    last warm-up step, which is untimed (the step counters); memory_step() around the warm-up
    step `profiled_step` names (the memory measured by role; the caller gives one only where
    two or more warm-up steps run).
    gate: a lockstep gate (NoGate's
    methods) that holds each step, and the closing probe, until it is this process's turn."""
    from txsuite.measure.nvml import NullTelemetry

    comm = comm or NoWindow()
    gate = gate or NoGate()
    telemetry = telemetry or NullTelemetry("not measured")
    t = training.cell.train
    trainer, hooks = training.trainer, training.setup.step_hooks
    result = TrainResult()
    total_steps = t.total_steps
    for step in range(total_steps):
        gate.before(step)  # first: the probe before the first measured step runs in this turn too
        if step == t.warmup_steps:
            _meters(training, active=True)  # measured steps only
            if around_measured is not None:
                around_measured("start")
            telemetry.mark()  # the previous step synced: energy/clocks from here are the measured steps'
        comm.before(step)
        counting = count_step is not None and step == t.warmup_steps - 1
        profiling = memory_step is not None and step == profiled_step(t.warmup_steps, training.world)
        start, cpu_start = time.perf_counter(), time.process_time()
        with count_step() if counting else memory_step() if profiling else contextlib.nullcontext():
            loss_t = trainer.step(training.batches)
        for hook in hooks:
            hook(step + 1)
        sync()  # the one host sync per step, needed to time it
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        comm.after(step)
        result.train_wall += elapsed
        if step < t.warmup_steps:
            result.warmup_wall += elapsed
        if training.world > 1:  # after the clock: the curve shows the mean loss of the ranks that hold one
            loss_t = global_mean(loss_t, trainer.holds_loss)
        loss = float(loss_t)
        result.loss_curve.append([step + 1, round(result.train_wall, 6), loss])
        # after the clock stopped: one line per step for the log and the live progress display
        log(f"[txsuite step {step + 1}/{total_steps}] loss {loss:.4f}")
        if step >= t.warmup_steps:
            result.step_times.append(elapsed)
            result.step_cpu_times.append(cpu)
        _check_divergence(result.loss_curve, loss, step + 1)
        if t.eval_every and (step + 1) % t.eval_every == 0 and step + 1 < total_steps:
            with telemetry.paused():  # evaluation is outside train_wall, so outside energy per token too
                eval_loss = trainer.evaluate(training.val_batches).loss
            result.evals.append([step + 1, round(result.train_wall, 6), eval_loss])
            result.reach(step + 1, eval_loss, t.target_loss)
        elif not t.eval_every:
            result.reach(step + 1, loss, t.target_loss)
        gate.after(step, elapsed)  # the turn ends here: its loss, log line and evaluation are done
        # stop_at_target: once the target is reached and at least one step was measured
        if t.stop_at_target and result.reached is not None and result.step_times and step + 1 < total_steps:
            result.stopped_at = step + 1
            break
        if between_measured is not None and t.warmup_steps <= step < total_steps - 1:
            with telemetry.paused():
                between_measured(elapsed)
    gate.before(len(result.loss_curve))  # a turn for the closing probe: it too runs alone
    if around_measured is not None and t.steps:
        around_measured("end")
    gate.end()
    _meters(training, active=False)
    return result


def _meters(training, active: bool) -> None:
    """What accumulates over the measured steps (the noise scale's gradient norms, the
    adversarial loss) counts only while `active`."""
    for meter in (training.trainer.noise_scale, training.trainer.objective):
        if hasattr(meter, "active"):
            meter.active = active


def _check_divergence(curve: list[list[Any]], loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise Diverged(f"training loss became {loss} at step {step}", curve)
    if loss > EXPLODE_FACTOR * curve[0][2]:
        raise Diverged(f"training loss exploded to {loss:.4g} at step {step} "
                       f"(more than {EXPLODE_FACTOR:g}x the first step's {curve[0][2]:.4g})", curve)
