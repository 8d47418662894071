"""`txsuite history`: steps in a series of runs where the runs moved, none where they did not,
each step at the commits around it; runs of other hosts kept apart."""
import json
import math
import random

from txsuite.config.record import Record
from txsuite.report.history import render_history
from txsuite.results import RunFolder
from txsuite.verdict.series import find_steps
from cli_helpers import txsuite

CONFIG = {"model": {"preset": "tiny"}, "data": {"dataset": "markov", "seq_len": 32}, "train": {"steps": 6},
          "precision": "fp32", "device": "cpu"}


def write_series(root, speeds, flops=None, host="box", matrix="m"):
    """One run folder per value of `speeds` (tokens/s of its two repetitions, ±1 %), started a
    minute apart, each at its own commit."""
    for i, speed in enumerate(speeds):
        run_id = f"{host}-{i:02d}"
        env = {"host": host, "cpu": "EPYC", "txsuite_commit": f"{i:02d}" + "c" * 38}
        folder = RunFolder(root / matrix / run_id)
        for repeat, wiggle in enumerate((0.99, 1.01)):
            metrics = {"tokens_per_s": speed * wiggle, "train_mem_bytes": 2**27, "mfu": 0.1, "val_loss": 2.0,
                       "step_flops": (flops or {}).get(i, 1e9), "loss_curve": []}
            folder.append(Record(matrix=matrix, run_id=run_id, cell_id="c0", repeat=repeat, config=CONFIG,
                                 status="ok", label="precision=fp32", env=env, metrics=metrics,
                                 started_at=f"2026-01-01T00:{i:02d}:00+00:00",
                                 finished_at=f"2026-01-01T00:{i:02d}:30+00:00", duration_s=30.0))
        folder.write_json("env.json", env)


def test_a_step_is_found_between_the_right_runs_and_a_flat_series_has_none():
    random.seed(5)  # a series of 20 runs with 3 % run-to-run noise (at the 95 % level, 1 in 20 shows a step)
    flat = [1000 * math.exp(random.gauss(0, 0.03)) for _ in range(20)]
    assert find_steps(flat, higher_is_better=True) == []
    slowed = [v * (0.85 if i >= 14 else 1.0) for i, v in enumerate(flat)]
    steps = find_steps(slowed, higher_is_better=True)
    assert [s.index for s in steps] == [14] and steps[0].comparison.verdict == "worse"
    assert 0.8 < steps[0].comparison.ratio < 0.9
    # a counter steps wherever it changes, exactly
    counters = find_steps([5.0, 5.0, 6.0, 6.0], higher_is_better=False, exact=True)
    assert [s.index for s in counters] == [2] and counters[0].comparison.verdict == "worse"


def test_one_odd_run_is_no_step_but_the_newest_is_flagged_to_confirm(tmp_path):
    random.seed(4)
    speeds = [1000 * math.exp(random.gauss(0, 0.02)) for _ in range(12)]
    speeds[5] *= 0.7  # a neighbour's busy minute in one run
    speeds[-1] *= 0.7  # and the newest run
    write_series(tmp_path / "results", speeds)
    site = render_history([tmp_path / "results"], tmp_path / "site")
    tokens = [c for c in site.changes if c.metric == "tokens_per_s"]
    assert [(c.after.run_id, c.confirmed) for c in tokens] == [("box-11", False)]


def test_the_site_marks_the_step_at_its_commits_with_the_evidence(tmp_path):
    speeds = [1000.0 * (1 + 0.01 * ((i * 7) % 3 - 1)) * (0.85 if i >= 8 else 1.0) for i in range(14)]
    write_series(tmp_path / "results", speeds, flops={i: 1.2e9 for i in range(10, 14)})
    write_series(tmp_path / "results", [500.0] * 6, host="other")  # another machine: its own series
    out = txsuite("history", "results", "-o", "site", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "2 series, 20 runs" in out.stdout and "slower" in out.stdout
    steps = json.loads((tmp_path / "site" / "history.json").read_text())["changes"]
    found = {(c["metric"], c["before"]["run_id"], c["after"]["run_id"], c["words"]) for c in steps}
    assert found == {("tokens_per_s", "box-07", "box-08", "slower"), ("step_flops", "box-09", "box-10", "more")}
    for c in steps:
        assert c["before"]["commit"].startswith(c["before"]["run_id"][-2:])  # ordered by commit and time
    regressions = (tmp_path / "site" / "regressions.html").read_text()
    assert "box-07" in regressions and "compare the two runs" in regressions
    assert len(list((tmp_path / "site" / "compare").glob("*.html"))) == 2  # each step's two runs, compared
    assert (tmp_path / "site" / "index.html").exists()


def test_a_constant_series_has_no_step_whatever_its_last_bits():
    assert find_steps([0.1] * 300 + [0.1 * (1 + 1e-15)] * 200, higher_is_better=True) == []
