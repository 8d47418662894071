"""Training strategies (issue 17): optimizers and their measured state, data augmentation,
transfer from a trained cell, adversarial training."""
from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from cli_helpers import txsuite
from txsuite.config.host import Host, host_problems
from txsuite.config.matrix import MatrixError, load_matrix
from txsuite.config.spec import OPTIMIZERS, CellConfig, DataSpec, ModelSpec, ParallelSpec, TrainSpec
from txsuite.data import build_dataset
from txsuite.data.augment import MASK_TOKEN, Augmenter
from txsuite.train.muon import Muon, newton_schulz_dtype
from txsuite.config.estimate import optimizer_state_bytes, parameter_shapes
from txsuite.results import RunFolder
from txsuite.train import build_training, train_steps
from txsuite.train.optimizers import state_bytes

TINY = ModelSpec(preset="tiny", n_layer=1, d_model=64, n_head=2)
MARKOV = DataSpec(dataset="markov", seq_len=32)
CPU_OPTIMIZERS = [name for name in OPTIMIZERS if name != "adamw-fp8"]


def _cell(optimizer: str = "adamw", **train) -> CellConfig:
    spec = TrainSpec(steps=train.pop("steps", 3), warmup_steps=0, micro_batch=4, lr=train.pop("lr", 3e-3),
                     eval_batches=1, optimizer=optimizer, **train)
    return CellConfig(model=ModelSpec(preset="tiny"), data=MARKOV, train=spec, device="cpu")


def _quiet_train(cell: CellConfig):
    """(training, validation loss before, after)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchao's optional CUDA extensions, on a CPU host
        training = build_training(cell)
        before = training.trainer.evaluate(training.val_batches).loss
        train_steps(training, sync=lambda: None, log=lambda line: None)
        after = training.trainer.evaluate(training.val_batches).loss
    return training, before, after


# a learning rate each optimizer moves with (Lion's unit-size steps want a smaller one, SGD a larger)
LR = {"sgd": 0.1, "lion": 3e-4, "adafactor": 1e-2}


# ---------------------------------------------------------------- optimizers

def test_the_estimates_parameter_list_is_the_models():
    training = build_training(_cell())
    built = sorted(tuple(p.shape) for p in training.setup.model.parameters())
    listed = sorted(shape for shape, _ in parameter_shapes(training.cell, training.dataset.vocab_size))
    assert built == listed


@pytest.fixture(scope="module")
def trained_optimizers():
    """Every optimizer that runs on a CPU, three steps of the tiny model (one build each)."""
    out = {}
    for name in CPU_OPTIMIZERS:
        out[name] = _quiet_train(_cell(name, lr=LR.get(name, 3e-3), steps=6))
    return out


@pytest.mark.parametrize("name", CPU_OPTIMIZERS)
def test_each_optimizer_trains_and_its_state_is_what_the_plan_estimates(trained_optimizers, name):
    training, before, after = trained_optimizers[name]
    assert after < before - 0.02  # six steps lower the validation loss (fixed windows)
    measured = state_bytes(training.trainer.optimizer)
    estimated = optimizer_state_bytes(training.cell, training.dataset.vocab_size)
    assert measured == pytest.approx(estimated, rel=0.02), (name, measured, estimated)


def test_low_bit_and_factored_states_are_a_fraction_of_adamws(trained_optimizers):
    sizes = {name: state_bytes(training.trainer.optimizer) for name, (training, _, _) in trained_optimizers.items()}
    assert sizes["adamw-8bit"] / sizes["adamw"] == pytest.approx(0.25, rel=0.10)
    assert sizes["adamw-4bit"] / sizes["adamw"] == pytest.approx(0.125, rel=0.15)
    assert sizes["adafactor"] < 0.05 * sizes["adamw"]
    assert sizes["lion"] == pytest.approx(sizes["sgd"], rel=0.01) and sizes["lion"] < 0.55 * sizes["adamw"]


def test_muon_steps_hidden_matrices_and_adamw_the_rest(trained_optimizers):
    training, _, _ = trained_optimizers["muon"]
    muon, adamw = training.trainer.optimizer.parts
    assert type(muon) is Muon and type(adamw) is torch.optim.AdamW
    assert muon.ns_dtype == newton_schulz_dtype(torch.device("cpu"))
    model = training.setup.model
    hidden = {id(p) for g in muon.param_groups for p in g["params"]}
    assert id(model.tok_emb.weight) not in hidden and id(model.pos_emb.weight) not in hidden
    assert all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    assert hidden | {id(p) for g in adamw.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    # the schedule reaches both halves: one lr in every group
    assert len({g["lr"] for g in training.trainer.optimizer.param_groups}) == 1


def test_muon_is_torchs_muon_with_the_iteration_in_the_dtype_the_host_runs_fast():
    """In bf16 our Muon is torch.optim.Muon step for step; in fp32 (hosts without native bf16)
    the update differs from it only by bf16 rounding, far below the update itself."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(48, 32, generator=gen), torch.randn(32, 80, generator=gen)]
    grads = [[torch.randn(*w.shape, generator=gen) for w in start] for _ in range(3)]

    def train(make):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        opt = make(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        return [p.detach() for p in params]

    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn="match_rms_adamw")
    theirs = train(lambda ps: torch.optim.Muon(ps, **kw))
    ours_bf16 = train(lambda ps: Muon(ps, **kw, ns_dtype=torch.bfloat16))
    ours_fp32 = train(lambda ps: Muon(ps, **kw, ns_dtype=torch.float32))
    for t, b, f, w in zip(theirs, ours_bf16, ours_fp32, start):
        assert torch.equal(t, b)
        moved = float((t - w).abs().max())
        assert float((f - t).abs().max()) < 0.05 * moved
    with pytest.raises(ValueError, match="2-D matrices only"):
        Muon([torch.nn.Parameter(torch.zeros(4))])


def test_lion_is_the_papers_update():
    """One Lion step against the algorithm written out by hand."""
    from txsuite.train.lion import Lion
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, generator=gen))
    m0, g = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    start = p.detach().clone()
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    opt.state[p]["exp_avg"] = m0.clone()
    p.grad = g
    opt.step()
    expected = start * (1 - 0.1 * 0.5) - 0.1 * torch.sign(0.9 * m0 + 0.1 * g)
    assert torch.allclose(p.detach(), expected)
    assert torch.allclose(opt.state[p]["exp_avg"], 0.99 * m0 + 0.01 * g)


def test_each_optimizer_validates_its_own_hyperparameters(write_matrix):
    with pytest.raises(MatrixError, match=r"sgd does not read beta1.*sgd reads: train.momentum"):
        load_matrix(write_matrix("name: m\nfixed: {model: tiny, train: {optimizer: sgd, beta1: 0.9}}\n"))
    with pytest.raises(MatrixError, match="adamw does not read momentum"):
        load_matrix(write_matrix("name: m\nfixed: {model: tiny, train: {momentum: 0.9}}\n", "b.yaml"))
    with pytest.raises(MatrixError, match=r"must lie in \[0, 1\)"):
        load_matrix(write_matrix("name: m\nfixed: {model: tiny, train: {optimizer: lion, beta2: 1.5}}\n", "c.yaml"))
    cell = load_matrix(write_matrix("name: m\nfixed: {model: tiny, train: {optimizer: sgd}}\n", "d.yaml")).cells[0]
    assert cell.config.train.hyper("momentum") == 0.9  # its own default, not adamw's beta1


def test_deepspeed_would_replace_the_optimizer_so_the_plan_refuses(write_matrix):
    text = ("name: m\nfixed: {model: tiny, train: {optimizer: sgd}, parallel: {engine: deepspeed, dp: 2, "
            "zero_stage: 2, offload: optimizer}}\n")
    with pytest.raises(MatrixError, match="DeepSpeedCPUAdam"):
        load_matrix(write_matrix(text))
    with pytest.raises(MatrixError, match="measured here on whole parameters only"):
        load_matrix(write_matrix("name: m\nfixed: {model: tiny, train: {optimizer: muon}, "
                                 "parallel: {engine: fsdp, dp: 2}}\n", "b.yaml"))


def test_adamw_fp8_is_skipped_on_a_cpu_with_its_reason():
    cell = dataclasses.replace(_cell("adamw-fp8"), device="cpu")
    reason = host_problems(cell, Host())
    assert reason and "adamw-fp8" in reason and "cpu" in reason


# ---------------------------------------------------------------- augmentation

@pytest.mark.parametrize("spec", ["replace-0.2", "mask-0.2", "delete-0.2", "swap-0.2"])
def test_augmentation_corrupts_about_its_rate_and_is_seeded(spec):
    dataset = build_dataset(MARKOV, seed=0)
    x, y = next(dataset.train_batches(64, 1))  # [64, 32]
    a, b = Augmenter(spec, dataset.vocab_size, seed=3), Augmenter(spec, dataset.vocab_size, seed=3)
    xa, ya = a(x.clone(), y.clone())
    xb, yb = b(x.clone(), y.clone())
    assert torch.equal(xa, xb) and torch.equal(ya, yb)  # same seed, same corruption
    rate = a.measured_rate()
    # 64 x 32 positions: the binomial spread of a 0.2 rate is +-0.01; replacement by a random
    # symbol keeps 1 in 64 tokens unchanged; swapping two equal tokens changes nothing
    assert 0.15 < rate < 0.23, rate
    kind = spec.split("-")[0]
    if kind in ("replace", "mask"):
        assert torch.equal(ya, y)  # the targets stay the clean next tokens
    if kind == "mask":
        assert set(xa[xa != x].tolist()) <= {MASK_TOKEN}
    if kind in ("delete", "swap"):  # the text itself was edited: targets follow it
        both = (ya[:, :-1] != -100) & (ya[:, 1:] != -100)  # positions i and i + 1 both real text
        assert torch.equal(xa[:, 1:][both], ya[:, :-1][both])


def test_augmentation_reaches_training_batches_only_and_is_recorded(tmp_path):
    (tmp_path / "m.yaml").write_text(
        "name: aug\nfixed: {model: {preset: tiny, n_layer: 1, d_model: 64, n_head: 2}, data: {dataset: markov, "
        "seq_len: 32}, train: {steps: 3, warmup_steps: 0, micro_batch: 8, eval_batches: 2}}\n"
        "axes: {data.augment: [none, replace-0.3]}\n")
    done = txsuite("run", "m.yaml", "--run-id", "r", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    records = {r.config["data"]["augment"]: r for r in RunFolder(tmp_path / "results" / "aug" / "r").load().records}
    noisy = records["replace-0.3"].metrics
    assert noisy["augment"] == "replace" and 0.25 < noisy["augment_rate_measured"] < 0.33
    assert "augment_rate_measured" not in records["none"].metrics
    # validation is the same clean windows for both: only the trained weights differ, and they
    # start equal, so the first evaluation of an untrained model would agree; the final ones differ
    assert records["none"].metrics["val_loss"] != noisy["val_loss"]


def test_augmentation_is_refused_where_targets_are_not_the_next_tokens(write_matrix):
    with pytest.raises(MatrixError, match="augmentation corrupts text"):
        load_matrix(write_matrix("name: m\nfixed: {model: tiny, data: {dataset: copy, augment: mask-0.1}}\n"))
    with pytest.raises(MatrixError, match="unknown augmentation 'drop-0.1'"):
        load_matrix(write_matrix("name: m\nfixed: {model: tiny, data: {augment: drop-0.1}}\n", "b.yaml"))


# ---------------------------------------------------------------- adversarial

def test_fgm_perturbs_each_sequences_embeddings_by_eps_and_costs_a_second_pass(monkeypatch):
    from txsuite.train import adversarial
    cell = _cell(adversarial="fgm-0.5", steps=2)
    training = build_training(cell)
    objective = training.trainer.objective
    assert isinstance(objective, adversarial.FastGradient) and objective.eps == 0.5
    deltas, calls = [], []
    original = objective.embedding.register_forward_hook

    def spy(hook):
        def wrapped(module, inputs, output):
            result = hook(module, inputs, output)
            calls.append(1)
            if result is not None:
                deltas.append((result - output).detach())
            return result
        return original(wrapped)
    monkeypatch.setattr(objective.embedding, "register_forward_hook", spy)
    train_steps(training, sync=lambda: None, log=lambda line: None)
    assert len(calls) == 2 * 2 * 1  # steps x (clean + adversarial) x micro-batches
    norms = torch.stack([d.flatten(1).norm(dim=1) for d in deltas])  # [passes, B]
    assert torch.allclose(norms, torch.full_like(norms, 0.5), atol=1e-4)
    assert objective.metrics()["adversarial_loss"] > 0


def test_adversarial_training_is_refused_where_it_is_not_measured(write_matrix):
    with pytest.raises(MatrixError, match="single-process"):
        load_matrix(write_matrix("name: m\nfixed: {model: tiny, train: {adversarial: fgm-1.0}, "
                                 "parallel: {engine: ddp, dp: 2}}\n"))
    with pytest.raises(MatrixError, match="fgm-<eps>"):
        load_matrix(write_matrix("name: m\nfixed: {model: tiny, train: {adversarial: pgd-1}}\n", "b.yaml"))


# ---------------------------------------------------------------- transfer

def test_weights_saved_are_the_weights_loaded_and_a_wrong_shape_is_named(tmp_path):
    from txsuite.train.checkpoint import load_weights, save_weights
    trained = build_training(dataclasses.replace(_cell(), model=TINY))
    train_steps(trained, sync=lambda: None, log=lambda line: None)
    save_weights(trained.setup.model, tmp_path / "ckpt")
    fresh = build_training(dataclasses.replace(_cell(seed=5), model=TINY))
    load_weights(fresh.setup.model, tmp_path / "ckpt")
    for (name, a), (_, b) in zip(trained.setup.model.state_dict().items(), fresh.setup.model.state_dict().items()):
        assert torch.equal(a, b), name
    wider = build_training(dataclasses.replace(_cell(), model=dataclasses.replace(TINY, d_model=96, n_head=2)))
    with pytest.raises(ValueError, match=r"tok_emb.weight: saved \(64, 64\), this model \(64, 96\)"):
        load_weights(wider.setup.model, tmp_path / "ckpt")


def test_a_start_from_another_cell_must_name_one_cell_whose_weights_fit(write_matrix):
    base = "name: m\nfixed: {model: tiny, data: {dataset: markov, seq_len: 32}}\n"
    with pytest.raises(MatrixError, match="matches no other cell"):
        load_matrix(write_matrix(base + "axes: {train.init: [scratch, 'cell:data.dataset=bible']}\n"))
    with pytest.raises(MatrixError, match="do not fit"):
        load_matrix(write_matrix(base + "include: [{data.seq_len: 64}]\naxes: {train.init: [scratch, "
                                        "'cell:data.seq_len=64']}\n", "b.yaml"))
    with pytest.raises(MatrixError, match="not a checkpoint folder"):
        load_matrix(write_matrix(base + "axes: {train.init: [/nonexistent/ckpt]}\n", "c.yaml"))


TRANSFER = """
name: transfer
fixed:
  model: {preset: tiny, n_layer: 1, d_model: 64, n_head: 2}
  data: {dataset: shakespeare, seq_len: 64}
  train: {steps: 30, warmup_steps: 0, micro_batch: 8, lr: 3.0e-3, lr_warmup_steps: 3, eval_every: 3,
          eval_batches: 2, target_loss: auto, target_tolerance: 0.02}
  measure: {threads: 1}
include:
  - {data.dataset: bible, train.steps: 90, train.eval_every: 0, train.target_loss: null}   # the pretraining
axes:
  train.init: [scratch, 'cell:data.dataset=bible']
seeds: 3
reference: {train.init: scratch}
"""


def test_a_pretrained_start_reaches_the_target_on_fewer_tokens_beyond_noise(tmp_path):
    (tmp_path / "t.yaml").write_text(TRANSFER)
    done = txsuite("run", "t.yaml", "--run-id", "r", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    run = RunFolder(tmp_path / "results" / "transfer" / "r").load()
    assert all(r.status == "ok" for r in run.records)
    from txsuite.report.frame import build_cell_table
    table = build_cell_table(run.records, run.meta.axes, run.meta.reference)
    pretrained = table.cells[table.cells["train.init"] == "cell:data.dataset=bible"].iloc[0]
    assert pretrained["target_reached"] == "3 of 3 seeds"
    assert pretrained["tokens_to_target_delta_ci_high"] < 0  # fewer tokens, and the interval excludes 0
    # each fine-tune repetition started from the pretraining repetition of its own seed index
    source = next(r for r in run.records if r.config["data"]["dataset"] == "bible")
    starts = {r.seed_index: r.metrics["init_checkpoint"] for r in run.records
              if r.config["train"]["init"].startswith("cell:")}
    assert sorted(starts) == [0, 1, 2]
    assert all(f"/cells/{source.cell_id}/r{k}/checkpoint" in path for k, path in starts.items())


@pytest.mark.slow
def test_a_sharded_cell_saves_and_a_single_process_cell_starts_from_it(tmp_path):
    """FSDP over 2 ranks saves its shards; a single-process cell loads the whole tensors. With
    lr 0 it keeps them, so its validation loss is the FSDP cell's (same fixed windows)."""
    (tmp_path / "m.yaml").write_text(
        "name: shard\nfixed: {model: {preset: tiny, n_layer: 1, d_model: 64, n_head: 2}, data: {dataset: markov, "
        "seq_len: 32}, train: {steps: 4, warmup_steps: 0, micro_batch: 2, eval_batches: 2}}\n"
        "include:\n  - {parallel.engine: fsdp, parallel.dp: 2}\n"
        "  - {train.init: 'cell:parallel.engine=fsdp', train.lr: 0.0, train.steps: 1}\n")
    done = txsuite("run", "m.yaml", "--run-id", "r", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    records = RunFolder(tmp_path / "results" / "shard" / "r").load().records
    sharded = next(r for r in records if r.config["parallel"]["engine"] == "fsdp")
    started = next(r for r in records if r.config["train"]["init"] != "scratch")
    assert sharded.status == started.status == "ok"
    assert started.metrics["val_loss"] == pytest.approx(sharded.metrics["val_loss"], abs=1e-5)


def test_an_optimizer_by_augmentation_matrix_runs_on_a_cpu(tmp_path):
    """Every optimizer x two augmentations through the real runner: each cell ok, except
    adamw-fp8, skipped with its reason; every record states its measured optimizer state, and
    the step counters (run on the warm-up step) count each step, or say why they cannot."""
    names = ", ".join(OPTIMIZERS)
    (tmp_path / "m.yaml").write_text(
        "name: oa\nfixed: {model: {preset: tiny, n_layer: 1, d_model: 64, n_head: 2}, data: {dataset: markov, "
        "seq_len: 32}, train: {steps: 2, warmup_steps: 1, micro_batch: 4, eval_batches: 1}, measure: {threads: 1}}\n"
        f"axes: {{train.optimizer: [{names}], data.augment: [none, swap-0.1]}}\n"
        # torchao's optimizers compile their step (~10 s a cell): once each is enough
        "exclude: [{train.optimizer: adamw-8bit, data.augment: swap-0.1}, "
        "{train.optimizer: adamw-4bit, data.augment: swap-0.1}]\n")
    done = txsuite("run", "m.yaml", "--run-id", "r", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    records = RunFolder(tmp_path / "results" / "oa" / "r").load().records
    assert len(records) == 2 * len(OPTIMIZERS) - 2
    for r in records:
        name = r.config["train"]["optimizer"]
        if name == "adamw-fp8":
            assert r.status == "skipped" and "compute capability >= 8.9" in r.reason
        else:
            assert r.status == "ok", (name, r.reason)
            assert r.metrics["optimizer_state_bytes"] > 0
            if OPTIMIZERS[name].needs == "torchao":  # a compiled step: said, not counted
                assert r.metrics["step_ops"] is None and "compile their step" in r.metrics["step_counters_note"]
            else:
                assert r.metrics["step_ops"] > 0 and r.metrics["step_flops"] > 0
