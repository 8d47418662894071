"""Step lockstep in `txsuite ab` (txsuite.run.lockstep, the gate of txsuite.train.loop, the
decision in txsuite.guard.paired): the two sides' steps strictly alternate, ABBA, never
overlapping; a head doing more work per step comes out slower; a base without the gate falls
back to alternating repetitions; each round's ratio comes from its step pairs, rounds the unit."""
from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from txsuite.run.lockstep import GATE_ENV, Lockstep
from txsuite.verdict.rounds import step_pairs_log_ratio

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the controller and the gate, in one process

def _fake_worker(path: str, side: str, steps: int, warmup: int, events: list, lock: threading.Lock,
                 stop_after: int | None = None) -> str:
    """What a worker's training loop does with its gate: before, a 'step' (recorded as a start
    and an end event), after; then the closing turn. stop_after: leave without a closing turn
    (a diverged or failed worker)."""
    from txsuite.run.worker import LockstepGate
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)  # what LockstepGate.open does with the path GATE_ENV names
    gate = LockstepGate(sock, warmup)
    try:
        gate.wait_for_go()  # the build's turn, as txsuite.run.worker.run_cell takes it
        with lock:
            events.append((side, "build", -1))
        gate.send("built")
        for step in range(steps):
            if stop_after is not None and step == stop_after:
                return f"{side} stopped"
            gate.before(step)
            with lock:
                events.append((side, "start", step))
            time.sleep(0.001)  # the "step": long enough for another thread to run if it were let
            with lock:
                events.append((side, "end", step))
            gate.after(step, 0.001 * (2 if side == "head" else 1))
        gate.before(steps)
        with lock:
            events.append((side, "probe", steps))
        gate.end()
        return f"{side} done"
    finally:
        gate.close()


def _run_fake(order, steps=6, warmup=2, stop_after=None):
    events: list = []
    lock = threading.Lock()
    lockstep = Lockstep(list(order))

    def launch(side):
        return lambda path: _fake_worker(path, side, steps, warmup, events, lock,
                                         stop_after if side == "head" else None)
    try:
        done = lockstep.run(order, {side: launch(side) for side in order})
    finally:
        lockstep.close()
    return done, events


def test_the_two_sides_steps_alternate_abba_one_at_a_time():
    done, events = _run_fake(("base", "head"))
    assert done.results == {"base": "base done", "head": "head done"}
    # the builds first, one at a time, the side named first first
    assert [e[:2] for e in events[:2]] == [("base", "build"), ("head", "build")]
    # never overlapping: every start is followed by its own end before anything else happens
    steps = [e for e in events if e[1] in ("start", "end")]
    for start, end in zip(steps[::2], steps[1::2]):
        assert start[1] == "start" and end[1] == "end" and start[0] == end[0] and start[2] == end[2]
    sides = [side for side, _, _ in steps[::2]]
    assert sides[:8] == ["base", "head", "head", "base", "base", "head", "head", "base"]
    assert sides.count("base") == sides.count("head") == 6
    # the closing probes come after every step of both sides
    assert [e[1] for e in events[-2:]] == ["probe", "probe"]
    # the controller's turns: measured steps only in the pairs, by step index
    assert done.step_pairs("base", "head") == [(0.001, 0.002)] * 4
    assert [t.step for t in done.turns if t.side == "base"] == list(range(6))


def test_the_first_side_is_the_one_named_first():
    done, events = _run_fake(("head", "base"))
    starts = [side for side, what, _ in events if what == "start"]
    assert starts[:4] == ["head", "base", "base", "head"]
    assert [e[:2] for e in events[:2]] == [("head", "build"), ("base", "build")]


def test_a_side_that_leaves_early_lets_the_other_finish_alone():
    done, events = _run_fake(("base", "head"), stop_after=3)
    assert done.results == {"base": "base done", "head": "head stopped"}
    assert [s for s, what, _ in events if what == "start"].count("base") == 6
    assert len(done.step_pairs("base", "head")) == 1  # head's measured steps: 2 only


def test_the_controller_stays_free_of_torch():
    code = "import sys, txsuite.run.lockstep, txsuite.run.ab, txsuite.cli.ab; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_the_controller_and_the_worker_name_one_variable():
    from txsuite.run.worker import LOCKSTEP_ENV, LOCKSTEP_PROTOCOL
    from txsuite.run.lockstep import PROTOCOL
    assert LOCKSTEP_ENV == GATE_ENV and LOCKSTEP_PROTOCOL == PROTOCOL


# ------------------------------------------------------------------ the decision on step pairs

def test_a_rounds_ratio_is_the_median_of_its_abba_blocks():
    # going first costs +10 % whichever side: pairs alternate who went first, so blocks cancel it
    base = np.array([1.10, 1.00, 1.10, 1.00, 1.10, 1.00])
    head = np.array([1.05, 1.155, 1.05, 1.155, 1.05, 1.155])  # 5 % slower, going second then first
    d = step_pairs_log_ratio(head, base)
    assert d == pytest.approx(0.5 * (math.log(1.05 / 1.10) + math.log(1.155 / 1.00)))
    # one slow spell that caught a single step moves one block, not the median
    spiked = head.copy()
    spiked[2] *= 3
    assert step_pairs_log_ratio(spiked, base) == pytest.approx(d)
    assert step_pairs_log_ratio([2.0], [1.0]) == pytest.approx(math.log(2.0))


def _rep(repeat, times, tokens=128.0):
    from txsuite.guard.side import RepeatSamples
    return RepeatSamples(repeat=repeat, step_times_s=list(times), tokens_per_step=tokens, peak_mem_bytes=1e8,
                          train_mem_bytes=5e7)


def test_rounds_in_lockstep_are_decided_over_rounds_on_their_step_pairs():
    from txsuite.guard.metrics import parse_threshold
    from txsuite.guard.paired import PairedCell, decide_pairs

    rng = np.random.default_rng(0)
    base_reps, head_reps, steps = [], [], {}
    for r in range(6):
        # each round its own level (a process's layout, the machine that minute), shared by the
        # pair; the head 10 % slower in every step pair
        level = math.exp(rng.normal(0, 0.3))
        b = level * np.exp(rng.normal(0, 0.01, 20))
        h = 1.10 * b * np.exp(rng.normal(0, 0.01, 20))
        steps[r] = list(zip(b.tolist(), h.tolist()))
        # the records' own medians, as if the repetitions had run apart: as noisy as the levels
        base_reps.append(_rep(r, b * math.exp(rng.normal(0, 0.3))))
        head_reps.append(_rep(r, h))
    cell = PairedCell(label="c", cell_id="c1", base=base_reps, head=head_reps)
    thresholds = {"tokens_per_s": parse_threshold("-5%")}
    paired = decide_pairs([cell], thresholds, 0.01, 1, "base", "head", lockstep={"c": steps}).result.rows[0]
    apart = decide_pairs([cell], thresholds, 0.01, 1, "base", "head").result.rows[0]
    assert paired.samples_run == "6 pairs"  # the rounds are the unit, not 120 steps
    assert paired.verdict == "FAIL" and paired.ratio == pytest.approx(1 / 1.10, rel=0.01)
    assert "6 of them rounds with steps in lockstep" in paired.detail
    assert apart.verdict == "INCONCLUSIVE"
    # memory is one value per repetition, lockstep or not
    memory = decide_pairs([cell], {"peak_mem_bytes": parse_threshold("+5%")}, 0.01, 1, "base", "head",
                          lockstep={"c": steps}).result.rows[0]
    assert memory.samples_run == "6 pairs" and memory.verdict == "PASS", (memory.verdict, memory.detail)


def test_a_round_in_a_slow_state_is_kept_in_lockstep_and_left_out_apart():
    from txsuite.guard.metrics import parse_threshold
    from txsuite.guard.paired import PairedCell, decide_pairs

    def rep(r, times, probe):
        one = _rep(r, times)
        one.probe_before_s = one.probe_after_s = probe
        one.probe_best_s = 1.0
        return one
    base = [rep(r, [1.0] * 4, 5.0 if r == 0 else 1.0) for r in range(4)]  # round 0: the machine 5x slower
    head = [rep(r, [1.0] * 4, 1.0) for r in range(4)]
    cell = PairedCell(label="c", cell_id="c1", base=base, head=head)
    thresholds = {"tokens_per_s": parse_threshold("-5%")}
    steps = {r: [(1.0, 1.01), (1.02, 1.0)] * 2 for r in range(4)}
    kept = decide_pairs([cell], thresholds, 0.01, 1, "b", "h", lockstep={"c": steps}).result
    apart = decide_pairs([cell], thresholds, 0.01, 1, "b", "h").result
    assert kept.rows[0].samples_run == "4 pairs" and "kept: their steps ran in lockstep" in kept.machine[0]
    assert apart.rows[0].samples_run == "3 pairs" and apart.machine[0].endswith("excluded")


# ------------------------------------------------------------------ which cells run in lockstep

def _side(tmp_path, name, gate: bool):
    from txsuite.run.ab import CodeSide
    root = tmp_path / name
    (root / "txsuite" / "run").mkdir(parents=True)
    (root / "txsuite" / "run" / "worker.py").write_text(f'X = "{GATE_ENV}"\n' if gate else "# before lockstep\n")
    return CodeSide(name=name, ref=name, root=root, commit="0123456789abcdef", bootstrap=root / "b.py")


def _plan(yaml_text: str, tmp_path):
    from txsuite.config.matrix import load_matrix
    from txsuite.run.ab import AbPlan
    path = tmp_path / "m.yaml"
    path.write_text(yaml_text)
    matrix = load_matrix(path)
    return AbPlan(matrix=matrix, cells=matrix.cells, base_configs={c.label: c.config.to_dict() for c in matrix.cells})


TINY = """\
name: lock
fixed:
  model: {preset: tiny, n_layer: 1}
  data: {dataset: markov, seq_len: 32}
  train: {steps: 6, warmup_steps: 2, micro_batch: 4}
  measure: {threads: 1}
axes:
  precision: [fp32]
guard: {tokens_per_s: -5%}
"""


def test_a_base_without_the_gate_falls_back_to_alternating_repetitions(tmp_path):
    from txsuite.run.ab import lockstep_cells
    plan = _plan(TINY, tmp_path)
    old, new = _side(tmp_path, "base", gate=False), _side(tmp_path, "head", gate=True)
    assert not old.has_lockstep_gate and new.has_lockstep_gate
    labels, notes = lockstep_cells(plan, old, new, wanted=True)
    assert labels == set() and "base (base, 0123456789) predates step lockstep" in notes[0]
    labels, notes = lockstep_cells(plan, _side(tmp_path, "b2", True), new, wanted=True)
    assert labels == {c.label for c in plan.cells} and notes == []
    labels, notes = lockstep_cells(plan, _side(tmp_path, "b3", True), new, wanted=False)
    assert labels == set() and "no --lockstep" in notes[0]


def test_a_distributed_cell_falls_back_and_says_so(tmp_path):
    from txsuite.run.ab import lockstep_cells
    plan = _plan(TINY.replace("axes:\n  precision: [fp32]", "axes:\n  parallel.engine: [none, ddp]"), tmp_path)
    labels, notes = lockstep_cells(plan, _side(tmp_path, "b", True), _side(tmp_path, "h", True), wanted=True)
    assert len(labels) == 1 and len(notes) == 1 and "distributed" in notes[0]


def test_this_checkout_has_the_gate():
    from txsuite.run.ab import CodeSide
    assert CodeSide(name="head", ref="x", root=REPO, commit=None, bootstrap=REPO).has_lockstep_gate


# ------------------------------------------------------------------ real workers

@pytest.mark.slow
def test_real_workers_in_lockstep_alternate_and_a_heavier_head_comes_out_slower(tmp_path):
    """Both sides from this checkout; the head's cell has two layers where the base's has one
    (real extra work in every step): its tokens/s ratio is below 1, in every round."""
    from txsuite.guard.metrics import parse_threshold
    from txsuite.run import ab as abrun

    plan = _plan(TINY.replace("n_layer: 1", "n_layer: 2"), tmp_path)
    for label, config in plan.base_configs.items():
        config["model"]["n_layer"] = 1
    work = tmp_path / "work"
    work.mkdir()
    checkouts = abrun.Checkouts(REPO)
    base = abrun.prepare_side("base", None, REPO, work, checkouts)
    head = abrun.prepare_side("head", None, REPO, work, checkouts)
    settings = abrun.AbSettings(thresholds={"tokens_per_s": parse_threshold("-5%")}, min_rounds=2, max_rounds=2,
                                timeout_s=600.0, lockstep=True)
    out = tmp_path / "ab"
    outcome = abrun.run_ab(plan, base, head, out, settings)
    lines = [json.loads(line) for line in (out / abrun.STEPS_FILE).read_text().splitlines()]
    assert [(line["round"], line["first"]) for line in lines] == [(0, "base"), (1, "head")]
    for line in lines:
        turns = line["turns"]
        # 6 + 2 steps a side, ABBA from the side named first, and no two turns overlapping in time
        assert len(turns) == 16
        first, second = line["first"], "head" if line["first"] == "base" else "base"
        assert [t[0] for t in turns[:4]] == [first, second, second, first]
        for earlier, later in zip(turns, turns[1:]):
            assert earlier[3] <= later[2], (earlier, later)
        assert len(line["pairs"]) == 6
        assert step_pairs_log_ratio([h for _, h in line["pairs"]], [b for b, _ in line["pairs"]]) > 0
    row = outcome.result.rows[0]
    assert row.ratio is not None, (row.verdict, row.detail, outcome.result.machine)
    assert row.ratio < 1.0 and "steps in lockstep" in " ".join(outcome.result.notes)
    for side in ("base", "head"):
        records = [json.loads(line) for line in (out / side / "records.jsonl").read_text().splitlines()]
        assert [r["status"] for r in records] == ["ok", "ok"] and len(records[0]["metrics"]["step_times_s"]) == 6
