"""`model`: the reference Transformer's shape (txsuite/model/gpt.py builds it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from txsuite.config.problems import Problem

if TYPE_CHECKING:
    from txsuite.config.spec.cell import CellConfig

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
LINEARS = ("auto", "torch", "transposed-weight")


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
    # host and cached (txsuite.measure.attention); sdpa: the fused kernel; matmul: explicit
    # QK^T / softmax / AV (O(T^2) score memory)
    attention: str = "auto"
    # auto: transposed-weight where this host's matmul is measurably faster for it, else torch
    # (txsuite.measure.linear); torch: nn.Linear as it is; transposed-weight: the input gradient
    # against a transposed copy of the weight (txsuite.techniques.linear_kernel)
    linear: str = "auto"

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
        unsupported = transposed_weight_unsupported(cell)
        if self.linear == "transposed-weight" and unsupported:
            yield Problem("model.linear", f"transposed-weight does not work here: {unsupported}. Use auto "
                                          "(which keeps torch's Linear in such cells) or torch.")


def transposed_weight_unsupported(cell: "CellConfig") -> str | None:
    """Why `model.linear: transposed-weight` cannot apply to this cell (None: it can)."""
    if cell.parallel.tp > 1:
        return "tensor parallelism (tp > 1) shards nn.Linear with its own hooks"
    if cell.parallel.engine == "deepspeed":
        return "DeepSpeed replaces torch's linear function (ZeRO-3)"
    return None


CHOICES = {"preset": MODEL_PRESETS, "attention": ATTENTIONS, "linear": LINEARS}
POSITIVE = {"n_layer", "n_head", "d_model", "d_ff"}
FRACTIONS = {"dropout"}  # in [0, 1)
# Upper bounds (txsuite/config/numbers.py checks them): well past the largest Transformers ever
# trained (d_model 18,432, d_ff 73,728, ~100 layers), so a value above one fits no machine; one
# below may still not fit this host, which the plan finds from the memory estimate.
MAXIMA = {"n_layer": 10_000, "n_head": 2**16, "d_model": 2**16, "d_ff": 2**20}
