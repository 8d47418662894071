"""A plan-time estimate of a cell's training memory (stdlib only: `txsuite plan` shows it
before anything runs, and the runner never imports torch).

Per rank, in bytes:
  parameters  P x bytes of the parameter dtype (bf16-pure: 2, else 4)
  gradients   same as parameters
  optimizer   the optimizer's state for every parameter shape (txsuite.config.spec.OPTIMIZERS:
              AdamW 2 states of the parameter's dtype, SGD and Lion 1, Adafactor row + column
              statistics of each matrix, torchao 8/4-bit blocks with their scales, Muon 1 on
              hidden matrices and AdamW's 2 elsewhere)
  activations per layer and micro-batch, after Korthikanti et al. (2022), "Reducing Activation
              Recomputation in Large Transformer Models": s*b*h*(34 + 5*a*s/h) bytes with
              16-bit activations (a = heads), doubled for fp32 activations; the 5*a*s/h term is
              the T x T attention scores that a fused SDPA kernel does not keep, so it is counted
              for `matmul` attention only. A checkpointed layer keeps only its input (2*s*b*h
              bytes in 16 bit) plus, during its recomputation, one layer's full activations.
  logits      b*s*V*4 (fp32 for the loss) twice (logits and their gradient)
Parallel layouts (the busiest rank):
  tp          block weights / tp; per-layer activations s*b*h*(10 + 24/tp + 5*a*s/(h*tp)) in
              16 bit (Korthikanti et al., tensor parallelism without sequence parallelism)
  pp          blocks / pp (rounded up); 1F1B/interleaved keep at most pp chunks of the
              micro-batch in flight, GPipe all of them
  fsdp        parameters, gradients and optimizer state / dp, plus one block gathered in full
  deepspeed   ZeRO-1 optimizer / dp, ZeRO-2 also gradients / dp, ZeRO-3 also parameters / dp;
              offloaded state leaves the device (on a CUDA host) for host memory
It ignores allocator slack, communication buffers and the interpreter (CPU runs add a few
hundred MB of RSS for Python+torch; docs/measurements.md, "`--memory-limit`").
"""
from __future__ import annotations

from txsuite.config.spec import OPTIMIZERS, CellConfig


def estimate_memory(cell: CellConfig, vocab_size: int = 256) -> dict[str, int]:
    n_layer, n_head, d, d_ff = cell.model.dims
    p = cell.parallel
    s, b, V = cell.data.seq_len, cell.train.micro_batch, vocab_size
    block_params = 4 * d * d + 2 * d * d_ff + 9 * d + d_ff
    layers = -(-n_layer // p.pp)  # the busiest pipeline stage
    params = layers * block_params // p.tp + V * d + s * d + 2 * d
    pbytes = 2 if cell.precision == "bf16-pure" else 4
    act_scale = 1.0 if cell.precision in ("bf16", "bf16-pure", "fp16", "fp8") else 2.0
    # auto may choose matmul: count its T x T scores (an estimate must not be low)
    scores = 5 * n_head * s / d if cell.model.attention != "sdpa" else 0.0
    mlp = d_ff / (4 * d)
    per_layer = int(s * b * d * ((10 + 24 * mlp / p.tp) + scores / p.tp) * act_scale)
    if p.pp > 1 and p.pp_schedule != "gpipe":
        chunks = p.pp_chunks
        per_layer = per_layer * min(chunks, p.pp) // chunks  # chunks in flight / all chunks
    kept, checkpointed = kept_layers(cell, layers)
    activations = kept * per_layer + checkpointed * int(2 * s * b * d * act_scale) + (per_layer if checkpointed else 0)
    logits = logits_bytes(cell, V)
    param_b, grad_b = params * pbytes, params * pbytes
    opt_b = int(optimizer_state_bytes(cell, V, layers, pbytes))
    if p.engine == "fsdp":
        gathered = block_params // p.tp * pbytes
        param_b, grad_b, opt_b = param_b // p.dp + gathered, grad_b // p.dp, opt_b // p.dp
    elif p.engine == "deepspeed":
        opt_b = opt_b // p.dp if p.zero_stage >= 1 else opt_b
        grad_b = grad_b // p.dp if p.zero_stage >= 2 else grad_b
        param_b = param_b // p.dp if p.zero_stage == 3 else param_b
        if p.offload != "none" and cell.device == "cuda":
            opt_b = 0
            param_b = 0 if p.offload == "optimizer+params" else param_b
    out = {"params_bytes": param_b, "grads_bytes": grad_b,
           "optimizer_bytes": opt_b, "activations_bytes": activations + logits}
    out["total_bytes"] = sum(out.values())
    return out


def kept_layers(cell: CellConfig, layers: int | None = None) -> tuple[int, int]:
    """(layers that keep their activations, checkpointed layers) of `layers` blocks (default:
    all): checkpointing every k-th block checkpoints blocks 0, k, 2k, ..."""
    layers = cell.model.dims[0] if layers is None else layers
    mode = cell.memory.activation_checkpointing
    checkpointed = 0 if mode == "none" else layers if mode == "full" else len(range(0, layers, cell.memory.checkpoint_every))
    return layers - checkpointed, checkpointed


def logits_bytes(cell: CellConfig, vocab_size: int) -> int:
    """The logits and their gradient, fp32 for the loss, of one micro-batch."""
    return 2 * cell.train.micro_batch * cell.data.seq_len * vocab_size * 4


def parameter_shapes(cell: CellConfig, vocab_size: int, layers: int | None = None
                     ) -> list[tuple[tuple[int, ...], bool]]:
    """(shape, is a hidden matrix) of every parameter of the reference model (txsuite/model/gpt.py;
    the output head is tied to the token embedding), for `layers` blocks (default: all).
    tests/test_optimizers.py checks the list against the built model."""
    n_layer, _, d, d_ff = cell.model.dims
    block = [((3 * d, d), True), ((3 * d,), False), ((d, d), True), ((d,), False),  # attention
             ((d_ff, d), True), ((d_ff,), False), ((d, d_ff), True), ((d,), False),  # MLP
             ((d,), False), ((d,), False), ((d,), False), ((d,), False)]  # two LayerNorms
    embeddings = [((vocab_size, d), False), ((cell.data.seq_len, d), False), ((d,), False), ((d,), False)]
    return embeddings + block * (n_layer if layers is None else layers)


def optimizer_state_bytes(cell: CellConfig, vocab_size: int, layers: int | None = None, param_bytes: int = 4
                          ) -> float:
    """The optimizer's state for this cell's parameters (one pipeline stage of `layers` blocks),
    per OPTIMIZERS[...].param_state_bytes; tensor parallelism shards the blocks' state."""
    info = OPTIMIZERS[cell.train.optimizer]
    n_layer = cell.model.dims[0] if layers is None else layers
    shapes = parameter_shapes(cell, vocab_size, layers=0)
    per_block = parameter_shapes(cell, vocab_size, layers=1)[len(shapes):]
    whole = sum(info.param_state_bytes(shape, hidden, param_bytes) for shape, hidden in shapes)
    block = sum(info.param_state_bytes(shape, hidden, param_bytes) for shape, hidden in per_block)
    return whole + n_layer * block / cell.parallel.tp


def approx_vocab(cell: CellConfig, bpe_limit: int | None = None) -> int:
    """The vocabulary a cell's data will have, without building it. `bpe_limit`: the most a BPE
    can learn from the cell's corpus (txsuite.data.corpora.bpe_vocab_limit), when known."""
    d = cell.data
    if d.dataset == "markov":
        return d.symbols or 64
    if d.dataset in ("copy", "reverse"):
        return (d.symbols or 16) + 1
    if d.dataset == "modadd":
        return (d.symbols or 97) + 2
    if d.tokenizer != "bpe":
        return 256
    asked = d.vocab_size or 4096
    return min(asked, bpe_limit) if bpe_limit else asked


def training_flops(cell: CellConfig, vocab_size: int) -> float:
    """The FLOPs of a cell's whole training, without building it: 6 per matmul parameter and
    token (forward and backward; the output head included) plus the attention scores, 12·L·s·d
    per token. What a plan scales one cell's measured time by to estimate another's."""
    n_layer, _, d, _ = cell.model.dims
    matmul = sum(shape[0] * shape[1] for shape, hidden in parameter_shapes(cell, vocab_size) if hidden)
    per_token = 6 * (matmul + vocab_size * d) + 12 * n_layer * cell.data.seq_len * d
    return float(per_token * cell.train_tokens)
