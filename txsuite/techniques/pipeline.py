"""Pipeline parallelism with torch.distributed.pipelining.

The model's blocks are cut into `pp * v` contiguous stages of (nearly) equal depth; stage s
lives on pipeline rank s % pp (v = 1 for GPipe and 1F1B, v = 2 virtual stages per rank for
interleaved 1F1B). Each stage is a copy of the model with the parts it does not own set to
None: the first keeps the embeddings, the last the final norm and output head. Each
micro-batch of a step is split into `pp_microbatches` chunks that flow through the stages
under the chosen schedule.

The output head's weight is tied to the token embedding, which lives on the first stage: the
last stage holds a copy, and after backward the two gradients are summed over the pair of
ranks (Megatron's embedding all-reduce), so both copies take the single-process update.

Ordering: first of the model transformations after precision: tensor parallel,
checkpointing and FSDP then apply to each stage module. The schedule keeps references to the
stage modules, which those techniques change in place.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from txsuite.model import lm_loss
from txsuite.techniques.setup import TrainSetup

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved-1f1b": ScheduleInterleaved1F1B}
VIRTUAL_STAGES = {"gpipe": 1, "1f1b": 1, "interleaved-1f1b": 2}


@dataclass
class Pipeline:
    schedule: object
    stage_ids: list[int]  # the stages on this rank, in order
    n_stages: int
    rank_of_stage: list[int] = field(default_factory=list)  # global rank owning each stage (this dp/tp slot)

    @property
    def first(self) -> bool:
        return 0 in self.stage_ids

    @property
    def last(self) -> bool:
        return self.n_stages - 1 in self.stage_ids


def bubble_fraction(pp: int, n_microbatches: int, virtual: int = 1) -> float:
    """Idle share of each rank's time in a synchronous pipeline step (Narayanan et al. 2021):
    (pp - 1) / (v * m + pp - 1). GPipe and 1F1B share it (1F1B saves memory, not time);
    interleaving v virtual stages per rank divides the fill/drain cost by v."""
    return (pp - 1) / (virtual * n_microbatches + pp - 1)


def layer_bounds(n_layer: int, n_stages: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) block ranges, the first stages taking one extra block when the
    layers do not divide evenly."""
    base, extra = divmod(n_layer, n_stages)
    bounds, lo = [], 0
    for s in range(n_stages):
        hi = lo + base + (1 if s < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def stage_module(model: nn.Module, lo: int, hi: int, first: bool, last: bool) -> nn.Module:
    """A model copy holding blocks [lo, hi) and, on the first/last stage, the embeddings/head.
    The blocks are taken over, not copied: a rank's stages own disjoint blocks, and a copy of
    the whole model per stage would hold every layer on every rank while the stages are built."""
    blocks = model.blocks
    model.blocks = nn.ModuleList()  # the copy below takes everything but the blocks
    try:
        stage = copy.deepcopy(model)
    finally:
        model.blocks = blocks
    stage.blocks = nn.ModuleList(list(blocks)[lo:hi])
    if not first:
        stage.tok_emb = None
        stage.pos_emb = None
    if not last:
        stage.ln_f = None
        stage.lm_head = None
    return stage


def apply(setup: TrainSetup, cell) -> TrainSetup:
    p = cell.parallel
    if p.pp == 1:
        return setup
    mesh = setup.mesh
    virtual = VIRTUAL_STAGES[p.pp_schedule]
    n_stages = p.pp * virtual
    pp_rank = mesh.get_local_rank("pp")
    stage_ids = [pp_rank + j * p.pp for j in range(virtual)]  # loop placement: s on rank s % pp
    bounds = layer_bounds(len(setup.model.blocks), n_stages)
    parts = [stage_module(setup.model, *bounds[s], first=s == 0, last=s == n_stages - 1) for s in stage_ids]
    pp_group = mesh.get_group("pp")
    stages = [PipelineStage(part, s, n_stages, setup.device, group=pp_group) for part, s in zip(parts, stage_ids)]
    m = p.pp_chunks
    grad_accum = cell.train.grad_accum

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Each chunk's loss is divided by every chunk of the optimizer step (m per micro-batch,
        # grad_accum micro-batches), so gradients accumulate to the single-process mean. The
        # schedule's own scale_grads is off: it rescales the whole accumulated .grad after each
        # step() call, which would shrink earlier micro-batches' gradients again.
        return lm_loss(logits, targets) / (grad_accum * m)

    cls = SCHEDULES[p.pp_schedule]
    stage_arg = stages[0] if virtual == 1 else stages
    schedule = cls(stage_arg, m, loss_fn=loss_fn, scale_grads=False)
    coord = mesh.get_coordinate()  # [pp, dp, tp] of this rank
    rank_of_stage = [int(mesh.mesh[s % p.pp, coord[1], coord[2]]) for s in range(n_stages)]
    setup.pipeline = Pipeline(schedule, stage_ids, n_stages, rank_of_stage)
    setup.model = nn.ModuleList(parts)
    setup.parts = parts
    setup.grad_hooks.append(_tied_embedding_sync(setup.pipeline, parts, mesh))
    setup.facts.update({
        "pp_stages": n_stages,
        "pp_layers_per_stage": [hi - lo for lo, hi in bounds],
        "pp_microbatches": m,
        "pp_bubble_fraction": bubble_fraction(p.pp, m, virtual),
    })
    return setup


def tied_copy(pipeline: Pipeline, parts: list[nn.Module]) -> tuple[nn.Parameter, ...]:
    """The last stage's copy of the tied embedding, when another rank holds the original: its
    gradient equals the original's after the sync, so the global norm counts it once."""
    if pipeline.last and not pipeline.first:
        return (parts[-1].lm_head.weight,)
    return ()


def _tied_embedding_sync(pipeline: Pipeline, parts: list[nn.Module], mesh):
    """Sum the tied weight's gradient over the ranks holding the first and the last stage.
    Every rank creates every pair's group (process groups are created collectively)."""
    full = mesh.mesh  # [pp, dp, tp] global ranks
    pp = full.shape[0]
    my_group = None
    for d in range(full.shape[1]):
        for t in range(full.shape[2]):
            pair = sorted({int(full[0, d, t]), int(full[pp - 1, d, t])})
            group = dist.new_group(pair)
            if dist.get_rank() in pair:
                my_group = group

    def sync() -> None:
        # stage 0 sits on pp rank 0 and the last on pp rank pp - 1 (loop placement), so with
        # pp > 1 no rank holds both. Looked up now, not at setup: FSDP replaces the parameters with sharded ones later
        weights = ([parts[0].tok_emb.weight] if pipeline.first else []) + \
                  ([parts[-1].lm_head.weight] if pipeline.last else [])
        for w in weights:
            grad = w.grad
            local = grad.to_local() if hasattr(grad, "to_local") else grad
            dist.all_reduce(local, group=my_group)

    return sync
