"""A txsuite run as TensorBoard event files (L2), written with TensorBoard's own event writer and
its hparams plugin's protos (`pip install 'txsuite[tensorboard]'`). Neither TensorFlow nor torch
is imported: tensorboardX (and torch's SummaryWriter) import torch whenever it is installed.

    OUT/<matrix>/<run id>/                      the hparams experiment: the matrix's axes, the
                                                compared metrics
    OUT/<matrix>/<run id>/<label>-<cell id>/r<k>/   one TensorBoard run per repetition:
        metrics/<name>   every scalar metric of the record, at step 0
        series/<name>    every series by its step: series/loss_curve (by optimizer step),
                         series/loss_curve_by_token (step = tokens seen), series/eval_curve...
        the hparams session: the cell's axis values and `repeat`, ended as ok or not

`tensorboard --logdir OUT` overlays every cell's loss curve; its HPARAMS tab is the table over
the axes. TensorBoard keeps scalars as 32-bit floats. Exporting again rewrites the event files of
the run (the old ones are removed first), so nothing is doubled.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from txsuite.config.metrics import COMPARED
from txsuite.config.record import Record
from txsuite.results import Run, RunFolder, flatten
from txsuite.trackers.mapping import OK, TrackerUnavailable, safe_name, scalars, series

INSTALL_HINT = "pip install 'txsuite[tensorboard]'"
SCALAR_PREFIX, SERIES_PREFIX = "metrics/", "series/"
EVENTS = "events.out.tfevents.*"
# columns of the hparams table: the metrics reports compare, and MFU
TABLE_METRICS = (*COMPARED, "mfu")


@dataclass
class TensorBoardSummary:
    out_dir: str  # OUT/<matrix>/<run id>
    runs: dict[str, str] = field(default_factory=dict)  # "<cell id>/r<k>" -> its folder
    scalars: int = 0  # scalar events written
    hparams: list[str] = field(default_factory=list)


def require_tensorboard() -> None:
    try:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: F401
    except ImportError:
        raise TrackerUnavailable(f"TensorBoard export needs tensorboard, which is not installed: "
                                 f"{INSTALL_HINT}") from None


def cell_dir_name(record: Record) -> str:
    return f"{safe_name(record.label or 'cell')}-{record.cell_id}"


def export_tensorboard(run_dir: Path | str, out_dir: Path | str) -> TensorBoardSummary:
    """Write the run folder RUN_DIR as event files under OUT_DIR (see the module's docstring)."""
    require_tensorboard()
    run = RunFolder(run_dir).load()
    root = Path(out_dir) / run.name / run.run_id
    summary = TensorBoardSummary(str(root))
    axes = _axis_keys(run)
    hparams = {id(r): _hparams(r, axes) for r in run.records}
    types = _types(list(hparams.values()))
    summary.hparams = list(types)
    table = [m for m in TABLE_METRICS if any(m in scalars(r.metrics) for r in run.records)]

    if types:
        _write(root, [_experiment_summary(run, hparams.values(), types, table)], when=time.time())
    for record in run.records:
        folder = root / cell_dir_name(record) / f"r{record.repeat}"
        when = _seconds(record.finished_at) or time.time()
        values = [_scalar(SCALAR_PREFIX + name, value, 0) for name, value in scalars(record.metrics).items()]
        values += [_scalar(SERIES_PREFIX + name, value, step)
                   for name, points in series(record.metrics).items() for step, value in points]
        summary.scalars += len(values)
        if types:
            values = [*_session(record, hparams[id(record)], types), *values]
        _write(folder, values, when)
        summary.runs[f"{record.cell_id}/r{record.repeat}"] = str(folder)
    return summary


# --- hparams ---------------------------------------------------------------------------------
def _axis_keys(run: Run) -> list[str]:
    """The flattened config keys the matrix's axes set: `precision`, or for an axis whose values
    are mappings (`train: [{micro_batch: 8, grad_accum: 1}, ...]`) each key they set."""
    keys: list[str] = []
    for axis, values in run.meta.axes.items():
        if isinstance(values, list) and values and all(isinstance(v, dict) for v in values):
            sub = sorted({f"{axis}.{k}" for v in values for k in flatten(v)})
            keys += [k for k in sub if k not in keys]
        elif axis not in keys:
            keys.append(axis)
    return keys


def _hparams(record: Record, axes: list[str]) -> dict[str, Any]:
    flat = flatten(record.config)
    values = {key: flat[key] for key in axes if key in flat}
    if values:
        values["repeat"] = record.repeat
    return values


def _types(sessions: list[dict[str, Any]]) -> dict[str, str]:
    """hparam -> bool | number | string: one type per hparam (an axis mixing types is strings)."""
    seen: dict[str, set[str]] = {}
    for values in sessions:
        for key, value in values.items():
            kind = ("bool" if isinstance(value, bool) else
                    "number" if isinstance(value, (int, float)) else "string")
            seen.setdefault(key, set()).add(kind)
    return {key: kinds.pop() if len(kinds) == 1 else "string" for key, kinds in seen.items()}


def _hp_value(value: Any, kind: str):
    from google.protobuf import struct_pb2

    if kind == "bool":
        return struct_pb2.Value(bool_value=bool(value))
    if kind == "number":
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=value if isinstance(value, str) else json.dumps(value, sort_keys=True))


def _experiment_summary(run: Run, sessions, types: dict[str, str], table: list[str]):
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    data_type = {"bool": api_pb2.DATA_TYPE_BOOL, "number": api_pb2.DATA_TYPE_FLOAT64,
                 "string": api_pb2.DATA_TYPE_STRING}
    infos = []
    for name, kind in types.items():
        domain: list = []
        for values in sessions:
            if name in values:
                v = _hp_value(values[name], kind)
                if v not in domain:
                    domain.append(v)
        infos.append(api_pb2.HParamInfo(name=name, type=data_type[kind],
                                        domain_discrete=struct_pb2.ListValue(values=domain)))
    experiment = api_pb2.Experiment(
        name=f"{run.name}/{run.run_id}", hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=SCALAR_PREFIX + m)) for m in table])
    return _plugin_value("_hparams_/experiment", plugin_data_pb2.HParamsPluginData(experiment=experiment))


def _session(record: Record, values: dict[str, Any], types: dict[str, str]) -> list:
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    # one session (one row of the table) per repetition; `repeat` tells a cell's rows apart
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=_seconds(record.started_at) or 0.0)
    for key, value in values.items():
        start.hparams[key].CopyFrom(_hp_value(value, types[key]))
    status = api_pb2.STATUS_SUCCESS if record.status == OK else api_pb2.STATUS_FAILURE
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=_seconds(record.finished_at) or 0.0)
    return [_plugin_value("_hparams_/session_start_info", plugin_data_pb2.HParamsPluginData(session_start_info=start)),
            _plugin_value("_hparams_/session_end_info", plugin_data_pb2.HParamsPluginData(session_end_info=end))]


def _plugin_value(tag: str, data):
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    return (summary_pb2.Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data),
                                      tensor=metadata.NULL_TENSOR), 0)


# --- event files -----------------------------------------------------------------------------
def _scalar(tag: str, value: float, step: int):
    from tensorboard.compat.proto import summary_pb2

    return summary_pb2.Summary.Value(tag=tag, simple_value=value), step


def _write(folder: Path, values: list, when: float) -> None:
    """One event file in FOLDER holding VALUES ((Summary.Value, step) pairs), after removing the
    event files an earlier export left there."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(EVENTS):
        if old.is_file():
            old.unlink()
    writer = EventFileWriter(str(folder))
    try:
        for value, step in values:
            writer.add_event(event_pb2.Event(wall_time=when, step=step, summary=summary_pb2.Summary(value=[value])))
    finally:
        writer.close()


def _seconds(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
