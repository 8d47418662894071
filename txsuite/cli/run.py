"""`txsuite run`: run every cell of a matrix, write the records, render the report, and print
its answers."""
from __future__ import annotations

import re
import signal
import sys
from pathlib import Path

import click

from txsuite.cli.common import (OVERRIDES_HELP, Seconds, UsageProblem, console, device_option, err_console, load,
                                matrix_argument, only_option, overrides_argument, print_lines, reports_dir_option,
                                results_dir_option, run_id_option, this_host, yes_option)
from txsuite.cli.plan import host_notes, show_plan
from txsuite.cli.progress import SweepProgress
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
@click.option("--memory-limit", "memory_limit", metavar="SIZE",
              help="Cap what each cell may hold (e.g. 4GiB: host memory for CPU cells, GPU memory for CUDA cells) to see what fits a smaller machine; cells beyond it are `oom`.")
def run(matrix_path: str, overrides: tuple[str, ...], results_dir: str, reports_dir: str, run_id: str | None, device: str | None,
        only: str | None, timeout_s: float | None, dry_run: bool, yes: bool, retry_failed: bool,
        fail_fast: bool, no_report: bool, memory_limit: str | None, executor_name: str, slurm_partition: str | None,
        gpus_per_node: int, slurm_time: int | None, max_parallel: int, nnodes: int, node_rank: int,
        rdzv_endpoint: str | None) -> None:
    """Run every cell of MATRIX, write results/, render reports/."""
    from txsuite.results import RunInUse
    from txsuite.run.runner import RunMismatch, choose_run_dir, follow_matrix, run_matrix, select

    nodes = _nodes(nnodes, node_rank, rdzv_endpoint, run_id, executor_name)

    matrix = load(matrix_path, device, yes, overrides)
    if dry_run:
        matrix.cells = select(matrix.cells, only)
        show_plan(matrix)
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
                                   gpus=list(range(this_host().gpu_count)))
        console.print(f"done: joined {joined} distributed cell repetitions; node 0 holds the records")
        sys.exit(0)
    console.print(f"{'resuming' if resuming else 'starting'} run {run_dir}")
    host_notes(select(matrix.cells, only))
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
    report, answers = ((f"not rendered (--no-report; `txsuite report {run_dir}` renders it)", []) if no_report
                       else _render(run_dir, report_path))
    print_lines(answers)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    console.print(f"done: {counts}; records in {run_dir / 'records.jsonl'}; report {report}", markup=False)
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
    report = _render(run_dir, report_path)[0] if finished else "(nothing to report)"
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
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in units:
        raise UsageProblem(f"--memory-limit {text!r}: expected a size such as 4GiB, 512MiB or 2e9 bytes.")
    return int(float(match.group(1)) * units[match.group(2).lower()])


def _render(run_dir: Path, out: Path) -> tuple[Path | str, list[str]]:
    """(the report's path, its answers); a report that cannot be rendered is said, never raised."""
    try:
        from txsuite.report.run_report import render_run
        return render_run(run_dir, out)
    except Exception as exc:  # noqa: BLE001 - a report problem must never lose the finished records
        err_console.print(f"report not rendered ({type(exc).__name__}: {exc}); records are safe in {run_dir}; "
                          f"retry with `txsuite report {run_dir}`", style="yellow", markup=False, soft_wrap=True)
        return "(not rendered)", []
