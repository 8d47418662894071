"""A txsuite run into MLflow (L2), with the real `mlflow` client (`pip install 'txsuite[mlflow]'`).

    experiment  = the matrix name
    run         = the txsuite run (run name = run id): tags, the HTML report as an artifact
      run       = one per cell (run name = label): params = the flattened config, metrics = the
                  median of each scalar metric over the cell's ok repetitions (the report's
                  per-cell value), tags = status, reason, commit, host
        run     = one per repetition (run name = "label r<k>"): params = the config, metrics =
                  every scalar metric of the record at step 0 and every series (loss curve by
                  step and by token, eval curve...) by its step, tags = status, reason, commit,
                  host, seed, the record's string metrics; `record.json` = the whole record

Repetitions are nested runs, not per-repetition metrics on the cell's run: each repetition has
its own loss curve, status, reason, seed and times, and a metric history keyed by step could not
hold two loss curves at the same steps.

Idempotent: every run carries `txsuite.run_id`, `txsuite.kind` (run | cell | repetition),
`txsuite.cell_id` and `txsuite.repeat`; an export first finds what is already there (one
search) and then creates only what is missing. A repetition run whose record changed since (a
`--retry-failed` re-ran it) is deleted and written anew; a cell's medians are logged again only
when they changed, at step = how many ok repetitions they are over, so the latest value is the
one over all of them. Exporting the same run twice adds nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from txsuite.config.record import Record
from txsuite.results import Run, RunFolder
from txsuite.trackers.mapping import (OK, TrackerUnavailable, cell_scalars, cell_status, config_params, scalars, series,
                                      texts)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
INSTALL_HINT = "pip install 'txsuite[mlflow]'"

# MLflow's limits (mlflow.utils.validation), kept here rather than imported from a private module
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

KIND, RUN_ID, CELL_ID, REPEAT = "txsuite.kind", "txsuite.run_id", "txsuite.cell_id", "txsuite.repeat"
RECORD_SHA = "txsuite.record_sha256"
REPORT_SHA = "txsuite.report_sha256"
PARENT = "mlflow.parentRunId"
FAILED_STATUSES = ("failed", "oom", "diverged", "timeout")


@dataclass
class MlflowSummary:
    tracking_uri: str
    experiment: str
    experiment_id: str
    run_id: str  # the MLflow run of the txsuite run
    created: int = 0  # MLflow runs made by this export
    replaced: int = 0  # repetition runs whose record had changed
    unchanged: int = 0  # repetition runs already there as they are
    report: str | None = None  # the report's artifact path, when attached
    runs: dict[str, str] = field(default_factory=dict)  # "<cell id>" / "<cell id>/r<k>" -> MLflow run id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_tracking_uri() -> str:
    """MLflow's own setting (MLFLOW_TRACKING_URI) when there is one, else a SQLite store in the
    working directory: no server needed, and what `mlflow ui` opens by default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def require_mlflow(tracking_uri: str | None = None) -> None:
    """Raise TrackerUnavailable unless mlflow (and, for a database store, SQLAlchemy and alembic)
    imports."""
    names = ["mlflow"]
    uri = tracking_uri or default_tracking_uri()
    if uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        names += ["sqlalchemy", "alembic"]
    missing = [name for name in names if not _imports(name)]
    if missing:
        raise TrackerUnavailable(f"MLflow export needs {', '.join(missing)}, which is not installed: {INSTALL_HINT}")


def _imports(name: str) -> bool:
    import importlib

    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def export_mlflow(run_dir: Path | str, tracking_uri: str | None = None,
                  report_path: Path | str | None = None) -> MlflowSummary:
    """Export the run folder RUN_DIR to MLflow (see the module's docstring); returns what it did."""
    require_mlflow(tracking_uri)
    from mlflow import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    _prepare_store(uri)
    client = MlflowClient(tracking_uri=uri)
    run = RunFolder(run_dir).load()
    experiment_id = _experiment(client, run.name, uri)
    existing = _existing(client, experiment_id, run.run_id)

    parent = existing.get(("run", "", -1))
    summary = MlflowSummary(uri, run.name, experiment_id, "")
    if parent is None:
        parent = client.create_run(experiment_id, run_name=run.run_id, start_time=_first_start(run.records),
                                   tags={KIND: "run", RUN_ID: run.run_id})
        summary.created += 1
    summary.run_id = parent.info.run_id
    _set_tags(client, parent, _run_tags(run))

    by_cell: dict[str, list[Record]] = {}
    for record in run.records:
        by_cell.setdefault(record.cell_id, []).append(record)
    for cell_id, records in by_cell.items():
        cell = existing.get(("cell", cell_id, -1))
        if cell is None:
            cell = _create_cell(client, experiment_id, run, parent.info.run_id, records)
            summary.created += 1
        _update_cell(client, cell, records)
        summary.runs[cell_id] = cell.info.run_id
        for record in sorted(records, key=lambda r: r.repeat):
            old = existing.get(("repetition", cell_id, record.repeat))
            digest = _sha(record.to_json())
            if old is not None and old.data.tags.get(RECORD_SHA) == digest:
                summary.unchanged += 1
                summary.runs[f"{cell_id}/r{record.repeat}"] = old.info.run_id
                continue
            if old is not None:
                client.delete_run(old.info.run_id)
                summary.replaced += 1
            new = _create_repetition(client, experiment_id, run, cell.info.run_id, record, digest)
            summary.created += 1
            summary.runs[f"{cell_id}/r{record.repeat}"] = new

    if report_path and Path(report_path).is_file():
        digest = _sha(Path(report_path).read_bytes())
        if parent.data.tags.get(REPORT_SHA) != digest:
            client.log_artifact(parent.info.run_id, str(report_path))
            client.set_tag(parent.info.run_id, REPORT_SHA, digest)
        summary.report = Path(report_path).name
    if run.meta.complete:
        status = "FAILED" if any(r.status in FAILED_STATUSES for r in run.records) else "FINISHED"
        end = _last_end(run.records)
        if parent.info.status != status or parent.info.end_time != end:
            client.set_terminated(parent.info.run_id, status, end_time=end)
    return summary


# --- the store and what is already in it -------------------------------------------------------
def _prepare_store(uri: str) -> None:
    """A SQLite store's folder must exist before SQLAlchemy opens the file."""
    path = _sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def _experiment(client, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    # A SQLite store's artifacts go beside its file (mlartifacts/, as `mlflow server` does),
    # not into whatever the working directory is when the experiment is made.
    db = _sqlite_path(uri)
    location = (db.resolve().parent / "mlartifacts" / name).as_uri() if db is not None else None
    return client.create_experiment(name, artifact_location=location,
                                    tags={"txsuite.matrix": name})


def _existing(client, experiment_id: str, run_id: str) -> dict[tuple[str, str, int], Any]:
    """(kind, cell id, repeat) -> MLflow run, for every active run of this txsuite run."""
    from mlflow.entities import ViewType

    found: dict[tuple[str, str, int], Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID}` = '{_quoted(run_id)}'",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        for mlrun in page:
            tags = mlrun.data.tags
            try:
                repeat = int(tags.get(REPEAT, -1))
            except ValueError:
                continue
            key = (tags.get(KIND, ""), tags.get(CELL_ID, ""), repeat)
            # two runs for one key can only come from two exports racing: keep the older one
            if key not in found or mlrun.info.start_time < found[key].info.start_time:
                found[key] = mlrun
        token = page.token
        if not token:
            return found


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


# --- runs ------------------------------------------------------------------------------------
def _run_tags(run: Run) -> dict[str, str]:
    counts: dict[str, int] = {}
    for record in run.records:
        counts[record.status] = counts.get(record.status, 0) + 1
    env = run.env or (run.records[0].env if run.records else {})
    tags = {"txsuite.matrix": run.name, "txsuite.status": ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
            "txsuite.complete": str(bool(run.meta.complete)).lower(),
            "txsuite.axes": json.dumps(run.meta.axes, sort_keys=True),
            "txsuite.run_dir": str(run.dir)}
    tags.update(_env_tags(env))
    if run.meta.overrides:
        tags["txsuite.overrides"] = " ".join(run.meta.overrides)
    return tags


def _env_tags(env: dict[str, Any]) -> dict[str, str]:
    tags = {}
    if env.get("txsuite_commit"):
        tags["txsuite.commit"] = str(env["txsuite_commit"])
    if env.get("host"):
        tags["txsuite.host"] = str(env["host"])
    return tags


def _create_cell(client, experiment_id: str, run: Run, parent_id: str, records: list[Record]):
    first = min(records, key=lambda r: r.repeat)
    tags = {PARENT: parent_id, KIND: "cell", RUN_ID: run.run_id, CELL_ID: first.cell_id, REPEAT: "-1",
            "txsuite.matrix": run.name, "txsuite.label": first.label}
    cell = client.create_run(experiment_id, run_name=_run_name(first.label or first.cell_id),
                             start_time=_first_start(records), tags=_limited(tags))
    _log(client, cell.info.run_id, params=config_params(first.config))
    return client.get_run(cell.info.run_id)


def _update_cell(client, cell, records: list[Record]) -> None:
    """Tags, medians and status of a cell from all of its repetitions so far; only what changed
    is written."""
    status, reason = cell_status(records)
    counts = {"txsuite.status": status, "txsuite.repeats": str(len(records)),
              "txsuite.repeats_ok": str(sum(r.status == OK for r in records))}
    if reason:
        counts["txsuite.reason"] = reason
    counts.update(_env_tags(min(records, key=lambda r: r.repeat).env))
    _set_tags(client, cell, counts)
    latest = cell.data.metrics
    now = int(time.time() * 1000)
    changed = [(name, value, n) for name, (value, n) in cell_scalars(records).items() if latest.get(name) != value]
    _log(client, cell.info.run_id, metrics=[(name, value, now, n) for name, value, n in changed])
    mlflow_status = "FAILED" if all(r.status in FAILED_STATUSES for r in records) else "FINISHED"
    end = _last_end(records)
    if cell.info.status != mlflow_status or cell.info.end_time != end:
        client.set_terminated(cell.info.run_id, mlflow_status, end_time=end)


def _create_repetition(client, experiment_id: str, run: Run, cell_run_id: str, record: Record, digest: str) -> str:
    tags = {PARENT: cell_run_id, KIND: "repetition", RUN_ID: run.run_id, CELL_ID: record.cell_id,
            REPEAT: str(record.repeat), RECORD_SHA: digest, "txsuite.matrix": run.name,
            "txsuite.label": record.label, "txsuite.status": record.status}
    if record.reason:
        tags["txsuite.reason"] = record.reason
    if record.seed is not None:
        tags["txsuite.seed"] = str(record.seed)
    tags.update(_env_tags(record.env))
    tags.update({f"txsuite.metric.{name}": value for name, value in texts(record.metrics).items()})
    name = f"{record.label or record.cell_id} r{record.repeat}"
    mlrun = client.create_run(experiment_id, run_name=_run_name(name), start_time=_ms(record.started_at),
                              tags=_limited(tags))
    run_id = mlrun.info.run_id
    stamp = _ms(record.finished_at) or int(time.time() * 1000)
    metrics = [(name, value, stamp, 0) for name, value in scalars(record.metrics).items()]
    metrics += [(name, value, stamp, step) for name, points in series(record.metrics).items() for step, value in points]
    _log(client, run_id, params=config_params(record.config), metrics=metrics)
    client.log_text(run_id, json.dumps(json.loads(record.to_json()), indent=1) + "\n", "record.json")
    client.set_terminated(run_id, "FAILED" if record.status in FAILED_STATUSES else "FINISHED",
                          end_time=_ms(record.finished_at))
    return run_id


def _log(client, run_id: str, params: dict[str, str] | None = None,
         metrics: list[tuple[str, float, int, int]] | None = None) -> None:
    """log_batch within MLflow's limits per request; values past MLflow's length cut short."""
    from mlflow.entities import Metric, Param

    items = [Param(key[:MAX_KEY], _cut(value, MAX_PARAM_VALUE)) for key, value in (params or {}).items()]
    for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[start:start + MAX_PARAMS_TAGS_PER_BATCH])
    points = [Metric(key[:MAX_KEY], value, stamp, step) for key, value, stamp, step in metrics or []]
    for start in range(0, len(points), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=points[start:start + MAX_METRICS_PER_BATCH])


def _set_tags(client, mlrun, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    current = mlrun.data.tags
    changed = [RunTag(key, value) for key, value in _limited(tags).items() if current.get(key) != value]
    for start in range(0, len(changed), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(mlrun.info.run_id, tags=changed[start:start + MAX_PARAMS_TAGS_PER_BATCH])


def _limited(tags: dict[str, str]) -> dict[str, str]:
    return {key[:MAX_KEY]: _cut(str(value), MAX_TAG_VALUE) for key, value in tags.items() if value is not None}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _run_name(text: str) -> str:
    return _cut(text, MAX_KEY)


def _sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _ms(stamp: str | None) -> int | None:
    if not stamp:
        return None
    try:
        return int(datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return None


def _first_start(records: list[Record]) -> int | None:
    starts = [ms for r in records if (ms := _ms(r.started_at)) is not None]
    return min(starts) if starts else None


def _last_end(records: list[Record]) -> int | None:
    ends = [ms for r in records if (ms := _ms(r.finished_at)) is not None]
    return max(ends) if ends else None
