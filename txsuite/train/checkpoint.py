"""Model weights to and from a checkpoint folder, through torch.distributed.checkpoint (DCP), for
`train.save_checkpoint` and `train.init` (transfer learning).

DCP writes each rank's shards with a .metadata file that maps them to the full tensors, and
reads them back into any layout: a cell sharded by FSDP or tensor parallelism saves its
shards, and a single-process cell (or any other layout) loads the whole tensors from them.
`get_model_state_dict` names every parameter by its place in the reference model, whatever
wraps it (DDP, FSDP, torch.compile, activation checkpointing), so the names always match.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

# DCP warns when no process group exists, which is how single-process cells save and load
_SINGLE_PROCESS = "torch.distributed is disabled, unavailable or uninitialized"


def save_weights(model: torch.nn.Module, folder: Path) -> Path:
    """Every rank calls this (DCP coordinates the ranks through the process group, if any)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    folder = Path(folder)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS)
        dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(folder))
    return folder


def load_weights(model: torch.nn.Module, folder: Path | str) -> None:
    """Load a checkpoint into the pure model, before any technique changes it. ValueError
    names the tensors whose shapes differ (another model shape or vocabulary)."""
    import torch.distributed.checkpoint as dcp

    state = model.state_dict()
    metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    saved = {key[len("model."):]: meta for key, meta in metadata.state_dict_metadata.items()
             if key.startswith("model.")}
    missing = [k for k in state if k not in saved]
    wrong = [f"{k}: saved {tuple(saved[k].size)}, this model {tuple(v.shape)}" for k, v in state.items()
             if k in saved and tuple(saved[k].size) != tuple(v.shape)]
    if missing or wrong:
        detail = "; ".join(wrong[:3] + [f"{k}: not in the checkpoint" for k in missing[:3]])
        raise ValueError(f"the checkpoint in {folder} does not fit this cell's model ({detail}): start from a cell "
                         f"with the same model shape and vocabulary")
    loaded = {"model": state}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS)
        dcp.load(loaded, checkpoint_id=str(folder))
    model.load_state_dict(loaded["model"])
