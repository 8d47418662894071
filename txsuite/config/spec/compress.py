"""`compress`: quantization and pruning, their quality cost measured against the dense cell
(txsuite/techniques: qat and prune_schedule during training, compression after it; the model
operations in txsuite/compress; docs/compression.md).

When each method acts (txsuite/compress/plan.py decides it from these settings):
    quantization   qat-int8, fp8 during training (training methods); int8-weight, int8-dynamic,
                   int4-weight after training
    pruning        magnitude-<s> after training (`phase: post`) or on a schedule (`phase: train`);
                   heads-/neurons-/structured-<r> and 2:4 after training
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from txsuite.config.problems import Problem

if TYPE_CHECKING:
    from txsuite.config.host import Host
    from txsuite.config.spec.cell import CellConfig

QUANTIZATIONS = ("none", "int8-dynamic", "int8-weight", "int4-weight", "qat-int8", "fp8")
TRAINING_QUANTIZATIONS = ("qat-int8", "fp8")  # the others convert a trained model
PRUNING_KINDS = ("magnitude", "structured", "heads", "neurons")
COMPRESS_PHASES = ("post", "train")
PRUNING_ALLOWED = ("none, magnitude-<sparsity>, structured-<ratio>, heads-<ratio>, neurons-<ratio> "
                   "(a number strictly between 0 and 1, e.g. magnitude-0.5), '2:4' (in quotes: YAML "
                   "reads a bare 2:4 as the number 124)")
# sparse tensor cores (Ampere and newer) accelerate 2:4 semi-structured weights
SEMI_STRUCTURED_MIN_CAPABILITY = (8, 0)
SEMI_STRUCTURED_PRECISIONS = ("bf16", "fp16")


@dataclass(frozen=True)
class CompressSpec:
    """The defaults compress nothing."""
    quantization: str = "none"  # a name in QUANTIZATIONS
    pruning: str = "none"  # see PRUNING_ALLOWED
    # Where magnitude pruning applies: "post" prunes the trained model, "train" prunes while
    # training on a sparsity schedule. QAT and fp8 are training methods (they imply "train");
    # int8-*/int4-weight quantization, structured and 2:4 pruning act on the trained model.
    phase: str = "post"
    finetune_steps: int = 0  # optimizer steps of fine-tuning after post-training pruning
    distill: bool = False  # fine-tune against the dense model's logits (knowledge distillation)
    distill_temperature: float = 2.0  # softens teacher and student logits (KL term scaled by T^2)
    distill_alpha: float = 0.5  # weight of the KL term; 1 - alpha weighs the LM loss
    prune_start: float = 0.25  # phase train: fraction of the run when sparsity starts to rise
    prune_end: float = 0.75  # ... and when it reaches the target (cubic ramp, Zhu & Gupta 2017)
    prune_every: int = 5  # phase train: optimizer steps between mask updates

    def pruning_target(self) -> tuple[str, float | None]:
        """('none' | '2:4' | a PRUNING_KINDS name, its amount in (0, 1) or None).
        Raises ValueError for anything else."""
        if self.pruning in ("none", "2:4"):
            return self.pruning, None
        kind, _, number = self.pruning.partition("-")
        try:
            amount = float(number)
        except ValueError:
            amount = float("nan")
        if kind not in PRUNING_KINDS or not 0.0 < amount < 1.0:
            raise ValueError(f"unknown pruning {self.pruning!r}")
        return kind, amount

    @property
    def active(self) -> bool:
        """Whether anything is compressed (the dense control has both at 'none')."""
        return self.quantization != "none" or self.pruning != "none"

    def problems(self, cell: "CellConfig") -> Iterator[Problem]:
        try:
            kind, amount = self.pruning_target()
        except ValueError:
            yield Problem("compress.pruning", f"{self.pruning!r} is not a pruning method.", PRUNING_ALLOWED)
            return
        _, n_head, _, d_ff = cell.model.dims
        for what, n, applies in (("attention heads", n_head, ("heads", "structured")),
                                 ("MLP neurons", d_ff, ("neurons", "structured"))):
            if kind in applies:
                removed = removed_count(amount, n)
                if not 0 < removed < n:
                    yield Problem("compress.pruning", f"{self.pruning} removes {removed} of the model's {n} {what} "
                                                      f"per layer; it must remove at least one and keep at least one.")
        if not 0.0 <= self.prune_start < self.prune_end <= 1.0:
            yield Problem("compress.prune_end" if self.prune_end > 1.0 else "compress.prune_start",
                          f"the pruning schedule needs 0 <= prune_start < prune_end <= 1 (fractions of the run), "
                          f"got {self.prune_start:g} and {self.prune_end:g}.")
        if not 0.0 <= self.distill_alpha <= 1.0:
            yield Problem("compress.distill_alpha", f"expected a weight in [0, 1], got {self.distill_alpha:g}.")
        if self.distill_temperature <= 0:
            yield Problem("compress.distill_temperature", "the temperature must be > 0.")
        if self.phase == "train" and self.quantization not in ("none", *TRAINING_QUANTIZATIONS):
            yield Problem("compress.phase", f"quantization '{self.quantization}' converts a trained model; it "
                                            f"has no training phase (quantization-aware training is 'qat-int8').",
                          "post")
        if self.phase == "train" and kind not in ("none", "magnitude"):
            yield Problem("compress.phase", f"pruning '{self.pruning}' acts on the trained model; only magnitude "
                                            f"pruning has a while-training schedule.", "post")
        post_pruning = kind != "none" and not (kind == "magnitude" and self.phase == "train")
        if self.finetune_steps and not post_pruning:
            yield Problem("compress.finetune_steps", "the fine-tune follows post-training pruning, and this cell "
                                                     "prunes nothing after training.", "0")
        if self.distill and not self.finetune_steps:
            yield Problem("compress.distill", "distillation teaches the pruned model during its fine-tune; "
                                              "set compress.finetune_steps > 0.")
        if not self.active:
            return
        if cell.parallel.engine != "none":
            yield Problem("parallel.engine", "compression runs on a single-process model in this version.", "none")
        if self.pruning == "2:4" and self.quantization != "none":
            yield Problem("compress.quantization", "2:4 sparse weights do not combine with quantization in this "
                                                   "version.", "none")
        if self.pruning == "2:4" and cell.precision not in SEMI_STRUCTURED_PRECISIONS:
            yield Problem("precision", "2:4 semi-structured weights are stored and multiplied in bf16 or fp16 "
                                       "(the sparse tensor-core kernels take no fp32).",
                          ", ".join(SEMI_STRUCTURED_PRECISIONS))
        if self.quantization == "fp8" and kind != "none":
            yield Problem("compress.pruning", "fp8 training does not combine with pruning in this version.", "none")
        if self.quantization == "fp8" and cell.precision == "fp8":
            yield Problem("compress.quantization", "quantization 'fp8' is float8 training, which precision "
                                                   "'fp8' already is; choose one.")

    def host_problem(self, cell: "CellConfig", host: "Host") -> str | None:
        """fp8 is precision's rule (the same float8 training); 2:4 needs sparse tensor cores.
        What only a kernel probe can tell (int4's kernels) the compression technique checks
        before training."""
        if self.pruning != "2:4":
            return None
        from txsuite.config.spec.precision import capability_text
        cap = capability_text(SEMI_STRUCTURED_MIN_CAPABILITY)
        if host.device_of(cell) == "cpu":
            return ("2:4 semi-structured sparsity is accelerated only by sparse tensor cores (CUDA, compute "
                    f"capability >= {cap}); this cell is on cpu")
        if host.compute_capability is not None and host.compute_capability < SEMI_STRUCTURED_MIN_CAPABILITY:
            return (f"2:4 sparsity needs sparse tensor cores (compute capability >= {cap}); "
                    f"{host.gpu_name or 'this GPU'} has {capability_text(host.compute_capability)}")
        return None


def removed_count(amount: float, n: int) -> int:
    """Heads or neurons removed per layer by a ratio: the nearest count, halves up
    (txsuite/compress/structured.py removes exactly this many)."""
    return int(amount * n + 0.5)


CHOICES = {"quantization": QUANTIZATIONS, "phase": COMPRESS_PHASES, "distill": (False, True)}
POSITIVE = {"prune_every"}
FRACTIONS: set[str] = set()
MAXIMA = {"finetune_steps": 10**9, "prune_every": 10**9}  # optimizer steps, as train.steps
