"""Cell configuration: the resolved settings of one matrix cell (L0: stdlib only).

A cell is a nested mapping with one record per axis family (DESIGN.md, "Cell configuration").
This module owns the schema: which keys exist, their types, defaults and allowed values.
`matrix` uses it to validate user input; `worker` reads the resolved `CellConfig`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

# preset -> (n_layer, n_head, d_model); d_ff = 4 * d_model. GPT-2 / GPT-3 shapes; `tiny` and
# `small` are sized to train in seconds on a laptop CPU.
MODEL_PRESET_DIMS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 4, 128),
    "small": (4, 4, 256),
    "gpt2-124m": (12, 12, 768),
    "gpt2-350m": (24, 16, 1024),
    "gpt2-760m": (36, 20, 1280),
    "1.3b": (24, 32, 2048),
}
MODEL_PRESETS = tuple(MODEL_PRESET_DIMS)
NAMED_DATASETS = ("shakespeare", "bible", "python-stdlib", "copy", "reverse", "modadd", "markov")
SYNTHETIC_DATASETS = ("copy", "reverse", "modadd", "markov")
TOKENIZERS = ("byte", "bpe")
ATTENTIONS = ("sdpa", "matmul")
PRECISIONS = ("fp32", "tf32", "bf16", "bf16-pure", "fp16", "fp8")
ENGINES = ("none", "ddp", "fsdp", "deepspeed")
PP_SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b")
OFFLOADS = ("none", "optimizer", "optimizer+params")
CHECKPOINTING = ("none", "full", "every_k")
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune")
SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
QUANTIZATIONS = ("none", "int8-dynamic", "int8-weight", "int4-weight", "qat-int8", "fp8")
# Pruning values: a name, or a name and a number in (0, 1); CompressSpec.pruning_target parses
# them (matrix.py validates them there, since a pattern cannot be listed in CHOICES).
PRUNINGS = ("none", "magnitude-<sparsity>", "structured-<ratio>", "heads-<ratio>", "neurons-<ratio>", "2:4")
PRUNING_KINDS = ("magnitude", "structured", "heads", "neurons")
COMPRESS_PHASES = ("post", "train")


@dataclass(frozen=True)
class ModelSpec:
    preset: str = "tiny"
    # Explicit dims override the preset's; None keeps the preset value.
    n_layer: int | None = None
    n_head: int | None = None
    d_model: int | None = None
    d_ff: int | None = None
    dropout: float = 0.0
    attention: str = "sdpa"  # sdpa: fused kernel; matmul: explicit QK^T/softmax/AV (see README)


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "shakespeare"  # a name in NAMED_DATASETS, or a path / glob of text files
    seq_len: int = 256
    tokenizer: str = "byte"
    vocab_size: int | None = None  # BPE vocabulary size (default 4096); ignored for byte
    symbols: int | None = None  # alphabet size of synthetic tasks (markov: 64, copy/reverse: 16)
    val_fraction: float = 0.1
    workers: int = 0


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
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 0
    eval_every: int = 0  # 0: evaluate only at the end
    eval_batches: int = 8
    target_loss: float | None = None


# Compute capabilities the GPU features need (the plan checks them without torch; the worker
# checks the device): fp8 tensor cores (Ada, Hopper and newer), sparse tensor cores for 2:4.
FP8_MIN_CAPABILITY = (8, 9)
SEMI_STRUCTURED_MIN_CAPABILITY = (8, 0)


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


@dataclass(frozen=True)
class MemorySpec:
    activation_checkpointing: str = "none"
    checkpoint_every: int = 2  # k for every_k: checkpoint blocks 0, k, 2k, ...
    compile: bool | str = False


@dataclass(frozen=True)
class CompressSpec:
    """Compression of the model, its quality cost measured against the dense cell (suite.compress;
    docs/compression.md). The defaults compress nothing."""
    quantization: str = "none"  # a name in QUANTIZATIONS
    pruning: str = "none"  # see PRUNINGS
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


@dataclass(frozen=True)
class CellConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    precision: str = "fp32"
    parallel: ParallelSpec = field(default_factory=ParallelSpec)
    memory: MemorySpec = field(default_factory=MemorySpec)
    compress: CompressSpec = field(default_factory=CompressSpec)
    device: str = "auto"

    # --- derived quantities -------------------------------------------------------------
    @property
    def fp8_training(self) -> bool:
        """torchao's float8 training: precision fp8, or quantization fp8 (the same conversion)."""
        return self.precision == "fp8" or self.compress.quantization == "fp8"

    @property
    def samples_per_step(self) -> int:
        """Sequences per optimizer step across all data-parallel ranks."""
        return self.train.micro_batch * self.train.grad_accum * self.parallel.dp

    @property
    def tokens_per_step(self) -> int:
        """Global tokens per optimizer step."""
        return self.samples_per_step * self.data.seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CellConfig":
        kwargs: dict[str, Any] = {}
        for name, value in d.items():
            sub = FAMILIES.get(name)
            kwargs[name] = sub(**value) if sub is not None else value
        return cls(**kwargs)

    def cell_id(self) -> str:
        """Stable 10-hex-digit hash of the resolved configuration."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(canonical.encode()).hexdigest()[:10]


# Family name -> dataclass, for the families that are mappings (precision/device are scalars).
FAMILIES: dict[str, type] = {
    "model": ModelSpec,
    "data": DataSpec,
    "train": TrainSpec,
    "parallel": ParallelSpec,
    "memory": MemorySpec,
    "compress": CompressSpec,
}
SCALAR_FAMILIES: dict[str, tuple] = {"precision": PRECISIONS, "device": DEVICES}

# Allowed values per dotted key (anything not listed is checked by type only).
CHOICES: dict[str, tuple] = {
    "model.preset": MODEL_PRESETS,
    "model.attention": ATTENTIONS,
    "data.tokenizer": TOKENIZERS,
    "train.schedule": SCHEDULES,
    "train.optimizer": OPTIMIZERS,
    "parallel.engine": ENGINES,
    "parallel.pp_schedule": PP_SCHEDULES,
    "parallel.offload": OFFLOADS,
    "parallel.zero_stage": (0, 1, 2, 3),
    "memory.activation_checkpointing": CHECKPOINTING,
    "memory.compile": COMPILE_MODES,
    "compress.quantization": QUANTIZATIONS,
    "compress.phase": COMPRESS_PHASES,
    "compress.distill": (False, True),
    "precision": PRECISIONS,
    "device": DEVICES,
}

# Integer keys that must be >= 1 (the rest of the ints must be >= 0).
POSITIVE_INTS = {
    "data.seq_len", "train.steps", "train.micro_batch", "train.grad_accum", "train.eval_batches",
    "parallel.dp", "parallel.tp", "parallel.pp", "parallel.pp_microbatches", "memory.checkpoint_every",
    "model.n_layer", "model.n_head", "model.d_model", "model.d_ff", "data.vocab_size", "data.symbols",
}


def field_type(dotted: str) -> Any:
    """The annotation (as a string) of a dotted key, or None if the key does not exist."""
    family, _, leaf = dotted.partition(".")
    if not leaf:
        return "str" if family in SCALAR_FAMILIES else ("mapping" if family in FAMILIES else None)
    cls = FAMILIES.get(family)
    if cls is None:
        return None
    for f in dataclasses.fields(cls):
        if f.name == leaf:
            return f.type
    return None


def model_dims(m: ModelSpec) -> tuple[int, int, int, int]:
    """(n_layer, n_head, d_model, d_ff): the preset's dims overridden by explicit ones."""
    n_layer, n_head, d_model = MODEL_PRESET_DIMS[m.preset]
    d_model = m.d_model or d_model
    return (m.n_layer or n_layer, m.n_head or n_head, d_model, m.d_ff or 4 * d_model)


def keys_of(family: str) -> list[str]:
    return [f.name for f in dataclasses.fields(FAMILIES[family])]


def is_dataset_path(name: str) -> bool:
    """A `data.dataset` value that names files rather than a shipped corpus."""
    return any(ch in name for ch in "/*?") or name.endswith((".txt", ".md"))
