"""Reliability at scale and under attack (issue 28): every size, limit and threshold is checked
one way (txsuite/config/numbers.py) with bounds that keep arithmetic finite; what cannot fit
this host is refused at plan time; caches are advisory; a dead fork server is not a timeout.
Each test here failed before its fix; none depends on how fast the machine is."""
from __future__ import annotations

import json
import math
import os
import statistics
import sys

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import txsuite
from txsuite.cli import main
from txsuite.config import numbers, spec
from txsuite.config.cache_dir import CacheWarning
from txsuite.config.host import Host
from txsuite.config.matrix import MatrixError, MatrixTooLarge, load_matrix
from txsuite.config.record import Record
from txsuite.guard import GuardInputError, compare, load_side
from txsuite.results import RunFolder, write_atomic

TINY = "name: m\nfixed: {model: tiny, data: {dataset: markov, seq_len: 32}, train: {steps: 2, warmup_steps: 0}}\n"


def _cli(*args):
    """In-process `txsuite ARGS`: (exit code, what it printed); never an exception but SystemExit."""
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


# ------------------------------------------------------------------ 1. one numeric validation

@pytest.mark.parametrize("args, named", [
    (["--timeout", "1e10"], "--timeout"),  # was: OverflowError from select, mid-run
    (["--timeout", "1e309"], "--timeout"),
    (["--memory-limit", "99999999999999999999999TiB"], "--memory-limit"),  # was: every cell OverflowError
    (["--memory-limit", "0"], "--memory-limit"),  # was: silently no limit
    (["--memory-limit", "512"], "--memory-limit"),  # 512 bytes: nothing runs in that
])
def test_run_options_beyond_their_bounds_exit_2_naming_the_option(tmp_path, args, named):
    (tmp_path / "m.yaml").write_text(TINY)
    code, out = _cli("run", str(tmp_path / "m.yaml"), "--dry-run", *args)
    assert code == 2 and named in out and "Allowed:" in out and "Traceback" not in out, out


def test_sizes_and_seconds_in_every_spelling():
    assert numbers.size("4GiB") == 4 * 2**30 and numbers.size("2e9") == 2 * 10**9 and numbers.size("1.5 G") == 3 * 2**29
    assert numbers.size("1PiB") == 2**50
    assert numbers.seconds("90") == 90.0 and numbers.seconds(7 * 24 * 3600) == 604800.0
    for bad in ("0", "-1GiB", "1e400", "nan", "inf GiB", "2PiB", ""):
        with pytest.raises(numbers.NumberProblem):
            numbers.size(bad)
    for bad in (0, -1, math.nan, math.inf, 1e12, 10**400, True, "soon"):
        with pytest.raises(numbers.NumberProblem):
            numbers.seconds(bad)


def test_a_matrix_timeout_beyond_a_week_is_refused_at_its_line(write_matrix):
    with pytest.raises(MatrixError) as err:
        load_matrix(write_matrix("name: m\ntimeout_s: 1.0e+12\n"))
    assert err.value.key == "timeout_s" and err.value.line == 2 and "604,800" in str(err.value)
    with pytest.raises(MatrixError, match="timeout_s"):
        load_matrix(write_matrix("name: m\ntimeout_s: '90'\n"))  # text is not a number, as the schema says
    assert load_matrix(write_matrix("name: m\ntimeout_s: 604800\n")).timeout_s == 604800.0


def test_every_integer_setting_has_an_upper_bound_and_its_products_stay_finite():
    """Every int key of the spec names its maximum, and a cell with every key at it still has a
    finite memory estimate and FLOP count (what the plan prints)."""
    from txsuite.config.estimate import estimate_memory, training_flops
    ints = [f"{family}.{key}" for family in spec.FAMILIES for key in spec.keys_of(family)
            if str(spec.field_type(f"{family}.{key}")).startswith("int") and f"{family}.{key}" not in spec.CHOICES]
    assert ints and all(key in spec.MAXIMA for key in ints), [k for k in ints if k not in spec.MAXIMA]
    top = spec.CellConfig.from_dict({
        "model": {"n_layer": spec.MAXIMA["model.n_layer"], "d_model": spec.MAXIMA["model.d_model"],
                  "n_head": 1, "d_ff": spec.MAXIMA["model.d_ff"]},
        "data": {"seq_len": spec.MAXIMA["data.seq_len"]},
        "train": {"micro_batch": spec.MAXIMA["train.micro_batch"], "grad_accum": spec.MAXIMA["train.grad_accum"],
                  "steps": spec.MAXIMA["train.steps"]}})
    assert math.isfinite(estimate_memory(top, spec.MAXIMA["data.vocab_size"])["total_bytes"] / 2**20)
    assert math.isfinite(training_flops(top, spec.MAXIMA["data.vocab_size"]))


# ------------------------------------------------------------------ 2. the guard's input

ENV = {"host": "h", "cpu": "c", "device": "cpu", "torch": "2", "python": "3"}


def _record(repeat, step_times, **metrics):
    tps = statistics.median(256 / t for t in step_times)
    values = {"step_times_s": step_times, "tokens_per_s": tps, "tokens_per_step": 256, "samples_per_step": 4,
              "peak_mem_bytes": 4e8, "train_mem_bytes": 1e8, "val_loss": 2.0, **metrics}
    return Record(matrix="m", run_id="r", cell_id="c0", repeat=repeat, config={"precision": "fp32"}, status="ok",
                  label="cell", env=dict(ENV), metrics=values)


def _run_dir(path, records, guard="-5%"):
    # written as a hand edit would leave it: Record.to_json turns NaN into null, json.dumps does not
    write_atomic(path / "records.jsonl", "".join(json.dumps(r.__dict__) + "\n" for r in records))
    RunFolder(path).write_json("matrix.json", {"name": "m", "source": "m.yaml", "guard": {"tokens_per_s": guard},
                                               "cells": [{"cell_id": "c0", "label": "cell", "config": {}}]})
    return path


STEPS = [[0.010, 0.011, 0.0105, 0.0102], [0.0101, 0.0104, 0.0099, 0.0103]]


@pytest.mark.parametrize("edit", [{"tokens_per_s": -500.0}, {"tokens_per_s": math.nan},
                                  {"step_times_s": [0.01, -0.01, 0.01]}, {"step_times_s": [0.01, math.inf]},
                                  {"peak_mem_bytes": -1.0}, {"tokens_per_step": 0}])
def test_impossible_measurements_are_input_errors_not_verdicts(tmp_path, edit):
    """A negative tokens/s FAILed (exit 1) and NaN printed '+nan%': now either is exit 2,
    naming the file, the cell, the repetition and the value."""
    base = _run_dir(tmp_path / "base", [_record(r, STEPS[r]) for r in (0, 1)])
    bad = [_record(0, STEPS[0]), _record(1, STEPS[1])]
    bad[1].metrics.update(edit)
    run = _run_dir(tmp_path / "run", bad)
    with pytest.raises(GuardInputError) as err:
        compare(load_side(run), load_side(base))
    message = str(err.value)  # the reader's words for the line, or the guard's for the value
    assert "records.jsonl, line 2" in message or ("'cell' repeat 1" in message and next(iter(edit)) in message)


def test_a_threshold_that_can_never_be_crossed_is_refused(tmp_path, write_matrix):
    base = _run_dir(tmp_path / "base", [_record(r, STEPS[r]) for r in (0, 1)])
    run = _run_dir(tmp_path / "run", [_record(r, [t * 2 for t in STEPS[r]]) for r in (0, 1)])  # twice as slow
    for impossible in ("-150%", "-100%", "+" + "9" * 400 + "%"):
        with pytest.raises(GuardInputError, match="could never fail|not a finite"):
            compare(load_side(run), load_side(base), {"tokens_per_s": impossible})
    assert compare(load_side(run), load_side(base), {"tokens_per_s": "-5%"}).verdict != "PASS"  # -5% is fine
    with pytest.raises(MatrixError) as err:
        load_matrix(write_matrix("name: m\nguard: {tokens_per_s: -150%}\n"))
    assert err.value.key == "guard.tokens_per_s" and err.value.line == 2


def test_the_guard_command_exits_2_on_impossible_data_and_thresholds(tmp_path):
    base = _run_dir(tmp_path / "base", [_record(r, STEPS[r]) for r in (0, 1)])
    bad = [_record(0, STEPS[0], tokens_per_s=-500.0), _record(1, STEPS[1])]
    run = _run_dir(tmp_path / "run", bad)
    code, out = _cli("guard", str(run), "--baseline", str(base))
    assert code == 2 and "tokens_per_s" in out and "-500" in out and "Traceback" not in out, out
    code, out = _cli("guard", str(base), "--baseline", str(base), "--threshold", "tokens_per_s=-150%")
    assert code == 2 and "-150%" in out and "could never fail" in out, out
    code, out = _cli("guard", str(base), "--baseline", str(base), "--seed", "-1")
    assert code == 2 and "seed" in out, out


# ------------------------------------------------------------------ 3. what cannot fit

@pytest.mark.parametrize("fixed, key", [
    ("{data: {seq_len: 100000000000000000000}}", "data.seq_len"),  # 1e20: was "will run" at 6e36 MiB
    ("{data: {seq_len: 200000000}}", "data.seq_len"),
    ("{model: {n_layer: 100000, d_model: 100000}}", "model.n_layer"),
    ("{model: {d_model: 100000}}", "model.d_model"),
    ("{data: {tokenizer: bpe, vocab_size: 1000000000}}", "data.vocab_size"),
    ("{train: {micro_batch: 10000000000}}", "train.micro_batch"),
    ("{train: {seed: 4294967296}}", "train.seed"),  # numpy takes seeds below 2^32
])
def test_a_value_beyond_any_machine_is_a_plan_error_naming_its_key(write_matrix, fixed, key):
    with pytest.raises(MatrixError) as err:
        load_matrix(write_matrix(f"name: m\nfixed: {fixed}\n"), host=Host(memory_bytes=2**40))
    assert err.value.key == key and err.value.line == 2 and "Allowed: an integer from " in str(err.value)


def test_a_modadd_modulus_whose_examples_fit_no_machine_is_refused(write_matrix):
    """The model's estimate does not see the dataset: modadd's p^2 examples are checked by
    their own rule (p = 2^24 would be petabytes of int64 rows)."""
    with pytest.raises(MatrixError) as err:
        load_matrix(write_matrix("name: m\nfixed: {data: {dataset: modadd, symbols: 16777216}}\n"))
    assert err.value.key == "data.symbols" and "Allowed: 2 to 4096" in str(err.value)
    assert load_matrix(write_matrix("name: m\nfixed: {data: {dataset: modadd, symbols: 4096}}\n")).cells


def test_a_cell_too_big_for_this_host_is_skipped_with_its_estimate_and_the_hosts_memory(write_matrix):
    path = write_matrix("name: m\nfixed: {train: {steps: 1}}\naxes:\n  data.seq_len: [64, 1000000]\n")
    small = load_matrix(path, host=Host(memory_bytes=2**30))
    fits, too_big = small.cells
    assert fits.skip_reason is None
    assert "per rank, more than this host's memory (1 GiB)" in too_big.skip_reason
    assert "the plan estimates 139.2 GiB" in too_big.skip_reason  # a million-token sequence: its activations
    assert all(c.skip_reason is None for c in load_matrix(path, host=Host()).cells)  # memory unknown: no guess
    gpu = load_matrix(path, host=Host(has_cuda=True, gpu_count=1, gpu_name="GPU-X", gpu_memory_bytes=2**30),
                      device_override="cuda")
    assert "the memory of GPU-X (1 GiB)" in gpu.cells[1].skip_reason and gpu.cells[0].skip_reason is None


def test_txsuite_plan_reads_this_hosts_memory():
    from txsuite.measure.env import plan_host
    memory = plan_host().memory_bytes
    assert memory is None or 2**20 < memory < 2**60


# ------------------------------------------------------------------ 4. dataset patterns

def test_a_pattern_over_the_whole_file_system_is_refused_at_once(write_matrix):
    from txsuite.data import check_data_sources
    with pytest.raises(MatrixError) as err:
        load_matrix(write_matrix("name: m\nfixed: {data: {dataset: '/**/*.txt'}}\n"), check_data=check_data_sources)
    assert err.value.key == "data.dataset" and "whole file system" in str(err.value)


def test_a_pattern_that_walks_too_many_folders_or_files_is_refused(tmp_path, monkeypatch):
    from txsuite.data import corpora
    for i in range(6):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "a.txt").write_text("text\n")
    assert len(corpora.user_files(str(tmp_path / "**" / "*.txt"))) == 6
    monkeypatch.setattr(corpora, "MAX_PATTERN_FOLDERS", 5)
    with pytest.raises(ValueError, match="more than 5 folders"):
        corpora.user_files(str(tmp_path / "**" / "*.txt"))
    monkeypatch.setattr(corpora, "MAX_PATTERN_FOLDERS", 100)
    monkeypatch.setattr(corpora, "MAX_DATASET_FILES", 3)
    with pytest.raises(ValueError, match="more than 3 files"):
        corpora.user_files(str(tmp_path / "*" / "*.txt"))
    monkeypatch.setattr(corpora, "MAX_DATASET_FILES", 100)
    monkeypatch.setattr(corpora, "MAX_DATASET_BYTES", 10)
    with pytest.raises(ValueError, match="GiB of text"):
        corpora.user_files(str(tmp_path / "*" / "*.txt"))


# ------------------------------------------------------------------ 5. advisory caches

@pytest.fixture
def cache_at(monkeypatch, tmp_path):
    def point(path):
        monkeypatch.setenv("TXSUITE_CACHE", str(path))
        return path
    return point


def _peak_update(cache):
    """What txsuite.measure.peak does with peaks.json: read an entry's "flops", or measure."""
    entry = cache.get("k")
    if entry is not None:
        return entry["flops"]
    cache["k"] = {"flops": 5.0}
    return 5.0


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', '{"k": "not an entry"}', '{"k": {"other": 1}}', "{torn"])
def test_a_cache_file_of_another_shape_is_named_ignored_and_rewritten(tmp_path, cache_at, content):
    from txsuite.measure.host_cache import locked_update
    (cache_at(tmp_path / "cache") / "peaks.json").parent.mkdir()
    (tmp_path / "cache" / "peaks.json").write_text(content)
    with pytest.warns(CacheWarning, match="peaks.json"):
        assert locked_update("peaks.json", _peak_update) == 5.0
    assert json.loads((tmp_path / "cache" / "peaks.json").read_text()) == {"k": {"flops": 5.0}}


def test_a_damaged_cache_file_is_rewritten_even_by_a_reader(tmp_path, cache_at):
    """The plan only reads observed.json: a file of another shape is still replaced (once)."""
    from txsuite.measure.host_cache import locked_update
    cache_at(tmp_path)
    (tmp_path / "observed.json").write_text("[1, 2]")
    with pytest.warns(CacheWarning, match="observed.json: holds a JSON list"):
        assert locked_update("observed.json", lambda cache: cache.get("host")) is None
    assert json.loads((tmp_path / "observed.json").read_text()) == {}


def test_a_measured_once_entry_of_another_shape_is_measured_again(tmp_path, cache_at):
    from txsuite.measure.host_cache import measured_once
    cache_at(tmp_path)
    (tmp_path / "attention.json").write_text('{"key": "sdpa"}')
    with pytest.warns(CacheWarning, match="attention.json"):
        entry, cached = measured_once("attention.json", "key", lambda: {"attention": "sdpa"})
    assert entry["attention"] == "sdpa" and not cached
    assert measured_once("attention.json", "key", lambda: {"attention": "other"})[0]["attention"] == "sdpa"


def test_a_cache_that_cannot_be_written_is_warned_about_and_the_result_still_used(tmp_path, cache_at, monkeypatch):
    from txsuite.measure import host_cache
    from txsuite.measure.host_cache import locked_update
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    cache_at(a_file)
    with pytest.warns(CacheWarning, match="not-a-folder"):
        assert locked_update("peaks.json", _peak_update) == 5.0
    cache_at(tmp_path / "full")

    def refuse(*args):
        raise PermissionError(13, "Permission denied")
    with monkeypatch.context() as patched:  # what a read-only folder does, even for root
        patched.setattr(host_cache.os, "replace", refuse)
        with pytest.warns(CacheWarning, match="peaks.json: cannot be written"):
            assert locked_update("peaks.json", _peak_update) == 5.0
    if os.geteuid() == 0:
        pytest.skip(reason="root writes into read-only folders: the read-only case cannot be made as root")
    read_only = cache_at(tmp_path / "ro")
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        with pytest.warns(CacheWarning, match="ro"):
            assert locked_update("peaks.json", _peak_update) == 5.0
    finally:
        read_only.chmod(0o700)


def test_a_damaged_or_unwritable_tokenizer_cache_is_trained_again(tmp_path):
    pytest.importorskip("tokenizers", reason="tokenizers is not installed")
    from txsuite.data.tokenization import bpe_cache_path, load_or_train_bpe
    pieces = ["the cat sat on the mat. " * 40, "the dog sat on the log. " * 40]
    first = load_or_train_bpe(pieces, "id", 300, tmp_path)
    path = bpe_cache_path(tmp_path, "id", 300)
    path.write_text('{"not": "a tokenizer"}')
    with pytest.warns(CacheWarning, match=path.name):
        again = load_or_train_bpe(pieces, "id", 300, tmp_path)
    assert again.sha256 == first.sha256 and json.loads(path.read_text()) != {"not": "a tokenizer"}
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.warns(CacheWarning, match="cannot be written"):
        assert load_or_train_bpe(pieces, "id", 300, a_file).sha256 == first.sha256


def test_a_damaged_token_array_cache_is_encoded_again(tmp_path):
    pytest.importorskip("tokenizers", reason="tokenizers is not installed")
    from txsuite.data.split import split_text
    from txsuite.data.text import cached_bpe_streams
    from txsuite.data.tokenization import load_or_train_bpe
    split = split_text("the cat sat on the mat.\n" * 400, 0.1)
    tokenizer = load_or_train_bpe(split.train_pieces, "id", 300, tmp_path)
    train, val = cached_bpe_streams(tokenizer, split, "id", tmp_path)
    (npz,) = (tmp_path / "tokens").iterdir()
    npz.write_bytes(b"not a zip")
    with pytest.warns(CacheWarning, match=npz.name):
        again, _ = cached_bpe_streams(tokenizer, split, "id", tmp_path)
    assert (again == train).all()


def test_cells_run_with_a_cache_path_that_is_a_file(tmp_path):
    """End to end: every cell failed (NotADirectoryError) when $TXSUITE_CACHE named a file."""
    (tmp_path / "m.yaml").write_text(TINY)
    (tmp_path / "cache-file").write_text("x")
    out = txsuite("run", "m.yaml", "--run-id", "r", cwd=tmp_path, env={"TXSUITE_CACHE": str(tmp_path / "cache-file")})
    assert out.returncode == 0, out.stdout + out.stderr
    (record,) = RunFolder(tmp_path / "results" / "m" / "r").records()
    assert record.status == "ok"


# ------------------------------------------------------------------ 6. the fork server dies

DYING_SERVER = """\
import json, os, signal, sys, time
print(json.dumps({"ready": os.getpid(), "ranks": True}), flush=True)
for line in sys.stdin:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the cell, as the real server's: its own group, its output away from the server's
        os.setsid()  # pipe, and ended with the server (PDEATHSIG)
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.write(ready_w, b"x")
        time.sleep(600)
        os._exit(0)
    os.read(ready_r, 1)  # the cell is set up: no race with what follows
    print(json.dumps({"pid": pid}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # killed mid-cell
"""


def test_a_fork_server_killed_mid_cell_is_a_failure_saying_so_not_a_timeout(tmp_path):
    from txsuite.run.executors import LocalExecutor
    from txsuite.run.runner import WorkerCode, run_one
    server = tmp_path / "dying_server.py"
    server.write_text(DYING_SERVER)
    executor = LocalExecutor()
    try:
        outcome = executor.execute_forked((str(server),), ["c.json", "r.json"], {}, tmp_path / "log.txt", timeout=1800)
        assert outcome is not None and not outcome.timed_out
        assert "fork server" in outcome.reason and "died while the cell ran: SIGKILL" in outcome.reason
        matrix = load_matrix(_write(tmp_path / "m.yaml", TINY), host=Host())
        record = run_one(matrix, RunFolder(tmp_path / "run"), matrix.cells[0], 0, {}, timeout=1800,
                         executor=executor, code=WorkerCode(launch=(str(server),)))
    finally:
        executor.close()
    assert record.status == "failed" and "fork server" in record.reason and "died" in record.reason
    assert "no result after" not in record.reason


def _write(path, text):
    path.write_text(text)
    return path


# ------------------------------------------------------------------ 7. messages

def test_too_many_seeds_are_reported_under_seeds(write_matrix):
    with pytest.raises(MatrixTooLarge) as err:
        load_matrix(write_matrix("name: m\nseeds: 9000\n"))
    assert err.value.key == "seeds" and "9000 seeds" in str(err.value)
    with pytest.raises(MatrixTooLarge) as err:
        load_matrix(write_matrix("name: m\nseeds: 100000\n"))  # the tester's case: named under repeats
    assert err.value.key == "seeds" and "100000 seeds" in str(err.value) and "--yes" in str(err.value)
    with pytest.raises(MatrixError) as err:
        load_matrix(write_matrix("name: m\nseeds: 10000000\n"), max_cells=None)  # beyond even --yes
    assert err.value.key == "seeds" and "1,000,000" in str(err.value)


def test_an_empty_list_is_called_one(write_matrix):
    with pytest.raises(MatrixError, match="got an empty list"):
        load_matrix(write_matrix("name: m\naxes: {precision: []}\n"))


def test_plan_names_dev_stdin_as_typed(tmp_path):
    import subprocess
    (tmp_path / "m.yaml").write_text("name: m\nfixed: {train: {steps: -1}}\n")
    with open(tmp_path / "m.yaml") as stdin:
        out = subprocess.run([sys.executable, "-m", "txsuite.cli", "plan", "/dev/stdin"], stdin=stdin,
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "/dev/stdin" in out.stderr and "/proc/" not in out.stderr, out.stderr


# ------------------------------------------------------------------ 8. numbers, fuzzed

NUMERIC_KEYS = [f"{family}.{key}" for family in spec.FAMILIES for key in spec.keys_of(family)
                if str(spec.field_type(f"{family}.{key}")).startswith(("int", "float"))
                and f"{family}.{key}" not in spec.CHOICES]
HOSTILE = st.one_of(st.integers(min_value=-10**30, max_value=10**30), st.integers(min_value=2**62, max_value=10**400),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
                        [-1, 0, 1, 2**63, 2**64, 10**400, -10**400, "1e400", 1e308, -1e-300]))
TOP_NUMBERS = ["repeats", "seeds", "timeout_s"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(NUMERIC_KEYS + TOP_NUMBERS), value=HOSTILE, spelled=st.sampled_from(["yaml", "override"]))
def test_any_number_in_any_numeric_key_plans_or_is_a_matrix_error(tmp_path_factory, key, value, spelled):
    folder = tmp_path_factory.mktemp("num", numbered=True)
    path = folder / "m.yaml"
    doc = {"name": "m"}
    text = value if isinstance(value, str) else yaml.safe_dump(value).split("\n")[0]  # 1e400 reads as inf
    overrides = ()
    if spelled == "override":
        overrides = (f"{key}={text}",)
    elif key in TOP_NUMBERS:
        doc[key] = value
    else:
        doc["fixed"] = {key: value}
    path.write_text(yaml.safe_dump(doc))
    try:
        matrix = load_matrix(path, host=Host(memory_bytes=2**34), overrides=overrides)
    except MatrixError as exc:
        assert "\n" not in str(exc) and key.split(".")[-1] in str(exc)
        return
    if key in TOP_NUMBERS:
        assert getattr(matrix, key) is not None
    for cell in matrix.cells:  # what was accepted is a finite number within the key's bounds
        number = getattr(getattr(cell.config, key.split(".")[0]), key.split(".")[1]) if "." in key else None
        if isinstance(number, float):
            assert math.isfinite(number)
        elif isinstance(number, int) and not isinstance(number, bool):
            assert 0 <= number <= spec.MAXIMA[key]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--timeout", "--memory-limit"]),
       value=st.one_of(st.sampled_from(["1e400", "-0", "nan", "inf", "1e10", "9" * 400, "0x10", "1_000",
                                        "2**64", "1e-400", "5e-324"]),
                       st.floats().map(repr), st.integers(-10**30, 10**30).map(str),
                       st.integers(-10**30, 10**30).map(lambda n: f"{n}GiB")))
def test_any_number_in_a_run_option_dry_runs_or_exits_2(tmp_path_factory, option, value):
    folder = tmp_path_factory.mktemp("opt", numbered=True)
    (folder / "m.yaml").write_text(TINY)
    code, out = _cli("run", str(folder / "m.yaml"), "--dry-run", option, value)
    assert code in (0, 2), out
    if code == 2:
        assert option in out and "Traceback" not in out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(change=st.one_of(st.sampled_from(["-150%", "-100%", "+1e400%", "+" + "9" * 400 + "%", "-nan%", "+inf%",
                                         "-99.99%", "+0%"]),
                        st.floats().map(lambda f: f"{'+' if f >= 0 else ''}{f}%")))
def test_any_guard_threshold_gives_a_verdict_or_an_input_error(tmp_path_factory, change):
    folder = tmp_path_factory.mktemp("thr", numbered=True)
    base = _run_dir(folder, [_record(r, STEPS[r]) for r in (0, 1)])
    try:
        result = compare(load_side(base), load_side(base), {"tokens_per_s": change})
    except GuardInputError:
        return
    assert result.verdict in ("PASS", "FAIL", "INCONCLUSIVE")
    assert "nan" not in result.to_text().lower()


def test_the_schema_states_the_same_bounds():
    """Editors flag what the loader refuses: matrix.schema.json carries each key's maximum."""
    jsonschema = pytest.importorskip("jsonschema", reason="the test extra (jsonschema) is not installed")
    from txsuite.config.schema import matrix_schema
    validator = jsonschema.Draft202012Validator(matrix_schema())
    assert validator.is_valid({"name": "m", "fixed": {"data": {"seq_len": 2**24}}, "timeout_s": 604800})
    for bad in ({"name": "m", "fixed": {"data": {"seq_len": 2**24 + 1}}}, {"name": "m", "seeds": 10**6 + 1},
                {"name": "m", "timeout_s": 1e12}):
        assert not validator.is_valid(bad), bad


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--alpha", "--run-noise", "--slow-state", "--seed"]),
       value=st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e400", "-1", "0", "9" * 400, "1e400%", "nan%"]),
                       st.floats().map(repr), st.integers(-10**30, 10**30).map(str)))
def test_any_number_in_a_guard_option_gives_a_verdict_or_exits_2(tmp_path_factory, option, value):
    folder = tmp_path_factory.mktemp("gopt", numbered=True)
    base = _run_dir(folder, [_record(r, STEPS[r]) for r in (0, 1)])
    code, out = _cli("guard", str(base), "--baseline", str(base), option, value)
    assert code in (0, 1, 2, 3), out
    assert "Traceback" not in out and "+nan%" not in out.lower()  # an echoed "nan%" option is fine
