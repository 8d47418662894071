"""A plan-time estimate of a cell's training memory (stdlib only: `txsuite plan` shows it
before anything runs, and the runner never imports torch).

Per rank, in bytes:
  parameters  P x bytes of the parameter dtype (bf16-pure: 2, else 4)
  gradients   same as parameters
  optimizer   AdamW: 2 states x P x parameter bytes (SGD with momentum: 1 state)
  activations per layer and micro-batch, after Korthikanti et al. (2022), "Reducing Activation
              Recomputation in Large Transformer Models": s*b*h*(34 + 5*a*s/h) bytes with
              16-bit activations (a = heads), doubled for fp32 activations; the 5*a*s/h term is
              the T x T attention scores that a fused SDPA kernel does not keep, so it is counted
              for `matmul` attention only. A checkpointed layer keeps only its input (2*s*b*h
              bytes in 16 bit) plus, during its recomputation, one layer's full activations.
  logits      b*s*V*4 (fp32 for the loss) twice (logits and their gradient)
It ignores allocator slack and the interpreter (CPU runs add ~0.3 GB of RSS for Python+torch).
"""
from __future__ import annotations

from suite.spec import CellConfig, model_dims


def estimate_memory(cell: CellConfig, vocab_size: int = 256) -> dict[str, int]:
    n_layer, n_head, d, d_ff = model_dims(cell.model)
    s, b, V = cell.data.seq_len, cell.train.micro_batch, vocab_size
    params = n_layer * (4 * d * d + 2 * d * d_ff + 9 * d + d_ff) + V * d + s * d + 2 * d
    pbytes = 2 if cell.precision == "bf16-pure" else 4
    states = 2 if cell.train.optimizer == "adamw" else 1
    act_scale = 1.0 if cell.precision in ("bf16", "bf16-pure", "fp16", "fp8") else 2.0
    scores = 5 * n_head * s / d if cell.model.attention == "matmul" else 0.0
    per_layer = int(s * b * d * (34 * (d_ff / (4 * d)) + scores) * act_scale)
    mode = cell.memory.activation_checkpointing
    if mode == "none":
        kept = n_layer
    elif mode == "full":
        kept = 0
    else:
        kept = n_layer - len(range(0, n_layer, cell.memory.checkpoint_every))
    checkpointed = n_layer - kept
    activations = kept * per_layer + checkpointed * int(2 * s * b * d * act_scale) + (per_layer if checkpointed else 0)
    logits = 2 * b * s * V * 4
    out = {"params_bytes": params * pbytes, "grads_bytes": params * pbytes,
           "optimizer_bytes": states * params * pbytes, "activations_bytes": activations + logits}
    out["total_bytes"] = sum(out.values())
    return out


def approx_vocab(cell: CellConfig) -> int:
    """The vocabulary a cell's data will have, without building it."""
    d = cell.data
    if d.dataset == "markov":
        return d.symbols or 64
    if d.dataset in ("copy", "reverse"):
        return (d.symbols or 16) + 1
    if d.dataset == "modadd":
        return (d.symbols or 97) + 2
    return (d.vocab_size or 4096) if d.tokenizer == "bpe" else 256
