"""Records and the results folder: JSON round trip, atomic appends, resume bookkeeping, and
the pandas loader."""
import json
import math
import multiprocessing
import os
import select
import signal
import time
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txsuite.config.record import REQUIRED_METRICS, Record
from txsuite.results import RecordsWarning, RunFolder, load_records, to_dataframe


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


def _append_forever(path, start, report_fd):
    store = RunFolder(path)
    i = start
    while True:
        store.append(record(f"cell{i}", 0, tokens_per_s=float(i), loss_curve=[[s, s, 1.0] for s in range(200)]))
        os.write(report_fd, f"{i}\n".encode())  # reported: append() returned
        i += 1


def _reported(read_fd, until: int, seen: list[int], timeout_s: float = 120.0) -> None:
    """Read the child's reports into `seen` until it has reported `until` appends (or, with
    until=0, until the pipe is empty and closed). Waits for the event, never for a fixed time."""
    buffer = b""
    deadline = time.monotonic() + timeout_s
    while len(seen) < until or until == 0:
        ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready or until == 0, f"the appender reported {len(seen)} of {until} appends in {timeout_s:.0f} s"
        chunk = os.read(read_fd, 65536) if ready else b""
        if not chunk:
            break
        buffer += chunk
        *done, buffer = buffer.split(b"\n")
        seen.extend(int(x) for x in done)


def test_kill_9_during_appends_never_tears_a_line(tmp_path):
    """SIGKILL a process in the middle of a stream of appends, many times: every line but a torn
    last one parses, no record that append() had returned for is lost, a torn last line is never
    read as a record, and the next append sets it aside so that the file is whole again. Each
    kill waits for the appends it needs to have happened (the child reports them through a
    pipe), not for a fixed time, so a loaded host only makes it slower."""
    reported: list[int] = []
    for trial in range(5):
        read_fd, write_fd = os.pipe()
        proc = multiprocessing.get_context("fork").Process(target=_append_forever,
                                                           args=(tmp_path, trial * 10_000, write_fd))
        proc.start()
        os.close(write_fd)
        seen: list[int] = []
        _reported(read_fd, 2 + trial, seen)  # mid-stream: at least two appends of this trial done
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        _reported(read_fd, 0, seen)  # what it reported before it died
        os.close(read_fd)
        reported += seen
        lines = (tmp_path / "records.jsonl").read_bytes().split(b"\n")
        for line in lines[:-1]:  # every complete line is a record; lines[-1] is b"" or a torn line
            Record.from_json(line.decode())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecordsWarning)  # a torn last line: named and skipped
            stored = {r.cell_id for r in RunFolder(tmp_path).records()}
        assert {f"cell{i}" for i in reported} <= stored  # nothing reported is lost
    RunFolder(tmp_path).append(record("last"))  # sets any torn tail aside
    text = (tmp_path / "records.jsonl").read_text()
    assert text.endswith("\n") and all(Record.from_json(line) for line in text.splitlines())
    assert len(RunFolder(tmp_path).records()) >= len(reported) + 1 > 5


def test_append_writes_one_line_and_never_reads_or_rewrites_the_file(tmp_path, monkeypatch):
    """O(1) appends: the file is not read, parsed or replaced (same inode, same bytes before the
    new line), so an append at 20,000 records costs what it costs at 20 (bench/store_scale.py)."""
    store = RunFolder(tmp_path)
    store.append(record("a", 0))
    (tmp_path / "records.jsonl").open("a").write("not json, left where it is\n")
    before = (tmp_path / "records.jsonl").read_bytes()
    inode = (tmp_path / "records.jsonl").stat().st_ino

    def no_reading(*args, **kwargs):
        raise AssertionError("append read the records file")

    monkeypatch.setattr(RunFolder, "_read", no_reading)
    monkeypatch.setattr(Record, "from_json", no_reading)
    store.append(record("b", 0, tokens_per_s=3.0))
    after = (tmp_path / "records.jsonl").read_bytes()
    assert (tmp_path / "records.jsonl").stat().st_ino == inode
    assert after[:len(before)] == before and after[len(before):] == (record("b", 0, tokens_per_s=3.0).to_json()
                                                                     + "\n").encode()


def test_a_retry_is_the_last_line_of_its_key_and_a_copied_line_counts_once_with_a_warning(tmp_path):
    from txsuite.guard import side_from_records
    store = RunFolder(tmp_path)
    store.append(record("a", 0, status="failed"))
    store.append(record("a", 1, tokens_per_s=1.0))
    store.append(record("b", 0, tokens_per_s=2.0))
    store.append(record("a", 0, tokens_per_s=3.0))  # --retry-failed: appended, replaces the failed one
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a retry is not a duplicate: no warning
        assert [(r.cell_id, r.repeat, r.status) for r in store.records()] == [("a", 1, "ok"), ("b", 0, "ok"),
                                                                               ("a", 0, "ok")]
    text = (tmp_path / "records.jsonl").read_text()
    (tmp_path / "records.jsonl").write_text(text + text)  # cat records.jsonl records.jsonl
    with pytest.warns(RecordsWarning, match=r"records.jsonl, line 5 and 3 more lines: a \(cell, repeat\) already recorded, again.* 4 dropped"):
        records = store.records()
    assert sorted((r.cell_id, r.repeat, r.status) for r in records) == [("a", 0, "ok"), ("a", 1, "ok"), ("b", 0, "ok")]
    with pytest.warns(RecordsWarning, match="4 dropped"):
        assert len(to_dataframe(tmp_path)) == 3
    side = side_from_records(records)
    assert {cid: len(cell.repeats) for cid, cell in side.cells.items()} == {"a": 2, "b": 1}
    # a failed repetition copied twice is a duplicate too (the same line), not a retry
    (tmp_path / "records.jsonl").write_text(record("c", 0, status="failed").to_json() + "\n" +
                                            record("c", 0, status="failed").to_json() + "\n")
    with pytest.warns(RecordsWarning, match=r"line 2: a \(cell, repeat\) already recorded.* 1 dropped"):
        assert len(store.records()) == 1


def test_a_last_record_without_its_newline_is_kept_and_completed_by_the_next_append(tmp_path):
    (tmp_path / "records.jsonl").write_text(record("a").to_json())  # written by hand, no newline
    RunFolder(tmp_path).append(record("b"))
    assert [r.cell_id for r in RunFolder(tmp_path).records()] == ["a", "b"]
    assert not (tmp_path / "records.rejected.jsonl").exists()


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


# ------------------------------------------------------------------ hostile records files -----

def _valid_line(cell: str, repeat: int, status: str, tps: float) -> str:
    return record(cell, repeat, status=status, tokens_per_s=tps, step_times_s=[0.01, 0.02]).to_json()


def _hostile_line(kind: str, depth: int, junk: bytes) -> bytes:
    base = json.loads(_valid_line("h", 0, "ok", 1.0))
    if kind == "random bytes":
        return junk
    if kind == "deep list":
        return b"[" * depth + b"]" * depth
    if kind == "deep record":  # a record whose config nests too deeply
        return json.dumps(base).replace('"precision": "bf16"', '"precision": ' + '{"x":' * depth + "1" + "}" * depth
                                        ).encode()
    values = {"huge int": "1" + "0" * 400, "huge float": "1e400", "NaN": "NaN", "inf": "-Infinity",
              "negative": "-5.0", "text": '"fast"'}
    if kind in values:
        return json.dumps(base).replace('"tokens_per_s": 1.0', f'"tokens_per_s": {values[kind]}').encode()
    assert kind == "negative step", kind
    return json.dumps(base).replace("[0.01, 0.02]", "[0.01, -0.02]").encode()


HOSTILE = ["random bytes", "deep list", "deep record", "huge int", "huge float", "NaN", "inf", "negative", "text",
           "negative step"]


@st.composite
def hostile_files(draw):
    """(the file's bytes, the last valid line of each (cell, repeat)): valid records of a few
    keys (some repeated, as `cat f f` or a retry leaves them), interleaved with hostile lines:
    random bytes, nesting deeper than a record may, numbers beyond a float, NaN and Infinity,
    negative or textual metrics; the last line maybe without its newline."""
    lines: list[bytes] = []
    expected: dict[tuple[str, int], str] = {}
    for _ in range(draw(st.integers(0, 12))):
        choice = draw(st.sampled_from(["valid", "copy", "hostile", "hostile"]))
        if choice == "copy" and lines and expected:
            key = draw(st.sampled_from(sorted(expected)))
            lines.append(expected[key].encode())
            continue
        if choice in ("valid", "copy"):
            cell, repeat = draw(st.sampled_from("abc")), draw(st.integers(0, 2))
            line = _valid_line(cell, repeat, draw(st.sampled_from(["ok", "failed"])), draw(st.floats(1e-3, 1e6)))
            expected[(cell, repeat)] = line
            lines.append(line.encode())
            continue
        kind = draw(st.sampled_from(HOSTILE))
        line = _hostile_line(kind, draw(st.integers(65, 20_000)), draw(st.binary(max_size=64)))
        lines.append(line)
    newline_at_end = draw(st.booleans())
    return b"\n".join(lines) + (b"\n" if newline_at_end else b""), expected


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(hostile=hostile_files())
def test_a_hostile_records_file_never_raises_and_never_counts_a_repetition_twice(tmp_path_factory, hostile):
    from txsuite.guard import GuardInputError, side_from_records
    from txsuite.report.frame import build_cell_table
    data, expected = hostile
    run = tmp_path_factory.mktemp("hostile", numbered=True)
    (run / "records.jsonl").write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = RunFolder(run).records()
        table = build_cell_table(records)  # the report's numbers
        try:
            side = side_from_records(records)  # the guard's and the baseline's samples
        except GuardInputError:  # the guard may refuse a repetition, in one paragraph (exit 2)
            side = None
    assert all(issubclass(w.category, RecordsWarning) for w in caught), [str(w.message) for w in caught]
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys))  # one record per (cell, repeat), whatever the file repeats
    assert {r.key: r.to_json() for r in records} == expected  # each key's last valid line, nothing else
    for cell in side.cells.values() if side else ():
        assert len(cell.repeats) == len({r.repeat for r in records if r.cell_id == cell.cell_id and r.status == "ok"})
    assert len(table.repeats) == len(records)
    for _, row in table.cells.iterrows():  # the report's repeat counts are the records', once each
        assert row["repeats_ok"] == sum(r.cell_id == row["cell_id"] and r.status == "ok" for r in records)
    RunFolder(run).append(record("after", 0))  # and it can still be appended to, into a whole file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordsWarning)
        assert RunFolder(run).records()[-1].cell_id == "after"
