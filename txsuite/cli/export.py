"""`txsuite export`: a run into an experiment tracker (MLflow, TensorBoard); and what `txsuite
run --mlflow` uses to export each repetition as it ends."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from txsuite.cli.common import UsageProblem, console, err_console, reports_dir_option


@click.command()
@click.argument("results", metavar="RUN", type=click.Path(exists=True, file_okay=False))
@click.option("--mlflow", "to_mlflow", is_flag=True,
              help="Export to MLflow: an experiment per matrix, a run per cell, a nested run per repetition.")
@click.option("--tracking-uri", metavar="URI",
              help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).")
@click.option("--tensorboard", "tensorboard_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Write TensorBoard event files under DIR/<matrix>/<run id>/.")
@reports_dir_option
def export(results: str, to_mlflow: bool, tracking_uri: str | None, tensorboard_dir: str | None,
           reports_dir: str) -> None:
    """Export a run folder (results/<matrix>/<run id>, or a folder of runs) to MLflow and/or
    TensorBoard. Exporting again adds nothing that is already there."""
    from txsuite.results import find_runs

    if not to_mlflow and not tensorboard_dir:
        raise UsageProblem("txsuite export needs a target: --mlflow (with --tracking-uri URI) and/or "
                           "--tensorboard DIR.")
    if tracking_uri and not to_mlflow:
        raise UsageProblem("--tracking-uri is for --mlflow: add --mlflow, or leave it out.")
    runs = find_runs(results)
    if not runs:
        raise UsageProblem(f"{results} holds no records.jsonl: give a run folder such as results/<matrix>/<run id>.")
    _check_installed(to_mlflow, tracking_uri, tensorboard_dir)
    for run_dir in runs:
        if to_mlflow:
            report = Path(reports_dir) / run_dir.parent.name / f"{run_dir.name}.html"
            summary = _mlflow(run_dir, tracking_uri, report)
            attached = f"; report {summary.report} attached" if summary.report else ""
            console.print(f"{run_dir} -> MLflow {summary.tracking_uri}, experiment {summary.experiment!r}, "
                          f"run {summary.run_id}: {summary.created} MLflow runs created, {summary.unchanged} "
                          f"repetitions already there, {summary.replaced} replaced{attached}",
                          markup=False, soft_wrap=True)
        if tensorboard_dir:
            summary = _tensorboard(run_dir, tensorboard_dir)
            console.print(f"{run_dir} -> TensorBoard {summary.out_dir}: {len(summary.runs)} repetitions, "
                          f"{summary.scalars} scalars (tensorboard --logdir {tensorboard_dir})",
                          markup=False, soft_wrap=True)


def _check_installed(to_mlflow: bool, tracking_uri: str | None, tensorboard_dir: str | None) -> None:
    from txsuite.trackers import TrackerUnavailable
    from txsuite.trackers.mlflow_export import require_mlflow
    from txsuite.trackers.tensorboard_export import require_tensorboard

    try:
        if to_mlflow:
            require_mlflow(tracking_uri)
        if tensorboard_dir:
            require_tensorboard()
    except TrackerUnavailable as exc:
        raise UsageProblem(str(exc)) from None


def _quiet_mlflow() -> None:
    """MLflow's store logs each schema migration at INFO: not this command's news. (mlflow sets
    its logger's level as it is imported, so it is imported first.)"""
    import mlflow  # noqa: F401

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _mlflow(run_dir: Path, tracking_uri: str | None, report: Path | None):
    from txsuite.trackers import export_mlflow

    _quiet_mlflow()
    try:
        return export_mlflow(run_dir, tracking_uri, report if report and report.is_file() else None)
    except OSError as exc:
        raise UsageProblem(f"cannot export {run_dir} to MLflow: {exc.strerror or exc} ({exc.filename or ''}); "
                           f"give a writable --tracking-uri.") from None
    except Exception as exc:  # noqa: BLE001 - MLflow's own errors (a store it cannot open, a bad URI)
        if type(exc).__module__.startswith(("mlflow", "sqlalchemy", "alembic")):
            raise UsageProblem(f"cannot export {run_dir} to MLflow at "
                               f"{tracking_uri or os.environ.get('MLFLOW_TRACKING_URI') or 'sqlite:///mlflow.db'}: "
                               f"{type(exc).__name__}: {str(exc)[:500]}") from None
        raise


def _tensorboard(run_dir: Path, out_dir: str):
    from txsuite.trackers import export_tensorboard

    try:
        return export_tensorboard(run_dir, out_dir)
    except OSError as exc:
        raise UsageProblem(f"cannot write TensorBoard files of {run_dir} to {exc.filename or out_dir}: "
                           f"{exc.strerror or exc}; give a writable --tensorboard DIR.") from None


class MlflowFollower:
    """`txsuite run --mlflow`: export the run after each repetition ends and once more with the
    report at the end. An export that fails is said once and never stops the sweep (the records
    are safe; `txsuite export RUN --mlflow` exports them later)."""

    def __init__(self, run_dir: Path, tracking_uri: str | None = None):
        self.run_dir = Path(run_dir)
        self.tracking_uri = tracking_uri
        self.failed = False
        _check_installed(True, tracking_uri, None)

    def wrap(self, on_event):
        def handler(kind: str, info: dict) -> None:
            on_event(kind, info)
            if kind == "cell_end":
                self.export()
        return handler

    def export(self, report: Path | None = None):
        if self.failed:
            return None
        from txsuite.trackers import export_mlflow

        _quiet_mlflow()
        try:
            return export_mlflow(self.run_dir, self.tracking_uri, report if report and report.is_file() else None)
        except Exception as exc:  # noqa: BLE001 - a tracker problem must never cost the sweep
            self.failed = True
            err_console.print(f"MLflow export stopped ({type(exc).__name__}: {str(exc)[:300]}); the records are safe "
                              f"in {self.run_dir}: `txsuite export {self.run_dir} --mlflow` exports them later.",
                              style="yellow", markup=False, soft_wrap=True)
            return None

    def finish(self, report=None) -> None:
        """REPORT: the report's path, or run's words for a report not rendered (then none is attached)."""
        self.failed = False  # one more try at the end, with the report
        summary = self.export(Path(str(report)) if report else None)
        if summary is not None:
            console.print(f"MLflow: experiment {summary.experiment!r} run {summary.run_id} in {summary.tracking_uri}",
                          markup=False, soft_wrap=True)
