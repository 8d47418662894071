"""The adaptive sweep (`search: pareto`, txsuite/run/search.py): what it prunes on synthetic
probes, the matrix key and its errors, `--budget`, a sweep end to end (a stand-in worker whose
figures follow from the cell's settings, and the real worker through the CLI), and the report's
section on the pruned cells."""
import json
import math
import sys

import pytest

from txsuite.config.matrix import MatrixError, load_matrix
from txsuite.config.record import Record
from txsuite.results import RunFolder
from txsuite.run import search
from txsuite.run.runner import run_matrix
from cli_helpers import txsuite

MIB = 2 ** 20


def probes(cells: dict[str, tuple[float, float, float]], noise=(1.0, 1.02), memory_noise=(1.0, 1.0005),
           spread=0.004, memory_spread=0.004):
    """Two probe rounds of each cell: name -> (tokens/s, train MiB, val loss), each round's
    figures multiplied by that round's noise (shared by every cell, as a machine's state is:
    pairing by round removes it) and by a per-cell wobble of +-`spread` (the noise left)."""
    out = []
    for k, (name, (speed, memory, loss)) in enumerate(cells.items()):
        for r in range(2):
            wobble = 1.0 + spread * math.sin(1.3 * k + 2.1 * r)  # no two cells alike
            out.append(Record(matrix="m", run_id="r", cell_id=name, repeat=r, config={}, status="ok", label=name,
                              metrics={"tokens_per_s": speed * noise[r] * wobble,
                                       "train_mem_bytes": memory * MIB * memory_noise[r]
                                       * (1.0 - memory_spread * math.sin(0.7 * k + 1.9 * r)),
                                       "val_loss": loss}))
    return out


FRONT = {"fast": (20000, 60, 3.0), "light": (10000, 30, 3.0), "middle": (15000, 45, 3.0)}


def test_a_cell_slower_and_heavier_beyond_noise_is_pruned_with_its_evidence():
    pruned, probed = search.prune(probes({**FRONT, "slow-heavy": (9000, 70, 3.0)}))
    assert [p.cell.cell_id for p in pruned] == ["slow-heavy"]
    p = pruned[0]
    assert p.by.cell_id == "fast" and p.speed[1] > 1.0 and p.memory[2] <= 1.001
    assert p.reason.startswith("pruned:") and "fast" in p.reason and "tokens/s" in p.reason
    assert set(probed) == {"fast", "light", "middle", "slow-heavy"}


def test_front_cells_and_a_cell_whose_interval_reaches_the_front_are_kept():
    # 2 % slower than "fast" with the same memory, the probes' noise +-3 %: it may be on the front
    pruned, _ = search.prune(probes({**FRONT, "close": (19600, 60, 3.0)}, spread=0.03))
    assert pruned == []


def test_a_slow_cell_whose_memory_ties_within_noise_is_kept():
    # on the medians it may come out a hair lighter than "fast", and so on the front
    pruned, _ = search.prune(probes({**FRONT, "slow-same-memory": (17000, 60, 3.0)}))
    assert pruned == []


def test_the_very_same_memory_does_not_protect_a_far_slower_cell():
    records = probes({**FRONT, "slow-same-memory": (17000, 60, 3.0)}, memory_noise=(1.0, 1.0), memory_spread=0.0)
    pruned, _ = search.prune(records)
    assert [(p.cell.cell_id, p.by.cell_id) for p in pruned] == [("slow-same-memory", "fast")]


@pytest.mark.parametrize("loss, kept", [
    (2.90, True),    # learns better at the probe than anything that dominates it: kept for quality
    (3.06, True),    # 2 % worse: a gap a short probe cannot rank at the full budget
    (3.01, False),   # within the tie: learns the same, dominated on speed and memory
    (3.60, False),   # far worse (20 %) and slower and heavier: pruned
])
def test_quality_keeps_what_a_probe_cannot_rank(loss, kept):
    pruned, _ = search.prune(probes({**FRONT, "slow-heavy": (9000, 70, loss)}))
    assert (pruned == []) is kept


def test_one_probe_round_tests_nothing_and_prunes_nothing():
    records = [r for r in probes({**FRONT, "slow-heavy": (9000, 70, 3.0)}) if r.repeat == 0]
    assert search.prune(records)[0] == []


def test_a_cell_whose_probe_failed_or_that_is_protected_is_never_pruned():
    records = probes({**FRONT, "slow-heavy": (9000, 70, 3.0), "other": (9000, 70, 3.0)})
    records[-1].status = "oom"
    pruned, _ = search.prune(records, protected=["slow-heavy"])
    assert pruned == []


def test_the_probe_is_a_shorter_training_of_the_same_cell(write_matrix):
    matrix = load_matrix(write_matrix(TINY.format(search="pareto", extra="")))
    cell = matrix.cells[0].config
    short = search.probe_config(cell)
    assert short.train.steps == search.MIN_PROBE_STEPS and short.train.warmup_steps == cell.train.warmup_steps
    assert (short.model, short.data, short.memory, short.precision) == (cell.model, cell.data, cell.memory,
                                                                         cell.precision)
    assert list(short.problems()) == []
    long = load_matrix(write_matrix(TINY.format(search="pareto", extra=""), "l.yaml"),
                       overrides=["train.steps=200"]).cells[0].config
    assert search.probe_config(long).train.steps == 50  # PROBE_FRACTION of 200


TINY = """\
name: tiny
fixed:
  model: {{preset: tiny, n_layer: 1}}
  data: {{dataset: markov, seq_len: 32, symbols: 16}}
  train: {{steps: 12, warmup_steps: 1, micro_batch: 4, lr: 3.0e-3}}
  measure: {{threads: 1}}
  {extra}
axes:
  train.micro_batch: [2, 4]
  memory.activation_checkpointing: [none, full]
repeats: 2
search: {search}
"""


def test_the_search_key_its_override_and_its_default(write_matrix):
    assert load_matrix(write_matrix(TINY.format(search="pareto", extra=""))).search == "pareto"
    grid = write_matrix(TINY.format(search="grid", extra=""), "g.yaml")
    assert load_matrix(grid).search == "grid"
    assert load_matrix(grid, overrides=["search=pareto"]).search == "pareto"
    a, b = load_matrix(grid), load_matrix(grid, overrides=["search=pareto"])
    assert a.fingerprint() != b.fingerprint()  # a pareto run never resumes a grid run of the same cells


@pytest.mark.parametrize("value", ["paretto", "random", "1", "[grid]"])
def test_an_unknown_search_names_the_file_the_key_and_the_allowed_values(write_matrix, value):
    with pytest.raises(MatrixError) as caught:
        load_matrix(write_matrix(TINY.format(search=value, extra="")))
    text = str(caught.value)
    assert "m.yaml" in text and "key 'search'" in text and "grid" in text and "pareto" in text
    assert "line 12" in text


def test_the_cli_refuses_a_bad_search_with_exit_2(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY.format(search="grid", extra=""))
    out = txsuite("run", "m.yaml", "--search", "sideways", cwd=tmp_path)
    assert out.returncode == 2 and "sideways" in out.stderr and "pareto" in out.stderr
    out = txsuite("run", "m.yaml", "search=sideways", cwd=tmp_path)
    assert out.returncode == 2 and "key 'search'" in out.stderr and "Traceback" not in out.stderr


def test_plan_says_the_sweep_is_adaptive_and_what_the_probe_is(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY.format(search="pareto", extra=""))
    out = txsuite("plan", "m.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "adaptive sweep" in out.stdout and f"{search.MIN_PROBE_STEPS} of 12 measured steps" in out.stdout


# ------------------------------------------------------------------ a sweep, end to end ----------

# A stand-in worker: its figures follow from the cell's settings (micro-batch 2 is half as fast;
# full checkpointing is slower and heavier), with a little noise per repetition, so that what the
# search prunes does not depend on this machine's speed.
FAKE_WORKER = """\
import json, random, sys
cell = json.load(open(sys.argv[1]))
c = cell["config"]
rng = random.Random(f'{cell["cell_id"]} {cell["repeat"]} {c["train"]["steps"]}')
speed = 10000.0 * (1.0 if c["train"]["micro_batch"] == 4 else 0.5)
memory = 40.0 * 2**20 * (1.0 if c["train"]["micro_batch"] == 4 else 0.6)
if c["memory"]["activation_checkpointing"] == "full":
    speed, memory = speed * 0.6, memory * 1.3
metrics = {"tokens_per_s": speed * rng.uniform(0.99, 1.01), "train_mem_bytes": memory * rng.uniform(0.999, 1.001),
           "peak_mem_bytes": memory + 300 * 2**20, "val_loss": 3.0, "steps": c["train"]["steps"],
           "loss_curve": [[c["train"]["steps"], 1.0, 3.0]], "train_wall_s": 0.1}
json.dump({"status": "ok", "metrics": metrics, "env": {}}, open(sys.argv[2], "w"))
"""


@pytest.fixture
def fake_sweep(tmp_path, write_matrix):
    """A pareto sweep of TINY's four cells through the stand-in worker: (run folder, matrix)."""
    (tmp_path / "fake.py").write_text(FAKE_WORKER)
    matrix = load_matrix(write_matrix(TINY.format(search="pareto", extra="")))
    run_matrix(matrix, tmp_path / "run", worker_cmd=[sys.executable, str(tmp_path / "fake.py")])
    return tmp_path / "run", matrix


def test_pareto_probes_every_cell_prunes_the_dominated_and_runs_the_rest_in_full(fake_sweep):
    run_dir, matrix = fake_sweep
    by_cell: dict[str, list[Record]] = {}
    for r in RunFolder(run_dir).records():
        by_cell.setdefault(r.label, []).append(r)
    assert len(by_cell) == 4 and all(len(reps) == matrix.repetitions for reps in by_cell.values())
    pruned = {label for label, reps in by_cell.items() if reps[0].status == "skipped"}
    # micro-batch 4 without checkpointing is faster and lighter than both checkpointed cells;
    # micro-batch 2 without checkpointing is the lightest: the front is the two unchecked cells
    assert pruned == {"train.micro_batch=2 memory.activation_checkpointing=full",
                      "train.micro_batch=4 memory.activation_checkpointing=full"}
    for label, reps in by_cell.items():
        if label in pruned:
            assert all(r.status == "skipped" and r.reason.startswith("pruned:") for r in reps)
        else:
            assert all(r.status == "ok" and r.config["train"]["steps"] == 12 for r in reps)
    stored = search.load_probes(run_dir)
    assert len(stored) == 4 * search.PROBE_ROUNDS
    assert all(r.config["train"]["steps"] == search.MIN_PROBE_STEPS for r in stored)
    assert all(json.loads(line)["phase"] == "probe" for line in (run_dir / "probes.jsonl").read_text().splitlines())
    assert len(search.read_search(run_dir)["pruned"]) == 2


def test_a_resumed_pareto_run_keeps_its_probes(fake_sweep, tmp_path):
    run_dir, matrix = fake_sweep
    before = (run_dir / "probes.jsonl").read_text()
    run_matrix(matrix, run_dir, worker_cmd=[sys.executable, str(tmp_path / "fake.py")])
    assert (run_dir / "probes.jsonl").read_text() == before


def test_the_report_lists_each_pruned_cell_with_its_evidence(fake_sweep, tmp_path):
    from txsuite.report.run_report import render_report
    from txsuite.report.search_view import search_section
    run_dir, _ = fake_sweep
    section = search_section(run_dir)
    assert section is not None and len(section["table"].rows) == 2
    html = render_report(run_dir, tmp_path / "report.html").read_text()
    assert "Pruned by the adaptive sweep" in html
    assert "micro_batch=4 memory.activation_checkpointing=none" in html  # the cell that dominates them


def test_a_budget_skips_what_it_leaves_no_time_for(tmp_path, write_matrix):
    (tmp_path / "fake.py").write_text(FAKE_WORKER)
    matrix = load_matrix(write_matrix(TINY.format(search="grid", extra="")))
    run_matrix(matrix, tmp_path / "run", worker_cmd=[sys.executable, str(tmp_path / "fake.py")], budget_s=1e-9)
    records = RunFolder(tmp_path / "run").records()
    assert len(records) == 8 and all(r.status == "skipped" and r.reason.startswith("budget:") for r in records)


def test_a_budget_spent_before_the_probes_runs_nothing(tmp_path, write_matrix):
    (tmp_path / "fake.py").write_text(FAKE_WORKER)
    matrix = load_matrix(write_matrix(TINY.format(search="pareto", extra="")))
    run_matrix(matrix, tmp_path / "run", worker_cmd=[sys.executable, str(tmp_path / "fake.py")], budget_s=1e-9)
    records = RunFolder(tmp_path / "run").records()
    assert len(records) == 8 and all(r.reason.startswith("budget:") for r in records)
    assert search.load_probes(tmp_path / "run") == []


def test_a_pareto_run_is_never_resumed_as_a_grid(fake_sweep, tmp_path):
    from txsuite.run.runner import RunMismatch
    run_dir, matrix = fake_sweep
    matrix.search = "grid"
    with pytest.raises(RunMismatch, match="search pareto -> grid"):
        run_matrix(matrix, run_dir, worker_cmd=[sys.executable, str(tmp_path / "fake.py")])


def test_a_pareto_sweep_through_the_cli(tmp_path):
    """The real worker on four tiny cells: whatever this machine's speed, every cell is either
    pruned in all its repetitions (with its evidence) or ran all of them in full; the probes are
    stored apart, and a budget is accepted."""
    (tmp_path / "m.yaml").write_text(TINY.format(search="grid", extra=""))
    out = txsuite("run", "m.yaml", "--search", "pareto", "--budget", "3600", "--run-id", "r", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "probe" in out.stdout
    run_dir = tmp_path / "results" / "tiny" / "r"
    records = RunFolder(run_dir).records()
    assert len(records) == 4 * 2
    for cell_id in {r.cell_id for r in records}:
        mine = [r for r in records if r.cell_id == cell_id]
        assert all(r.status == "ok" for r in mine) or all(
            r.status == "skipped" and r.reason.startswith("pruned:") for r in mine)
    assert len(search.load_probes(run_dir)) == 4 * search.PROBE_ROUNDS
    assert json.loads((run_dir / "matrix.json").read_text())["search"] == "pareto"


def test_budget_on_the_cli_is_checked(tmp_path):
    (tmp_path / "m.yaml").write_text(TINY.format(search="grid", extra=""))
    out = txsuite("run", "m.yaml", "--budget", "-3", cwd=tmp_path)
    assert out.returncode == 2 and "--budget" in out.stderr
