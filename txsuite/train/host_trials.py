"""The host's one-time measurements for a sweep's cells, made before the first cell (issue 31):
the matmul peak of each precision and the memory bandwidth (txsuite.measure.peak), each
precision's per-operator overhead and each cell's optimizer step (txsuite.train.step_costs: what
the cost model adds to the peaks, txsuite.measure.predict), the `auto` attention and linear
kernels of each cell shape (txsuite.techniques.kernel_trial), and each dataset's tokenizer and
token arrays (txsuite.data, cached on disk). All of them are cached per host
(txsuite.measure.host_cache), so a cell then reads them instead of paying for them inside its
own clock, where the first cell on a host used to pay for all of them (docs/running.md, "The
sweep's setup, and what a cell pays").

Run by the worker (`python -m txsuite.run.worker SETUP_JSON RESULT_JSON` with
{"kind": "host_trials", "device": ..., "threads": ..., "configs": [...]}), in a process started
as the sweep's cells are (the same fork server, threads and OpenMP spin setting: a peak is only
comparable with the cells it divides when measured under their conditions). The runner's side,
which never imports torch, is txsuite.run.host_setup.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

KIND = "host_trials"  # the payload's "kind"


def measure_host(payload: dict[str, Any]) -> dict[str, Any]:
    """Every measurement the payload's cells will ask for, each once: -> {"status": "ok",
    "seconds": wall seconds, "measured": [{"what", "cell_id", "seconds", "cached"}, ...],
    "failed": [{"what", "cell_id", "reason"}]}. A measurement that fails is named and left to
    the cell, which measures it again itself (and fails there, with its record, if it must); an
    overhead or an optimizer step, which no cell measures, is then missing from the predictions,
    whose source says so."""
    import torch

    from txsuite.config.spec import CellConfig
    from txsuite.measure.device import device_fingerprint

    start = time.perf_counter()
    device = torch.device(payload["device"])
    if payload.get("threads"):
        torch.set_num_threads(int(payload["threads"]))
    device_name = device_fingerprint(torch, device)["device_name"]
    cells = [CellConfig.from_dict(c) for c in payload["configs"]]
    measured: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    done: set[str] = set()

    def once(what: str, cell, key: str, measure) -> Any:
        """measure() unless an equal key was measured already; its time and cache state noted."""
        if key in done:
            return None
        done.add(key)
        t0 = time.perf_counter()
        try:
            result = measure()
        except Exception as exc:  # noqa: BLE001 - the cell will meet it again, with its own record
            failed.append({"what": what, "cell_id": cell.cell_id(), "reason": f"{type(exc).__name__}: {exc}"[:300]})
            return None
        measured.append({"what": what, "cell_id": cell.cell_id(), "seconds": round(time.perf_counter() - t0, 3),
                         "cached": bool(_cached(what, result))})
        return result

    for cell in cells:
        for what, key, measure in cell_measurements(torch, device, device_name, cell):
            once(what, cell, key, measure)
    return {"status": "ok", "seconds": round(time.perf_counter() - start, 3), "measured": measured,
            "failed": failed, "torch_threads": torch.get_num_threads() if device.type == "cpu" else None}


def cell_measurements(torch, device, device_name: str, cell) -> list[tuple[str, str, Any]]:
    """(what, dedup key, zero-argument measurement) of what this cell reads from the host's
    cache: its dataset, its precision's peak, the memory bandwidth, its precision's overhead, its
    optimizer step (one process only), its auto kernels (attention first: the linear trial runs
    the attention kernel chosen)."""
    from txsuite.data import build_dataset
    from txsuite.measure.peak import bandwidth_key, memory_bandwidth, peak_flops, peak_key
    from txsuite.techniques import linear_kernel
    from txsuite.measure.predict import cost_kind
    from txsuite.techniques.kernel_trial import resolve_attention
    from txsuite.train import step_costs

    data_key = json.dumps(dataclasses.asdict(cell.data), sort_keys=True, default=str)
    out: list[tuple[str, str, Any]] = [
        ("dataset", f"data {data_key}", lambda: build_dataset(cell.data, seed=cell.train.seed)),
        ("peak", peak_key(torch, device, cell.precision, device_name),
         lambda: peak_flops(torch, device, cell.precision, device_name)),
        ("bandwidth", bandwidth_key(torch, device, device_name), lambda: memory_bandwidth(torch, device, device_name)),
        ("overhead", f"overhead {cost_kind(cell, 'overhead')}",
         lambda: step_costs.overhead(torch, device, device_name, cell)),
    ]
    if step_costs.measures_optimizer(cell):
        out.append(("optimizer", f"optimizer {cost_kind(cell, 'optimizer')}",
                    lambda: step_costs.optimizer_step(torch, device, device_name, cell)))
    shape = json.dumps([cell.model.dims, cell.model.dropout, cell.data.seq_len, cell.train.micro_batch,
                        cell.precision, cell.parallel.tp])
    if cell.model.attention == "auto" or cell.model.linear == "auto":
        def kernels() -> dict:
            attention = resolve_attention(cell, device)
            facts = dict(attention)
            if cell.model.linear == "auto":
                facts.update(linear_kernel.resolve(cell, device, attention["attention"]))
            return facts
        out.append(("kernels", f"kernels {shape} {cell.model.attention} {cell.model.linear}", kernels))
    return out


def _cached(what: str, result: Any) -> bool:
    """Whether a measurement was read from the host's cache rather than made."""
    if not isinstance(result, dict):
        return False
    if what in ("peak", "bandwidth", "overhead", "optimizer"):
        return result.get(f"{what}_cached", False)
    trials = [v for k, v in result.items() if k.endswith("_auto") and isinstance(v, dict) and "cached" in v]
    return bool(trials) and all(t["cached"] for t in trials)
