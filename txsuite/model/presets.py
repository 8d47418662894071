"""Model configuration from a spec (presets live in txsuite/config/spec/model.py) and the analytic FLOPs count."""
from __future__ import annotations

from txsuite.model.gpt import GPTConfig
from txsuite.config.spec import ModelSpec


def resolve_model(spec: ModelSpec, vocab_size: int, seq_len: int) -> GPTConfig:
    """Preset dims, overridden by any explicit dims in the spec."""
    n_layer, n_head, d_model, d_ff = spec.dims
    return GPTConfig(vocab_size=vocab_size, max_seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, d_ff=d_ff, dropout=spec.dropout,
                     attention=spec.attention)


def matmul_params(cfg: GPTConfig) -> int:
    """Weights that take part in a matmul per token: per layer qkv (3C^2), proj (C^2) and the
    MLP (2 C F); plus the lm_head (C V). Biases, norms and embedding look-ups do no matmul."""
    per_layer = 4 * cfg.d_model ** 2 + 2 * cfg.d_model * cfg.d_ff
    return cfg.n_layer * per_layer + cfg.d_model * cfg.vocab_size


def flops_per_token(cfg: GPTConfig, seq_len: int, recompute_layers: int = 0) -> dict[str, float]:
    """Matmul FLOPs per token (1 multiply-add = 2 FLOPs), PaLM/Megatron convention.

    forward   = 2 * matmul_params + attention, where attention = 4 * n_layer * T * C
                (QK^T and AV, each 2*T*C per token; the full T x T product, as SDPA kernels and
                FlopCounterMode count it, not the causal half)
    train     = 3 * forward (backward = 2 * forward): the model FLOPs used for MFU
    hardware  = train + the forward of `recompute_layers` blocks recomputed under activation
                checkpointing: used for HFU
    """
    attention_per_layer = 4 * seq_len * cfg.d_model
    layer_fwd = 2 * (4 * cfg.d_model ** 2 + 2 * cfg.d_model * cfg.d_ff) + attention_per_layer
    forward = 2 * matmul_params(cfg) + cfg.n_layer * attention_per_layer
    train = 3 * forward
    return {"forward": float(forward), "train": float(train),
            "hardware": float(train + recompute_layers * layer_fwd)}
