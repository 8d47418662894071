"""What the tensors live at one training step's memory peak are, by role: parameters,
gradients, optimizer state, activations (what autograd saved for the backward pass) and other
(temporaries, workspace, the batch). Measured, not estimated: every allocation and free of the
step is recorded by torch's profiler (`profile_memory`, the allocator's own events, on CPU and
on CUDA), and each block live at the peak is named by who holds it.

    with MemoryRoles(model, optimizer, device) as roles:
        one training step
    roles.metrics()  # {"tensors_at_peak_bytes", "params_at_peak_bytes", ...}

How a block is named (by its address, at the peak moment):
- allocated before the step: a parameter's or an optimizer state's storage, else other (the
  batch, buffers, a gradient kept from the step before);
- allocated in the step: a gradient (recorded by a hook as each parameter's gradient is
  accumulated), an activation (its storage was saved for backward: a saved-tensors hook), an
  optimizer state (a first step, where AdamW creates its moments), else other.
The peak is the step's highest total of live tensor bytes (the allocator's running total).
What tensors do not hold (the allocator's cached or fragmented blocks, glibc's heap, the
interpreter) is not here: that is the difference to `train_mem_bytes` on CPU.

It runs on the last warm-up step but one (txsuite.train.loop.profiled_step): the profiler slows
the step it watches, so it is never timed; from the second step on the optimizer's state exists,
as in every measured step; and the warm-up step after it lets the heap settle before the
measured ones. With two warm-up steps, and in distributed cells (whose later warm-up steps
measure communication), it is the first, before the state exists. Where a tensor has no plain
storage (a DTensor's shard is read through `to_local`; other wrapper subclasses are left to
`other`) or the profiler fails, the step is not disturbed: `memory_roles` says why.
"""
from __future__ import annotations

from typing import Any

ROLES = ("params", "grads", "optimizer", "activations", "other")


class MemoryRoles:
    """Context manager around one training step (see the module's docstring)."""

    def __init__(self, model, optimizer, device) -> None:
        self.model, self.optimizer, self.device = model, optimizer, device
        self.result: dict[str, Any] = {}

    def __enter__(self) -> "MemoryRoles":
        import torch
        from torch.profiler import ProfilerActivity, profile

        self._saved: set[int] = set()
        self._grads: set[int] = set()
        params = list(self.model.parameters())
        self._param_ptrs = {_storage_ptr(p) for p in params} - {None}
        # a gradient kept from the step before (zero_grad without set_to_none) is live throughout
        self._grads_before = sum(_storage_bytes(p.grad) for p in params if p.grad is not None)
        self._hooks = [p.register_post_accumulate_grad_hook(self._grad_seen) for p in params if p.requires_grad]
        self._saving = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self._profile = profile(activities=activities, profile_memory=True)
        self._profile.__enter__()
        self._saving.__enter__()
        return self

    def _pack(self, tensor):
        self._saved.add(_storage_ptr(tensor))  # never raises: the step must not notice it
        return tensor

    def _grad_seen(self, param) -> None:
        if param.grad is not None:
            self._grads.add(_storage_ptr(param.grad))

    def __exit__(self, *exc) -> None:
        self._saving.__exit__(*exc)
        self._profile.__exit__(*exc)
        for hook in self._hooks:
            hook.remove()
        if exc[0] is None:
            try:
                self.result = self._roles_at_peak()
            except Exception as error:  # noqa: BLE001  (a measurement never fails the cell it measures)
                self.result = {"memory_roles": f"not measured: {type(error).__name__}: {error}"}
        self._profile = None  # its events are the largest thing it holds: free them now

    def metrics(self) -> dict[str, Any]:
        return dict(self.result)

    def _roles_at_peak(self) -> dict[str, Any]:
        events = allocation_events(self._profile, self.device)
        if not events:
            return {"memory_roles": "not measured: the profiler recorded no allocation on this device"}
        states = [t for state in (self.optimizer.state.values() if self.optimizer is not None else ())
                  for t in state.values() if hasattr(t, "untyped_storage")]
        state_bytes = {_storage_ptr(t): _storage_bytes(t) for t in states}
        state_bytes.pop(None, None)
        start_total = events[0][3] - events[0][2]  # the running total before the step's first event
        live: dict[int, int] = {}  # address -> bytes: allocated in the step, not freed yet
        created: set[int] = set()  # every address the step allocated
        peak_total, peak_live, peak_at = start_total, {}, -1
        for i, (_, ptr, size, total) in enumerate(events):
            if size > 0:
                live[ptr] = size
                created.add(ptr)
            else:
                live.pop(ptr, None)
            if total > peak_total:
                peak_total, peak_live, peak_at = total, dict(live), i
        # an address allocated again after the peak held something else by the step's end: only
        # a block that was the last at its address can be the gradient or state found there then
        reused = {ptr for _, ptr, size, _ in events[peak_at + 1:] if size > 0}
        out = dict.fromkeys(ROLES, 0)
        out["params"] = sum(_storage_bytes(p) for p in self.model.parameters())
        out["optimizer"] = sum(size for ptr, size in state_bytes.items() if ptr not in created)  # from earlier steps
        out["grads"] = self._grads_before
        out["other"] = max(0, start_total - out["params"] - out["optimizer"] - self._grads_before)
        for ptr, size in peak_live.items():
            last = ptr not in reused
            role = ("grads" if last and ptr in self._grads else "optimizer" if last and ptr in state_bytes
                    else "activations" if ptr in self._saved and ptr not in self._param_ptrs else "other")
            out[role] += size
        return {"tensors_at_peak_bytes": sum(out.values()), **{f"{role}_at_peak_bytes": out[role] for role in ROLES}}


def allocation_events(prof, device) -> list[tuple[int, int, int, int]]:
    """[(time ns, address, bytes (negative: a free), the allocator's running total after it)]
    of `device` in time order, from the profiler's event tree."""
    out = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        fields = node.extra_fields
        if type(fields).__name__ != "_ExtraFields_Allocation":
            continue
        if fields.device.type != device.type:
            continue
        out.append((node.start_time_ns, fields.ptr, fields.alloc_size, fields.total_allocated))
    out.sort(key=lambda e: e[0])
    return out


def _plain(tensor):
    """The tensor that owns the memory: a DTensor's local shard, else the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _storage_ptr(tensor) -> int | None:
    """The address of the tensor's storage (where its allocation starts); None for a tensor
    without one (a wrapper subclass whose data lives in inner tensors)."""
    try:
        return _plain(tensor).untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _storage_bytes(tensor) -> int:
    try:
        return _plain(tensor).untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return tensor.numel() * tensor.element_size()
