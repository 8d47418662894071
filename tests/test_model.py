"""The reference model: shapes, causality, tied embeddings, presets, and the analytic FLOPs
formula against torch's own FLOP counter."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from txsuite.model import GPT, GPTConfig, flops_per_token, lm_loss, matmul_params, resolve_model
from txsuite.config.spec import MODEL_PRESETS, ModelSpec


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=97, max_seq_len=32, n_layer=2, n_head=4, d_model=64, d_ff=256)
    base.update(kw)
    return GPTConfig(**base)


def test_logits_shape_and_causality():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    x = torch.randint(0, 97, (3, 32))
    logits = model(x)
    assert logits.shape == (3, 32, 97)
    # changing a later token must not change any earlier position's logits
    x2 = x.clone()
    x2[:, 20] = (x2[:, 20] + 1) % 97
    logits2 = model(x2)
    torch.testing.assert_close(logits[:, :20], logits2[:, :20])
    assert not torch.allclose(logits[:, 20:], logits2[:, 20:])


def test_embeddings_are_tied_and_counted_once():
    model = GPT(tiny())
    assert model.lm_head.weight is model.tok_emb.weight
    unique = {id(p): p.numel() for p in model.parameters()}
    assert model.num_params() == sum(unique.values())


def test_too_long_sequence_is_refused():
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        GPT(tiny())(torch.zeros(1, 33, dtype=torch.long))


def test_model_has_no_device_precision_or_parallel_code():
    import ast
    import inspect
    import txsuite.model.gpt as gpt
    tree = ast.parse(inspect.getsource(gpt))
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    for word in ("cuda", "autocast", "bfloat16", "float16", "half", "distributed", "checkpoint", "to"):
        assert word not in names, word


@pytest.mark.parametrize("preset, expected", [("gpt2-124m", 124_439_808), ("gpt2-350m", 354_823_168)])
def test_gpt2_presets_have_gpt2_parameter_counts(preset, expected):
    cfg = resolve_model(ModelSpec(preset=preset), vocab_size=50257, seq_len=1024)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.num_params() == expected


def test_all_presets_resolve_and_explicit_dims_override():
    for preset in MODEL_PRESETS:
        cfg = resolve_model(ModelSpec(preset=preset), 256, 128)
        assert cfg.d_ff == 4 * cfg.d_model
    cfg = resolve_model(ModelSpec(preset="small", n_layer=7, d_ff=100), 256, 128)
    assert (cfg.n_layer, cfg.d_ff, cfg.d_model) == (7, 100, 256)
    one_b = resolve_model(ModelSpec(preset="1.3b"), 50257, 2048)
    assert 1.2e9 < 12 * one_b.n_layer * one_b.d_model ** 2 < 1.3e9


@pytest.mark.parametrize("seq_len", [16, 32])
def test_flops_formula_matches_flop_counter(seq_len):
    """FlopCounterMode counts matmul FLOPs exactly; under the math SDPA backend attention is two
    batched matmuls it can see. Forward must match exactly; forward+backward is 3x forward."""
    cfg = tiny(max_seq_len=seq_len)
    model = GPT(cfg)
    batch = 2
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    expected = flops_per_token(cfg, seq_len)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as fwd:
            logits = model(x)
        with FlopCounterMode(display=False) as bwd:
            lm_loss(logits, x).backward()
    tokens = batch * seq_len
    assert fwd.get_total_flops() / tokens == expected["forward"]
    assert (fwd.get_total_flops() + bwd.get_total_flops()) / tokens == expected["train"]


def test_hardware_flops_count_recomputed_layers():
    cfg = tiny()
    f0 = flops_per_token(cfg, 32)
    f2 = flops_per_token(cfg, 32, recompute_layers=2)
    assert f0["hardware"] == f0["train"]
    per_layer = (f0["forward"] - 2 * cfg.d_model * cfg.vocab_size) / cfg.n_layer
    assert f2["hardware"] == pytest.approx(f0["train"] + 2 * per_layer)
    assert matmul_params(cfg) == 2 * (4 * 64 * 64 + 2 * 64 * 256) + 64 * 97


def test_loss_ignores_unscored_positions():
    logits = torch.randn(1, 4, 10)
    targets = torch.tensor([[1, -100, 3, -100]])
    full = torch.nn.functional.cross_entropy(logits[0, [0, 2]], targets[0, [0, 2]])
    torch.testing.assert_close(lm_loss(logits, targets), full)


def test_matmul_attention_matches_sdpa():
    torch.manual_seed(0)
    sdpa = GPT(tiny()).eval()
    matmul = GPT(tiny(attention="matmul")).eval()
    matmul.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, 97, (2, 32))
    torch.testing.assert_close(matmul(x), sdpa(x), atol=2e-5, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = matmul(x).float(), sdpa(x).float()
    assert (a - b).abs().max() < 0.05  # one bf16 rounding step apart, not a different function
