"""What a sweep shows while it runs: a line per cell repetition and, on a terminal, a live bar."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.markup import escape

from txsuite.cli.common import console, raise_if_signalled
from txsuite.run.observed import duration_text


class SweepProgress:
    """Progress a person can follow: a line per cell (its result, then the next cell with an ETA
    from the mean duration of the cells run so far) and, on a terminal, a live bar below them."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.ran = 0
        self.bar = None
        self.task = None

    def __enter__(self) -> "SweepProgress":
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            # the description is a cell label (user text): shown as written, never as markup
            self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=console, transient=True)
            self.bar.start()
            self.log, self.label = None, ""
            self.done = threading.Event()
            threading.Thread(target=self._follow_steps, daemon=True).start()
        return self

    def _follow_steps(self) -> None:
        """Once a second, show the running cell's latest `[txsuite step i/n]` line in the bar."""
        while not self.done.wait(1.0):
            log, task = self.log, self.task
            if log is None or task is None or not log.exists():
                continue
            with open(log, "rb") as fh:
                fh.seek(max(0, log.stat().st_size - 4096))
                lines = [line for line in fh.read().decode(errors="replace").splitlines()
                         if line.startswith("[txsuite step ")]
            if lines:
                step = lines[-1].split("]")[0].removeprefix("[txsuite step ")
                self.bar.update(task, description=f"{self.label} step {step}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.done.set()
            self.bar.stop()

    def __call__(self, kind: str, info: dict) -> None:
        raise_if_signalled()
        if kind == "start":
            console.print(f"{info['total']} cell repetitions, {info['done']} already finished")
            if self.bar is not None:
                self.task = self.bar.add_task("sweep", total=info["total"], completed=info["done"])
        elif kind == "host_setup" and info.get("groups"):
            failed = [g for g in info["groups"] if g.get("status") == "failed"]
            said = "; ".join(f"{g['device']}: {g.get('reason', 'failed')}, its cells measure for themselves"
                             for g in failed)
            console.print(f"host setup {info['seconds']:.1f} s: this host's one-time measurements (matmul peaks, "
                          f"memory bandwidth, overheads and optimizer steps, auto kernel trials, datasets), outside "
                          f"every cell{': ' + said if said else ''}",
                          markup=False, emoji=False, soft_wrap=True)
        elif kind == "cell_start":
            left = info["total"] - info["index"]
            eta = ""
            if self.ran:
                per_cell = (time.monotonic() - self.started) / self.ran
                eta = f", about {duration_text(per_cell * left)} left"
            console.print(f"[{info['index'] + 1}/{info['total']}] {info['label']} "
                          f"(cell {info['cell_id']}, repeat {info['repeat']}{eta}) ...", markup=False, emoji=False)
            if self.bar is not None:
                self.bar.update(self.task, description=info["label"][:40])
                self.log = Path(info["run_dir"]) / "cells" / info["cell_id"] / f"r{info['repeat']}" / "log.txt"
                self.label = info["label"][:40]
        elif kind == "more_rounds":
            console.print(f"round {info['round']} of at most {info['most']}: {info['why']}; {info['cells']} more "
                          f"cell repetitions", markup=False, emoji=False, soft_wrap=True)
            if self.bar is not None:
                self.bar.update(self.task, total=self.bar.tasks[0].total + info["cells"])
        elif kind in ("cell_end", "follower_cell_end"):
            self.ran += 1
            if kind == "cell_end":
                print_record(info["record"])
            else:
                console.print("    joined; node 0 records the result")
            if self.bar is not None:
                self.bar.advance(self.task)


def print_record(r) -> None:
    m = r.metrics
    if r.status == "ok":
        console.print(f"    [green]ok[/] {m['tokens_per_s']:,.0f} tokens/s, step p50 "
                      f"{m['step_time_p50_s'] * 1e3:.1f} ms, peak mem {m['peak_mem_bytes'] / 2**20:,.0f} MiB, "
                      f"MFU {m['mfu']:.1%}, val loss {m['val_loss']:.4f}{_compressed(m)} ({r.duration_s:.1f} s)")
    else:
        color = "yellow" if r.status == "skipped" else "red"
        console.print(f"    [{color}]{r.status}[/]: {escape(r.reason or '')}", soft_wrap=True, emoji=False)


def _compressed(m: dict) -> str:
    before = m.get("trained_val_loss")
    if before is None:
        return ""
    return f" compressed (trained {before:.4f}), model {m['model_size_bytes'] / 2**20:,.2f} MiB"
