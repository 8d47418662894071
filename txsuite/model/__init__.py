"""The pure reference Transformer (L1)."""
from txsuite.model.gpt import GPT, GPTConfig, language_modelling, lm_loss, sequence_loss_sums
from txsuite.model.presets import flops_per_token, matmul_params, resolve_model

__all__ = ["GPT", "GPTConfig", "flops_per_token", "language_modelling", "lm_loss", "matmul_params", "resolve_model",
           "sequence_loss_sums"]
