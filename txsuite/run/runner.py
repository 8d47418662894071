"""Cells -> isolated worker processes -> records (L6). Never imports torch.

Each cell repetition runs in a fresh `python -m txsuite.run.worker` process in its own process
group (optimum-benchmark's rule: a cell never shares a process with another, so one cell's
allocator state, compiled kernels or crash cannot touch the next). The runner waits on the
process with a timeout (no polling), kills the whole group when it expires, and appends exactly
one record per repetition. Finished repetitions are skipped when a run is resumed.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from txsuite.config.matrix import Matrix, PlannedCell
from txsuite.config.record import Record
from txsuite.config.spec import CellConfig
from txsuite.measure.env import host_fingerprint
from txsuite.measure.oomkills import oom_kill_count
from txsuite.measure.peak import cell_openmp_env
from txsuite.results import RunFolder, RunLock, RunMeta
from txsuite.run import more_rounds, observed, search
from txsuite.run.executors import LocalExecutor
from txsuite.run.host_setup import prepare_host

DEFAULT_TIMEOUT_S = 1800.0
# the worker's own phases in a record's phase_s (txsuite.run.worker.run_cell); train_steps and
# probe are parts of "train", not added again
WORKER_PHASES = ("start", "build", "train", "evaluate", "finish", "measure")
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class Nodes:
    """The hosts a distributed cell spans. One node: `torchrun --standalone`. Several: every
    node runs the same `txsuite run` with its own --node-rank and torchrun's static rendezvous
    at node 0's address (global rank = node rank x ranks per node + local rank, so global
    rank 0, which writes the result, is on node 0). Node 0 leads: it runs every cell and
    writes the records. The others follow (`follow_matrix`): they join only the distributed
    cells, in the same order, and record nothing."""
    count: int = 1
    rank: int = 0
    endpoint: str | None = None  # "host:port" of node 0

    def splits(self, world: int) -> bool:
        return world % self.count == 0

    def launcher(self, world: int, entry: tuple[str, ...] = ("-m", "txsuite.run.worker")) -> list[str]:
        torchrun = [sys.executable, "-m", "torch.distributed.run"]
        if self.count == 1:
            return torchrun + ["--standalone", f"--nproc-per-node={world}", *entry]
        host, _, port = (self.endpoint or "").rpartition(":")
        return torchrun + [f"--nnodes={self.count}", f"--node-rank={self.rank}",
                           f"--nproc-per-node={world // self.count}", "--rdzv-backend=static",
                           f"--master-addr={host}", f"--master-port={port}", *entry]


ONE_NODE = Nodes()


@dataclass(frozen=True)
class WorkerCode:
    """Which txsuite a worker runs: the one this runner imports (the default), or another
    checkout (`txsuite ab` runs a base and a head side). `launch`: the interpreter's arguments
    that run a module named next (`-m`, or a bootstrap script that puts a checkout first on
    sys.path); `env`: variables the worker needs."""
    launch: tuple[str, ...] = ("-m",)
    env: tuple[tuple[str, str], ...] = ()

    @property
    def entry(self) -> tuple[str, ...]:
        return (*self.launch, "txsuite.run.worker")


THIS_CODE = WorkerCode()


@dataclass
class RunSummary:
    run_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    resumed: int = 0  # repetitions found already finished
    stopped_early: bool = False  # --fail-fast stopped the sweep

    @property
    def ok(self) -> bool:
        return all(status in ("ok", "skipped") for status in self.counts) or not self.counts


def select(cells: list[PlannedCell], only: str | None) -> list[PlannedCell]:
    """--only PATTERN: a glob or substring matched against the cell label or id."""
    if not only:
        return cells
    def hit(c: PlannedCell) -> bool:
        return any(fnmatch.fnmatch(s, only) or only in s for s in (c.label, c.cell_id))
    return [c for c in cells if hit(c)]


def choose_run_dir(results_dir: Path, matrix: Matrix, run_id: str | None) -> tuple[Path, bool]:
    """An explicit run id is used as given (resuming it if it exists). Without one, the newest
    run of the same matrix with the same cells is resumed if it is unfinished, so re-running
    the same command after a crash finishes the sweep; otherwise a new timestamped run starts."""
    matrix_dir = results_dir / matrix.name
    if run_id:
        return matrix_dir / run_id, (matrix_dir / run_id).exists()
    if matrix_dir.exists():
        runs = sorted((p for p in matrix_dir.iterdir() if (p / "matrix.json").exists()),
                      key=lambda p: p.name, reverse=True)
        for run in runs:  # the newest run of these same cells decides (a --confirm run has other cells)
            meta = RunFolder(run).meta
            if meta.fingerprint == matrix.fingerprint():
                if not meta.complete:
                    return run, True
                break
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return matrix_dir / stamp, False


def run_matrix(matrix: Matrix, run_dir: Path, only: str | None = None, timeout_s: float | None = None,
               on_event: Callable[[str, dict], None] | None = None,
               worker_cmd: list[str] | None = None, retry_failed: bool = False, fail_fast: bool = False,
               memory_limit_bytes: int | None = None, executor=None, nodes: Nodes = ONE_NODE,
               predict_skip: bool = True, budget_s: float | None = None) -> RunSummary:
    """retry_failed: re-run repetitions whose stored status is not ok/skipped (their record is
    replaced). fail_fast: stop after the first repetition that is not ok/skipped. predict_skip:
    a cell predicted not to fit memory_limit_bytes is recorded skipped, with the prediction, and
    never launched. budget_s: the sweep's wall time (probes included); a repetition not started
    when it is spent is recorded skipped ("budget: ..."), one in flight finishes. A matrix with
    `search: pareto` probes every cell first and prunes (txsuite/run/search.py).

    One writer per run: the run's lock (results.RunLock) is held from the first cell to the
    last, and a run whose matrix.json holds another experiment is refused (RunMismatch), so
    two configurations never share one label. Raises RunInUse or RunMismatch before any cell."""
    folder = RunFolder(run_dir)
    folder.create()
    with RunLock(run_dir):
        check_same_experiment(folder, matrix)
        return _run_matrix(matrix, folder, only, timeout_s, on_event, worker_cmd, retry_failed, fail_fast,
                           memory_limit_bytes, executor, nodes, predict_skip, budget_s)


class RunMismatch(Exception):
    """The run folder holds another experiment than the matrix given: one paragraph."""


def check_same_experiment(folder: RunFolder, matrix: Matrix) -> None:
    """Refuse to resume a run whose planned cells or repeats differ from this matrix's: by its
    matrix.json, and by its records themselves (each holds its cell's id and config), so that a
    run whose matrix.json was deleted, edited or never written is checked all the same."""
    meta = folder.meta
    if meta.fingerprint and meta.fingerprint != matrix.fingerprint():
        changes = describe_change(meta, matrix)
        stored = folder.read_json("matrix.json", quiet=True)
        searched = stored.get("search", "grid") if isinstance(stored, dict) else "grid"
        if searched != matrix.search:  # a grid resuming a pareto run would keep its pruned cells skipped
            changes.append(f"search {searched} -> {matrix.search}")
    else:
        changes = _records_change(folder.records(), matrix)
    if not changes:
        return
    raise RunMismatch(
        f"{folder.dir} holds a run of another version of this matrix ({'; '.join(changes) or 'its cells differ'}), "
        f"so resuming it would put two experiments under one label. Start a new run: leave out --run-id (a "
        f"new timestamped run), or give a new one.")


def _records_change(records: list[Record], matrix: Matrix) -> list[str]:
    """What differs between the records a run holds and this matrix, in words ([] when every
    record is of one of its cells and repetitions): a record of a cell the matrix does not plan,
    of another matrix, of a repetition past its repeats, or whose config is not the one its cell
    id names (a record edited or copied in)."""
    planned = {c.cell_id for c in matrix.cells}
    strangers: dict[str, Record] = {}
    problems: list[str] = []
    configs: dict[tuple[str, str], Record] = {}  # each distinct (cell id, config) checked once
    for r in records:
        if r.matrix != matrix.name:
            problems.append(f"records of matrix {r.matrix!r}, not {matrix.name!r}")
            break
        if r.cell_id not in planned:
            strangers.setdefault(r.cell_id, r)
            continue
        configs.setdefault((r.cell_id, json.dumps(r.config, sort_keys=True, default=str)), r)
        if r.repeat >= matrix.most_repetitions:
            problems.append(f"cell {r.label or r.cell_id} has repetition {r.repeat + 1}, this matrix "
                            f"{matrix.most_repetitions}")
    if strangers:
        stored = RunMeta(cells=[{"cell_id": r.cell_id, "label": r.label or r.cell_id, "config": r.config}
                                for r in strangers.values()])
        problems.extend(describe_change(stored, matrix, removed_only=True) or
                        [f"records of cells this matrix does not plan: {', '.join(list(strangers)[:4])}"])
    for (cell_id, _), r in configs.items():
        try:
            named = CellConfig.from_dict(r.config).cell_id()
        except Exception:  # noqa: BLE001 - any config that does not build is not this cell's
            named = None
        if named != cell_id:
            problems.append(f"a record of cell {r.label or cell_id} holds another config than its cell id names")
            break
    return list(dict.fromkeys(problems))[:6]


def describe_change(old: RunMeta, matrix: Matrix, removed_only: bool = False) -> list[str]:
    """What differs between a run's stored plan and a matrix, in words. `old` may hold only some
    cells (those of records the matrix does not plan): then cells it lacks are not 'added'
    (removed_only=True leaves them out)."""
    before = {c["label"]: c for c in old.cells if c.get("label")}
    after = {c.label: c for c in matrix.cells}
    changes = []
    added = [label for label in after if label not in before]
    removed = [label for label in before if label not in after]
    if added and not removed_only:
        changes.append(f"cells added: {', '.join(added[:4])}{' ...' if len(added) > 4 else ''}")
    if removed:
        changes.append(f"cells removed: {', '.join(removed[:4])}{' ...' if len(removed) > 4 else ''}")
    for label in before.keys() & after.keys():
        old_config = before[label].get("config") or {}
        diffs = _config_diff(old_config, after[label].config.to_dict())
        if diffs:
            changes.append(f"{label}: {', '.join(diffs[:3])}{' ...' if len(diffs) > 3 else ''}")
    if old.repeats is not None and (old.repeats, old.max_repeats, old.detect) != (
            matrix.repeats, matrix.max_repeats, matrix.detect):
        changes.append(f"repeats {_repeats_text(old.repeats, old.max_repeats, old.detect)} -> "
                       f"{_repeats_text(matrix.repeats, matrix.max_repeats, matrix.detect)}")
    if (old.seeds or 1) != matrix.seeds:
        changes.append(f"seeds {old.seeds or 1} -> {matrix.seeds}")
    return changes


def _repeats_text(repeats: int, most: int | None, detect: float | None) -> str:
    """`2`, or `{min: 2, max: 4, detect: 15%}` as a matrix file writes it."""
    return str(repeats) if detect is None else f"{{min: {repeats}, max: {most}, detect: {detect * 100:g}%}}"


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return out


def _run_matrix(matrix: Matrix, folder: RunFolder, only, timeout_s, on_event, worker_cmd, retry_failed, fail_fast,
                memory_limit_bytes, executor, nodes, predict_skip=True, budget_s=None) -> RunSummary:
    emit = on_event or (lambda kind, info: None)
    deadline = time.monotonic() + budget_s if budget_s else None
    run_dir = folder.dir
    meta = matrix.to_json()
    meta["fingerprint"] = matrix.fingerprint()
    meta["complete"] = False
    folder.write_json("matrix.json", meta)
    host_env = host_fingerprint()
    folder.write_json("env.json", host_env)

    executor = executor or LocalExecutor()
    gpus = getattr(executor, "gpu_ids", None)  # a local host's devices (empty/None: not known here)
    cells = [_layout_skip(c, nodes, gpus) for c in select(matrix.cells, only)]
    timeout = timeout_s or matrix.timeout_s or DEFAULT_TIMEOUT_S
    finished = folder.finished()
    if retry_failed:
        finished = {k: v for k, v in finished.items() if v in ("ok", "skipped")}
    # Repeat-major order (every cell once, then every cell again): slow drift of a shared
    # machine then spreads over all cells instead of biasing whichever cell ran during it. A
    # target derived from the reference cell (target_loss: auto) needs the reference first.
    todo = [(c, r) for r in range(matrix.repetitions) for c in cells]
    targets = AutoTargets(matrix, folder)
    transfers = Transfers(matrix, folder)
    # cells whose weights others start from (train.init: cell:...) go first, then the reference
    todo.sort(key=lambda item: (item[0].cell_id not in transfers.sources,
                                not targets.needed or item[0].cell_id != targets.reference))
    if not worker_cmd and isinstance(executor, LocalExecutor):
        # the host's one-time measurements (peaks, auto kernels, tokenizers), before any cell's
        # clock starts: the sweep's setup, not the first cell's overhead
        try:
            emit("host_setup", prepare_host([c for c, r in todo if (c.cell_id, r) not in finished], run_dir,
                                            executor, worker_env))
        except BaseException:  # interrupted before any cell: stop the fork server it started, as a sweep does
            executor.close()
            raise
    if matrix.search == "pareto":  # probe, then hand back the pruned cells as skipped
        def probe(cell: PlannedCell, round_: int, config: dict) -> Record:
            return run_one(matrix, search.ProbeFolder(run_dir), cell, round_, host_env, timeout, worker_cmd,
                           memory_limit_bytes, executor, nodes, config=config)
        # cells others start from, or whose loss sets the target, run in full whatever they cost
        keep = set(transfers.sources) | ({targets.reference} if targets.needed else set())
        swept = {c.cell_id: c for c in search.adaptive(matrix, folder, cells, probe, emit, deadline, keep)}
        todo = [(swept[c.cell_id], r) for c, r in todo]
    summary = RunSummary(run_dir=run_dir)
    ooms = [c for c in cells for r in range(matrix.repetitions) if finished.get((c.cell_id, r)) == "oom"]
    emit("start", {"total": len(todo), "run_dir": str(run_dir), "done": sum(
        1 for c, r in todo if (c.cell_id, r) in finished)})
    lock = threading.Lock()  # guards summary/ooms/emit across the executor's threads
    stop = threading.Event()
    predictor = observed.Predictor()  # fitted once, on what this host measured before this sweep

    def finish(index: int, cell: PlannedCell, record: Record) -> None:
        if record.status != "skipped":  # the model is checked by every repetition it could have told
            record.metrics.update(predicted_metrics(predictor.predict(cell.config)))
        folder.append(record)  # file-locked: safe from several threads
        if record.status == "ok" and isinstance(executor, LocalExecutor):  # a Slurm job's time holds its queueing
            observed.remember(cell, record.duration_s, record.metrics)
        with lock:
            if record.status == "oom":
                ooms.append(cell)
            summary.counts[record.status] = summary.counts.get(record.status, 0) + 1
            emit("cell_end", {"index": index, "total": len(todo), "record": record})
            if fail_fast and record.status not in ("ok", "skipped"):
                summary.stopped_early = True
                stop.set()

    pending: list[Future] = []

    def run_item(index: int, cell: PlannedCell, repeat: int, pool: ThreadPoolExecutor) -> bool:
        """Run (or count as resumed) one repetition; False when the sweep stops before it."""
        if (cell.cell_id, repeat) in finished:
            summary.resumed += 1
            status = finished[(cell.cell_id, repeat)]
            summary.counts[status] = summary.counts.get(status, 0) + 1
            return True
        if not executor.concurrent(cell.uses_one_gpu):
            wait_for_pending()  # a cell that must run alone waits for the others
        if stop.is_set():
            return False
        if transfers.depends(cell) and pending:
            wait_for_pending()  # its start must have finished (concurrent executors)
        with lock:
            if deadline is not None and not cell.skip_reason and time.monotonic() >= deadline:
                cell = PlannedCell(cell.config, cell.label, cell.origin, skip_reason=budget_reason(budget_s))
            start_reason = transfers.missing_start(cell, repeat)
            if start_reason is not None:
                cell = PlannedCell(cell.config, cell.label, cell.origin, skip_reason=start_reason)
            beyond = predictor.beyond_limit(cell.config, memory_limit_bytes) if (
                predict_skip and memory_limit_bytes and not cell.skip_reason) else None
            if beyond:
                cell = PlannedCell(cell.config, cell.label, cell.origin, skip_reason=beyond)
            bigger_than = _needs_more_than_an_oom(cell, ooms)
            if bigger_than is not None:
                cell = PlannedCell(cell.config, cell.label, cell.origin,
                            skip_reason=f"needs more memory than cell {bigger_than.cell_id} ({bigger_than.label}), "
                                        f"which ran out of memory: larger micro-batch or sequence, all else equal")
            emit("cell_start", {"index": index, "total": len(todo), "label": cell.label,
                                "cell_id": cell.cell_id, "repeat": repeat, "run_dir": str(run_dir)})

        def task(index=index, cell=cell, repeat=repeat) -> None:
            finish(index, cell, run_one(matrix, folder, cell, repeat, host_env, timeout, worker_cmd,
                                        memory_limit_bytes, executor, nodes,
                                        target_loss=targets.for_cell(cell),
                                        init_path=transfers.start_of(cell, repeat),
                                        checkpoint_dir=transfers.checkpoint_dir(cell, repeat)))

        if executor.concurrent(cell.uses_one_gpu):
            pending.append(pool.submit(task))
        else:
            task()
        return True

    def wait_for_pending() -> None:
        for future in pending:
            future.result()
        pending.clear()

    with ThreadPoolExecutor(max_workers=executor.slots) as pool, _closing(executor):
        for index, (cell, repeat) in enumerate(todo):
            if not run_item(index, cell, repeat, pool):
                break
        wait_for_pending()
        if matrix.detect is not None and only is None and not summary.stopped_early:
            # `repeats: {min, max, detect}`: one more round of every cell that measured something,
            # while the rounds so far cannot detect the asked gap (txsuite/run/more_rounds.py).
            # The decision reads only the noise, so it is the same on a resumed run.
            round_cells = [c for c, r in todo if r == 0]
            labels = {c.cell_id: c.label for c in round_cells}
            for repeat in range(matrix.repetitions, matrix.most_repetitions + 1):
                records = folder.records()
                judged = more_rounds.judge(matrix, [r for r in records if r.repeat < repeat])
                if (judged.enough or repeat == matrix.most_repetitions
                        or (deadline is not None and time.monotonic() >= deadline)):
                    break
                measured = {r.cell_id for r in records if r.status == "ok"}
                again = [c for c in round_cells if c.cell_id in measured]
                if any((c.cell_id, repeat) not in finished for c in again):  # resumed rounds pass silently
                    emit("more_rounds", {"round": repeat + 1, "most": matrix.most_repetitions, "cells": len(again),
                                         "why": judged.describe(matrix.detect, labels)})
                first = len(todo)
                todo.extend((c, repeat) for c in again)
                for offset, cell in enumerate(again):
                    if not run_item(first + offset, cell, repeat, pool):
                        break
                wait_for_pending()
                if summary.stopped_early:
                    break
            meta["detected"] = judged.describe(matrix.detect, labels)  # what the rounds run detect
    if summary.stopped_early:
        return summary
    if only is None:
        meta["complete"] = True
        folder.write_json("matrix.json", meta)
    return summary


def budget_reason(budget_s: float) -> str:
    """The reason of a repetition the sweep's --budget left no time for."""
    return (f"budget: not started, the sweep's --budget of {budget_s:,.0f} s was spent (the run counts as "
            f"finished: a new run runs it)")


def predicted_metrics(p) -> dict:
    """A prediction (txsuite/measure/predict.py) as record metrics, beside what was measured."""
    out = {"predicted_tokens_per_s": p.tokens_per_s, "predicted_tokens_per_s_low": p.low,
           "predicted_tokens_per_s_high": p.high, "predicted_train_mem_bytes": p.train_mem_bytes,
           "predicted_speed_source": p.speed_source, "predicted_memory_source": p.memory_source}
    out.update({f"predicted_{name}": value for name, value in p.memory_parts.items()})
    return out


class AutoTargets:
    """`train.target_loss: auto`: the reference cell's final validation loss (median over its
    seeds: the same number the report's target uses) plus each cell's `target_tolerance`, known once the
    reference's repetitions have run; the runner runs them first."""

    def __init__(self, matrix: Matrix, folder: RunFolder):
        self.matrix, self.folder = matrix, folder
        self.needed = any(c.config.train.auto_target for c in matrix.cells)
        self.reference = matrix.reference or (matrix.cells[0].cell_id if matrix.cells else None)
        self._loss: float | None = None

    def reference_loss(self) -> float | None:
        if self._loss is None:
            import statistics
            per_seed: dict[int, float] = {}  # repetitions of one seed train alike: one value per seed
            for r in self.folder.records():
                if r.cell_id == self.reference and r.status == "ok" and isinstance(r.metrics.get("val_loss"), (int, float)):
                    per_seed.setdefault(r.seed_index or 0, float(r.metrics["val_loss"]))
            self._loss = statistics.median(per_seed.values()) if per_seed else None
        return self._loss

    def for_cell(self, cell: PlannedCell) -> float | None:
        """The numeric target of an auto cell (None for the reference itself, or before it ran)."""
        t = cell.config.train
        if not t.auto_target or cell.cell_id == self.reference:
            return None
        loss = self.reference_loss()
        return None if loss is None else loss + t.target_tolerance


class Transfers:
    """`train.init: cell:<...>`: the cells others start from save their trained weights (as do
    cells with train.save_checkpoint), run first, and each repetition of a dependent cell starts
    from the repetition of its source with the same seed index (paired seeds, as the report pairs
    them). A source repetition that did not end ok leaves its dependents skipped, with the reason."""

    def __init__(self, matrix: Matrix, folder: RunFolder):
        from txsuite.config.matrix import init_source
        self.matrix, self.folder = matrix, folder
        self.source_of = {c.cell_id: init_source(c, matrix.cells) for c in matrix.cells
                          if c.config.train.init_cell is not None}
        self.sources = {s.cell_id for s in self.source_of.values()}

    def depends(self, cell: PlannedCell) -> bool:
        return cell.cell_id in self.source_of

    def checkpoint_dir(self, cell: PlannedCell, repeat: int) -> str | None:
        if cell.cell_id in self.sources or cell.config.train.save_checkpoint:
            return str(self.folder.cell_dir(cell.cell_id, repeat) / "checkpoint")
        return None

    def _source_repeat(self, cell: PlannedCell, repeat: int) -> tuple[PlannedCell, int] | None:
        source = self.source_of.get(cell.cell_id)
        if source is None:
            return None
        return source, repeat % self.matrix.seeds  # the first repetition of the same seed index

    def start_of(self, cell: PlannedCell, repeat: int) -> str | None:
        found = self._source_repeat(cell, repeat)
        if found is None:
            return None
        source, source_repeat = found
        return str(self.folder.cell_dir(source.cell_id, source_repeat) / "checkpoint")

    def missing_start(self, cell: PlannedCell, repeat: int) -> str | None:
        """Why this repetition cannot start (its source's checkpoint is not there), or None."""
        found = self._source_repeat(cell, repeat)
        if found is None:
            return None
        source, source_repeat = found
        if (Path(self.start_of(cell, repeat)) / ".metadata").is_file():
            return None
        status = self.folder.finished().get((source.cell_id, source_repeat))
        return (f"starts from cell {source.cell_id} ({source.label}), repetition {source_repeat}, which "
                f"{'ended ' + status if status else 'has not run'} and saved no checkpoint")


@contextmanager
def _closing(executor):
    """Stop what the executor started (its fork servers) when the sweep ends, however it ends."""
    try:
        yield executor
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()


def _layout_skip(cell: PlannedCell, nodes: Nodes, gpus: list[int] | None = None) -> PlannedCell:
    """A distributed cell this run's nodes cannot hold: recorded as skipped with the reason."""
    world = cell.config.parallel.world_size
    if cell.skip_reason or not cell.config.parallel.distributed:
        return cell
    reason = None
    if not nodes.splits(world):
        reason = f"its {world} ranks do not split evenly over the {nodes.count} nodes of this run"
    elif cell.config.device == "cuda" and gpus and world // nodes.count > len(gpus):
        reason = (f"its {world // nodes.count} ranks per node need as many GPUs, and this host has "
                  f"{len(gpus)} (one rank per GPU)")
    if reason is None:
        return cell
    return PlannedCell(cell.config, cell.label, cell.origin, skip_reason=reason)


def follow_matrix(matrix: Matrix, run_dir: Path, nodes: Nodes, only: str | None = None,
                  on_event: Callable[[str, dict], None] | None = None, gpus: list[int] | None = None) -> int:
    """A follower node (rank > 0): join the leader's distributed cells in the leader's order
    and record nothing (node 0 writes every record). What it joined is journaled in
    `node<K>.done` so the same command resumes. Returns the number of cells joined.
    No timeout of its own: the leader's timeout ends the cell, and the lost peer ends ours.
    gpus: this node's devices, so it drops exactly the cells the leader skips."""
    emit = on_event or (lambda kind, info: None)
    folder = RunFolder(run_dir)
    folder.create()
    journal = run_dir / f"node{nodes.rank}.done"
    done = set(journal.read_text().split("\n")) if journal.exists() else set()
    cells = [c for c in select(matrix.cells, only)
             if c.config.parallel.distributed and not _layout_skip(c, nodes, gpus).skip_reason]
    todo = [(c, r) for r in range(matrix.repetitions) for c in cells if f"{c.cell_id} {r}" not in done]
    emit("start", {"total": len(todo), "run_dir": str(run_dir), "done": 0})
    host_env = host_fingerprint()
    for index, (cell, repeat) in enumerate(todo):
        emit("cell_start", {"index": index, "total": len(todo), "label": cell.label, "cell_id": cell.cell_id,
                            "repeat": repeat, "run_dir": str(run_dir)})
        record = run_one(matrix, folder, cell, repeat, host_env, timeout=7 * 24 * 3600.0, nodes=nodes)
        with open(journal, "a") as f:
            f.write(f"{cell.cell_id} {repeat}\n")
        emit("follower_cell_end", {"index": index, "total": len(todo), "record": record})
    return len(todo)


def seed_for(base: int, index: int) -> int:
    """The training seed of a cell's seed `index`: the configured seed for index 0, then seeds
    hashed from (base, index), so cells whose train.seed differs never share a seed."""
    if index == 0:
        return base
    import hashlib
    return int(hashlib.sha256(f"txsuite-seed:{base}:{index}".encode()).hexdigest()[:8], 16) % (2 ** 31)


def run_one(matrix: Matrix, folder: RunFolder, cell: PlannedCell, repeat: int, host_env: dict, timeout: float,
            worker_cmd: list[str] | None = None, memory_limit_bytes: int | None = None,
            executor=None, nodes: Nodes = ONE_NODE, code: WorkerCode = THIS_CODE,
            config: dict | None = None, target_loss: float | None = None, init_path: str | None = None,
            checkpoint_dir: str | None = None) -> Record:
    """One repetition of one cell, in its own process group. `code`: which txsuite runs it;
    `config`: the resolved config as that txsuite planned it (default: this one's). Repetition
    `repeat` trains with seed index repeat % seeds; `target_loss`: an auto target, resolved;
    `init_path`: the checkpoint a train.init: cell:... starts from; `checkpoint_dir`: where this
    repetition saves its trained weights (None: it does not)."""
    executor = executor or LocalExecutor()
    seed_index = repeat % matrix.seeds
    base = dict(matrix=matrix.name, run_id=folder.dir.name, cell_id=cell.cell_id, repeat=repeat,
                config=config if config is not None else cell.config.to_dict(), label=cell.label,
                seed=seed_for(cell.config.train.seed, seed_index), seed_index=seed_index)
    started = _now()
    if cell.skip_reason:
        return Record(**base, status="skipped", reason=cell.skip_reason, env=host_env,
                      started_at=started, finished_at=started, duration_s=0.0)
    cell_dir = folder.cell_dir(cell.cell_id, repeat)
    cell_dir.mkdir(parents=True, exist_ok=True)
    cell_json, result_json, log_path = cell_dir / "cell.json", cell_dir / "result.json", cell_dir / "log.txt"
    result_json.unlink(missing_ok=True)  # a stale result from a killed earlier attempt
    cell_json.write_text(json.dumps({**base, "timeout_s": timeout, "memory_limit_bytes": memory_limit_bytes,
                                     "target_loss": target_loss, "init_path": init_path,
                                     "checkpoint_dir": checkpoint_dir}, indent=2))
    world = cell.config.parallel.world_size
    if worker_cmd:
        launcher = list(worker_cmd)
    elif cell.config.parallel.distributed:
        # torchrun starts `world` ranks (one node: a free rendezvous port via --standalone) and
        # tears all of them down if one fails; global rank 0 writes the result.
        launcher = nodes.launcher(world, code.entry)
    else:
        launcher = [sys.executable, *code.entry]
    cmd = launcher + [str(cell_json), str(result_json)]
    env = worker_env(cell.config, code)
    oom_kills_before = oom_kill_count()
    # torch already imported in the fork server: the cell starts in milliseconds, and a
    # distributed CPU cell on this one node has its ranks forked there instead of by torchrun
    forkable = (not worker_cmd and cell.config.device == "cpu" and getattr(executor, "forks", False)
                and (not cell.config.parallel.distributed or nodes.count == 1))
    t0 = time.monotonic()
    outcome = None
    if forkable:
        ranks = world if cell.config.parallel.distributed else 1
        outcome = executor.execute_forked(code.launch, [str(cell_json), str(result_json)], env, log_path, timeout,
                                          ranks=ranks)
    forked = outcome is not None
    if outcome is None:
        outcome = executor.execute(cmd, env, log_path, timeout, cell.uses_one_gpu)
    returncode, timed_out = outcome.returncode, outcome.timed_out
    duration = time.monotonic() - t0
    # how the repetition was started (its `launch` time depends on it), in every record it gets
    launcher = "fork server" if forked else ("torchrun" if cell.config.parallel.distributed and not worker_cmd
                                             else "process")
    host_env = {**host_env, "launcher": launcher}
    if outcome.where:  # which process, GPU or job: differs from run to run (measure.env.EPHEMERAL)
        host_env["launched_on"] = outcome.where
    rel_log = str(log_path.relative_to(folder.dir))
    finished = _now()
    common = dict(**base, started_at=started, finished_at=finished, duration_s=round(duration, 3), log=rel_log)

    if timed_out:
        return Record(**common, status="timeout", env=host_env,
                      reason=f"no result after {timeout:.0f} s; the cell's process group was killed")
    if result_json.exists():
        result = json.loads(result_json.read_text())
        reason = result.get("reason")
        cause = _launcher_root_cause(log_path) if returncode else None
        if cause and result["status"] == "failed":  # rank 0 saw a peer vanish; name the peer
            reason = f"{cause}; rank 0 then reported: {reason}"
        metrics = result.get("metrics", {})
        if isinstance(metrics.get("train_wall_s"), (int, float)):
            # everything the repetition spent outside its training steps: fork or process start,
            # building the model, data, evaluations, inference timing, writing the result
            metrics["cell_overhead_s"] = round(max(0.0, duration - metrics["train_wall_s"]), 3)
        phases = metrics.get("phase_s")
        if isinstance(phases, dict):  # the rest: starting the process (or fork), reading the cell, writing the result
            inside = sum(v for k, v in phases.items() if k in WORKER_PHASES)
            phases["launch"] = round(max(0.0, duration - inside), 3)
        return Record(**common, status=result["status"], reason=reason,
                      env={**host_env, **result.get("env", {})}, metrics=metrics)
    killed_by_oom = (returncode == -signal.SIGKILL and oom_kills_before is not None
                     and (oom_kill_count() or 0) > oom_kills_before)
    if memory_limit_bytes and _log_says_out_of_memory(log_path):
        return Record(**common, status="oom", env=host_env,
                      reason=f"the cell needs more than --memory-limit {memory_limit_bytes / 2**20:,.0f} MiB: it ran "
                             f"out of memory before it could report" + _log_tail(log_path))
    if killed_by_oom:
        return Record(**common, status="oom", env=host_env,
                      reason="the kernel's out-of-memory killer ended the worker (the cgroup's oom_kill count rose)"
                             + _log_tail(log_path))
    cause = _launcher_root_cause(log_path)
    # what ended it when the executor knows (the fork server died under it), else its exit
    ended = getattr(outcome, "reason", None) or _describe_exit(returncode)
    reason = (f"{cause}; " if cause else "") + ended + _log_tail(log_path)
    return Record(**common, status="failed", reason=reason, env=host_env)


def worker_env(config: CellConfig, code: WorkerCode = THIS_CODE) -> dict[str, str]:
    """The environment a cell's worker starts with (and the sweep's host measurements, which must
    run under the same threads and spin setting: txsuite.run.host_setup)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **dict(code.env))
    threads = config.measure.threads
    if threads:  # before the worker imports torch: OpenMP sizes its pool at start-up
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if config.device == "cpu":
        # libgomp's threads spin ~300k iterations before sleeping; when anything else runs on
        # the host, spinning threads starve the ones doing work and a step collapses. A bounded
        # spin (GOMP_SPINCOUNT=10000) costs nothing on an idle host and removes the collapse;
        # PASSIVE removes it too but slows idle steps. A user's own setting wins. The figures,
        # dated, with host and command: docs/measurements.md, "OpenMP on a shared host".
        env.update(cell_openmp_env(env))
    return env


def _launcher_root_cause(log_path: Path) -> str | None:
    """The launcher's first observed failure as one phrase, e.g. 'rank 1 ended first: exit -9
    (SIGKILL)': from the fork server's launcher line, or torchrun's 'Root Cause' block; None when
    the log has neither."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    ours = re.search(r"\[txsuite launcher\] Root cause: rank (\d+) \(pid \d+\) ended first: exit (-?\d+)", text)
    if ours:
        rank, exit_code = ours.group(1), int(ours.group(2))
    else:
        _, found, block = text.rpartition("Root Cause (first observed failure):")
        rank_match = re.search(r"rank\s*:\s*(\d+)", block) if found else None
        code_match = re.search(r"exitcode\s*:\s*(-?\d+)", block) if found else None
        if not rank_match or not code_match:
            return None
        rank, exit_code = rank_match.group(1), int(code_match.group(1))
    # torchrun names the signal in some versions only ("-9 (SIGKILL)" vs "-9 (pid: ...)"), so
    # the name comes from the code itself: a negative exit code is the signal that ended the rank.
    signal_name = ""
    if exit_code < 0:
        try:
            signal_name = f" ({signal.Signals(-exit_code).name})"
        except ValueError:
            pass
    return f"rank {rank} ended first: exit {exit_code}{signal_name}"


# Settings that only ever raise activation memory when they grow.
MEMORY_MONOTONE = (("train", "micro_batch"), ("data", "seq_len"))


def _needs_more_than_an_oom(cell: PlannedCell, ooms: list[PlannedCell]) -> PlannedCell | None:
    """An earlier cell that ran out of memory and differs from this one only by a smaller or
    equal micro-batch / sequence length (at least one strictly smaller): this cell would too."""
    mine = cell.config.to_dict()
    for oom in ooms:
        theirs = oom.config.to_dict()
        bigger = False
        same_elsewhere = True
        for family in mine:
            for key in (mine[family] if isinstance(mine[family], dict) else [None]):
                a = mine[family][key] if key else mine[family]
                b = theirs[family][key] if key else theirs[family]
                if (family, key) in MEMORY_MONOTONE:
                    if a < b:
                        same_elsewhere = False
                    bigger |= a > b
                elif a != b:
                    same_elsewhere = False
        if same_elsewhere and bigger:
            return oom
    return None


# how a process under --memory-limit says it ran out, in its last words (Python, the OS, OpenBLAS, C++)
OUT_OF_MEMORY_WORDS = ("memoryerror", "cannot allocate memory", "out of memory", "memory allocation still failed",
                       "std::bad_alloc", "failed to allocate")


def _log_says_out_of_memory(log_path: Path) -> bool:
    tail = _log_tail(log_path).lower()
    return any(words in tail for words in OUT_OF_MEMORY_WORDS)


def _describe_exit(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (possibly the kernel's out-of-memory killer)" if name == "SIGKILL" else ""
        return f"the worker was killed by {name}{hint} before writing a result"
    return f"the worker exited with code {returncode} before writing a result"


def _log_tail(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    tail = [line for line in lines if line.strip()][-LOG_TAIL_LINES:]
    return ("; last lines of its log:\n" + "\n".join(tail)) if tail else ""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
