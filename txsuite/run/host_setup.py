"""The sweep's host measurements, before its first cell (L6, never imports torch).

What a cell would otherwise measure the first time it meets a host (the matmul peak of its
precision, its `auto` kernels, its dataset's tokenizer: txsuite.train.host_trials) is
measured once here, outside every cell's clock, so no cell's `cell_overhead_s` holds a one-time
cost (docs/running.md, "The sweep's setup, and what a cell pays"). The
measurements run in a worker process started exactly as the cells are (the same executor, so
on CPU the same fork server, which this step then also starts; the cell's environment: threads
and the OpenMP spin setting), one per (device, threads) group of the cells to run, since the
peak and the trials are keyed by them.

Its cost is the sweep's setup: `host_setup.json` in the run folder holds each group's seconds,
what it measured (and what it found already cached) and what failed. A failure here costs
nothing but the time: the cells then measure what is missing themselves, as before.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

from txsuite.config.matrix import PlannedCell
from txsuite.config.spec import CellConfig

KIND = "host_trials"  # the worker's payload kind (txsuite.train.host_trials.KIND)
TIMEOUT_S = 900.0  # per group: generous, an upper bound (an emulated bf16 trial takes seconds)
FILE = "host_setup.json"


def groups(cells: list[PlannedCell]) -> dict[tuple[str, int], list[CellConfig]]:
    """The cells that will run in a process of their own, by (device, threads): skipped and
    distributed cells are left out (a rank's threads and shard differ; they measure themselves)."""
    out: dict[tuple[str, int], list[CellConfig]] = {}
    for cell in cells:
        config = cell.config
        if cell.skip_reason or config.parallel.distributed:
            continue
        out.setdefault((config.device, config.measure.threads), []).append(config)
    return out


def prepare_host(cells: list[PlannedCell], run_dir: Path, executor, env_for: Callable[[CellConfig], dict],
                 timeout_s: float = TIMEOUT_S) -> dict:
    """Measure once what `cells` will read from the host's cache, group by group, and write the
    account to run_dir/host_setup.json. env_for(config): the environment a worker for that cell
    gets (txsuite.run.runner.worker_env). Returns the account: {"seconds", "groups": [...]}."""
    t0 = time.monotonic()
    folder = run_dir / "host_setup"
    account: dict = {"groups": []}
    todo = groups(cells)
    if not todo:  # every cell finished, skipped or distributed: nothing to measure, nothing to write
        return {"seconds": 0.0, "groups": []}
    for (device, threads), configs in todo.items():
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{device}-threads{threads or 'default'}"
        payload, result, log = folder / f"{name}.json", folder / f"{name}.result.json", folder / f"{name}.log.txt"
        result.unlink(missing_ok=True)
        payload.write_text(json.dumps({"kind": KIND, "device": device, "threads": threads,
                                       "configs": [c.to_dict() for c in configs]}, indent=1))
        started = time.monotonic()
        returncode, timed_out = _launch(executor, device, [str(payload), str(result)], env_for(configs[0]),
                                        log, timeout_s)
        entry = {"device": device, "threads": threads or None, "cells": len(configs),
                 "seconds": round(time.monotonic() - started, 3)}
        try:
            entry.update(json.loads(result.read_text()))
            entry["seconds"] = round(time.monotonic() - started, 3)  # the launch included
        except (OSError, ValueError, TypeError):  # no result (or not one it writes): the cells measure it
            entry.update(status="failed", reason=("timed out" if timed_out else f"exit {returncode}")
                         + f"; its log: {log.relative_to(run_dir)}")
        account["groups"].append(entry)
    account["seconds"] = round(time.monotonic() - t0, 3)
    (run_dir / FILE).write_text(json.dumps(account, indent=1))
    return account


def _launch(executor, device: str, args: list[str], env: dict, log: Path, timeout_s: float) -> tuple[int | None, bool]:
    """Run the worker on args as a cell of `device` would be run: forked from the executor's
    fork server on CPU where it has one, else in a process of its own."""
    outcome = None
    if device == "cpu" and getattr(executor, "forks", False):
        outcome = executor.execute_forked(("-m",), args, env, log, timeout_s)
    if outcome is None:
        outcome = executor.execute([sys.executable, "-m", "txsuite.run.worker", *args], env, log, timeout_s,
                                   device == "cuda")
    return outcome.returncode, outcome.timed_out
