"""txsuite.train: one builder for every training, and optimizers that are a spec entry plus a
function."""
from __future__ import annotations

import dataclasses
import statistics

import pytest
import torch

from txsuite.config.matrix import load_matrix
from txsuite.config.spec import OPTIMIZERS, CellConfig, CompileSpec, DataSpec, ModelSpec, OptimizerInfo, TrainSpec
from txsuite.config.estimate import estimate_memory
from txsuite.train import build_training, train_steps
from txsuite.train import optimizers

CELL = CellConfig(model=ModelSpec(preset="tiny", n_layer=1, d_model=64, n_head=2),
                  data=DataSpec(dataset="markov", seq_len=16),
                  train=TrainSpec(steps=8, warmup_steps=0, micro_batch=4, lr=3e-3, eval_batches=1), device="cpu")


def test_every_optimizer_of_the_spec_has_a_builder_and_nothing_else_does():
    assert set(optimizers.BUILDERS) == set(OPTIMIZERS)


def test_an_optimizer_is_one_spec_entry_and_one_function(monkeypatch, write_matrix):
    """Registering 'sgd-nesterov' in the two places is enough: the matrix accepts it, the plan's
    memory estimate counts its one state per parameter, and a cell trains with it."""
    monkeypatch.setitem(OPTIMIZERS, "sgd-nesterov", OptimizerInfo("SGD, Nesterov momentum", {"momentum": 0.9},
                                                                   states=1))
    monkeypatch.setitem(optimizers.BUILDERS, "sgd-nesterov", lambda groups, train, device: torch.optim.SGD(
        groups, lr=train.lr, momentum=train.hyper("momentum"), nesterov=True))
    matrix = load_matrix(write_matrix("name: m\nfixed: {model: tiny, train: {optimizer: sgd-nesterov, momentum: 0.8}}\n"))
    cell = matrix.cells[0].config
    sgd = dataclasses.replace(cell, train=dataclasses.replace(cell.train, optimizer="sgd"))
    assert estimate_memory(sgd)["optimizer_bytes"] == estimate_memory(cell)["optimizer_bytes"] > 0

    nesterov = dataclasses.replace(CELL, train=dataclasses.replace(CELL.train, optimizer="sgd-nesterov", lr=0.3))
    training = build_training(nesterov)
    assert type(training.trainer.optimizer) is torch.optim.SGD
    assert training.trainer.optimizer.defaults["nesterov"] is True
    curve = train_steps(training, sync=lambda: None, log=lambda line: None).loss_curve
    assert curve[-1][2] < curve[0][2]


def test_build_training_is_deterministic_and_ready_to_step():
    """Two builds of one cell: the same initial weights and the same first batches, so two
    cells that differ only in a technique start from the same point."""
    a, b = build_training(CELL), build_training(CELL)
    for pa, pb in zip(a.setup.model.parameters(), b.setup.model.parameters()):
        assert torch.equal(pa, pb)
    xa, ya = next(a.batches)
    xb, yb = next(b.batches)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape == (4, 16)
    assert a.n_params == sum(p.numel() for p in a.setup.model.parameters())
    assert len(a.val_batches) == CELL.train.eval_batches


def test_every_trainer_evaluates_with_the_same_signature():
    training = build_training(CELL)
    whole = training.trainer.evaluate(training.val_batches)
    detail = training.trainer.evaluate(training.val_batches, per_sequence=True)
    assert whole.per_sequence is None and len(detail.per_sequence) == 8  # one batch of 8 sequences
    # every sequence has the same number of scored tokens here, so the mean of means is the mean
    assert detail.loss == pytest.approx(sum(detail.per_sequence) / 8, rel=1e-6) == whole.loss


def test_compile_seconds_is_the_warm_up_beyond_steady_steps():
    """compile_s: the warm-up's wall time minus as many steps at the measured median; eager cells
    and cells with nothing to subtract from have none."""
    from txsuite.run.worker import compile_seconds
    from txsuite.train.loop import TrainResult
    compiled = CellConfig(compile=CompileSpec(mode="default"), train=TrainSpec(warmup_steps=3, steps=4))
    result = TrainResult(step_times=[0.5, 0.4, 0.6, 0.5], warmup_wall=12.0)
    assert compile_seconds(compiled, result) == pytest.approx(12.0 - 3 * 0.5)
    assert compile_seconds(CellConfig(train=TrainSpec(warmup_steps=3, steps=4)), result) is None
    assert compile_seconds(compiled, TrainResult(step_times=[], warmup_wall=12.0)) is None


def test_the_probe_during_the_steps_runs_between_measured_steps_only_and_off_every_clock():
    """between_measured gets each measured step's clocked seconds after the step, except after
    the last (the closing probe follows it) and never in warm-up; what it does is not in
    train_wall (steps' own clocks)."""
    calls: list[tuple[str, object]] = []
    cell = dataclasses.replace(CELL, train=dataclasses.replace(CELL.train, steps=4, warmup_steps=2))
    result = train_steps(build_training(cell), sync=lambda: None, log=lambda line: None,
                         around_measured=lambda moment: calls.append((moment, None)),
                         between_measured=lambda seconds: calls.append(("between", seconds)))
    assert [c[0] for c in calls] == ["start", "between", "between", "between", "end"]
    assert [c[1] for c in calls[1:4]] == result.step_times[:3]
    assert result.train_wall == pytest.approx(sum(r for r in result.step_times) + result.warmup_wall)


def test_the_machine_state_probes_during_the_steps_every_interval_and_means_all_its_probes():
    from txsuite.measure.probe import PROBE_INTERVAL_S, MachineState
    machine = MachineState(before_s=0.010, after_s=0.040)
    assert machine.mean_s == pytest.approx(0.020)  # geometric: sqrt(0.010 * 0.040)
    assert not machine.due(0.4 * PROBE_INTERVAL_S) and not machine.due(0.4 * PROBE_INTERVAL_S)
    assert machine.due(0.4 * PROBE_INTERVAL_S)  # 1.2 intervals of steps since the last probe
    machine.add_during(0.020)
    assert not machine.due(0.4 * PROBE_INTERVAL_S)  # counted again from the probe
    assert machine.probes() == [0.010, 0.020, 0.040]
    metrics = machine.metrics()
    assert metrics["probe_mean_s"] == pytest.approx(0.020) and metrics["probes"] == 3
    assert MachineState().metrics()["probe_mean_s"] is None


def test_each_step_is_taken_in_the_state_of_the_probes_it_ran_between():
    """A repetition whose state switched inside it: steps that ran exactly as fast as their own
    stretch's probes allowed come out at one rate in probe units, whatever the mix of states,
    where the mean of the probes would leave one repetition slower than the other."""
    from txsuite.measure.probe import MachineState
    unit = 4.0  # step seconds per probe second
    adjusted = {}
    for name, probes, at in (("mostly fast", [0.010, 0.010, 0.010, 0.020], [3, 6]),
                             ("mostly slow", [0.010, 0.020, 0.020, 0.020], [2, 5])):
        machine = MachineState(before_s=probes[0], after_s=probes[-1], during_s=probes[1:-1], during_at=at)
        bounds = [0, *at, 9]
        steps = [unit * (probes[i] * probes[i + 1]) ** 0.5
                 for i in range(len(bounds) - 1) for _ in range(bounds[i], bounds[i + 1])]
        median_rate = statistics.median(1 / t for t in steps)
        adjusted[name] = (median_rate * machine.at_steps_s(steps), median_rate * machine.mean_s)
    assert adjusted["mostly fast"][0] == pytest.approx(1 / unit) == pytest.approx(adjusted["mostly slow"][0])
    assert adjusted["mostly fast"][1] > 1.1 * adjusted["mostly slow"][1]


def test_the_machine_state_knows_how_many_steps_ran_before_each_probe_between_them():
    from txsuite.measure.probe import PROBE_INTERVAL_S, MachineState
    machine = MachineState(before_s=0.010, after_s=0.010)
    for probe_s in (0.011, 0.012):
        while not machine.due(0.3 * PROBE_INTERVAL_S):
            pass
        machine.add_during(probe_s)
    assert machine.during_at == [4, 8]  # 1.2 intervals of steps each time
    assert machine.at_steps_s([0.1] * 3) is None  # fewer steps than the probes' places: not these steps
    assert machine.metrics([0.1] * 9)["probe_steps_s"] == pytest.approx(0.0110, rel=0.05)


def test_the_probe_workload_allocates_nothing_while_it_is_timed():
    """What malloc does with a freed block depends on the process's history (a block above the
    mmap threshold is mapped afresh, page by page, or reused), so a timed pass that allocated its
    result would time that history; only the scalars' few bytes may be allocated."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from txsuite.measure import probe
    buffers = (torch.randn(256, 256), torch.randn(256, 256), torch.zeros(256, 256), torch.randn(1 << 16),
               torch.zeros(1 << 16), torch.randn(1 << 18), torch.zeros(1 << 18))
    before = [t.clone() for t in buffers]
    probe._workload_passes(torch, *buffers, matmuls=1, short=2, long=2)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as timed:
        a, small, v = probe._workload_passes(torch, *buffers, matmuls=3, short=4, long=2)
    allocated = [(e.name, e.cpu_memory_usage) for e in timed.events() if e.cpu_memory_usage >= 1024]
    assert allocated == []
    # the passes did their work: every result moved, and the last of each lies in one of its buffers
    assert all(not torch.equal(t, b) for t, b in zip((a, small, v), (before[0], before[3], before[5])))
    assert any(small.data_ptr() == t.data_ptr() for t in buffers[3:5])
    assert probe.probe_workload(torch) > 0
