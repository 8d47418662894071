"""The resolved settings of one matrix cell: one record per family (L0: stdlib only)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from txsuite.config.problems import Problem
from txsuite.config.spec import device as device_family
from txsuite.config.spec import precision as precision_family
from txsuite.config.spec.compile import CompileSpec, mode_from_flag
from txsuite.config.spec.compress import CompressSpec
from txsuite.config.spec.data import DataSpec
from txsuite.config.spec.measure import MeasureSpec
from txsuite.config.spec.memory import MemorySpec
from txsuite.config.spec.model import ModelSpec
from txsuite.config.spec.parallel import ParallelSpec
from txsuite.config.spec.train import TrainSpec


@dataclass(frozen=True)
class CellConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    precision: str = "fp32"
    parallel: ParallelSpec = field(default_factory=ParallelSpec)
    memory: MemorySpec = field(default_factory=MemorySpec)
    compile: CompileSpec = field(default_factory=CompileSpec)
    compress: CompressSpec = field(default_factory=CompressSpec)
    measure: MeasureSpec = field(default_factory=MeasureSpec)
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

    @property
    def train_tokens(self) -> int:
        """Tokens the whole run trains on (warm-up steps train too): the budget that a batch-size
        comparison at equal tokens holds constant."""
        return self.tokens_per_step * self.train.total_steps

    # --- rules ---------------------------------------------------------------------------
    def problems(self) -> Iterator[Problem]:
        """What can never work, on any host: each family's rules, in a fixed order."""
        yield from self.model.problems(self)
        yield from self.parallel.problems(self)
        yield from self.compile.problems(self)
        yield from self.data.problems(self)
        yield from self.memory.problems(self)
        yield from self.train.problems(self)
        yield from self.compress.problems(self)
        yield from self.measure.problems(self)
        yield from precision_family.problems(self)
        yield from device_family.problems(self)

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CellConfig":
        """The inverse of to_dict; also reads configs written by earlier versions (see upgrade)."""
        kwargs: dict[str, Any] = {}
        for name, value in upgrade(d).items():
            sub = FAMILIES.get(name)
            kwargs[name] = sub(**value) if sub is not None else value
        return cls(**kwargs)

    def cell_id(self) -> str:
        """Stable 10-hex-digit hash of the resolved configuration: of the settings that differ
        from their defaults, so that a setting added in a later version (at its default) leaves
        every existing cell's id, its resumable runs and its guard baselines as they were.
        Changing a default is therefore a deliberate act: cells that relied on it keep their id."""
        canonical = json.dumps(self.differences(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(canonical.encode()).hexdigest()[:10]

    def differences(self) -> dict[str, Any]:
        """{family: {setting: value}} and {top-level setting: value} for what is not a default."""
        out: dict[str, Any] = {}
        default = CellConfig()
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(default, f.name)
            if dataclasses.is_dataclass(mine):
                changed = {g.name: getattr(mine, g.name) for g in dataclasses.fields(mine)
                           if getattr(mine, g.name) != getattr(theirs, g.name)}
                if changed:
                    out[f.name] = changed
            elif mine != theirs:
                out[f.name] = mine
        return out


# Family name -> dataclass, for the families that are mappings (precision/device are scalars).
FAMILIES: dict[str, type] = {
    "model": ModelSpec,
    "data": DataSpec,
    "train": TrainSpec,
    "parallel": ParallelSpec,
    "memory": MemorySpec,
    "compile": CompileSpec,
    "compress": CompressSpec,
    "measure": MeasureSpec,
}


def upgrade(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config as earlier versions wrote it -> today's layout: `memory.compile` moved
    to `compile.mode`; `data.workers` (never used) was dropped."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    memory = d.get("memory")
    if isinstance(memory, dict) and "compile" in memory:
        flag = memory.pop("compile")
        d.setdefault("compile", {"mode": mode_from_flag(flag)})
    if isinstance(d.get("data"), dict):
        d["data"].pop("workers", None)
    return d
