"""Records and the results folder: JSON round trip, atomic appends, resume bookkeeping, and
the pandas loader."""
import json
import math
import multiprocessing
import os
import signal
import time

import pytest

from txsuite.config.record import REQUIRED_METRICS, Record
from txsuite.results import RunFolder, load_records, to_dataframe


def record(cell="c1", repeat=0, status="ok", **metrics) -> Record:
    return Record(matrix="m", run_id="r", cell_id=cell, repeat=repeat, status=status,
                  config={"train": {"micro_batch": 4}, "precision": "bf16"}, metrics=dict(metrics))


def test_round_trip_fills_required_metrics_and_nulls_non_finite():
    r = record(tokens_per_s=123.5, loss_curve=[[1, 0.1, float("nan")], [2, 0.2, 2.5]])
    back = Record.from_json(r.to_json())
    assert back.metrics["tokens_per_s"] == 123.5
    assert back.metrics["loss_curve"] == [[1, 0.1, None], [2, 0.2, 2.5]]
    assert set(REQUIRED_METRICS) <= set(back.metrics)
    assert back.metrics["val_loss"] is None
    json.loads(r.to_json())  # strict JSON: no NaN tokens


def test_unknown_status_is_rejected():
    with pytest.raises(ValueError, match="ok, failed, oom"):
        record(status="great")


def test_append_and_replace_same_key(tmp_path):
    store = RunFolder(tmp_path)
    store.append(record("a", 0, status="failed"))
    store.append(record("b", 0, tokens_per_s=1.0))
    store.append(record("a", 0, tokens_per_s=2.0))  # a retry replaces the failed record
    recs = store.records()
    assert [(r.cell_id, r.status) for r in recs] == [("b", "ok"), ("a", "ok")]
    assert store.finished() == {("a", 0): "ok", ("b", 0): "ok"}


def _append_forever(path, start):
    store = RunFolder(path)
    i = start
    while True:
        store.append(record(f"cell{i}", 0, tokens_per_s=float(i), loss_curve=[[s, s, 1.0] for s in range(200)]))
        i += 1


def test_kill_9_during_appends_never_tears_a_line(tmp_path):
    """SIGKILL a process in the middle of a stream of appends, many times: the file must always
    parse completely, with no partial line and no lost record that had been reported."""
    for trial in range(5):
        proc = multiprocessing.get_context("fork").Process(target=_append_forever, args=(tmp_path, trial * 10_000))
        proc.start()
        time.sleep(0.15 + 0.05 * trial)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        text = (tmp_path / "records.jsonl").read_text()
        assert text.endswith("\n")
        for line in text.splitlines():
            json.loads(line)
    assert len(RunFolder(tmp_path).records()) > 5


def test_dataframe_flattens_config_and_metrics(tmp_path):
    store = RunFolder(tmp_path / "m" / "r1")
    store.append(record("a", 0, tokens_per_s=10.0))
    store.append(record("a", 1, tokens_per_s=12.0))
    df = to_dataframe(tmp_path)  # finds run folders below a results root
    assert list(df["tokens_per_s"]) == [10.0, 12.0]
    assert list(df["config.train.micro_batch"]) == [4, 4]
    assert list(df["config.precision"]) == ["bf16", "bf16"]
    assert len(load_records(tmp_path / "m")) == 2
    assert math.isnan(df["val_loss"].astype(float).iloc[0])
