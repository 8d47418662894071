"""Reliability, class by class: one writer per run, records that survive a torn write, resume
only of the same experiment, paths that stay in their folders, bounded parsing, exit codes that
mean what they say, inputs that would silently mean something else, and messages that are
right. Each test names the class it guards."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from cli_helpers import txsuite

from txsuite.config.matrix import MatrixError, MatrixTooLarge, load_matrix
from txsuite.config.record import Record
from txsuite.config.yamlsource import YamlError, load_located
from txsuite.results import RecordsWarning, RunFolder, RunInUse, RunLock, UnsafeRunFolder, to_dataframe, write_atomic

TINY = """\
name: rel
fixed:
  model: {preset: tiny, n_layer: 1, d_model: 32, n_head: 2}
  data: {dataset: markov, seq_len: 16}
  train: {steps: 3, warmup_steps: 1, micro_batch: 2, eval_batches: 1}
  measure: {threads: 1}
axes:
  precision: [fp32]
"""


def record(cell_id: str, repeat: int = 0, status: str = "ok", **metrics) -> Record:
    return Record(matrix="rel", run_id="r", cell_id=cell_id, repeat=repeat, config={"precision": "fp32"},
                  status=status, label=f"cell {cell_id}", metrics={"tokens_per_s": 100.0, **metrics})


# ------------------------------------------------------------------ 1. one writer per run -----

HOLD_LOCK = """
import sys, time
from txsuite.results import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_run_has_one_writer_and_a_dead_writer_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUse, match=rf"in use by pid {holder.pid} on host \S+"):
            with RunLock(tmp_path):
                pass
        holder.kill()  # kill -9: the kernel releases the flock
        holder.wait()
        with RunLock(tmp_path):  # no stale lock
            pass
    finally:
        holder.kill()


@pytest.mark.slow
def test_a_second_runner_on_the_same_run_is_refused(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY.replace("steps: 3", "steps: 400"))
    first = subprocess.Popen([sys.executable, "-m", "txsuite.cli", "run", "m.yaml", "--run-id", "r"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lock = tmp_path / "results" / "rel" / "r" / ".run.lock"
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.2)
        second = txsuite("run", "m.yaml", "--run-id", "r", cwd=tmp_path)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"is in use by pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    resumed = txsuite("run", "m.yaml", "--run-id", "r", "--timeout", "300", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr


# ------------------------------------------------------------------ 2. torn writes --------------

def test_a_torn_last_line_is_skipped_with_its_file_and_line_and_the_cell_runs_again(tmp_path):
    folder = RunFolder(tmp_path)
    good = [record("a"), record("b")]
    torn = record("c").to_json()[:57]
    (tmp_path / "records.jsonl").write_text("".join(r.to_json() + "\n" for r in good) + torn)
    with pytest.warns(RecordsWarning, match=r"records.jsonl, line 3: a half-written last line"):
        records = folder.records()
    assert [r.cell_id for r in records] == ["a", "b"]
    assert ("c", 0) not in folder.finished()  # so a resumed run measures it again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordsWarning)
        assert list(to_dataframe(tmp_path)["cell_id"]) == ["a", "b"]
        folder.append(record("c"))
    assert [r.cell_id for r in folder.records()] == ["a", "b", "c"]  # and the file is whole again
    assert (tmp_path / "records.rejected.jsonl").read_text() == torn + "\n"  # the torn text is kept, not lost


def test_a_malformed_line_in_the_middle_is_named_and_the_rest_still_reads(tmp_path):
    lines = [record("a").to_json(), '{"matrix": "rel", "status": 7}', "not json", record("b").to_json()]
    (tmp_path / "records.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(RecordsWarning) as caught:
        records = RunFolder(tmp_path).records()
    messages = [str(w.message) for w in caught]
    assert [r.cell_id for r in records] == ["a", "b"]
    assert any("line 2: not a txsuite result record" in m for m in messages)
    assert any("line 3: not a txsuite result record" in m for m in messages)


def test_records_carry_their_schema_and_older_ones_still_read():
    assert json.loads(record("a").to_json())["schema"] == 2
    old = json.loads(record("a").to_json())
    del old["schema"]
    assert Record.from_dict(old).schema == 1
    with pytest.raises(ValueError, match="newer txsuite"):
        Record.from_dict({**old, "schema": 99})


# ------------------------------------------------------------------ 3. same experiment ---------

@pytest.mark.slow
def test_resuming_a_run_of_another_matrix_is_refused_and_says_what_changed(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY)
    first = txsuite("run", "m.yaml", "--run-id", "r", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    stored = (tmp_path / "results" / "rel" / "r" / "matrix.json").read_text()
    (tmp_path / "m.yaml").write_text(TINY.replace("steps: 3", "steps: 4"))
    again = txsuite("run", "m.yaml", "--run-id", "r", cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "train.steps 3 -> 4" in again.stderr and "new run" in again.stderr
    assert (tmp_path / "results" / "rel" / "r" / "matrix.json").read_text() == stored  # not overwritten


# ------------------------------------------------------------------ 4. paths stay inside --------

@pytest.mark.parametrize("run_id", ["../x", "/tmp/abs", ".", "..", "a/b", "x" * 300, ""])
def test_run_ids_that_would_leave_the_results_folder_are_refused(tmp_path, run_id):
    (tmp_path / "m.yaml").write_text(TINY)
    out = txsuite("run", "m.yaml", "--run-id", run_id, "--results-dir", "res", cwd=tmp_path)
    assert out.returncode == 2 and "--run-id" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "res").exists() and not (tmp_path / "x").exists()


def test_a_matrix_name_too_long_for_a_folder_fails_at_plan_time(write_matrix):
    with pytest.raises(MatrixError, match="at most 100"):
        load_matrix(write_matrix(f"name: {'n' * 300}\n"))


# ------------------------------------------------------------------ 5. bounded parsing ----------

BOMB = "name: bomb\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def test_an_alias_bomb_is_refused_without_being_expanded(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    started = time.process_time()
    with pytest.raises(YamlError, match="alias bomb"):
        load_located(path)
    assert time.process_time() - started < 5  # expanded, it would be 9**9 values: minutes and gigabytes
    out = txsuite("plan", "bomb.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "alias bomb" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "huge.yaml").write_text("name: huge\n" + "# padding\n" * 200_000)
    with pytest.raises(YamlError, match="at most 1,048,576"):
        load_located(tmp_path / "huge.yaml")


# ------------------------------------------------------------------ 6. exit codes ---------------

@pytest.mark.parametrize("out_path", ["/proc/txsuite-report.html", "/dev/full"])
def test_reports_that_cannot_be_written_exit_2_and_keep_the_records(tmp_path, out_path):
    run = tmp_path / "results" / "rel" / "r"
    write_atomic(run / "records.jsonl", record("a").to_json() + "\n")
    before = (run / "records.jsonl").read_text()
    out = txsuite("report", str(run), "-o", out_path, cwd=tmp_path)
    assert out.returncode == 2 and "cannot write" in out.stderr and "Traceback" not in out.stderr
    assert (run / "records.jsonl").read_text() == before


def test_a_results_dir_that_cannot_be_written_exits_2(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY)
    out = txsuite("run", "m.yaml", "--results-dir", "/proc/txsuite-results", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "txsuite-results" in out.stderr


@pytest.mark.parametrize("status, metrics", [(7, {}), ("ok", {"tokens_per_s": "fast"}),
                                              ("ok", {"loss_curve": "no"}), ("ok", {"val_loss": [1, 2]})])
def test_reports_and_compare_survive_records_of_the_wrong_type(tmp_path, status, metrics):
    run = tmp_path / "run"
    good = record("a")
    bad = json.loads(record("b").to_json())
    bad["status"] = status
    bad["metrics"].update(metrics)
    write_atomic(run / "records.jsonl", good.to_json() + "\n" + json.dumps(bad) + "\n")
    out = txsuite("report", str(run), "-o", str(tmp_path / "r.html"), cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "r.html").exists(), out.stdout + out.stderr
    both = txsuite("compare", str(run), str(run), "-o", str(tmp_path / "c.html"), cwd=tmp_path)
    assert both.returncode == 0, both.stdout + both.stderr
    assert "in both runs" in both.stdout and "Not tested against noise" in both.stdout  # the summary, in the terminal


# ------------------------------------------------------------------ 7. inputs that mean something else

def test_a_glob_through_a_symlink_loop_counts_each_file_once(tmp_path):
    from txsuite.data.corpora import user_files
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("hello\n")
    (tmp_path / "d" / "loop").symlink_to(tmp_path / "d")
    assert [p.name for p in user_files(str(tmp_path / "d" / "**" / "*.txt"))] == ["a.txt"]


def test_the_same_setting_nested_and_dotted_is_an_error(write_matrix):
    with pytest.raises(MatrixError, match="set twice in one mapping") as err:
        load_matrix(write_matrix("name: m\nfixed:\n  train: {steps: 5}\n  train.steps: 10\n"))
    assert err.value.line == 4
    base = write_matrix("name: base\nfixed: {train: {steps: 5}}\n", "base.yaml")
    child = write_matrix(f"name: m\nextends: {base.name}\nfixed: {{train.steps: 10}}\n")
    assert load_matrix(child).cells[0].config.train.steps == 10  # across files: the child overrides


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "soon"])
def test_timeouts_must_be_finite_and_positive(tmp_path, value):
    (tmp_path / "m.yaml").write_text(TINY)
    out = txsuite("run", "m.yaml", "--timeout", value, cwd=tmp_path)
    assert out.returncode == 2 and "--timeout" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_memory_limit_below_the_interpreter_is_oom_not_failed(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY)
    for fresh in ("1", "0"):  # forked from the fork server, and a fresh interpreter
        out = txsuite("run", "m.yaml", "--run-id", f"r{fresh}", "--memory-limit", "20MiB", "--no-predict-skip", cwd=tmp_path,
                      env={"TXSUITE_FORKSERVER": fresh})
        assert out.returncode == 1, out.stdout + out.stderr
        rec = json.loads((tmp_path / "results" / "rel" / f"r{fresh}" / "records.jsonl").read_text())
        assert rec["status"] == "oom", rec["reason"]


def test_too_many_repetitions_need_yes(write_matrix):
    with pytest.raises(MatrixTooLarge, match="1,000,000 cell repetitions"):
        load_matrix(write_matrix("name: m\nrepeats: 1000000\n"))
    assert load_matrix(write_matrix("name: m\nrepeats: 1000000\n"), max_cells=None).repeats == 1000000


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_results_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == mode


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "interrupted:"),
                                                (signal.SIGTERM, 143, "terminated (SIGTERM):")])
def test_ctrl_c_or_sigterm_exits_with_the_signals_code_and_says_what_finished(tmp_path, signum, code, said):
    (tmp_path / "m.yaml").write_text(TINY.replace("axes:\n  precision: [fp32]\n",
                                                  "axes:\n  train.seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n"))
    # SIGINT back to its default in the child: a test session started in the background (nohup,
    # `&`) ignores SIGINT, children inherit that, and Python then installs no handler for it
    proc = subprocess.Popen([sys.executable, "-m", "txsuite.cli", "run", "m.yaml", "--run-id", "r"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    records = tmp_path / "results" / "rel" / "r" / "records.jsonl"
    deadline = time.monotonic() + 180
    while not (records.exists() and records.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"{said} repetitions finished and recorded:" in err and "resumes" in err
    assert "Aborted!" not in err and "Traceback" not in err


# ------------------------------------------------------------------ 8. messages ------------------

def test_extends_naming_a_folder_says_so(write_matrix, tmp_path):
    (tmp_path / "bases").mkdir()
    with pytest.raises(MatrixError, match="'bases' is a folder, not a matrix file"):
        load_matrix(write_matrix("name: m\nextends: bases\n"))


@pytest.mark.parametrize("fraction", [0, 1, 1.5])
def test_val_fraction_out_of_range_names_the_key_and_one_rule(write_matrix, fraction):
    with pytest.raises(MatrixError) as err:
        load_matrix(write_matrix(f"name: m\nfixed: {{data: {{val_fraction: {fraction}}}}}\n"))
    assert err.value.key == "data.val_fraction"
    assert "strictly between 0 and 1" in str(err.value) or "[0, 1)" not in str(err.value)


def test_an_empty_data_file_and_a_fifo_are_named_at_plan_time(tmp_path, write_matrix):
    from txsuite.data import check_data_sources
    from txsuite.config.spec import DataSpec
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty or blank"):
        check_data_sources(DataSpec(dataset=str(tmp_path / "empty.txt")))
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        check_data_sources(DataSpec(dataset=str(tmp_path / "pipe.txt")))


def test_the_report_of_an_empty_run_does_not_claim_every_cell_finished(tmp_path):
    from txsuite.report import render_report
    run = tmp_path / "run"
    write_atomic(run / "records.jsonl", "")
    html = render_report(run, tmp_path / "r.html").read_text()
    assert "No cell has finished yet" in html and "Every cell finished ok" not in html


def test_the_memory_estimate_uses_what_bpe_can_learn(tmp_path):
    (tmp_path / "m.yaml").write_text("name: m\nfixed: {data: {tokenizer: bpe, vocab_size: 10000000}}\n")
    out = txsuite("plan", "m.yaml", cwd=tmp_path)
    assert out.returncode == 0 and "can learn at most" in out.stdout and "10,000,000 asked" in out.stdout


# ------------------------------------------------------------------ 9. links planted in a run folder

def test_links_planted_where_a_run_writes_are_refused_and_nothing_outside_is_written(tmp_path):
    """`ln -s OUTSIDE/victim RUN/.run.lock` (and .lock, records.jsonl, cells/<id>/r0): the run
    exits 2 naming the link, before any cell, and the files outside are untouched."""
    (tmp_path / "m.yaml").write_text(TINY)
    cell_id = load_matrix(tmp_path / "m.yaml").cells[0].cell_id
    outside = tmp_path / "outside"
    outside.mkdir()
    plants = {".run.lock": "victim1", ".lock": "victim2", "records.jsonl": "victim3",
              f"cells/{cell_id}/r0": "folder"}
    for n, (where, victim) in enumerate(plants.items()):
        run = tmp_path / "results" / "rel" / f"sym{n}"
        target = outside / victim
        if victim == "folder":
            target.mkdir()
        else:
            target.write_text(f"{victim} stays as it is\n")
        (run / where).parent.mkdir(parents=True, exist_ok=True)
        (run / where).symlink_to(target)
        out = txsuite("run", "m.yaml", "--run-id", f"sym{n}", "--no-report", cwd=tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"{run / where}".replace(str(tmp_path) + "/", "") in out.stderr and "symbolic link" in out.stderr
        assert "Traceback" not in out.stderr
        assert (list(target.iterdir()) == [] if victim == "folder"
                else target.read_text() == f"{victim} stays as it is\n")


def test_a_link_planted_in_a_cell_folder_during_the_run_is_refused_before_the_cell_writes(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.create()
    assert folder.cell_dir("c0", 0) == tmp_path / "run" / "cells" / "c0" / "r0"  # nothing there yet: fine
    (tmp_path / "outside").mkdir()
    (tmp_path / "run" / "cells" / "c0").mkdir(parents=True)
    (tmp_path / "run" / "cells" / "c0" / "r1").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafeRunFolder, match=r"cells/c0/r1 is a symbolic link \(to .*outside\)"):
        folder.cell_dir("c0", 1)
    (tmp_path / "run" / "cells" / "c0" / "r2").mkdir()
    (tmp_path / "run" / "cells" / "c0" / "r2" / "log.txt").symlink_to(tmp_path / "outside" / "log")
    with pytest.raises(UnsafeRunFolder, match=r"r2/log.txt is a symbolic link"):
        folder.cell_dir("c0", 2)
    with pytest.raises(UnsafeRunFolder, match="symbolic link"):  # the writer's check at the start, too
        with RunLock(tmp_path / "run"):
            pass
    assert list((tmp_path / "outside").iterdir()) == []


def test_a_fifo_where_txsuite_writes_is_refused_without_hanging(tmp_path):
    os.mkfifo(tmp_path / ".lock")
    with pytest.raises(UnsafeRunFolder, match=r"\.lock is not a regular file"):
        RunFolder(tmp_path).append(record("a"))
    os.unlink(tmp_path / ".lock")
    os.mkfifo(tmp_path / ".run.lock")
    with pytest.raises(UnsafeRunFolder, match=r"\.run\.lock is not a regular file"):
        with RunLock(tmp_path):
            pass


# ------------------------------------------------------------------ 10. the same experiment, by its records

def _records_of(matrix, repeats=(0,)) -> list[Record]:
    return [Record(matrix=matrix.name, run_id="r", cell_id=c.cell_id, repeat=r, config=c.config.to_dict(),
                   label=c.label, status="ok", metrics={"tokens_per_s": 100.0})
            for c in matrix.cells for r in repeats]


def test_a_run_whose_matrix_json_is_gone_is_checked_against_its_records(write_matrix):
    from txsuite.run.runner import RunMismatch, check_same_experiment
    first = load_matrix(write_matrix(TINY, "a.yaml"))
    changed = load_matrix(write_matrix(TINY.replace("steps: 3", "steps: 4"), "b.yaml"))
    folder = RunFolder(write_matrix("", "x").parent / "results" / "rel" / "r")
    for r in _records_of(first):
        folder.append(r)
    assert not (folder.dir / "matrix.json").exists()
    check_same_experiment(folder, first)  # the same experiment resumes
    with pytest.raises(RunMismatch, match=r"precision=fp32: train\.steps 3 -> 4.*new run"):
        check_same_experiment(folder, changed)
    forged = _records_of(first)[0]
    forged.cell_id = changed.cells[0].cell_id  # a record of the new cell's id holding the old config
    folder.append(forged)
    with pytest.raises(RunMismatch, match="holds another config than its cell id names"):
        check_same_experiment(folder, changed)


def test_records_of_another_matrix_or_past_the_repeats_are_another_experiment(write_matrix, tmp_path):
    from txsuite.run.runner import RunMismatch, check_same_experiment
    matrix = load_matrix(write_matrix(TINY))
    folder = RunFolder(tmp_path / "run")
    for r in _records_of(matrix, repeats=(0, 1)):
        folder.append(r)
    with pytest.raises(RunMismatch, match="has repetition 2, this matrix 1"):
        check_same_experiment(folder, matrix)
    other = RunFolder(tmp_path / "other")
    wrong = _records_of(matrix)[0]
    wrong.matrix = "elsewhere"
    other.append(wrong)
    with pytest.raises(RunMismatch, match="records of matrix 'elsewhere', not 'rel'"):
        check_same_experiment(other, matrix)


# ------------------------------------------------------------------ 11. a baseline of a run still running

def _timed_record(cell_id: str, repeat: int) -> Record:
    steps = [0.010 + 0.0001 * ((i * 7 + repeat) % 5) for i in range(20)]
    return record(cell_id, repeat, step_times_s=steps, tokens_per_s=256 / sorted(steps)[10], tokens_per_step=256,
                  samples_per_step=4, step_time_p50_s=sorted(steps)[10], step_time_p90_s=max(steps))


def test_a_baseline_of_a_run_its_runner_still_holds_is_refused(tmp_path):
    from txsuite.guard import GuardInputError, write_baseline
    from txsuite.guard.baseline import IncompleteRun
    run = tmp_path / "results" / "rel" / "r"
    folder = RunFolder(run)
    for cell in ("a", "b"):
        folder.append(_timed_record(cell, 0))
    folder.write_json("matrix.json", {"name": "rel", "complete": False,
                                      "cells": [{"cell_id": c, "label": f"cell {c}"} for c in "abc"]})
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GuardInputError, match=rf"still being written: its run is held by pid {holder.pid}"):
            write_baseline(run, tmp_path / "b.json")
        out = txsuite("baseline", str(run), "-o", str(tmp_path / "b.json"), cwd=tmp_path)
        assert out.returncode == 2 and "still being written" in out.stderr and "Traceback" not in out.stderr
        assert not (tmp_path / "b.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the runner is gone but the run did not finish: the baseline is made, and says what it lacks
    with pytest.warns(IncompleteRun, match="did not finish.* holds 2 measured cells of the 3 planned"):
        write_baseline(run, tmp_path / "b.json")
    assert (tmp_path / "b.json").exists()


# ------------------------------------------------------------------ 12. records that would crash a reader

def _hostile(kind: str) -> str:
    line = _timed_record("x", 0).to_json()
    tps = f'"tokens_per_s":{json.loads(line)["metrics"]["tokens_per_s"]!r}'
    assert tps in line
    return {"nested": "[" * 200_000 + "]" * 200_000,
            "huge int": line.replace(tps, '"tokens_per_s":1' + "0" * 400),
            "huge float": line.replace(tps, '"tokens_per_s":1e400'),
            "NaN": line.replace(tps, '"tokens_per_s":NaN'),
            "infinite": line.replace(tps, '"tokens_per_s":Infinity'),
            "negative": line.replace(tps, '"tokens_per_s":-3.5'),
            "negative step": line.replace('"step_times_s":[0.01,', '"step_times_s":[-0.01,')}[kind]


@pytest.mark.parametrize("kind", ["nested", "huge int", "huge float", "NaN", "infinite", "negative", "negative step"])
def test_a_record_no_reader_can_use_is_skipped_by_report_compare_guard_and_baseline(tmp_path, kind):
    from txsuite.guard import GuardInputError, load_side, write_baseline
    from txsuite.report import render_report
    from txsuite.report.compare import render_compare
    run = tmp_path / "run"
    lines = [_timed_record("a", 0).to_json(), _hostile(kind), _timed_record("a", 1).to_json()]
    assert _hostile(kind) != lines[0]
    write_atomic(run / "records.jsonl", "\n".join(lines) + "\n")
    with pytest.warns(RecordsWarning, match=r"records.jsonl, line 2: not a txsuite result record"):
        assert [r.repeat for r in RunFolder(run).records()] == [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecordsWarning)
        render_report(run, tmp_path / "r.html")
        render_compare(run, run, tmp_path / "c.html")
        for read in (lambda: load_side(run), lambda: write_baseline(run, tmp_path / "b.json")):
            try:  # the guard may refuse a damaged run in one paragraph (exit 2); it never crashes
                read()
            except GuardInputError as exc:
                assert "line 2" in str(exc)


def test_a_skipped_record_warns_in_one_line_without_txsuites_source(tmp_path):
    write_atomic(tmp_path / "records.jsonl", record("a").to_json() + "\n" + _hostile("NaN") + "\n"
                 + "[" * 1000 + "\n" + record("a").to_json() + "\n")
    out = subprocess.run([sys.executable, "-c", "import sys; from txsuite.results import RunFolder; "
                          "print(len(RunFolder(sys.argv[1]).records()))", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout == "1\n", out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 3, out.stderr  # line 2, line 3, one repeated (cell, repeat): one line each
    assert "line 2: not a txsuite result record (ValueError: NaN is not a number" in lines[0]
    assert "line 3: not a txsuite result record (ValueError: JSON nested more than 64" in lines[1]
    assert "line 4: a (cell, repeat) already recorded, again" in lines[2]
    assert not any("RunFolder" in line or "warn" in line.split("RecordsWarning")[0] for line in lines)


def test_a_line_longer_than_the_bound_is_skipped_without_being_read_whole(tmp_path, monkeypatch):
    import txsuite.results.folder as folder_module
    monkeypatch.setattr(folder_module, "MAX_LINE_BYTES", 1000)
    write_atomic(tmp_path / "records.jsonl", record("a").to_json() + "\n" + "x" * 5000 + "\n" + record("b").to_json()
                 + "\n")
    with pytest.warns(RecordsWarning, match="line 2: not a txsuite result record .longer than 1,000 bytes"):
        assert [r.cell_id for r in RunFolder(tmp_path).records()] == ["a", "b"]
