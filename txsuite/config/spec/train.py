"""`train`: steps, batch, optimizer and schedule of a cell (txsuite/train runs it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from txsuite.config.problems import Problem

if TYPE_CHECKING:
    from txsuite.config.host import Host
    from txsuite.config.spec.cell import CellConfig

SCHEDULES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class OptimizerInfo:
    """What the plan knows of an optimizer without torch. txsuite/train/optimizers.py holds the
    function that builds it (one per name, checked by a test); the plan's memory estimate asks
    `param_state_bytes` for every parameter, so a new optimizer needs no separate edit there.
    tests/test_optimizers.py checks that estimate against the state tensors each optimizer
    really holds after a step."""
    summary: str
    hyper: dict[str, float]  # the hyperparameters it reads besides lr and weight_decay, with its defaults
    states: float  # state tensors per parameter, of the parameter's shape (dense layout)
    state_dtype_bytes: int | None = None  # bytes per state value; None: the parameter's dtype
    # how the state is laid out: "dense"; "factored" (Adafactor: row and column statistics of a
    # matrix); "blockwise-<bits>" (torchao: <bits> per value plus one fp32 scale per `block`
    # values and a 2**bits-entry fp32 code map, for tensors of >= 4096 elements divisible by
    # `block`; others dense in the parameter's dtype); "muon" (one dense state on hidden
    # matrices, AdamW's two elsewhere)
    layout: str = "dense"
    block: int = 0
    step_bytes: int = 0  # a per-parameter step counter tensor (fp32 scalar)
    # parameter-sized tensors its step holds at once, beyond its state: a foreach step over every
    # parameter materialises its intermediate for all of them (Adafactor's variance estimates,
    # Lion's update); torchao's low-bit AdamW both moments dequantized to fp32 (GPT-2 124M holds
    # twice its parameters beyond gradients and state: docs/measurements.md, "Predictions"); a
    # fused or per-parameter step holds one parameter's at a time (0)
    step_temporaries: float = 0.0
    needs: str | None = None  # an optional package it comes from

    def param_state_bytes(self, shape: tuple[int, ...], hidden_matrix: bool, param_bytes: int) -> float:
        """State bytes this optimizer keeps for one parameter of `shape` (`hidden_matrix`: a
        2-D weight that is not an embedding)."""
        numel = 1
        for n in shape:
            numel *= n
        if self.layout == "factored":
            if len(shape) < 2:
                return numel * param_bytes + self.step_bytes
            rows, cols = numel // shape[-1], numel // shape[-2]
            return (rows + cols) * param_bytes + self.step_bytes
        if self.layout.startswith("blockwise-"):
            bits = int(self.layout.split("-")[1])
            if numel >= 4096 and numel % self.block == 0:  # codes, a scale per block, the code map
                return self.states * (numel * bits / 8 + numel // self.block * 4 + 2 ** bits * 4) + self.step_bytes
            return self.states * numel * param_bytes + self.step_bytes
        if self.layout == "muon":
            return (1 if hidden_matrix else 2) * numel * param_bytes + self.step_bytes
        return self.states * numel * (self.state_dtype_bytes or param_bytes) + self.step_bytes


ADAM = {"beta1": 0.9, "beta2": 0.95}
OPTIMIZERS: dict[str, OptimizerInfo] = {
    "adamw": OptimizerInfo("AdamW, weight decay on matrices only (fused kernel on CPU and CUDA)", ADAM,
                           states=2, step_bytes=4),
    "sgd": OptimizerInfo("SGD with momentum, weight decay on matrices only", {"momentum": 0.9}, states=1),
    "adafactor": OptimizerInfo("torch.optim.Adafactor: factored second moment (row and column statistics of "
                               "each matrix), no first moment", {}, states=1, layout="factored", step_bytes=4,
                               step_temporaries=1),
    "muon": OptimizerInfo("torch.optim.Muon (orthogonalised momentum, Nesterov, 5 Newton-Schulz steps, lr matched "
                          "to AdamW's update RMS) on hidden matrices; AdamW on embeddings, norms and biases",
                          {"momentum": 0.95, **ADAM}, states=1, layout="muon", step_bytes=4),
    "lion": OptimizerInfo("Lion (Chen et al. 2023, 'Symbolic Discovery of Optimization Algorithms'): sign of an "
                          "interpolated momentum; txsuite/train/lion.py", {"beta1": 0.9, "beta2": 0.99}, states=1,
                          step_temporaries=1),
    "adamw-8bit": OptimizerInfo("torchao.optim.AdamW8bit: both moments in 8-bit blocks of 256 with fp32 scales",
                                ADAM, states=2, layout="blockwise-8", block=256, step_bytes=4, step_temporaries=2,
                                needs="torchao"),
    "adamw-4bit": OptimizerInfo("torchao.optim.AdamW4bit: both moments in 4-bit blocks of 128 with fp32 scales",
                                ADAM, states=2, layout="blockwise-4", block=128, step_bytes=4, step_temporaries=2,
                                needs="torchao"),
    "adamw-fp8": OptimizerInfo("torchao.optim.AdamWFp8: both moments in float8 (e4m3) blocks of 256 with fp32 "
                               "scales; CUDA GPUs with fp8 (compute capability >= 8.9)", ADAM, states=2,
                               layout="blockwise-8", block=256, step_bytes=4, step_temporaries=2, needs="torchao"),
}
HYPERPARAMETERS = ("beta1", "beta2", "momentum")  # TrainSpec keys whose default is the optimizer's own
# element-wise optimizers, measured here under ZeRO, FSDP and tensor parallelism
SHARDABLE = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainSpec:
    steps: int = 60  # measured optimizer steps
    warmup_steps: int = 10  # untimed optimizer steps before measuring (compile, caches)
    micro_batch: int = 8
    grad_accum: int = 1
    lr: float = 3.0e-4
    schedule: str = "cosine"
    lr_warmup_steps: int = 0  # learning-rate warm-up, independent of the timing warm-up
    min_lr_ratio: float = 0.1
    optimizer: str = "adamw"
    weight_decay: float = 0.1
    # None: the optimizer's own default (OPTIMIZERS[name].hyper); setting one the optimizer does
    # not read is an error, so no value silently changes meaning between optimizers
    beta1: float | None = None
    beta2: float | None = None
    momentum: float | None = None
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 0
    eval_every: int = 0  # 0: evaluate only at the end
    eval_batches: int = 8
    # the loss that counts as trained: a number, or "auto": the reference cell's final validation
    # loss (median over its seeds) plus target_tolerance; time and tokens to it are recorded
    target_loss: float | str | None = None
    target_tolerance: float = 0.02  # nats above the reference's final validation loss (auto only)
    stop_at_target: bool = False  # end the cell once the target is reached (`steps` stays the budget)
    # where the weights start: "scratch" (the seeded initialisation), "cell:<label or id>" (the
    # trained weights of that cell of this matrix, same seed index; the runner runs it first), or
    # the path of a checkpoint folder that a cell saved (torch.distributed.checkpoint)
    init: str = "scratch"
    save_checkpoint: bool = False  # save the trained weights to the repetition's folder (checkpoint/)
    # "none", or "fgm-<eps>": a fast-gradient perturbation of the input embeddings (Miyato et al.
    # 2017), one extra forward and backward per micro-batch (txsuite/train/adversarial.py)
    adversarial: str = "none"

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run: the untimed warm-up, then the measured ones."""
        return self.warmup_steps + self.steps

    def _engine_problems(self, cell: "CellConfig") -> Iterator[Problem]:
        p = cell.parallel
        if self.save_checkpoint and (p.pp > 1 or p.engine == "deepspeed"):
            yield Problem("train.save_checkpoint", "txsuite saves weights through torch.distributed.checkpoint from "
                                                   "whole, DDP, FSDP or tensor-parallel models, not from pipeline "
                                                   "stages or DeepSpeed's engine.", "parallel.pp: 1, engine other "
                                                                                    "than deepspeed")
        if p.engine == "deepspeed" and p.offload != "none" and self.optimizer != "adamw":
            yield Problem("train.optimizer", f"DeepSpeed's optimizer offload steps with its own CPU Adam "
                                             f"(DeepSpeedCPUAdam), which would silently replace {self.optimizer}.",
                          "train.optimizer: adamw with parallel.offload, or parallel.offload: none")
        elif (p.engine in ("deepspeed", "fsdp") or p.tp > 1) and self.optimizer not in SHARDABLE:
            yield Problem("train.optimizer", f"{self.optimizer} is measured here on whole parameters only: ZeRO and "
                                             f"FSDP hand the optimizer flat or sharded pieces (a factored, "
                                             f"orthogonalised or block-quantized state would change meaning).",
                          f"with engine {p.engine}{' and tp' if p.tp > 1 else ''}: {', '.join(SHARDABLE)}")

    @property
    def init_cell(self) -> str | None:
        """The label or id after 'cell:' when the weights start from a cell of this matrix."""
        return self.init[len("cell:"):] if self.init.startswith("cell:") else None

    def _init_problems(self) -> Iterator[Problem]:
        if self.init == "scratch" or self.init_cell:
            return
        import os
        if not os.path.isdir(self.init) or not os.path.isfile(os.path.join(self.init, ".metadata")):
            yield Problem("train.init", f"{self.init!r} is not a checkpoint folder (torch.distributed.checkpoint "
                                        f"writes one with a .metadata file).",
                          "scratch, cell:<label or id of a cell of this matrix>, or the checkpoint/ folder a cell "
                          "with train.save_checkpoint saved under its run's cells/<id>/r<k>/")

    def _adversarial_problems(self, cell: "CellConfig") -> Iterator[Problem]:
        if self.adversarial == "none":
            return
        kind, _, eps = self.adversarial.partition("-")
        try:
            ok = kind == "fgm" and float(eps) > 0
        except ValueError:
            ok = False
        if not ok:
            yield Problem("train.adversarial", f"unknown adversarial training {self.adversarial!r}.",
                          "none, or fgm-<eps> with eps > 0 (the L2 norm of each sequence's embedding "
                          "perturbation), e.g. fgm-1.0")
        elif cell.parallel.distributed:
            yield Problem("train.adversarial", "adversarial training is measured here in single-process cells.",
                          "parallel.engine: none, dp = tp = pp = 1")
        elif cell.precision == "fp16":
            yield Problem("train.adversarial", "the perturbation is taken from unscaled gradients; fp16's loss "
                                               "scaling is not supported with it.", "fp32, bf16, bf16-pure")
        elif cell.compile.mode != "none":
            yield Problem("train.adversarial", "the perturbation is added by a forward hook set per micro-batch, "
                                               "which a compiled graph would not see.", "compile.mode: none")

    @property
    def adversarial_eps(self) -> float | None:
        return float(self.adversarial.split("-", 1)[1]) if self.adversarial.startswith("fgm-") else None

    def host_problem(self, cell: "CellConfig", host: "Host") -> str | None:
        """Why this host cannot run the cell's optimizer (the cell is skipped with the reason)."""
        info = OPTIMIZERS[self.optimizer]
        if self.optimizer == "adamw-fp8":
            device = host.device_of(cell)
            if device == "cpu":
                return ("adamw-fp8 keeps its moments in float8, which torchao's optimizer runs on CUDA GPUs with fp8 "
                        "(compute capability >= 8.9); this cell is on cpu")
            if host.compute_capability is not None and host.compute_capability < (8, 9):
                return (f"adamw-fp8 needs a GPU with fp8 (compute capability >= 8.9); {host.gpu_name or 'this GPU'} "
                        f"has {host.compute_capability[0]}.{host.compute_capability[1]}")
        if info.needs and host.lacks(info.needs):
            return f"{self.optimizer} comes from {info.needs}, which is not installed (pip install -e '.[compress]')"
        return None

    def hyper(self, name: str) -> float:
        """A hyperparameter of this cell's optimizer: as set, else the optimizer's default."""
        value = getattr(self, name)
        return OPTIMIZERS[self.optimizer].hyper[name] if value is None else value

    @property
    def auto_target(self) -> bool:
        return self.target_loss == "auto"

    def problems(self, cell: "CellConfig") -> Iterator[Problem]:
        info = OPTIMIZERS[self.optimizer]
        for name in HYPERPARAMETERS:
            value = getattr(self, name)
            if value is None:
                continue
            if name not in info.hyper:
                reads = ", ".join(f"train.{k}" for k in info.hyper) or "none besides lr and weight_decay"
                yield Problem(f"train.{name}", f"optimizer {self.optimizer} does not read {name}; set only what "
                                               f"it reads (in the optimizer's axis value when optimizers vary).",
                              f"{self.optimizer} reads: {reads}")
            elif not 0.0 <= value < 1.0:
                yield Problem(f"train.{name}", f"{name} is a decay rate and must lie in [0, 1), got {value}.")
        yield from self._engine_problems(cell)
        yield from self._init_problems()
        yield from self._adversarial_problems(cell)
        if self.lr_warmup_steps > self.total_steps:
            yield Problem("train.lr_warmup_steps", "the learning-rate warm-up is longer than the whole run.")
        if self.auto_target and not self.eval_every:
            yield Problem("train.eval_every", "target_loss: auto is met on the validation loss curve, which needs "
                                              "evaluations during training.", "an interval such as eval_every: 20")
        if self.stop_at_target and self.target_loss is None:
            yield Problem("train.stop_at_target", "stopping at the target needs a target.",
                          "train.target_loss: a number, or auto")


# a live view: an entry added to OPTIMIZERS is an allowed value at once
CHOICES = {"schedule": SCHEDULES, "optimizer": OPTIMIZERS.keys(), "stop_at_target": (False, True),
           "save_checkpoint": (False, True)}
# words a number-typed key also takes
WORDS = {"target_loss": ("auto",)}
POSITIVE = {"steps", "micro_batch", "grad_accum", "eval_batches"}
FRACTIONS: set[str] = set()
# Upper bounds: a billion optimizer steps or a million sequences per micro-batch is beyond any
# run; numpy takes seeds below 2^32 (np.random.seed in txsuite/train/build.py).
MAXIMA = {"steps": 10**9, "warmup_steps": 10**9, "lr_warmup_steps": 10**9, "eval_every": 10**9,
          "micro_batch": 2**20, "grad_accum": 2**20, "eval_batches": 2**20, "seed": 2**32 - 1}
MAXIMA_WHY = {"seed": "the largest seed numpy takes"}  # said instead of "beyond what any machine could run"
