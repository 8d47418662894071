"""`txsuite run`: run every cell of a matrix, write the records, render the report, and print
its answers."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from shlex import quote

import click

from txsuite.cli.common import (OVERRIDES_HELP, Seconds, Size, UsageProblem, console, device_option, err_console,
                                interrupted_exit, load, raise_if_signalled,
                                matrix_argument, only_option, overrides_argument, print_lines, report_path,
                                reports_dir_option, results_dir_option, run_id_option, this_host, yes_option)
from txsuite.cli.plan import host_notes, show_plan
from txsuite.cli.progress import SweepProgress, print_record
from txsuite.measure.env import gpus_from_nvidia_smi
from txsuite.run.executors import host_gpu_ids


@click.command(epilog=OVERRIDES_HELP)
@matrix_argument
@overrides_argument
@results_dir_option
@reports_dir_option
@run_id_option
@device_option
@only_option
@click.option("--timeout", "timeout_s", type=Seconds(), help="Seconds per cell repetition (default: matrix timeout_s or 1800).")
@click.option("--dry-run", is_flag=True, help="Plan and print the cells, run nothing.")
@click.option("--search", type=click.Choice(["grid", "pareto"]),
              help="grid: every cell in full; pareto: probe every cell, then full repetitions only for cells that "
                   "can still reach the front (as the override search=...; default: the matrix's search, else grid).")
@click.option("--budget", "budget_s", type=Seconds(), help="Seconds the whole sweep may take (probes included): "
              "repetitions not started by then are recorded skipped ('budget: ...'); one in flight finishes.")
@yes_option
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
@click.option("--no-predict-skip", "no_predict_skip", is_flag=True,
              help="Launch cells predicted not to fit --memory-limit too (by default they are recorded skipped).")
@click.option("--memory-limit", "memory_limit", type=Size(), metavar="SIZE",
              help="Cap what each cell may hold (e.g. 4GiB: host memory for CPU cells, GPU memory for CUDA cells) to see what fits a smaller machine; cells beyond it are `oom`.")
@click.option("--mlflow", "to_mlflow", is_flag=True, help="Also export to MLflow as each repetition ends "
              "(MLFLOW_TRACKING_URI, else sqlite:///mlflow.db): as `txsuite export RUN --mlflow`.")
def run(matrix_path: str, overrides: tuple[str, ...], results_dir: str, reports_dir: str, run_id: str | None, device: str | None,
        only: str | None, timeout_s: float | None, dry_run: bool, yes: bool, retry_failed: bool,
        fail_fast: bool, no_report: bool, no_predict_skip: bool, memory_limit: int | None, executor_name: str, slurm_partition: str | None,
        gpus_per_node: int, slurm_time: int | None, max_parallel: int, nnodes: int, node_rank: int,
        rdzv_endpoint: str | None, to_mlflow: bool = False, search: str | None = None,
        budget_s: float | None = None) -> None:
    """Run every cell of MATRIX, write results/, render reports/."""
    from txsuite.results import RunInUse
    from txsuite.run.runner import RunMismatch, choose_run_dir, follow_matrix, run_matrix, select

    nodes = _nodes(nnodes, node_rank, rdzv_endpoint, run_id, executor_name)

    if search:  # the option is the override, so the run's matrix.json records it as one
        overrides = (*overrides, f"search={search}")
    matrix = load(matrix_path, device, yes, overrides)
    if matrix.search == "pareto" and nodes.count > 1:  # the followers join full repetitions only
        raise UsageProblem(f"{matrix.source}: search: pareto probes and prunes on one node; with --nnodes "
                           f"{nodes.count} run it with --search grid (the followers join every distributed cell).")
    if matrix.detect is not None and nodes.count > 1:  # the followers could not know which rounds node 0 adds
        raise UsageProblem(f"{matrix.source}: repeats: {{min, max, detect}} decides its rounds on one node; with "
                           f"--nnodes {nodes.count} give a fixed count (the override repeats={matrix.repeats}, or "
                           f"repeats={matrix.max_repeats}).")
    if not select(matrix.cells, only):  # a dry run too: `plan` and `run` answer the same
        raise UsageProblem(f"--only {only!r} matches no cell of {matrix.source}.")
    if dry_run:
        matrix.cells = select(matrix.cells, only)
        show_plan(matrix)
        return
    # SIGTERM arrives as Terminated (a KeyboardInterrupt, set up for every command in
    # txsuite.cli.Txsuite): the runner's cleanup kills the running cell's process group, and the
    # sweep ends as after Ctrl-C, saying what finished
    run_dir, resuming = choose_run_dir(Path(results_dir), matrix, run_id)
    tracker = None
    if to_mlflow and nodes.rank == 0:  # said now, before anything runs, when mlflow is not installed
        from txsuite.cli.export import MlflowFollower
        tracker = MlflowFollower(run_dir)
    if nodes.rank > 0:
        console.print(f"node {nodes.rank} of {nodes.count}: joining the distributed cells led from {nodes.endpoint}",
                      markup=False)
        with SweepProgress() as progress:
            joined = follow_matrix(matrix, run_dir, nodes, only=only, on_event=progress,
                                   gpus=list(range(this_host().gpu_count)))
        console.print(f"done: joined {joined} distributed cell repetitions; node 0 holds the records")
        sys.exit(0)
    out = None if no_report else _report_path(Path(reports_dir), matrix.name, run_dir)
    console.print(f"{'resuming' if resuming else 'starting'} run {run_dir}", markup=False)
    host_notes(select(matrix.cells, only))
    executor = _executor(executor_name, run_dir, slurm_partition, gpus_per_node, slurm_time, max_parallel)
    limit = memory_limit  # bytes, checked when the option was parsed (Size: 1 MiB to 1 PiB)
    elsewhere = "" if reports_dir == "reports" else f" --reports-dir {quote(reports_dir)}"
    retry = f"`txsuite report {quote(str(run_dir))}{elsewhere}`"
    try:
        with SweepProgress() as progress:
            progress = tracker.wrap(progress) if tracker else progress
            if matrix.search == "pareto":
                from txsuite.run.search import describe_probe
                console.print(describe_probe(matrix), markup=False, soft_wrap=True)
                progress = _showing_probes(progress)
            summary = run_matrix(matrix, run_dir, only=only, timeout_s=timeout_s, on_event=progress, budget_s=budget_s,
                                 retry_failed=retry_failed, fail_fast=fail_fast, memory_limit_bytes=limit, predict_skip=not no_predict_skip,
                                 executor=executor, nodes=nodes)
    except (RunInUse, RunMismatch) as exc:
        raise UsageProblem(str(exc)) from None
    except KeyboardInterrupt as exc:
        _interrupted(run_dir, out, retry, exc)
    except OSError as exc:
        raise UsageProblem(f"cannot write the run into {run_dir}: {exc.strerror or exc} "
                           f"({exc.filename or run_dir}); what was recorded before is kept. Give a writable "
                           f"--results-dir, or free space, and run the same command again to resume.") from None
    if summary.stopped_early:
        console.print("stopped early (--fail-fast); the same command resumes the sweep")
    if summary.resumed:
        console.print(f"{summary.resumed} repetitions were already finished and kept")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    if out is None:
        report, answers, problem = f"not rendered (--no-report; {retry} renders it)", [], None
    else:
        try:
            report, answers, problem = _render(run_dir, out)
        except KeyboardInterrupt as exc:  # the sweep is done: what finished is all of it
            _interrupted(run_dir, None, retry, exc, rendering=True)
    if tracker:
        tracker.finish(report)
    print_lines(answers)
    console.print(f"done: {counts}; records in {run_dir / 'records.jsonl'}; report {report}", markup=False)
    if problem:
        # the cells are fine, but the report asked for is not there: exit 2, not 0 (docs: README)
        raise UsageProblem(f"the report of {run_dir} could not be written to {out}: {problem}. The run's records "
                           f"are complete and untouched ({counts}); give a writable --reports-dir (or free space) and "
                           f"render it with {retry}.")
    sys.exit(0 if summary.ok else 1)


def _showing_probes(progress):
    """The sweep's progress, with a line for each probe of an adaptive sweep and each cell it
    pruned (txsuite/run/search.py's events); every other event goes to `progress`."""
    def show(kind: str, info: dict) -> None:
        if kind == "probe_start":
            raise_if_signalled()
            console.print(f"probing {info['cells']} cells, {info['rounds']} rounds: {info['total']} probe repetitions "
                          f"to run", markup=False)
        elif kind == "probe_cell_start":
            raise_if_signalled()
            console.print(f"[probe {info['index'] + 1}/{info['total']}] {info['label']} (cell {info['cell_id']}, "
                          f"round {info['round']}) ...", markup=False, emoji=False)
        elif kind == "probe_cell_end":
            print_record(info["record"])
        elif kind == "probe_budget":
            console.print(f"the --budget was spent during the probes; {info['left']} probes not run (their cells are "
                          f"kept, and skipped for the budget)", markup=False)
        elif kind == "pruned":
            pruned = info["pruned"]
            console.print(f"pruned {len(pruned)} cells, {info['kept']} run in full", markup=False)
            for p in pruned:
                console.print(f"    {p.cell.label or p.cell.cell_id}: {p.reason}", markup=False, soft_wrap=True,
                              emoji=False)
        else:
            progress(kind, info)
    return show


def _report_path(reports_dir: Path, matrix_name: str, run_dir: Path) -> Path:
    """The run's report file, claimed before the first cell: a reports folder that cannot be
    written is said now, not after the sweep; a report of another run of the same id is kept."""
    try:
        out, note = report_path(reports_dir / matrix_name, run_dir.name, ".html", str(run_dir.resolve()))
    except OSError as exc:
        raise UsageProblem(f"cannot write reports into {reports_dir / matrix_name}: {exc.strerror or exc} "
                           f"({exc.filename or reports_dir}); give a writable --reports-dir, or --no-report to "
                           f"write the records only (`txsuite report RUN` renders the report later).") from None
    if note:
        console.print(note, markup=False, soft_wrap=True)
    return out


def _interrupted(run_dir: Path, out: Path | None, retry: str, exc: KeyboardInterrupt, rendering: bool = False):
    """Ctrl-C or SIGTERM: the cell in flight was stopped with its process group; say what
    finished, render the report of it (unless --no-report, or the signal came while rendering),
    and exit as shells expect of a command ended by that signal (130 after Ctrl-C, 143 after
    SIGTERM). A second Ctrl-C while the report renders stops the rendering, not the summary."""
    from txsuite.results import RunFolder

    finished = RunFolder(run_dir).finished() if run_dir.exists() else {}
    counts: dict[str, int] = {}
    for status in finished.values():
        counts[status] = counts.get(status, 0) + 1
    done = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"
    if not finished:
        report = "(nothing to report)"
    elif out is None or rendering:
        report = f"not rendered ({retry} renders it)"
    else:
        try:
            path, _, problem = _render(run_dir, out)
            report = f"not rendered ({problem}; {retry} renders it)" if problem else str(path)
        except KeyboardInterrupt:
            report = f"not rendered (interrupted again; {retry} renders it)"
    interrupted_exit(exc, f"repetitions finished and recorded: {done}; records in {run_dir}; report {report}. "
                          f"The same command resumes the sweep.")


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


def _render(run_dir: Path, out: Path) -> tuple[Path | str, list[str], str | None]:
    """(the report's path, its answers, None), or ("not rendered", [], why) when it could not be
    rendered or written: said by the caller, never raised (the finished records stay as they are)."""
    try:
        from txsuite.report.run_report import render_run
        return (*render_run(run_dir, out, on_progress=lambda text: err_console.print(text, markup=False)), None)
    except OSError as exc:
        return "not rendered", [], f"{exc.strerror or exc} ({exc.filename or out})"
    except Exception as exc:  # noqa: BLE001 - a report problem must never lose the finished records
        return "not rendered", [], f"{type(exc).__name__}: {exc}"
