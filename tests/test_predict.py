"""The cost model: fitted on what a host measured, it predicts what it was fitted on; with
nothing measured it says it is the uncorrected roofline; its band never claims less than the
floor."""
import math

from txsuite.config.estimate import approx_vocab, estimate_memory

from txsuite.config.spec import CellConfig
from txsuite.measure.predict import BAND_FLOOR, HostModel, Observation, held_parts, memory_features, speed_features

PEAK = 1e11


def cell(n_layer=2, micro_batch=4, precision="fp32", checkpointing="none", optimizer="adamw"):
    return CellConfig.from_dict({"model": {"preset": "tiny", "n_layer": n_layer},
                                 "data": {"dataset": "markov", "seq_len": 64, "symbols": 64},
                                 "train": {"steps": 10, "micro_batch": micro_batch, "optimizer": optimizer},
                                 "memory": {"activation_checkpointing": checkpointing},
                                 "precision": precision, "device": "cpu"})


CELLS = [cell(n, b, checkpointing=c) for n in (1, 2, 4) for b in (2, 8)
         for c in ("none", "full")]
TRUE_SPEED = [1.6, 2e-3, 1e-9, 4e-3]  # seconds per unit of each speed feature
TRUE_MEMORY = [1.3, 30e6]  # the heap's factor over what training holds, and a constant


def observations():
    out = []
    for c in CELLS:
        step = sum(a * x for a, x in zip(TRUE_SPEED, speed_features(c, PEAK)))
        memory = sum(a * x for a, x in zip(TRUE_MEMORY, memory_features(c, {})))
        out.append(Observation(c, step, memory, PEAK))
    return out


def test_a_model_fitted_on_a_host_predicts_what_it_measured():
    model = HostModel.fit(observations())
    assert model.speed_fitted_on == len(CELLS) and model.speed_error < 1e-6
    for o in observations():
        p = model.predict(o.config, PEAK)
        assert math.isclose(p.step_s, o.step_s, rel_tol=1e-6)
        assert math.isclose(p.train_mem_bytes, o.train_mem_bytes, rel_tol=1e-6)
        assert math.isclose(p.tokens_per_s, o.config.tokens_per_step / o.step_s, rel_tol=1e-6)
        # a perfect fit still claims no band narrower than the floor
        assert math.isclose(p.high / p.tokens_per_s, math.exp(BAND_FLOOR), rel_tol=1e-9)
        assert "fitted on" in p.speed_source and "fitted on" in p.memory_source


def test_a_new_host_is_the_uncorrected_roofline_and_says_so():
    p = HostModel.fit([]).predict(cell(), PEAK)
    assert "uncorrected roofline" in p.speed_source and p.low is None
    assert math.isclose(p.step_s, speed_features(cell(), PEAK)[0])  # matmul FLOPs at the peak, nothing else
    estimate = estimate_memory(cell(), approx_vocab(cell()))
    assert "uncorrected" in p.memory_source and p.train_mem_bytes == estimate["total_bytes"]
    no_peak = HostModel.fit([]).predict(cell(precision="bf16"), None)
    assert no_peak.tokens_per_s is None and "no matmul peak" in no_peak.speed_source


def test_recomputation_and_accumulation_cost_time_in_the_features():
    plain, recomputed = speed_features(cell(), PEAK), speed_features(cell(checkpointing="full"), PEAK)
    assert math.isclose(recomputed[0] / plain[0], 4 / 3)  # every layer's forward runs twice
    assert speed_features(cell(n_layer=4), PEAK)[1] == 2 * plain[1]


def test_activations_measured_here_carry_to_a_shape_the_host_never_ran():
    """Bytes per token x d_model x kept layer, measured at the profiled steps' peaks, predict the
    activations of a deeper, wider-batched cell and of a checkpointed one."""
    unit = 64.0  # what fp32 cells with SDPA measured per token x d_model x layer on this project's host
    seen = [cell(n, b) for n in (1, 2) for b in (2, 8)]
    d = seen[0].model.dims[2]
    truth = {("32 bit", "auto"): unit}
    observations = [Observation(c, None, 30e6 + 1.3 * sum(held_parts(c, truth).values()),
                                None, unit * 64 * c.train.micro_batch * d * c.model.dims[0]) for c in seen]
    model = HostModel.fit(observations)
    assert model.activation_units == {("32 bit", "auto"): unit}
    deeper = cell(n_layer=4, micro_batch=16)
    logits = 2 * 16 * 64 * approx_vocab(deeper) * 4
    assert math.isclose(held_parts(deeper, model.activation_units)["activations_bytes"],
                        unit * 64 * 16 * d * 4 + logits)
    p = model.predict(deeper, PEAK)
    assert "activations as measured here" in p.memory_source
    # each part is the tensors as they are (what the roles measure); the heap carries the fitted rest
    held = sum(held_parts(deeper, model.activation_units).values())
    assert math.isclose(p.memory_parts["activations_bytes"], unit * 64 * 16 * d * 4 + logits)
    assert math.isclose(p.memory_parts["heap_bytes"], 0.3 * held + 30e6, rel_tol=1e-6)
    assert math.isclose(p.train_mem_bytes, 1.3 * held + 30e6, rel_tol=1e-6)
    # a checkpointed cell keeps each layer's fp32 input and recomputes one layer at a time
    full = held_parts(cell(n_layer=4, micro_batch=16, checkpointing="full"), model.activation_units)
    assert math.isclose(full["activations_bytes"], 4 * 4 * 64 * 16 * d + unit * 64 * 16 * d + logits)
    # another precision has no unit measured yet: the estimate's term, and the source says so
    assert "the estimate's" in model.predict(cell(precision="bf16"), PEAK).memory_source


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
