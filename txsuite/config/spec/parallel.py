"""`parallel`: how ranks share the work (txsuite/techniques/: ddp, fsdp, deepspeed,
tensor_parallel, pipeline; the ranks form a (pp, dp, tp) mesh, txsuite/techniques/mesh.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from txsuite.config.problems import Problem

if TYPE_CHECKING:
    from txsuite.config.spec.cell import CellConfig

ENGINES = ("none", "ddp", "fsdp", "deepspeed")
PP_SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b")
VIRTUAL_STAGES = {"gpipe": 1, "1f1b": 1, "interleaved-1f1b": 2}  # pipeline stages per rank
OFFLOADS = ("none", "optimizer", "optimizer+params")
DEEPSPEED_PRECISIONS = ("fp32", "bf16", "fp16")  # DeepSpeed's own modes; it owns precision
# DeepSpeed offloads the optimizer step to DeepSpeedCPUAdam on CUDA hosts: only AdamW-family
# optimizers keep their meaning there (on CPU hosts the cell's own optimizer runs)
DEEPSPEED_OFFLOAD_OPTIMIZERS = ("adamw",)


@dataclass(frozen=True)
class ParallelSpec:
    engine: str = "none"
    dp: int = 1
    tp: int = 1
    pp: int = 1
    pp_schedule: str = "1f1b"
    pp_microbatches: int | None = None
    zero_stage: int = 0
    offload: str = "none"

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def distributed(self) -> bool:
        """Launched through torchrun: several ranks, or an engine (which wants a process group
        even with one rank)."""
        return self.engine != "none" or self.world_size > 1

    @property
    def pp_chunks(self) -> int:
        """Chunks the pipeline schedule splits each micro-batch into: pp_microbatches, by
        default one per pipeline rank (1 without pipelining)."""
        return 1 if self.pp == 1 else (self.pp_microbatches or self.pp)

    @property
    def virtual_stages(self) -> int:
        return VIRTUAL_STAGES[self.pp_schedule]

    def problems(self, cell: "CellConfig") -> Iterator[Problem]:
        """Layouts that cannot work: wrong engine for an axis, sizes that do not divide."""
        n_layer, n_head, _, d_ff = cell.model.dims
        if self.engine == "none" and self.dp > 1:
            yield Problem("parallel.engine", f"dp={self.dp} replicas needs a parallel engine for data "
                                             f"parallelism, but engine is 'none'.", "ddp, fsdp, deepspeed")
        if self.engine == "ddp" and self.dp > 1 and (self.tp > 1 or self.pp > 1):
            yield Problem("parallel.tp" if self.tp > 1 else "parallel.pp",
                          "engine 'ddp' replicates the whole model and does not compose with tensor/pipeline "
                          "parallelism (as in torchtitan); use engine 'fsdp' for 2-D/3-D layouts, or 'none' "
                          "with dp: 1.", "tp: 1, pp: 1")
        if self.engine == "deepspeed":
            yield from self._deepspeed_problems(cell)
        if self.zero_stage and self.engine != "deepspeed":
            yield Problem("parallel.zero_stage", f"ZeRO stage {self.zero_stage} needs engine 'deepspeed', "
                                                 f"not '{self.engine}'.")
        if self.offload != "none" and self.engine != "deepspeed":
            yield Problem("parallel.offload", f"offload '{self.offload}' needs engine 'deepspeed', not "
                                              f"'{self.engine}'.")
        if self.offload == "optimizer" and self.zero_stage == 0:
            yield Problem("parallel.offload", "DeepSpeed offloads the optimizer state of ZeRO stages 1-3, "
                                              "not stage 0.", "zero_stage: 1, 2 or 3")
        if self.offload == "optimizer+params" and self.zero_stage != 3:
            yield Problem("parallel.offload", "DeepSpeed offloads parameters only under ZeRO stage 3.",
                          "zero_stage: 3")
        if n_head % self.tp:
            yield Problem("parallel.tp", f"tp={self.tp} does not divide the {n_head} attention heads.")
        if d_ff % self.tp:
            yield Problem("parallel.tp", f"tp={self.tp} does not divide the MLP's d_ff={d_ff} neurons.")
        if self.pp > 1:
            yield from self._pipeline_problems(cell, n_layer)

    def _deepspeed_problems(self, cell: "CellConfig") -> Iterator[Problem]:
        if self.tp > 1 or self.pp > 1:
            yield Problem("parallel.tp" if self.tp > 1 else "parallel.pp",
                          "engine 'deepspeed' runs ZeRO data parallelism here; its own tensor/pipeline "
                          "parallelism needs a DeepSpeed PipelineModule. Use engine 'fsdp' for tp/pp.",
                          "tp: 1, pp: 1")
        if cell.precision not in DEEPSPEED_PRECISIONS:
            yield Problem("precision", f"DeepSpeed owns precision and has no '{cell.precision}' mode.",
                          ", ".join(DEEPSPEED_PRECISIONS))
        if (self.offload != "none" and cell.device == "cuda"
                and cell.train.optimizer not in DEEPSPEED_OFFLOAD_OPTIMIZERS):
            yield Problem("train.optimizer",
                          f"with the optimizer offloaded on a GPU, DeepSpeed steps with its own "
                          f"DeepSpeedCPUAdam, so '{cell.train.optimizer}' would silently train as AdamW.",
                          ", ".join(DEEPSPEED_OFFLOAD_OPTIMIZERS) + " (or parallel.offload: none)")

    def _pipeline_problems(self, cell: "CellConfig", n_layer: int) -> Iterator[Problem]:
        virtual = self.virtual_stages
        if self.pp * virtual > n_layer:
            yield Problem("parallel.pp", f"pp={self.pp} with schedule '{self.pp_schedule}' needs "
                                         f"{self.pp * virtual} stages of at least one layer, but the model "
                                         f"has {n_layer} layers.")
        m = self.pp_chunks
        if cell.train.micro_batch % m:
            yield Problem("parallel.pp_microbatches", f"the micro-batch of {cell.train.micro_batch} sequences "
                                                      f"does not split into {m} pipeline chunks.",
                          "a divisor of train.micro_batch")
        if virtual > 1 and m % self.pp:
            yield Problem("parallel.pp_microbatches", f"interleaved 1F1B needs a multiple of pp={self.pp} "
                                                      f"chunks, got {m}.")
        if cell.precision == "fp16":
            yield Problem("precision", "fp16 loss scaling is not wired into the pipeline schedule; use bf16.",
                          "fp32, bf16, bf16-pure")


CHOICES = {"engine": ENGINES, "pp_schedule": PP_SCHEDULES, "offload": OFFLOADS, "zero_stage": (0, 1, 2, 3)}
POSITIVE = {"dp", "tp", "pp", "pp_microbatches"}
FRACTIONS: set[str] = set()
MAXIMA = {"dp": 2**16, "tp": 2**16, "pp": 2**16, "pp_microbatches": 2**20}  # ranks per axis, chunks
