"""`txsuite export --mlflow | --tensorboard` and `txsuite run --mlflow` on a real tiny run: what
MLflow's own client and TensorBoard's own event reader read back equals the records, and
exporting again adds nothing."""
from __future__ import annotations

import json
import math
import shutil
import statistics
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import txsuite
from txsuite.results import RunFolder, flatten
from txsuite.trackers.mapping import series

MATRIX = """\
name: trk
fixed:
  model: {preset: tiny, n_layer: 1}
  data: {dataset: markov, seq_len: 32, symbols: 16}
  train: {steps: 6, warmup_steps: 1, micro_batch: 4}
axes:
  precision: [fp32]
  memory.activation_checkpointing: [none, full]
repeats: 2
"""
# no usage telemetry from the tests (MLflow 3 sends it unless told not to, or on CI)
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real run of MATRIX (2 cells x 2 repetitions) with its report: (working folder, run folder)."""
    work = tmp_path_factory.mktemp("trk")
    (work / "m.yaml").write_text(MATRIX)
    out = txsuite("run", "m.yaml", "--run-id", "r", cwd=work, report=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return work, work / "results" / "trk" / "r"


# --- what the tests expect, written out here rather than taken from the exporter -----------------
def expected_params(config: dict) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in flatten(config).items()}


def expected_scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and (isinstance(v, bool) or math.isfinite(v))}


def f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def test_series_of_a_record():
    metrics = {"loss_curve": [[1, 0.1, 5.0], [2, 0.2, None], [3, 0.3, 4.0]], "eval_curve": [[3, 0.3, 4.5]],
               "tokens_per_step": 128, "step_times_s": [0.1, float("nan"), 0.3], "data": {"n": 1},
               "finetune_loss_curve": [2.0, 1.5], "attention": "sdpa", "empty": []}
    assert series(metrics) == {
        "loss_curve": [(1, 5.0), (3, 4.0)], "loss_curve_by_token": [(128, 5.0), (384, 4.0)],
        "eval_curve": [(3, 4.5)], "step_times_s": [(0, 0.1), (2, 0.3)], "finetune_loss_curve": [(0, 2.0), (1, 1.5)]}


# --- MLflow ----------------------------------------------------------------------------------
def mlflow_runs(uri: str, experiment: str = "trk"):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_mlflow_reads_back_every_cell_and_repetition_as_recorded(tiny_run, tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    pytest.importorskip("sqlalchemy", reason="the mlflow extra (SQLAlchemy) is not installed")
    work, run_dir = tiny_run
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = txsuite("export", str(run_dir), "--mlflow", "--tracking-uri", uri, cwd=work, env=QUIET)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "7 MLflow runs created" in out.stdout  # the txsuite run, 2 cells, 4 repetitions

    records = RunFolder(run_dir).records()
    assert len(records) == 4 and {r.status for r in records} == {"ok"}
    client, runs = mlflow_runs(uri)
    by_kind = {}
    for run in runs:
        by_kind.setdefault(run.data.tags["txsuite.kind"], []).append(run)
    assert {k: len(v) for k, v in by_kind.items()} == {"run": 1, "cell": 2, "repetition": 4}
    parent = by_kind["run"][0]
    assert parent.info.run_name == "r" and parent.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["r.html"]  # the HTML report

    cells = {run.data.tags["txsuite.cell_id"]: run for run in by_kind["cell"]}
    for record in records:
        rep = next(run for run in by_kind["repetition"] if run.data.tags["txsuite.cell_id"] == record.cell_id
                   and run.data.tags["txsuite.repeat"] == str(record.repeat))
        cell = cells[record.cell_id]
        assert rep.data.tags["mlflow.parentRunId"] == cell.info.run_id
        assert cell.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert rep.info.run_name == f"{record.label} r{record.repeat}" and cell.info.run_name == record.label
        # params: the flattened resolved config, on the cell and on each repetition
        assert rep.data.params == expected_params(record.config) == cell.data.params
        # metrics: every scalar of the record, exactly
        assert rep.data.metrics.keys() - expected_scalars(record.metrics).keys() >= {"loss_curve"}
        for name, value in expected_scalars(record.metrics).items():
            assert [(m.step, m.value) for m in client.get_metric_history(rep.info.run_id, name)] == [(0, value)], name
        # the loss curve by step and by tokens seen
        curve = [(row[0], row[2]) for row in record.metrics["loss_curve"]]
        assert len(curve) >= 6
        history = client.get_metric_history(rep.info.run_id, "loss_curve")
        assert sorted((m.step, m.value) for m in history) == curve
        tokens = record.metrics["tokens_per_step"]
        by_token = client.get_metric_history(rep.info.run_id, "loss_curve_by_token")
        assert sorted((m.step, m.value) for m in by_token) == [(step * tokens, v) for step, v in curve]
        # tags: commit, host, status, reason (none: it ran)
        tags = rep.data.tags
        assert tags["txsuite.commit"] == record.env["txsuite_commit"] and tags["txsuite.host"] == record.env["host"]
        assert tags["txsuite.status"] == "ok" and "txsuite.reason" not in tags
        assert rep.info.status == "FINISHED"
        # the whole record rides along
        text = Path(client.download_artifacts(rep.info.run_id, "record.json", str(tmp_path))).read_text()
        assert json.loads(text)["metrics"]["loss_curve"] == record.metrics["loss_curve"]

    for cell_id, cell in cells.items():  # the cell's run: the median over its ok repetitions
        mine = [r for r in records if r.cell_id == cell_id]
        for name in ("tokens_per_s", "val_loss", "train_mem_bytes"):
            assert cell.data.metrics[name] == statistics.median(float(r.metrics[name]) for r in mine)
        assert cell.data.tags["txsuite.status"] == "ok" and cell.data.tags["txsuite.repeats"] == "2"


def _contents(uri: str):
    client, runs = mlflow_runs(uri)
    return sorted((run.info.run_id, run.info.status, tuple(sorted(run.data.tags.items())),
                   tuple(sorted(run.data.params.items())),
                   tuple((key, len(client.get_metric_history(run.info.run_id, key)))
                         for key in sorted(run.data.metrics)))
                  for run in runs)


def test_mlflow_export_twice_adds_nothing_and_a_changed_record_replaces_its_run(tiny_run, tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    pytest.importorskip("sqlalchemy", reason="the mlflow extra (SQLAlchemy) is not installed")
    work, original = tiny_run
    run_dir = tmp_path / "results" / "trk" / "r"
    shutil.copytree(original, run_dir)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = txsuite("export", str(run_dir), "--mlflow", "--tracking-uri", uri, cwd=work, env=QUIET)
    assert first.returncode == 0, first.stdout + first.stderr
    before = _contents(uri)
    again = txsuite("export", str(run_dir), "--mlflow", "--tracking-uri", uri, cwd=work, env=QUIET)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 MLflow runs created, 4 repetitions already there, 0 replaced" in again.stdout
    assert _contents(uri) == before  # not a run, tag, param or metric point more

    # a repetition re-run since (as --retry-failed does): its MLflow run is replaced, not doubled
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["metrics"]["tokens_per_s"] = 123.0
    lines[0] = json.dumps(record)
    (run_dir / "records.jsonl").write_text("\n".join(lines) + "\n")
    third = txsuite("export", str(run_dir), "--mlflow", "--tracking-uri", uri, cwd=work, env=QUIET)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "1 MLflow runs created, 3 repetitions already there, 1 replaced" in third.stdout
    client, runs = mlflow_runs(uri)
    assert len(runs) == 7
    rep = next(r for r in runs if r.data.tags.get("txsuite.cell_id") == record["cell_id"]
               and r.data.tags.get("txsuite.repeat") == str(record["repeat"]))
    assert rep.data.metrics["tokens_per_s"] == 123.0


def test_run_with_mlflow_exports_as_it_goes(tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    pytest.importorskip("sqlalchemy", reason="the mlflow extra (SQLAlchemy) is not installed")
    (tmp_path / "m.yaml").write_text(MATRIX.replace("repeats: 2", "repeats: 1").replace("[none, full]", "[none]"))
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    out = txsuite("run", "m.yaml", "--run-id", "r", "--mlflow", cwd=tmp_path, env={**QUIET, "MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "MLflow: experiment 'trk'" in out.stdout
    [record] = RunFolder(tmp_path / "results" / "trk" / "r").records()
    client, runs = mlflow_runs(uri)
    assert sorted(r.data.tags["txsuite.kind"] for r in runs) == ["cell", "repetition", "run"]
    rep = next(r for r in runs if r.data.tags["txsuite.kind"] == "repetition")
    assert rep.data.params == expected_params(record.config)
    assert rep.data.metrics == {**expected_scalars(record.metrics), **{
        name: points[-1][1] for name, points in series(record.metrics).items()}}


# --- TensorBoard -----------------------------------------------------------------------------
def test_tensorboard_reader_returns_the_recorded_scalars(tiny_run, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    work, run_dir = tiny_run
    records = RunFolder(run_dir).records()
    for attempt in range(2):  # exporting again rewrites, never doubles
        out = txsuite("export", str(run_dir), "--tensorboard", str(tmp_path / "tb"), cwd=work)
        assert out.returncode == 0, out.stdout + out.stderr
    root = tmp_path / "tb" / "trk" / "r"
    experiment = EventAccumulator(str(root))
    experiment.Reload()
    hparams = metadata.parse_experiment_plugin_data(experiment.PluginTagToContent("hparams")["_hparams_/experiment"])
    assert {h.name for h in hparams.hparam_infos} == {"precision", "memory.activation_checkpointing", "repeat"}
    assert {m.name.tag for m in hparams.metric_infos} >= {"metrics/tokens_per_s", "metrics/val_loss"}

    for record in records:
        [folder] = root.glob(f"*-{record.cell_id}/r{record.repeat}")  # <label, folder-safe>-<cell id>/r<k>
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        curve = [(row[0], f32(row[2])) for row in record.metrics["loss_curve"]]
        assert [(e.step, e.value) for e in events.Scalars("series/loss_curve")] == curve
        tokens = record.metrics["tokens_per_step"]
        assert [(e.step, e.value) for e in events.Scalars("series/loss_curve_by_token")] == [
            (step * tokens, v) for step, v in curve]
        scalars = expected_scalars(record.metrics)
        assert {t for t in events.Tags()["scalars"] if t.startswith("metrics/")} == {f"metrics/{n}" for n in scalars}
        for name, value in scalars.items():
            assert [(e.step, e.value) for e in events.Scalars(f"metrics/{name}")] == [(0, f32(value))], name
        start = metadata.parse_session_start_info_plugin_data(
            events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
        assert start.hparams["memory.activation_checkpointing"].string_value == \
            record.config["memory"]["activation_checkpointing"]
        assert start.hparams["repeat"].number_value == record.repeat


def test_tensorboard_export_imports_neither_torch_nor_tensorflow(tiny_run, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    _, run_dir = tiny_run
    code = ("import sys; from txsuite.trackers import export_tensorboard; "
            f"export_tensorboard({str(run_dir)!r}, {str(tmp_path)!r}); "
            "print('torch' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False False", out.stderr


# --- the command line's answers ----------------------------------------------------------------
def test_export_needs_a_target(tiny_run):
    work, run_dir = tiny_run
    out = txsuite("export", str(run_dir), cwd=work)
    assert out.returncode == 2 and "--mlflow" in out.stderr and "--tensorboard DIR" in out.stderr
    out = txsuite("export", str(work / "nothing-here"), "--tensorboard", "tb", cwd=work)
    assert out.returncode == 2


@pytest.mark.parametrize("package, option, extra", [
    ("mlflow", ("--mlflow",), "txsuite[mlflow]"),
    ("tensorboard", ("--tensorboard", "tb"), "txsuite[tensorboard]"),
])
def test_a_missing_tracker_package_names_its_extra(tiny_run, tmp_path, package, option, extra):
    work, run_dir = tiny_run
    shim = tmp_path / "shim" / package
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(f"raise ImportError({f'No module named {package!r}'!r})\n")
    out = txsuite("export", str(run_dir), *option, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "shim"), **QUIET})
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"pip install '{extra}'" in out.stderr and "Traceback" not in out.stderr


def test_run_with_mlflow_missing_says_so_before_anything_runs(tmp_path):
    shim = tmp_path / "shim" / "mlflow"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'mlflow'\")\n")
    (tmp_path / "m.yaml").write_text(MATRIX)
    out = txsuite("run", "m.yaml", "--mlflow", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "shim")})
    assert out.returncode == 2 and "pip install 'txsuite[mlflow]'" in out.stderr, out.stdout + out.stderr
    assert not (tmp_path / "results").exists() and "starting run" not in out.stdout
