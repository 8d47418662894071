"""`txsuite ab MATRIX --base REF [--head REF]`: the two versions of the code measured in one job
(L6, never imports torch).

The base side runs from a temporary `git worktree` of REF; the head side from another one, or
from the working tree itself when no --head is given. Both run with this interpreter and its
packages (nothing is installed): each worker is started through a small bootstrap that puts its
side's checkout first on sys.path. Each side plans the matrix file with its own code
(`txsuite plan --json`), and the cells are paired by label.

Then rounds: in round i every cell runs one repetition on each side, in its own worker process,
the side that goes first alternating from cell to cell and round to round (ABBA...). With
`--lockstep` the two repetitions of a cell run at the same time in step lockstep
(txsuite.run.lockstep: one side's training step while the other waits, ABBA step by step), and
the round's ratio comes from its step pairs; a base commit older than the lockstep gate, and
distributed or CUDA cells, run the two repetitions one after the other anyway (docs/guard.md:
lockstep is opt-in until it is shown to narrow the interval). After the
rounds of the look schedule (txsuite.guard.paired.look_schedule) the pairs are decided; the job
stops as soon as no check is INCONCLUSIVE, or at --max-rounds, or when --budget seconds have
gone (that look is then the last). Records go to <results-dir>/ab/<matrix>/<run id>/{base,head},
the verdict to ab.json beside them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from txsuite.config.matrix import Matrix, PlannedCell
from txsuite.guard.metrics import Threshold
from txsuite.guard.paired import PairedOutcome, decide_pairs, look_schedule, paired_cells
from txsuite.guard.side import load_side
from txsuite.measure.env import host_fingerprint
from txsuite.results import RunFolder, write_atomic
from txsuite.run.executors import LocalExecutor
from txsuite.run.lockstep import GATE_ENV, Lockstep, LockstepError, LockstepRound
from txsuite.run.runner import WorkerCode, run_one

BOOTSTRAP = '''"""Run a txsuite module from one checkout, whatever is installed (written by `txsuite ab`)."""
import runpy
import sys

sys.path.insert(0, {root!r})
module = sys.argv.pop(1)
runpy.run_module(module, run_name="__main__", alter_sys=True)
'''


class AbError(Exception):
    """Input `txsuite ab` cannot use (exit code 2): one paragraph."""


@dataclass
class CodeSide:
    """One version of the code: a name for people, the checkout it runs from, how to start it."""
    name: str  # "base" or "head"
    ref: str  # the git ref, or "working tree"
    root: Path
    commit: str | None
    bootstrap: Path

    @property
    def code(self) -> WorkerCode:
        return self.gated("")

    def gated(self, gate: str) -> WorkerCode:
        """How to start this side's worker; `gate`: the lockstep socket, or "" for none. Always
        set, so that a fork server started for a lockstep cell does not pass its socket on."""
        return WorkerCode(launch=(str(self.bootstrap),), env=(("PYTHONPATH", str(self.root)), (GATE_ENV, gate)))

    @property
    def has_lockstep_gate(self) -> bool:
        """Whether this checkout's worker opens the lockstep gate (commits from before it do not)."""
        worker = self.root / "txsuite" / "run" / "worker.py"
        return worker.is_file() and GATE_ENV in worker.read_text(errors="replace")

    def describe(self) -> str:
        return f"{self.name} ({self.ref}{', ' + self.commit[:10] if self.commit else ''})"


@dataclass
class Checkouts:
    """The temporary worktrees of an A/B job; removed by `close`."""
    repo: Path
    made: list[Path] = field(default_factory=list)

    def close(self) -> None:
        for path in self.made:
            subprocess.run(["git", "-C", str(self.repo), "worktree", "remove", "--force", str(path)],
                           capture_output=True, text=True)
        self.made.clear()


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if out.returncode:
        raise AbError(f"git {' '.join(args)} failed in {repo}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def repo_root(start: Path) -> Path:
    try:
        return Path(_git(start, "rev-parse", "--show-toplevel"))
    except AbError:
        raise AbError(f"{start} is not inside a git checkout of txsuite: `txsuite ab` compares two versions of "
                      f"the code by their git refs, so it runs from a clone.") from None


def prepare_side(name: str, ref: str | None, repo: Path, work: Path, checkouts: Checkouts) -> CodeSide:
    """A side from a git ref (a temporary worktree), or the working tree (ref None)."""
    if ref is None:
        root, commit, shown = repo, _commit(repo, "HEAD"), "working tree"
    else:
        try:
            commit = _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")
        except AbError:
            raise AbError(f"--{name} {ref!r} is not a commit of {repo} (a branch, tag or commit hash is "
                          f"expected; `git fetch` first if it is remote).") from None
        root = work / name
        _git(repo, "worktree", "add", "--detach", str(root), commit)
        checkouts.made.append(root)
        shown = ref
    bootstrap = work / f"bootstrap_{name}.py"
    bootstrap.write_text(BOOTSTRAP.format(root=str(root)))
    return CodeSide(name=name, ref=shown, root=root, commit=commit, bootstrap=bootstrap)


def _commit(repo: Path, ref: str) -> str | None:
    try:
        return _git(repo, "rev-parse", ref)
    except AbError:
        return None


def plan_side(side: CodeSide, matrix_path: Path, device: str | None) -> dict:
    """The matrix as this side's code plans it (its cells, labels and resolved configs)."""
    cmd = [sys.executable, str(side.bootstrap), "txsuite.cli", "plan", str(matrix_path), "--json", "--yes"]
    if device:
        cmd += ["--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(side.root)))
    if out.returncode:
        message = " ".join((out.stderr or out.stdout).split())[-1500:]
        raise AbError(f"the {side.describe()} side could not plan {matrix_path}: {message}")
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise AbError(f"the {side.describe()} side's `txsuite plan --json` printed no JSON: is {side.ref} older "
                      f"than `txsuite ab`? Compare commits that both have it.") from None


@dataclass
class AbPlan:
    """The cells both sides can run, paired by label, each side with its own config of it."""
    matrix: Matrix  # head's plan (names, guard thresholds, timeout)
    cells: list[PlannedCell]  # head's cells that both sides plan and this host runs
    base_configs: dict[str, dict]  # label -> the base side's resolved config
    notes: list[str] = field(default_factory=list)


def pair_plans(matrix: Matrix, base_plan: dict, head_plan: dict) -> AbPlan:
    base_cells = {c["label"]: c for c in base_plan.get("cells", [])}
    head_cells = {c["label"]: c for c in head_plan.get("cells", [])}
    notes, cells, configs = [], [], {}
    for cell in matrix.cells:
        if cell.label not in head_cells:
            continue
        if cell.label not in base_cells:
            notes.append(f"{cell.label}: only the head plans this cell; not compared")
            continue
        reason = cell.skip_reason or base_cells[cell.label].get("skip_reason")
        if reason:
            notes.append(f"{cell.label}: skipped on this host ({reason})")
            continue
        if base_cells[cell.label]["config"] != head_cells[cell.label]["config"]:
            notes.append(f"{cell.label}: the two versions resolve its settings differently; compared by label")
        cells.append(cell)
        configs[cell.label] = base_cells[cell.label]["config"]
    for label in base_cells:
        if label not in head_cells:
            notes.append(f"{label}: only the base plans this cell; not compared")
    if not cells:
        raise AbError(f"{matrix.source}: no cell that both versions plan can run on this host.")
    return AbPlan(matrix=matrix, cells=cells, base_configs=configs, notes=notes)


@dataclass
class AbSettings:
    thresholds: dict[str, Threshold]
    alpha: float = 0.01
    min_rounds: int = 4
    max_rounds: int = 16
    budget_s: float | None = None
    timeout_s: float = 1800.0
    slow_state: float = 2.0
    lockstep: bool = False  # True: --lockstep (docs/guard.md: opt-in until shown to narrow the interval)


def lockstep_cells(plan: AbPlan, base: CodeSide, head: CodeSide, wanted: bool) -> tuple[set[str], list[str]]:
    """The labels whose two repetitions run in step lockstep, and the notes on those that do not."""
    if not wanted:
        return set(), ["repetitions alternating (no --lockstep): the two repetitions of a pair ran one after the other"]
    old = [side.describe() for side in (base, head) if not side.has_lockstep_gate]
    if old:
        return set(), [f"{' and '.join(old)} predates step lockstep: the two repetitions of a pair ran one after "
                       f"the other (repetitions alternating, as before)"]
    labels, notes = set(), []
    for cell in plan.cells:
        if cell.config.parallel.distributed:
            notes.append(f"{cell.label}: a distributed cell; its repetitions ran one after the other, not in lockstep")
        elif cell.config.device != "cpu":
            notes.append(f"{cell.label}: a {cell.config.device} cell; its repetitions ran one after the other, "
                         f"not in lockstep")
        else:
            labels.add(cell.label)
    return labels, notes


def run_ab(plan: AbPlan, base: CodeSide, head: CodeSide, out_dir: Path, settings: AbSettings,
           on_event: Callable[[str, dict], None] = lambda kind, info: None) -> PairedOutcome:
    """Alternate the two sides round by round until every check is decided (or the rounds or
    the budget run out); return the last decision."""
    folders = {side.name: RunFolder(out_dir / side.name) for side in (base, head)}
    for side in (base, head):
        folders[side.name].create()
        meta = plan.matrix.to_json()
        meta.update({"fingerprint": plan.matrix.fingerprint(), "complete": False, "side": side.describe()})
        folders[side.name].write_json("matrix.json", meta)
    in_lockstep, lockstep_notes = lockstep_cells(plan, base, head, settings.lockstep)
    job = AbJob(plan=plan, base=base, head=head, folders=folders, settings=settings, host_env=host_fingerprint(),
                looks=look_schedule(settings.min_rounds, settings.max_rounds), in_lockstep=in_lockstep,
                steps_file=out_dir / STEPS_FILE, on_event=on_event)
    executor = LocalExecutor()  # one fork server per side, started on first use
    lockstep = Lockstep([base.name, head.name])  # each side's thread outlives its fork server
    try:
        rounds_done, outcome = _rounds(job, executor, lockstep)
    finally:
        executor.close()
        lockstep.close()
    how = ("sides alternating (ABBA)" if not in_lockstep else
           "steps in lockstep: the two repetitions of a cell ran at once, one side's training step while the other "
           "waited, ABBA step by step; each round's ratio from its step pairs (the median over ABBA blocks)"
           if in_lockstep == {c.label for c in plan.cells} else
           f"steps in lockstep for {', '.join(sorted(in_lockstep))}, sides alternating (ABBA) for the others")
    outcome.result.notes[:0] = plan.notes + lockstep_notes + [
        f"{rounds_done} rounds, {how}; looks after rounds {', '.join(map(str, job.looks))}"]
    for folder in folders.values():
        meta = folder.read_json("matrix.json")
        meta["complete"] = True
        folder.write_json("matrix.json", meta)
    # whole or not at all: a signal while writing must not leave half a verdict
    write_atomic(out_dir / "ab.json", json.dumps({**outcome.result.to_dict(), "rounds": rounds_done,
                                                  "base": base.describe(), "head": head.describe()},
                                                 indent=1, default=str) + "\n")
    return outcome


# beside base/ and head/: one JSON line per cell and round run in lockstep, with its step pairs
STEPS_FILE = "lockstep.jsonl"


@dataclass
class AbJob:
    """What every round of one A/B job needs."""
    plan: AbPlan
    base: CodeSide
    head: CodeSide
    folders: dict[str, RunFolder]
    settings: AbSettings
    host_env: dict
    looks: list[int]
    in_lockstep: set[str]  # labels whose repetitions run in step lockstep
    steps_file: Path
    on_event: Callable[[str, dict], None]


def _rounds(job: AbJob, executor: LocalExecutor, lockstep: Lockstep) -> tuple[int, PairedOutcome]:
    plan, settings, base, head = job.plan, job.settings, job.base, job.head
    labels = [c.label for c in plan.cells]
    started = time.monotonic()
    outcome: PairedOutcome | None = None
    for round_index in range(settings.max_rounds):
        for k, cell in enumerate(plan.cells):
            order = (base, head) if (round_index + k) % 2 == 0 else (head, base)
            if cell.label in job.in_lockstep:
                _cell_in_lockstep(job, cell, round_index, order, executor, lockstep)
            else:
                for side in order:
                    job.on_event("cell_start", {"round": round_index, "label": cell.label, "side": side.name})
                    _record(job, cell, round_index, side, _run_side(job, cell, round_index, side, executor, ""))
        rounds_done = round_index + 1
        out_of_budget = settings.budget_s is not None and time.monotonic() - started >= settings.budget_s
        if rounds_done in job.looks or out_of_budget or rounds_done == settings.max_rounds:
            outcome = decide_pairs(paired_cells(load_side(job.folders["base"].dir), load_side(job.folders["head"].dir),
                                                labels),
                                   settings.thresholds, settings.alpha, len(job.looks), base.describe(),
                                   head.describe(), settings.slow_state, lockstep=read_step_pairs(job.steps_file))
            job.on_event("look", {"rounds": rounds_done, "verdict": outcome.result.verdict})
            if outcome.result.verdict != "INCONCLUSIVE" or out_of_budget:
                if out_of_budget and outcome.result.verdict == "INCONCLUSIVE":
                    outcome.result.notes.append(f"stopped by the budget of {settings.budget_s:g} s after "
                                                f"{rounds_done} rounds")
                break
    assert outcome is not None
    return rounds_done, outcome


def _run_side(job: AbJob, cell: PlannedCell, round_index: int, side: CodeSide, executor: LocalExecutor,
              gate: str):
    """One repetition of `cell` on `side` (its gate: the lockstep socket, or "")."""
    config = job.plan.base_configs[cell.label] if side is job.base else None
    # in lockstep a repetition also waits out the other side's steps: twice the time
    timeout = job.settings.timeout_s * (2 if gate else 1)
    return run_one(job.plan.matrix, job.folders[side.name], cell, round_index, job.host_env, timeout,
                   executor=executor, code=side.gated(gate), config=config)


def _record(job: AbJob, cell: PlannedCell, round_index: int, side: CodeSide, record) -> None:
    job.folders[side.name].append(record)
    job.on_event("cell_end", {"round": round_index, "label": cell.label, "side": side.name, "record": record})
    if record.status not in ("ok", "skipped"):
        raise AbError(f"{cell.label} failed on the {side.describe()} side in round {round_index + 1}: "
                      f"{record.status}: {record.reason}")


def _cell_in_lockstep(job: AbJob, cell: PlannedCell, round_index: int, order: tuple[CodeSide, CodeSide],
                      executor: LocalExecutor, lockstep: Lockstep) -> None:
    """Both repetitions of `cell` at once, their steps in lockstep (order[0] first); both
    records, then the step pairs to the job's steps file."""
    for side in order:
        job.on_event("cell_start", {"round": round_index, "label": cell.label, "side": side.name})
    try:
        done: LockstepRound = lockstep.run(
            (order[0].name, order[1].name),
            {side.name: (lambda gate, side=side: _run_side(job, cell, round_index, side, executor, gate))
             for side in order})
    except LockstepError as exc:
        raise AbError(f"{cell.label}, round {round_index + 1}: {exc}; run with --no-lockstep to compare these "
                      f"two versions") from None
    for side in order:
        _record(job, cell, round_index, side, done.results[side.name])
    line = {"round": round_index, "label": cell.label, "first": order[0].name,
            "pairs": done.step_pairs(job.base.name, job.head.name),  # [base s, head s] of each measured step
            "turns": [[t.side, t.step, t.start, t.end] for t in done.turns]}
    with open(job.steps_file, "a") as out:
        out.write(json.dumps(line) + "\n")


def read_step_pairs(path: Path) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """label -> round -> the (base s, head s) of its measured steps in lockstep; {} without the
    file (no cell ran in lockstep). A line cut short by an interruption is skipped."""
    out: dict[str, dict[int, list[tuple[float, float]]]] = {}
    if not path.exists():
        return out
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        out.setdefault(line["label"], {})[int(line["round"])] = [(float(b), float(h)) for b, h in line["pairs"]]
    return out


def work_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="txsuite-ab-"))


def remove_work_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


__all__ = ["AbError", "AbPlan", "AbSettings", "Checkouts", "CodeSide", "STEPS_FILE", "lockstep_cells", "pair_plans",
           "plan_side", "prepare_side", "read_step_pairs", "repo_root", "run_ab", "work_folder", "remove_work_folder"]
