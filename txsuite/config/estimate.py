"""A plan-time estimate of a cell's training memory (stdlib only: `txsuite plan` shows it
before anything runs, and the runner never imports torch).

Per rank, in bytes:
  parameters  P x bytes of the parameter dtype (bf16-pure: 2, else 4)
  gradients   same as parameters
  optimizer   the optimizer's state for every parameter shape (txsuite.config.spec.OPTIMIZERS:
              AdamW 2 states of the parameter's dtype, SGD and Lion 1, Adafactor row + column
              statistics of each matrix, torchao 8/4-bit blocks with their scales, Muon 1 on
              hidden matrices and AdamW's 2 elsewhere)
  activations per layer and micro-batch, what the reference model's block saves for its backward
              pass (txsuite/model/gpt.py), per token: the two LayerNorms' inputs and outputs, q, k,
              v, the attention's output, the MLP's hidden layer before and after its activation:
              8*h + 2*d_ff values. In fp32 4 bytes each; in bf16-pure 2; under autocast (bf16,
              fp16, fp8) the LayerNorms' inputs (the residual stream) stay fp32 and the rest is 16
              bit (the LayerNorms' outputs are kept as the 16-bit copies the linear layers cast);
              autocast also keeps a 16-bit copy of every matmul weight (its cast cache) for the
              backward pass, of every block and of the output head, however small the batch.
              `matmul` attention also keeps the T x T softmax of every head (a*s values in the
              scores' dtype per token); a fused SDPA kernel does not.
              `auto` counts as the kernel it resolves to (`attention=`), else as SDPA, the kernel
              it keeps unless a trial finds another faster (txsuite/measure/attention.py). A
              checkpointed layer keeps only its input (s*b*h values of the residual stream) plus,
              during its recomputation, one layer's full activations. With tensor parallelism the
              per-layer term is Korthikanti et al. (2022)'s: s*b*h*(10 + 24/tp + 5*a*s/(h*tp))
              bytes in 16 bit, doubled for fp32.
  logits      b*s*V*4 (fp32 for the loss) twice (logits and their gradient)
Parallel layouts (the busiest rank):
  tp          block weights / tp; per-layer activations as above (Korthikanti et al., tensor
              parallelism without sequence parallelism)
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


def estimate_memory(cell: CellConfig, vocab_size: int = 256, attention: str | None = None) -> dict[str, int]:
    """The module's estimate, by part. `attention`: the kernel `model.attention: auto` resolves to
    on this host (sdpa or matmul), when known."""
    n_layer, n_head, d, d_ff = cell.model.dims
    p = cell.parallel
    s, b, V = cell.data.seq_len, cell.train.micro_batch, vocab_size
    block_params = 4 * d * d + 2 * d * d_ff + 9 * d + d_ff
    layers = -(-n_layer // p.pp)  # the busiest pipeline stage
    params = layers * block_params // p.tp + V * d + s * d + 2 * d
    pbytes = 2 if cell.precision == "bf16-pure" else 4
    per_layer = layer_activation_bytes(cell, attention)
    if p.pp > 1 and p.pp_schedule != "gpipe":
        chunks = p.pp_chunks
        per_layer = per_layer * min(chunks, p.pp) // chunks  # chunks in flight / all chunks
    kept, checkpointed = kept_layers(cell, layers)
    residual = 2 if cell.precision == "bf16-pure" else 4  # bytes of the residual stream's values
    activations = kept * per_layer + checkpointed * s * b * d * residual + (per_layer if checkpointed else 0)
    if cell.precision in ("bf16", "fp16"):  # autocast's 16-bit copies of the matmul weights
        activations += 2 * (layers * (4 * d * d + 2 * d * d_ff) // p.tp + V * d)
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


def layer_activation_bytes(cell: CellConfig, attention: str | None = None) -> int:
    """What one block keeps for its backward pass, for one micro-batch (the module's docstring)."""
    _, n_head, d, d_ff = cell.model.dims
    s, b, tp = cell.data.seq_len, cell.train.micro_batch, cell.parallel.tp
    kernel = attention or cell.model.attention
    scores = kernel == "matmul"  # auto unresolved: SDPA, the kernel auto keeps by default
    wide = cell.precision in ("fp32", "tf32")
    if tp > 1:  # Korthikanti et al.: 16-bit bytes per token and d_model
        per_token = d * (10 + 24 * d_ff / (4 * d) / tp) + (5 * n_head * s / tp if scores else 0)
        return int(s * b * per_token * (2 if wide else 1))
    if wide:
        per_token = (8 * d + 2 * d_ff) * 4 + (n_head * s * 4 if scores else 0)
    elif cell.precision == "bf16-pure":
        per_token = (8 * d + 2 * d_ff) * 2 + (n_head * s * 2 if scores else 0)
    else:  # autocast: the LayerNorms' fp32 inputs (the residual stream); the rest 16 bit
        per_token = 2 * d * 4 + (6 * d + 2 * d_ff) * 2 + (n_head * s * 2 if scores else 0)
    return int(s * b * per_token)


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
