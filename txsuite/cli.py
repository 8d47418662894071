"""`txsuite` command line (L5): parses options, calls the lower levels, prints.

Exit codes: 0 every cell ok or skipped; 1 a cell failed; 2 unusable input (printed as one
paragraph, never a traceback). `guard` and `ab`: 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 unusable input.
"""
from __future__ import annotations

import functools
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from txsuite.config.matrix import DEFAULT_MAX_CELLS, Matrix, MatrixError, load_matrix
from txsuite.measure.env import gpus_from_nvidia_smi, plan_host
from txsuite.measure.estimate import approx_vocab, estimate_memory
from txsuite.run.executors import host_gpu_ids

# a pipe or CI log is not 80 columns wide: do not wrap plan tables as if it were
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


class UsageProblem(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:  # one paragraph, no "Error:" prefix noise
        from rich.markup import escape
        err_console.print(f"[bold red]txsuite:[/] {escape(self.message)}", soft_wrap=True)


class Seconds(click.ParamType):
    """A duration in seconds: a finite number above 0 (0, a negative number or nan would silently
    mean "no limit")."""
    name = "SECONDS"

    def convert(self, value, param, ctx):
        import math
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r}: expected a finite number of seconds above 0", param, ctx)
        return seconds


def _run_id(ctx, param, value):
    from txsuite.config.matrix import name_problem
    if value is None:
        return None
    problem = name_problem(value)
    if problem:
        raise click.BadParameter(f"{value!r} {problem}; e.g. --run-id nightly-main")
    return value


@functools.cache
def _this_host():
    """The plan's view of this host (nvidia-smi, installed packages, CPU flags), read once per
    command: the plan, its notes and a follower node all ask."""
    return plan_host()


def _load(matrix_path: str, device: str | None, yes: bool) -> Matrix:
    from txsuite.data import check_data_sources  # stdlib-only at import: keeps torch out of the runner

    try:
        return load_matrix(Path(matrix_path), host=_this_host(), device_override=device,
                           max_cells=None if yes else DEFAULT_MAX_CELLS, check_data=check_data_sources)
    except MatrixError as exc:
        raise UsageProblem(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="txsuite")
def main() -> None:
    """txsuite: what does each training technique cost and buy, on this hardware?"""


BIG_VOCAB = 65536  # above this, the plan checks what BPE can learn from the corpus at all


def _bpe_limit(cell, limits: dict[str, int]) -> int | None:
    """The most a BPE can learn from the cell's corpus, for asks above BIG_VOCAB (read once per
    corpus); None otherwise."""
    d = cell.data
    if d.tokenizer != "bpe" or (d.vocab_size or 0) <= BIG_VOCAB:
        return None
    if d.dataset not in limits:
        from txsuite.data.corpora import bpe_vocab_limit
        limits[d.dataset] = bpe_vocab_limit(d.dataset)
        if limits[d.dataset] < d.vocab_size:
            console.print(f"note: a byte-level BPE can learn at most ~{limits[d.dataset]:,} tokens from "
                          f"{d.dataset!r}; the memory estimate uses that, not the {d.vocab_size:,} asked")
    return limits[d.dataset]


def _plan_table(matrix: Matrix) -> Table:
    runs = (f"{matrix.repetitions} runs each ({matrix.seeds} seeds, {matrix.repeats} repeats: repetition r "
            f"trains with seed r mod {matrix.seeds})" if matrix.seeds > 1 else f"{matrix.repeats} repeats")
    table = Table(title=f"{matrix.name}: {len(matrix.cells)} cells x {runs}",
                  title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("cell id")
    table.add_column("cell")
    table.add_column("tokens/step", justify="right")
    table.add_column("est. train memory", justify="right")
    table.add_column("status")
    limits: dict[str, int] = {}
    for i, cell in enumerate(matrix.cells):
        status = f"[yellow]skipped: {cell.skip_reason}[/]" if cell.skip_reason else "[green]will run[/]"
        estimate = estimate_memory(cell.config, approx_vocab(cell.config, _bpe_limit(cell.config, limits)))["total_bytes"]
        table.add_row(str(i), cell.cell_id, cell.label, f"{cell.config.tokens_per_step:,}",
                      f"{estimate / 2**20:,.0f} MiB", status)
    return table


@main.command()
@click.argument("matrix_path", metavar="MATRIX")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Force every cell onto this device.")
@click.option("--only", "only", metavar="PATTERN", help="Only cells whose label or id matches (glob or substring).")
@click.option("--yes", is_flag=True, help="Accept a matrix of more than 500 cells.")
@click.option("--json", "as_json", is_flag=True, help="Print the planned matrix as JSON (cells with their resolved "
                                                      "configs), for other tools.")
def plan(matrix_path: str, device: str | None, only: str | None, yes: bool, as_json: bool) -> None:
    """Expand and validate MATRIX; print its cells; run nothing."""
    from txsuite.run.runner import select

    matrix = _load(matrix_path, device, yes)
    matrix.cells = select(matrix.cells, only)
    if as_json:
        import json
        click.echo(json.dumps({**matrix.to_json(), "fingerprint": matrix.fingerprint()}, default=str))
        return
    console.print(_plan_table(matrix))
    for note in matrix.notes:
        console.print(f"note: {note}")
    _host_notes(matrix.cells)


def _host_notes(cells) -> None:
    """What this host will make of the planned cells that the plan's table does not say."""
    from txsuite.config.host import emulated_bf16_note
    from txsuite.config.spec.measure import cache_allocator_note
    for note in (emulated_bf16_note(cells, _this_host()), cache_allocator_note(cells)):
        if note:
            console.print(note, soft_wrap=True, markup=False)


@main.command()
@click.argument("matrix_path", metavar="MATRIX")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--reports-dir", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--run-id", callback=_run_id, help="Name of the run folder; an existing one is resumed.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Force every cell onto this device.")
@click.option("--only", "only", metavar="PATTERN", help="Only cells whose label or id matches (glob or substring).")
@click.option("--timeout", "timeout_s", type=Seconds(), help="Seconds per cell repetition (default: matrix timeout_s or 1800).")
@click.option("--dry-run", is_flag=True, help="Plan and print the cells, run nothing.")
@click.option("--yes", is_flag=True, help="Accept a matrix of more than 500 cells.")
@click.option("--retry-failed", is_flag=True, help="Re-run repetitions of the resumed run that did not end ok/skipped.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first repetition that is not ok or skipped.")
@click.option("--no-report", is_flag=True, help="Write the records only; `txsuite report RUN_DIR` renders the "
                                                "report later (rendering takes a few seconds).")
@click.option("--executor", "executor_name", type=click.Choice(["local", "slurm", "submitit-local"]), default="local",
              show_default=True, help="Where cells run: this host; one Slurm job per cell (submitit); or "
                                      "submitit's local backend (the Slurm code path without a cluster).")
@click.option("--slurm-partition", help="Slurm partition for --executor slurm.")
@click.option("--gpus-per-node", type=int, default=0, show_default=True, help="GPUs per Slurm job.")
@click.option("--slurm-time", "slurm_time", type=int, metavar="MINUTES", help="Slurm time limit per job (default: from --timeout).")
@click.option("--max-parallel", type=int, default=32, show_default=True, help="Slurm jobs in flight at once.")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nodes that distributed cells span (torchrun static rendezvous); run the same command on each.")
@click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True,
              help="This node's rank: 0 leads (runs every cell, writes the records), others follow.")
@click.option("--rdzv-endpoint", metavar="HOST:PORT", help="Node 0's address and a free port, for --nnodes > 1.")
@click.option("--memory-limit", "memory_limit", metavar="SIZE",
              help="Cap what each cell may hold (e.g. 4GiB: host memory for CPU cells, GPU memory for CUDA cells) to see what fits a smaller machine; cells beyond it are `oom`.")
def run(matrix_path: str, results_dir: str, reports_dir: str, run_id: str | None, device: str | None,
        only: str | None, timeout_s: float | None, dry_run: bool, yes: bool, retry_failed: bool,
        fail_fast: bool, no_report: bool, memory_limit: str | None, executor_name: str, slurm_partition: str | None,
        gpus_per_node: int, slurm_time: int | None, max_parallel: int, nnodes: int, node_rank: int,
        rdzv_endpoint: str | None) -> None:
    """Run every cell of MATRIX, write results/, render reports/."""
    from txsuite.results import RunInUse
    from txsuite.run.runner import RunMismatch, choose_run_dir, follow_matrix, run_matrix, select

    nodes = _nodes(nnodes, node_rank, rdzv_endpoint, run_id, executor_name)

    matrix = _load(matrix_path, device, yes)
    if dry_run:
        matrix.cells = select(matrix.cells, only)
        console.print(_plan_table(matrix))
        _host_notes(matrix.cells)
        return
    if not select(matrix.cells, only):
        raise UsageProblem(f"--only {only!r} matches no cell of {matrix.source}.")
    # SIGTERM -> Terminated (a KeyboardInterrupt): the runner's cleanup kills the running cell's
    # process group, and the sweep ends as after Ctrl-C, saying what finished
    signal.signal(signal.SIGTERM, _raise_terminated)
    run_dir, resuming = choose_run_dir(Path(results_dir), matrix, run_id)
    if nodes.rank > 0:
        console.print(f"node {nodes.rank} of {nodes.count}: joining the distributed cells led from {nodes.endpoint}")
        with SweepProgress() as progress:
            joined = follow_matrix(matrix, run_dir, nodes, only=only, on_event=progress,
                                   gpus=list(range(_this_host().gpu_count)))
        console.print(f"done: joined {joined} distributed cell repetitions; node 0 holds the records")
        sys.exit(0)
    console.print(f"{'resuming' if resuming else 'starting'} run {run_dir}")
    _host_notes(select(matrix.cells, only))
    executor = _executor(executor_name, run_dir, slurm_partition, gpus_per_node, slurm_time, max_parallel)
    limit = _parse_size(memory_limit) if memory_limit else None
    report_path = Path(reports_dir) / matrix.name / f"{run_dir.name}.html"
    try:
        with SweepProgress() as progress:
            summary = run_matrix(matrix, run_dir, only=only, timeout_s=timeout_s, on_event=progress,
                                 retry_failed=retry_failed, fail_fast=fail_fast, memory_limit_bytes=limit,
                                 executor=executor, nodes=nodes)
    except (RunInUse, RunMismatch) as exc:
        raise UsageProblem(str(exc)) from None
    except KeyboardInterrupt as exc:
        _interrupted(run_dir, report_path, exc)
    except OSError as exc:
        raise UsageProblem(f"cannot write the run into {run_dir}: {exc.strerror or exc} "
                           f"({exc.filename or run_dir}); what was recorded before is kept. Give a writable "
                           f"--results-dir, or free space, and run the same command again to resume.") from None
    if summary.stopped_early:
        console.print("stopped early (--fail-fast); the same command resumes the sweep")
    if summary.resumed:
        console.print(f"{summary.resumed} repetitions were already finished and kept")
    report = (f"not rendered (--no-report; `txsuite report {run_dir}` renders it)" if no_report
              else _render(run_dir, report_path))
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    console.print(f"done: {counts}; records in {run_dir / 'records.jsonl'}; report {report}")
    sys.exit(0 if summary.ok else 1)


class Terminated(KeyboardInterrupt):
    """SIGTERM during a sweep (a job scheduler's cancel, `kill`): handled as Ctrl-C is."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


def _interrupted(run_dir: Path, report_path: Path, exc: KeyboardInterrupt) -> None:
    """Ctrl-C or SIGTERM: the cell in flight was stopped with its process group; say what
    finished, render the report of it, and exit as shells expect of a command ended by that
    signal (130 after Ctrl-C, 143 after SIGTERM)."""
    from txsuite.results import RunFolder

    finished = RunFolder(run_dir).finished() if run_dir.exists() else {}
    counts: dict[str, int] = {}
    for status in finished.values():
        counts[status] = counts.get(status, 0) + 1
    done = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"
    report = _render(run_dir, report_path) if finished else "(nothing to report)"
    how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    err_console.print(f"{how}: repetitions finished and recorded: {done}; records in {run_dir}; "
                      f"report {report}. The same command resumes the sweep.", soft_wrap=True, markup=False)
    sys.exit(getattr(exc, "exit_code", 130))


def _nodes(nnodes: int, node_rank: int, endpoint: str | None, run_id: str | None, executor_name: str):
    from txsuite.run.runner import Nodes

    if nnodes == 1:
        if node_rank:
            raise UsageProblem(f"--node-rank {node_rank} needs --nnodes greater than {node_rank}.")
        return Nodes()
    problems = []
    if node_rank >= nnodes:
        problems.append(f"--node-rank must be below --nnodes {nnodes} (got {node_rank})")
    if not endpoint or not re.fullmatch(r"[\w.\-\[\]:]+:\d+", endpoint):
        problems.append(f"--rdzv-endpoint must be node 0's HOST:PORT (got {endpoint!r})")
    if not run_id:
        problems.append("--run-id is needed so every node names the same run")
    if executor_name != "local":
        problems.append("--nnodes works with --executor local (under Slurm, start one `txsuite run` per node)")
    if problems:
        raise UsageProblem("multi-node run: " + "; ".join(problems) + ".")
    return Nodes(nnodes, node_rank, endpoint)


def _executor(name: str, run_dir: Path, partition: str | None, gpus_per_node: int, time_min: int | None,
              max_parallel: int):
    from txsuite.run.executors import LocalExecutor, SlurmExecutor

    if name == "local":
        ids, gpu_env = host_gpu_ids(len(gpus_from_nvidia_smi()))
        return LocalExecutor(gpu_ids=ids, gpu_env=gpu_env)
    import importlib.util
    if importlib.util.find_spec("submitit") is None:
        raise UsageProblem(f"--executor {name} needs submitit: pip install submitit")
    return SlurmExecutor(run_dir / "submitit", partition=partition, gpus_per_node=gpus_per_node,
                         time_min=time_min, max_parallel=max_parallel,
                         cluster="local" if name == "submitit-local" else "slurm")


def _parse_size(text: str) -> int:
    units = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
             "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}
    import re
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in units:
        raise UsageProblem(f"--memory-limit {text!r}: expected a size such as 4GiB, 512MiB or 2e9 bytes.")
    return int(float(match.group(1)) * units[match.group(2).lower()])


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
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
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
        if kind == "start":
            console.print(f"{info['total']} cell repetitions, {info['done']} already finished")
            if self.bar is not None:
                self.task = self.bar.add_task("sweep", total=info["total"], completed=info["done"])
        elif kind == "cell_start":
            left = info["total"] - info["index"]
            eta = ""
            if self.ran:
                per_cell = (time.monotonic() - self.started) / self.ran
                eta = f", about {_duration(per_cell * left)} left"
            console.print(f"[{info['index'] + 1}/{info['total']}] {info['label']} "
                          f"(cell {info['cell_id']}, repeat {info['repeat']}{eta}) ...")
            if self.bar is not None:
                self.bar.update(self.task, description=info["label"][:40])
                self.log = Path(info["run_dir"]) / "cells" / info["cell_id"] / f"r{info['repeat']}" / "log.txt"
                self.label = info["label"][:40]
        elif kind in ("cell_end", "follower_cell_end"):
            self.ran += 1
            if kind == "cell_end":
                _print_record(info["record"])
            else:
                console.print("    joined; node 0 records the result")
            if self.bar is not None:
                self.bar.advance(self.task)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def _print_record(r) -> None:
    m = r.metrics
    if r.status == "ok":
        console.print(f"    [green]ok[/] {m['tokens_per_s']:,.0f} tokens/s, step p50 "
                      f"{m['step_time_p50_s'] * 1e3:.1f} ms, peak mem {m['peak_mem_bytes'] / 2**20:,.0f} MiB, "
                      f"MFU {m['mfu']:.1%}, val loss {m['val_loss']:.4f}{_compressed(m)} ({r.duration_s:.1f} s)")
    else:
        color = "yellow" if r.status == "skipped" else "red"
        console.print(f"    [{color}]{r.status}[/]: {r.reason}", soft_wrap=True)


def _compressed(m: dict) -> str:
    before = m.get("trained_val_loss")
    if before is None:
        return ""
    return f" compressed (trained {before:.4f}), model {m['model_size_bytes'] / 2**20:,.2f} MiB"


def _render(run_dir: Path, out: Path) -> Path | str:
    try:
        from txsuite.report import render_report
        return render_report(run_dir, out)
    except Exception as exc:  # noqa: BLE001 - a report problem must never lose the finished records
        err_console.print(f"[yellow]report not rendered ({type(exc).__name__}: {exc}); "
                          f"records are safe in {run_dir}; retry with `txsuite report {run_dir}`[/]")
        return "(not rendered)"


@main.command()
@click.argument("results", type=click.Path(exists=True, file_okay=False))
@click.option("--reports-dir", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="HTML file to write.")
@click.option("--format", "fmt", type=click.Choice(["html", "csv", "parquet", "json", "markdown"]), default="html",
              show_default=True, help="html report, or the per-cell table as csv/parquet/json/markdown.")
def report(results: str, reports_dir: str, output: str | None, fmt: str) -> None:
    """(Re)render the report of a run folder (results/<matrix>/<run id>)."""
    from txsuite.report import export_table, render_report
    from txsuite.results import find_runs

    runs = find_runs(results)
    if not runs:
        raise UsageProblem(f"{results} holds no records.jsonl: give a run folder such as results/<matrix>/<run id>.")
    for run_dir in runs:
        meta_name = run_dir.parent.name
        suffix = {"html": ".html", "csv": ".csv", "parquet": ".parquet", "json": ".json", "markdown": ".md"}[fmt]
        out = Path(output) if output and len(runs) == 1 else Path(reports_dir) / meta_name / f"{run_dir.name}{suffix}"
        try:
            path = render_report(run_dir, out) if fmt == "html" else export_table(run_dir, out, fmt)
        except OSError as exc:
            raise UsageProblem(f"cannot write the {fmt} report of {run_dir} to {exc.filename or out}: "
                               f"{exc.strerror or exc}; give a writable -o path or --reports-dir "
                               f"(the records are untouched).") from None
        console.print(f"wrote {path}")


@main.command()
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="HTML file to write.")
def compare(run_a: str, run_b: str, output: str | None) -> None:
    """Side-by-side report of two runs (same matrix on two machines or two commits)."""
    from txsuite.report.compare import different_experiments, render_runs
    from txsuite.results import RunFolder

    a, b = Path(run_a), Path(run_b)
    for run in (a, b):
        if not (run / "records.jsonl").exists():
            raise UsageProblem(f"{run} is not a run folder (no records.jsonl in it).")
    out = Path(output) if output else Path("reports") / "compare" / f"{a.name}_vs_{b.name}.html"
    loaded_a, loaded_b = RunFolder(a).load(), RunFolder(b).load()
    for warning in different_experiments(loaded_a, loaded_b):
        err_console.print(warning, soft_wrap=True, markup=False)
    try:
        path, findings = render_runs(loaded_a, loaded_b, out)
        for line in findings:
            console.print(line, soft_wrap=True, markup=False)
        console.print(f"wrote {path}")
    except OSError as exc:
        raise UsageProblem(f"cannot write the comparison to {exc.filename or out}: {exc.strerror or exc}; "
                           f"give a writable -o path.") from None


def _parse_thresholds(items: tuple[str, ...]) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        metric, sep, change = item.partition("=")
        if not sep:
            raise UsageProblem(f"--threshold {item!r}: expected METRIC=CHANGE, e.g. tokens_per_s=-5%.")
        out[metric.strip()] = change.strip()
    return out


def _percent(text: str) -> float:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageProblem(f"--run-noise {text!r}: expected a percentage such as 16%.") from None


@main.command()
@click.argument("run_path", metavar="RUN")
@click.option("--baseline", "baseline_path", required=True, metavar="BASELINE",
              help="A run folder or a baseline file written by `txsuite baseline`.")
@click.option("--threshold", "thresholds", multiple=True, metavar="METRIC=CHANGE",
              help="Override the matrix's guard block, e.g. tokens_per_s=-5% (repeatable).")
@click.option("--normalize", type=click.Choice(["none", "peak", "auto", "state"]), default="none", show_default=True,
              help="peak: compare throughput relative to each machine's measured matmul peak; auto: peak "
                   "when the hardware differs; state: one machine, time brought to its best state by each "
                   "repetition's probe (docs/guard.md).")
@click.option("--alpha", type=float, default=0.01, show_default=True, help="False-alarm level of each check.")
@click.option("--run-noise", "run_noise", default=None,
              help="How much a whole run's throughput moves from run to run on this machine (sd), e.g. 2%. "
                   "Default: the prior of docs/verdicts.md, combined with what a baseline of several runs "
                   "measures (the guard's notes name both).")
@click.option("--slow-state", type=click.FloatRange(min=1, min_open=True), default=2.0, show_default=True,
              help="Leave out repetitions measured while the machine was this many times slower than its best.")
@click.option("--confirm", is_flag=True, help="Re-measure each failed cell once; it stays FAIL only if it fails again.")
@click.option("--results-dir", default=None, type=click.Path(file_okay=False),
              help="Where --confirm writes its re-measurement (default: beside RUN).")
@click.option("--timeout", "timeout_s", type=Seconds(), help="Seconds per re-measured cell repetition.")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False),
              help="Also append the verdict as Markdown to this file (e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the verdict as JSON.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
def guard(run_path, baseline_path, thresholds, normalize, alpha, run_noise, slow_state, confirm, results_dir,
          timeout_s, markdown_out, json_out, seed) -> None:
    """PASS (exit 0), FAIL (1) or INCONCLUSIVE (3): RUN against BASELINE on the matrix's guard metrics."""
    from txsuite.guard import GuardInputError, cells_to_confirm, compare, load_side, merge_confirmation

    _check_writable(markdown_out, "--markdown")
    _check_writable(json_out, "--json")
    try:
        run_side = load_side(run_path)
        base_side = load_side(baseline_path)
        result = compare(run_side, base_side, _parse_thresholds(thresholds), normalize=normalize,
                         alpha=alpha, seed=seed, run_noise=_percent(run_noise) if run_noise else None,
                         slow_state=slow_state)
    except GuardInputError as exc:
        raise UsageProblem(str(exc)) from None
    flagged = cells_to_confirm(result)
    if confirm and flagged:
        if run_side.kind != "run" or not run_side.source:
            raise UsageProblem(f"--confirm needs RUN to be a run folder whose matrix.json names its matrix file; "
                               f"{run_path} is not.")
        from txsuite.run.runner import run_matrix

        ids = {cid for cid, _ in flagged}
        devices = {run_side.cells[cid].config.get("device") for cid in ids}
        device = devices.pop() if len(devices) == 1 and None not in devices else None
        matrix = _load(run_side.source, device if device in ("cpu", "cuda") else None, True)
        matrix.cells = [c for c in matrix.cells if c.cell_id in ids]
        if not matrix.cells:
            raise UsageProblem(f"--confirm: the flagged cells are no longer in {run_side.source}.")
        base_dir = Path(results_dir) / matrix.name if results_dir else run_side.run_dir.parent
        confirm_dir = base_dir / f"{run_side.run_dir.name}-confirm"
        console.print(f"re-measuring {len(matrix.cells)} flagged cell(s) into {confirm_dir}: "
                      + ", ".join(label for _, label in flagged))
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        with SweepProgress() as progress:
            run_matrix(matrix, confirm_dir, timeout_s=timeout_s, on_event=progress)
        try:
            result = merge_confirmation(result, load_side(confirm_dir))
        except GuardInputError as exc:
            raise UsageProblem(str(exc)) from None
    console.print(result.to_text(), soft_wrap=True, markup=False, highlight=False)
    _write_verdict(result, markdown_out, json_out)
    sys.exit(result.exit_code)


def _check_writable(path: str | None, option: str) -> None:
    """Refuse an output the guard could not write before any work is done (exit 2, not 1: the
    guard's own failure must never read as a regression)."""
    if not path:
        return
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        problem = "it is a folder"
    elif not folder.is_dir():
        problem = f"its folder {folder} does not exist"
    elif not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        problem = "it is read-only"
    else:
        return
    raise UsageProblem(f"{option} {path}: cannot write there ({problem}); give a writable file path.")


def _write_verdict(result, markdown_out: str | None, json_out: str | None) -> None:
    import json as _json
    try:
        if markdown_out:
            with open(markdown_out, "a") as fh:
                fh.write(result.to_markdown())
        if json_out:
            Path(json_out).write_text(_json.dumps(result.to_dict(), indent=1, default=str) + "\n")
    except OSError as exc:
        raise UsageProblem(f"the verdict ({result.verdict}) was printed above, but "
                           f"{exc.filename or markdown_out or json_out} could not be written ({exc.strerror}).") from None


@main.command()
@click.argument("matrix_path", metavar="MATRIX")
@click.option("--base", "base_ref", required=True, metavar="REF",
              help="The version to compare against: a git ref of this checkout (branch, tag, commit).")
@click.option("--head", "head_ref", metavar="REF", help="The version under test (default: the working tree).")
@click.option("--results-dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--run-id", callback=_run_id, help="Name of the A/B folder (default: a timestamp).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Force every cell onto this device.")
@click.option("--only", "only", metavar="PATTERN", help="Only cells whose label or id matches (glob or substring).")
@click.option("--threshold", "thresholds", multiple=True, metavar="METRIC=CHANGE",
              help="Override the matrix's guard block, e.g. tokens_per_s=-5% (repeatable).")
@click.option("--alpha", type=float, default=0.01, show_default=True,
              help="False-FAIL (and false-PASS) level over all looks together.")
@click.option("--min-rounds", type=click.IntRange(min=2), default=4, show_default=True,
              help="Rounds (one repetition per cell per side) before the first look.")
@click.option("--max-rounds", type=click.IntRange(min=2), default=16, show_default=True,
              help="Rounds at most while a check stays INCONCLUSIVE.")
@click.option("--budget", "budget_s", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Start no round after this many seconds; decide on what was measured.")
@click.option("--slow-state", type=click.FloatRange(min=1, min_open=True), default=2.0, show_default=True,
              help="Leave out pairs measured while the machine was this many times slower than its best.")
@click.option("--timeout", "timeout_s", type=Seconds(),
              help="Seconds per cell repetition (default: the matrix's timeout_s or 1800).")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False),
              help="Also append the verdict as Markdown to this file (e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the verdict as JSON.")
def ab(matrix_path, base_ref, head_ref, results_dir, run_id, device, only, thresholds, alpha, min_rounds, max_rounds,
       budget_s, slow_state, timeout_s, markdown_out, json_out) -> None:
    """Same-job A/B: MATRIX on two versions of the code, alternating, decided on paired ratios.
    Exit 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 unusable input."""
    from datetime import datetime

    from txsuite.guard import GuardInputError
    from txsuite.guard.decide import resolve_guard
    from txsuite.guard.side import Side
    from txsuite.run import ab as abrun
    from txsuite.run.runner import select

    _check_writable(markdown_out, "--markdown")
    _check_writable(json_out, "--json")
    if not 0.0 < alpha < 0.5:
        raise UsageProblem(f"--alpha {alpha}: expected a level between 0 and 0.5, e.g. 0.01.")
    if max_rounds < min_rounds:
        raise UsageProblem(f"--max-rounds {max_rounds} is below --min-rounds {min_rounds}.")
    matrix = _load(matrix_path, device, True)
    matrix.cells = select(matrix.cells, only)
    if not matrix.cells:
        raise UsageProblem(f"--only {only!r} matches no cell of {matrix.source}.")
    try:
        limits, _ = resolve_guard(Side(path=matrix.source, kind="run", guard=matrix.guard),
                                  Side(path=matrix.source, kind="run"), _parse_thresholds(thresholds))
    except GuardInputError as exc:
        raise UsageProblem(str(exc)) from None
    work = abrun.work_folder()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        repo = abrun.repo_root(Path.cwd())
        checkouts = abrun.Checkouts(repo)
        try:
            base = abrun.prepare_side("base", base_ref, repo, work, checkouts)
            head = abrun.prepare_side("head", head_ref, repo, work, checkouts)
            matrix_file = Path(matrix_path).resolve()
            plans = [abrun.plan_side(side, matrix_file, device) for side in (base, head)]
            plan = abrun.pair_plans(matrix, *plans)
            plan.cells = [c for c in plan.cells if c in matrix.cells]
            out_dir = Path(results_dir) / "ab" / matrix.name / (run_id or datetime.now().strftime("%Y%m%d-%H%M%S"))
            console.print(f"A/B of {matrix.source}: {base.describe()} against {head.describe()}, "
                          f"{len(plan.cells)} cell(s), {min_rounds} to {max_rounds} rounds; records in {out_dir}")
            settings = abrun.AbSettings(thresholds=limits, alpha=alpha, min_rounds=min_rounds, max_rounds=max_rounds,
                                        budget_s=budget_s, slow_state=slow_state,
                                        timeout_s=timeout_s or matrix.timeout_s or 1800.0)
            outcome = abrun.run_ab(plan, base, head, out_dir, settings, on_event=_ab_progress)
        finally:
            checkouts.close()
    except abrun.AbError as exc:
        raise UsageProblem(str(exc)) from None
    finally:
        abrun.remove_work_folder(work)
    result = outcome.result
    console.print(result.to_text(), soft_wrap=True, markup=False, highlight=False)
    _write_verdict(result, markdown_out, json_out)
    sys.exit(result.exit_code)


def _ab_progress(kind: str, info: dict) -> None:
    if kind == "cell_end":
        r = info["record"]
        tps = r.metrics.get("tokens_per_s")
        state = r.metrics.get("machine_slowdown")
        console.print(f"  round {info['round'] + 1} {info['side']:4s} {info['label']}: {r.status}"
                      + (f", {tps:,.0f} tokens/s" if tps else "")
                      + (f", machine state {state:.2f}x its best" if state else ""))
    elif kind == "look":
        console.print(f"after {info['rounds']} rounds: {info['verdict']}")


@main.command()
@click.argument("run_paths", metavar="RUN...", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The baseline file to write, e.g. baselines/smoke.json (commit it).")
def baseline(run_paths: tuple[str, ...], output: str) -> None:
    """Write a compact baseline of RUN (samples kept) for `txsuite guard --baseline`. Several
    runs of the same matrix on the same machine make one baseline that measures how much a
    whole run moves from run to run there (the guard then uses that, not only --run-noise)."""
    from txsuite.guard import GuardInputError, write_baseline

    try:
        out = write_baseline(list(run_paths), output)
    except GuardInputError as exc:
        raise UsageProblem(str(exc)) from None
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    noise = json.loads(out.read_text())["quality"]["noise"]
    if noise.get("tokens_per_s") is not None:
        line = f"tokens/s: repetitions within a run vary by {noise['tokens_per_s']:.1%}"
        if noise.get("runs", 1) > 1:
            between = noise.get("between_runs")
            line += (f"; whole runs by {between:.1%} ({noise['runs']} runs)" if between is not None
                     else f"; whole runs: not measured ({noise['runs']} runs, no cell in two of them)")
        console.print(line, markup=False, highlight=False)


if __name__ == "__main__":
    main()
