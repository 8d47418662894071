"""`model`: the reference Transformer's shape (suite/model/gpt.py builds it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from suite.config.problems import Problem

if TYPE_CHECKING:
    from suite.config.spec.cell import CellConfig

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
ATTENTIONS = ("auto", "sdpa", "matmul")


@dataclass(frozen=True)
class ModelSpec:
    preset: str = "tiny"
    # Explicit dims override the preset's; None keeps the preset value.
    n_layer: int | None = None
    n_head: int | None = None
    d_model: int | None = None
    d_ff: int | None = None
    dropout: float = 0.0
    # auto: the faster correct one of the two for this host, dtype and shape, measured once per
    # host and cached (suite.measure.attention); sdpa: the fused kernel; matmul: explicit
    # QK^T / softmax / AV (O(T^2) score memory)
    attention: str = "auto"

    @property
    def dims(self) -> tuple[int, int, int, int]:
        """(n_layer, n_head, d_model, d_ff): the preset's dims overridden by explicit ones."""
        n_layer, n_head, d_model = MODEL_PRESET_DIMS[self.preset]
        d_model = self.d_model or d_model
        return (self.n_layer or n_layer, self.n_head or n_head, d_model, self.d_ff or 4 * d_model)

    def problems(self, cell: "CellConfig") -> Iterator[Problem]:
        _, n_head, d_model, _ = self.dims
        if d_model % n_head:
            yield Problem("model.n_head", f"d_model={d_model} is not divisible by n_head={n_head}.")


CHOICES = {"preset": MODEL_PRESETS, "attention": ATTENTIONS}
POSITIVE = {"n_layer", "n_head", "d_model", "d_ff"}
FRACTIONS = {"dropout"}  # in [0, 1)
