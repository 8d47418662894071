"""One function per optimizer name of txsuite.config.spec.OPTIMIZERS (a test checks the two
lists agree). The plan knows each optimizer's hyperparameters and state size from that table;
this module knows how to build it. Adding an optimizer: an OptimizerInfo entry there, a
function here."""
from __future__ import annotations

from typing import Callable

import torch

from txsuite.config.spec import TrainSpec
from txsuite.train.muon import Muon, newton_schulz_dtype

Builder = Callable[[list[dict], TrainSpec, torch.device], torch.optim.Optimizer]
BUILDERS: dict[str, Builder] = {}


def builder(name: str) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn
    return register


def build_optimizer(model: torch.nn.Module, train: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    """The cell's optimizer over the model's trainable parameters, weight decay on matrices
    only (not biases, norms), as GPT-2/nanoGPT do. Each group also says whether its matrices
    are hidden weights (not embeddings), which Muon needs."""
    params = [p for p in model.parameters() if p.requires_grad]
    embedding = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    matrices = [p for p in params if p.dim() >= 2]
    groups = [{"params": [p for p in matrices if id(p) not in embedding], "weight_decay": train.weight_decay,
               "hidden": True},
              {"params": [p for p in matrices if id(p) in embedding], "weight_decay": train.weight_decay,
               "hidden": False},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "hidden": False}]
    groups = [g for g in groups if g["params"]]
    return BUILDERS[train.optimizer](groups, train, device)


def _plain(groups: list[dict]) -> list[dict]:
    """The groups without txsuite's own keys (torch keeps unknown keys, torchao's do too, but
    a state_dict should hold only what the optimizer reads)."""
    return [{k: v for k, v in g.items() if k != "hidden"} for g in groups]


@builder("adamw")
def adamw(groups: list[dict], train: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    # Fused kernels exist for CUDA and CPU. On CPU the fused step is the fastest of the three,
    # then a plain loop, then foreach (docs/measurements.md, "The harness against a plain loop
    # and against peers").
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(split_by_dtensor(_plain(groups)), lr=train.lr, betas=_betas(train),
                             fused=fused or None, foreach=None if fused else True)


@builder("sgd")
def sgd(groups: list[dict], train: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.SGD(_plain(groups), lr=train.lr, momentum=train.hyper("momentum"))


@builder("adafactor")
def adafactor(groups: list[dict], train: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    # torch's defaults otherwise (beta2_decay -0.8, eps (None, 1e-3), d 1.0); weight decay is
    # decoupled, as AdamW's
    return torch.optim.Adafactor(_plain(groups), lr=train.lr, foreach=True)


@builder("muon")
def muon(groups: list[dict], train: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    return MuonWithAdamW(groups, train, newton_schulz_dtype(device))


@builder("lion")
def lion(groups: list[dict], train: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
    from txsuite.train.lion import Lion
    return Lion(_plain(groups), lr=train.lr, betas=_betas(train))


def _torchao_adamw(class_name: str) -> Builder:
    """A torchao low-bit AdamW (8-bit, 4-bit blockwise, fp8): same arguments, another state."""
    def build(groups: list[dict], train: TrainSpec, device: torch.device) -> torch.optim.Optimizer:
        import torchao.optim
        return getattr(torchao.optim, class_name)(_plain(groups), lr=train.lr, betas=_betas(train))
    return build


for _name, _class_name in (("adamw-8bit", "AdamW8bit"), ("adamw-4bit", "AdamW4bit"), ("adamw-fp8", "AdamWFp8")):
    builder(_name)(_torchao_adamw(_class_name))


def _betas(train: TrainSpec) -> tuple[float, float]:
    return train.hyper("beta1"), train.hyper("beta2")


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon (txsuite.train.muon) on the hidden matrices and AdamW on everything else (embeddings, norms,
    biases), as Muon's authors recommend, behind one Optimizer so that the schedule, the
    trainer and checkpoints see one object. Its param_groups are the two optimizers' own group
    dicts, so a schedule that sets a group's lr sets it where the step reads it.
    adjust_lr_fn="match_rms_adamw" scales Muon's update to AdamW's RMS (Moonshot AI, "Muon is
    Scalable for LLM Training", 2025), so one learning rate serves both halves."""

    def __init__(self, groups: list[dict], train: TrainSpec, ns_dtype: torch.dtype = torch.bfloat16):
        self.facts: dict[str, str] = {}  # what the record states about how it ran
        hidden = [{k: v for k, v in g.items() if k != "hidden"} for g in groups if g["hidden"]]
        rest = [{k: v for k, v in g.items() if k != "hidden"} for g in groups if not g["hidden"]]
        self.parts: list[torch.optim.Optimizer] = []
        if hidden:
            self.parts.append(Muon(hidden, lr=train.lr, momentum=train.hyper("momentum"), nesterov=True,
                                   adjust_lr_fn="match_rms_adamw", ns_dtype=ns_dtype))
            self.facts["muon_ns_dtype"] = str(ns_dtype).removeprefix("torch.")
        if rest:
            self.parts.append(torch.optim.AdamW(rest, lr=train.lr, betas=_betas(train), foreach=True))
        super().__init__([p for part in self.parts for g in part.param_groups for p in g["params"]],
                         {"lr": train.lr})
        # Optimizer.__init__ built group dicts of its own; the parts' are the ones their steps read
        self.param_groups = [g for part in self.parts for g in part.param_groups]

    @property
    def state(self):  # one mapping over both parts' per-parameter states (parameters are disjoint)
        merged = {}
        for part in self.parts:
            merged.update(part.state)
        return merged

    @state.setter
    def state(self, value) -> None:  # Optimizer internals assign it; the parts own their states
        pass

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for part in self.parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict) -> None:
        for part, saved in zip(self.parts, state_dict["parts"]):
            part.load_state_dict(saved)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors, measured: every tensor in optimizer.state,
    quantized tensor subclasses opened to the tensors they store (torchao's codes and scales),
    DTensors to their local shard, each storage counted once (torchao shares one code map)."""
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        from torch.distributed.tensor import DTensor
        if isinstance(t, DTensor):
            t = t.to_local()
        if type(t) is not torch.Tensor and hasattr(t, "__tensor_flatten__"):
            names, _ = t.__tensor_flatten__()
            for name in names:
                add(getattr(t, name))
            return
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()

    for per_param in optimizer.state.values():
        for value in per_param.values():
            if isinstance(value, torch.Tensor):
                add(value)
    return total


def split_by_dtensor(groups: list[dict]) -> list[dict]:
    """Each group split into its sharded (DTensor) and plain parameters: tensor parallelism
    shards some and replicates others, and the fused/multi-tensor kernels refuse a group that
    mixes the two (torch steps each group on its own). Empty groups are dropped."""
    from torch.distributed.tensor import DTensor
    out = []
    for group in groups:
        for sharded in (False, True):
            mine = [p for p in group["params"] if isinstance(p, DTensor) == sharded]
            if mine:
                out.append({**group, "params": mine})
    return out
