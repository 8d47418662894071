"""The cost model: fitted on what a host measured, it predicts what it was fitted on; with
nothing measured it says what it stands on (speed: this host's measured parts weighed as on the
reference host, CPU, or uncorrected, CUDA; memory: the heap prior on CPU); its band never claims
less than the floor."""
import math
from dataclasses import replace

from txsuite.config.estimate import approx_vocab, estimate_memory

from txsuite.config.spec import CellConfig
from txsuite.measure.predict import (BAND_FLOOR, HEAP_PRIOR, SPEED_PRIOR, SPEED_PRIOR_STATE, HostCosts, HostModel,
                                     Observation,
                                     activation_traffic_bytes, held_parts, matmul_seconds, memory_features,
                                     optimizer_traffic_bytes, speed_parts)

PEAK = 1e11
BANDWIDTH = 2e10
COSTS = HostCosts(peak_flops=PEAK, bandwidth=BANDWIDTH, layer_s=1e-4, micro_batch_s=3e-4)


def cell(n_layer=2, micro_batch=4, precision="fp32", checkpointing="none", optimizer="adamw", device="cpu",
         attention="auto", grad_accum=1):
    return CellConfig.from_dict({"model": {"preset": "tiny", "n_layer": n_layer, "attention": attention},
                                 "data": {"dataset": "markov", "seq_len": 64, "symbols": 64},
                                 "train": {"steps": 10, "micro_batch": micro_batch, "optimizer": optimizer,
                                           "grad_accum": grad_accum},
                                 "memory": {"activation_checkpointing": checkpointing},
                                 "precision": precision, "device": device})


def costs(c: CellConfig) -> HostCosts:
    """The host's measured parts for a cell: its optimizer step a millisecond per layer."""
    return replace(COSTS, optimizer_s=1e-3 * c.model.dims[0])


CELLS = [cell(n, b, checkpointing=c) for n in (1, 2, 4) for b in (2, 8)
         for c in ("none", "full")]
TRUE_SPEED = list(SPEED_PRIOR)  # a and e of txsuite/measure/predict.py
TRUE_MEMORY = list(HEAP_PRIOR)  # k, t, r, u and m of txsuite/measure/predict.py


def true_step_s(c: CellConfig, speed=TRUE_SPEED) -> float:
    (matmul_s, outside_s), optimizer_s = speed_parts(c, costs(c))
    return speed[0] * matmul_s + speed[1] * outside_s + optimizer_s


def observations(cells=CELLS, memory=TRUE_MEMORY, speed=TRUE_SPEED):
    return [Observation(c, true_step_s(c, speed), sum(a * x for a, x in zip(memory, memory_features(c))), costs(c))
            for c in cells]


def test_a_model_fitted_on_a_host_predicts_what_it_measured():
    model = HostModel.fit(observations())
    assert model.speed_fitted_on == len(CELLS) and model.speed_error < 1e-6
    for o in observations():
        p = model.predict(o.config, o.costs)
        assert math.isclose(p.step_s, o.step_s, rel_tol=1e-6)
        assert math.isclose(p.train_mem_bytes, o.train_mem_bytes, rel_tol=1e-6)
        assert math.isclose(p.tokens_per_s, o.config.tokens_per_step / o.step_s, rel_tol=1e-6)
        # a perfect fit still claims no band narrower than the floor
        assert math.isclose(p.high / p.tokens_per_s, math.exp(BAND_FLOOR), rel_tol=1e-9)
        assert "fitted on" in p.speed_source and "fitted on" in p.memory_source
        assert "optimizer step measured here" in p.speed_source


def test_the_speed_prior_gives_way_to_a_hosts_own_records():
    """A host whose matmuls and the rest weigh otherwise than on the reference host: fitted on
    records of several sizes, the prediction follows the host, also for a size it never ran."""
    truth = [0.6, 1.5]
    model = HostModel.fit(observations(speed=truth) * 3)
    for c in (cell(6, 16), cell(3, 4, checkpointing="full"), cell(2, 2, grad_accum=4)):
        prior_alone = HostModel.fit([]).predict(c, costs(c)).step_s
        assert abs(model.predict(c, costs(c)).step_s / true_step_s(c, truth) - 1) < 0.05
        assert abs(prior_alone / true_step_s(c, truth) - 1) > 0.2


def test_a_matrix_measured_while_the_machine_was_slow_does_not_slow_every_prediction():
    """Each record's step time is brought to the machine's best state by its probe's state factor
    before the fit; the prediction is made in the median state of the records fitted on. A host
    whose first matrix ran 1.3x slow, its probes saying so, predicts its later cells as one whose
    matrix ran in its usual state (here a third of its records ran 1.3x slow)."""
    usual = HostModel.fit([replace(o, step_s=o.step_s * 1.05, state=1.05) for o in observations()])
    slow_first = HostModel.fit([replace(o, step_s=o.step_s * 1.3, state=1.3) for o in observations()[:4]]
                               + [replace(o, step_s=o.step_s * 1.05, state=1.05) for o in observations()[4:]])
    for c in (cell(6, 16), cell(3, 4, checkpointing="full")):
        expected = true_step_s(c) * 1.05
        assert math.isclose(usual.predict(c, costs(c)).step_s, expected, rel_tol=1e-6)
        assert math.isclose(slow_first.predict(c, costs(c)).step_s, expected, rel_tol=1e-6)
    # unbrought, the slow matrix would have set the level (the model before the states were used)
    raw = HostModel.fit([replace(o, step_s=o.step_s * 1.3) for o in observations()])
    assert raw.predict(cell(6, 16), costs(cell(6, 16))).step_s > 1.2 * true_step_s(cell(6, 16))


def test_a_new_host_is_its_measured_parts_and_says_what_weighs_them():
    c = cell()
    (matmul_s, outside_s), optimizer_s = speed_parts(c, costs(c))
    p = HostModel.fit([]).predict(c, costs(c))
    # in the reference host's typical state: its factors were fitted on steps at the machine's best
    assert math.isclose(p.step_s, (SPEED_PRIOR[0] * matmul_s + SPEED_PRIOR[1] * outside_s + optimizer_s)
                        * SPEED_PRIOR_STATE)
    assert "reference host's factors" in p.speed_source and p.low is None
    # on a new CUDA host the parts as they are: no factors of another kind of device
    gpu = HostModel.fit([]).predict(cell(device="cuda"), costs(c))
    assert math.isclose(gpu.step_s, matmul_s + outside_s + optimizer_s) and "uncorrected" in gpu.speed_source
    # without the bandwidth: the matmuls, the overhead and the optimizer step, and it says so
    no_bandwidth = HostModel.fit([]).predict(c, replace(costs(c), bandwidth=None))
    assert no_bandwidth.step_s < p.step_s and "no memory bandwidth" in no_bandwidth.speed_source
    # memory on a new CPU host: the estimate with the reference host's heap prior, named
    assert math.isclose(p.train_mem_bytes, sum(a * x for a, x in zip(HEAP_PRIOR, memory_features(c))))
    assert "heap prior of the reference host" in p.memory_source
    # on a new CUDA host the estimate as it is: no prior of another allocator
    assert "uncorrected" in gpu.memory_source
    assert gpu.train_mem_bytes == estimate_memory(cell(device="cuda"), approx_vocab(c))["total_bytes"]
    no_peak = HostModel.fit([]).predict(cell(precision="bf16"), replace(COSTS, peak_flops=None))
    assert no_peak.tokens_per_s is None and "no matmul peak" in no_peak.speed_source


def test_the_optimizer_step_is_added_as_measured_else_its_bytes_at_the_bandwidth():
    c = cell()
    measured = speed_parts(c, costs(c))
    unmeasured = speed_parts(c, COSTS)
    assert measured[1] == costs(c).optimizer_s and unmeasured[1] == 0.0
    assert math.isclose(unmeasured[0][1] - measured[0][1], optimizer_traffic_bytes(c) / BANDWIDTH)
    assert "its step not measured here" in HostModel.fit([]).predict(c, COSTS).speed_source


def test_a_step_moves_more_bytes_and_passes_with_its_tokens_recomputation_and_micro_batches():
    # the traffic grows with what a step keeps and moves: micro-batches, recomputation, accumulation
    assert activation_traffic_bytes(cell(2, 8)) > activation_traffic_bytes(cell(2, 4))
    assert activation_traffic_bytes(cell(2, 4, checkpointing="full")) > activation_traffic_bytes(cell(2, 4))
    assert activation_traffic_bytes(cell(2, 2, grad_accum=3)) == 3 * activation_traffic_bytes(cell(2, 2))
    no_traffic = replace(COSTS, bandwidth=1e40)  # what is left outside the matmuls: the overhead
    overhead = [speed_parts(c, no_traffic)[0][1] for c in (cell(2), cell(4), cell(2, checkpointing="full"),
                                                             cell(2, grad_accum=3))]
    layer_s, micro_batch_s = COSTS.layer_s, COSTS.micro_batch_s
    assert math.isclose(overhead[0], 2 * layer_s + micro_batch_s)
    assert math.isclose(overhead[1] - overhead[0], 2 * layer_s)  # every layer pass
    assert math.isclose(overhead[2] - overhead[0], 2 * layer_s / 3)  # a recomputed forward: a third of a pass
    assert math.isclose(overhead[3], 3 * overhead[0])  # every micro-batch


def test_the_heap_prior_gives_way_to_a_hosts_own_records():
    """A host whose heap differs from the prior: fitted on many records of several sizes, the
    prediction follows the host; the prior only draws the split of k, t, r, u and m (what one matrix's
    narrow range of sizes cannot tell apart) towards the reference host's."""
    truth = [1.2, 1.0, 0.3, 0.4, 80e6]  # k, t, r, u, m
    many = [cell(n, b, checkpointing=c) for n in (1, 2, 4, 8) for b in (1, 2, 8, 32) for c in ("none", "full")] * 3
    model = HostModel.fit(observations(many, truth))
    for c in (cell(6, 16), cell(3, 4, checkpointing="full")):
        truth_bytes = sum(a * x for a, x in zip(truth, memory_features(c)))
        prior_alone = HostModel.fit([]).predict(c).train_mem_bytes
        # the records count with the model's own error (MODEL_ERROR), so a far prior still pulls a little
        assert abs(model.predict(c).train_mem_bytes / truth_bytes - 1) < 0.05 < abs(prior_alone / truth_bytes - 1)
    # fitted on one size only, the records fix the total at that size and the prior the split
    one = HostModel.fit(observations([cell(2, 8)] * 6, truth))
    assert math.isclose(one.predict(cell(2, 8)).train_mem_bytes,
                        sum(a * x for a, x in zip(truth, memory_features(cell(2, 8)))), rel_tol=0.03)


def test_auto_attention_counts_as_the_kernel_it_ran_on_this_host():
    """`model.attention: auto` keeps the T x T scores only where it resolves to matmul: the model
    counts auto as what auto ran here at the cell's precision, else as SDPA (auto's default)."""
    seen = [cell(n, b, precision="bf16") for n in (1, 2) for b in (2, 8)]
    ran_matmul = [replace(o, attention="matmul") for o in observations(seen)]
    model = HostModel.fit(ran_matmul)
    assert model.auto_attention == {"bf16": "matmul"}
    unseen = cell(4, 16, precision="bf16")
    as_matmul = model.predict(unseen)
    assert as_matmul.memory_parts["activations_bytes"] == held_parts(cell(4, 16, precision="bf16", attention="matmul")
                                                                     )["activations_bytes"]
    assert "auto as matmul (what auto ran here)" in as_matmul.memory_source
    # another precision: auto never ran there, so SDPA, and the source says so
    fp32 = model.predict(cell(4, 16))
    assert fp32.memory_parts["activations_bytes"] == held_parts(cell(4, 16, attention="sdpa"))["activations_bytes"]
    assert "auto as sdpa (its default" in fp32.memory_source
    # matmul's scores are what the two differ by: heads x seq per token and layer, 16 bit under autocast
    scores = 4 * 16 * 64 * 4 * 64 * 2  # layers x micro-batch x seq x heads x seq x 2 bytes
    assert (as_matmul.memory_parts["activations_bytes"]
            - held_parts(cell(4, 16, precision="bf16", attention="sdpa"))["activations_bytes"]) == scores


def test_recomputation_runs_every_layers_forward_matmuls_twice():
    assert math.isclose(matmul_seconds(cell(checkpointing="full"), PEAK) / matmul_seconds(cell(), PEAK), 4 / 3)


def test_a_step_peaks_in_its_larger_phase_backward_or_optimizer():
    """On CPU a step holds its optimizer's state throughout and, at its peak, either the backward
    pass's activations or the optimizer step's gradients and the temporaries a foreach step makes
    for every parameter at once (Adafactor's variance estimates): what decides a wide model with
    a short sequence, as optimizer_memory.yaml's GPT-2 is."""
    def wide(optimizer, micro_batch=1, grad_accum=1):
        return CellConfig.from_dict({"model": {"preset": "tiny", "d_model": 512, "n_head": 8},
                                     "data": {"dataset": "markov", "seq_len": 16, "symbols": 64},
                                     "train": {"micro_batch": micro_batch, "grad_accum": grad_accum,
                                               "optimizer": optimizer}, "device": "cpu"})
    estimate = estimate_memory(wide("adafactor"), approx_vocab(wide("adafactor")))
    adafactor = held_parts(wide("adafactor"))
    assert set(adafactor) == {"optimizer_bytes", "grads_bytes", "other_bytes"}
    assert adafactor["other_bytes"] == adafactor["grads_bytes"] == estimate["params_bytes"]
    assert held_parts(wide("adamw"))["other_bytes"] == 0  # fused: one parameter at a time
    # many tokens: the backward pass is the peak; accumulating micro-batches keeps the gradients in it
    assert set(held_parts(wide("adamw", micro_batch=64))) == {"optimizer_bytes", "activations_bytes"}
    assert set(held_parts(wide("adamw", 64, grad_accum=2))) == {"optimizer_bytes", "activations_bytes", "grads_bytes"}
    # torchao's low-bit AdamW: both moments dequantized to fp32 for every parameter
    assert held_parts(wide("adamw-8bit"))["other_bytes"] == 2 * estimate["params_bytes"]


BIG = """\
name: big
fixed:
  model: {preset: tiny, n_layer: 1}
  data: {dataset: markov, seq_len: 512, symbols: 16}
  train: {steps: 2, warmup_steps: 3}
axes:
  train.micro_batch: [1, 512]
"""


def test_a_cell_predicted_not_to_fit_the_memory_limit_is_never_launched(tmp_path):
    from txsuite.results import RunFolder
    from cli_helpers import txsuite

    (tmp_path / "m.yaml").write_text(BIG)
    # a cache of its own: what earlier tests recorded in the session's cache refits the memory model,
    # and which tests ran before this one depends on the order (under pytest -n, on the worker)
    out = txsuite("run", "m.yaml", "--run-id", "r", "--memory-limit", "1GiB", cwd=tmp_path,
                  env={"TXSUITE_CACHE": str(tmp_path / "cache")})
    records = {r.label: r for r in RunFolder(tmp_path / "results" / "big" / "r").records()}
    big = records["train.micro_batch=512"]
    assert big.status == "skipped" and "predicted not to fit --memory-limit 1,024 MiB" in big.reason, out.stdout
    assert not (tmp_path / "results" / "big" / "r" / "cells" / big.cell_id / "r0" / "log.txt").exists()  # no launch
    small = records["train.micro_batch=1"]
    assert small.status == "ok"
    # the memory measured by role at the profiled step's peak (txsuite/measure/memory_roles.py): the
    # last warm-up step but one, after the first step created AdamW's state (two fp32 moments and
    # a scalar step count per parameter)
    assert small.metrics["params_at_peak_bytes"] == 4 * small.metrics["params"]  # fp32, tied weights once
    assert small.metrics["optimizer_at_peak_bytes"] == small.metrics["optimizer_state_bytes"] >= 8 * small.metrics["params"]
    assert small.metrics["activations_at_peak_bytes"] > 0
    assert small.metrics["tensors_at_peak_bytes"] == sum(small.metrics[f"{role}_at_peak_bytes"] for role in
                                                         ("params", "grads", "optimizer", "activations", "other"))


def test_a_cell_asked_not_to_profile_memory_runs_no_profiled_step(tmp_path):
    from txsuite.results import RunFolder
    from cli_helpers import txsuite

    (tmp_path / "m.yaml").write_text(BIG)
    out = txsuite("run", "m.yaml", "--run-id", "r", "--only", "micro_batch=1", "measure.memory_roles=false",
                  cwd=tmp_path, env={"TXSUITE_CACHE": str(tmp_path / "cache")})
    (record,) = RunFolder(tmp_path / "results" / "big" / "r").records()
    assert record.status == "ok", out.stdout + out.stderr
    assert record.metrics["memory_roles"] == "not measured: measure.memory_roles is false"
    assert "tensors_at_peak_bytes" not in record.metrics and record.metrics["train_mem_bytes"] > 0


def test_only_checkpointed_layers_beyond_the_kept_ones_leave_recomputation_in_the_heap():
    """The recomputation of a checkpointed layer fits where a kept layer freed its activations;
    only the checkpointed layers beyond the kept ones add to the heap (the r term)."""
    plain, full = memory_features(cell(4, 8)), memory_features(cell(4, 8, checkpointing="full"))
    every_2nd = memory_features(cell(4, 8, checkpointing="every_k"))
    assert plain[2] == every_2nd[2] == 0
    assert full[2] == 4 * full[1] > 0


def test_accumulating_micro_batches_displace_one_micro_batchs_activations():
    """With micro-batches accumulating, the next micro-batch's activations no longer fit where the
    first's were (the u term): one micro-batch's activations, however many accumulate."""
    def accumulating(n):
        return CellConfig.from_dict({**cell(2, 4).to_dict(), "train": {**cell(2, 4).to_dict()["train"], "grad_accum": n}})
    one, two, four = (memory_features(accumulating(n)) for n in (1, 2, 4))
    activations = estimate_memory(accumulating(2), approx_vocab(cell()))["activations_bytes"]
    assert one[3] == 0 and two[3] == four[3] == activations > 0


def test_the_host_keeps_each_repetitions_state_and_leaves_slow_ones_out_of_the_speed_fit(tmp_path, monkeypatch):
    """observed.json keeps the machine's state around each repetition (its probes); a repetition
    whose slower probe ran over the slow-state line (txsuite.verdict.state) tells nothing of its
    step time, so the speed fit leaves it out; its memory still counts."""
    from txsuite.config.matrix import PlannedCell
    from txsuite.run import observed
    from txsuite.verdict.state import SLOW_STATE
    monkeypatch.setenv("TXSUITE_CACHE", str(tmp_path))
    planned = PlannedCell(cell(), "c", "axes")
    base = {"step_time_p50_s": 0.1, "train_mem_bytes": 5e7, "peak_flops": PEAK, "probe_best_s": 0.01}
    observed.remember(planned, 3.0, {**base, "probe_before_s": 0.0105, "probe_after_s": 0.0115})
    observed.remember(planned, 9.0, {**base, "step_time_p50_s": 0.4, "probe_before_s": 0.0105,
                                     "probe_after_s": 0.01 * (SLOW_STATE + 1)})
    kept = observed._known()[planned.cell_id]["repetitions"]
    monkeypatch.setattr(observed.Predictor, "costs", lambda self, c: costs(c))  # (the peaks.json it would read)
    assert math.isclose(kept[0]["state"], math.sqrt(1.05 * 1.15)) and math.isclose(kept[0]["slowdown"], 1.15)
    model = observed.Predictor().model
    assert model.speed_fitted_on == 1 and model.memory_fitted_on == 2  # the slow one's memory counts
    assert math.isclose(model.speed_state, kept[0]["state"])
