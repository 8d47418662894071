"""How well the speed model predicts tokens/s on the records of earlier evidence runs: as a new
host (the uncorrected sum of the measured parts) and after the run's precision.yaml (fitted on
its records, as `txsuite run` fits on a host's earlier repetitions).

    python bench/predict_speed.py /tmp/predict3 /tmp/predict4 ...   # bench/predict_evidence.py's --out folders
    python bench/predict_speed.py --measure /tmp/predict3 ...       # first measure what a folder's cache lacks

Each repetition's own matmul peak is used, and its recorded `memory_bandwidth` (else the
folder's cached one, or --bandwidth for folders from before it was measured, as measured on
the same host); the per-operator overhead and the optimizer steps come from the folder's
cache (peaks.json), where the host setup of the run that wrote it measured them. Folders from
before those measurements existed lack them: `--measure` measures them now, on this host, into
that folder's cache (txsuite.train.step_costs, as the host setup would; run it with nothing else
on the cores), and says so. Prints, per matrix and folder, the median over its cells of
|predicted / measured tokens/s - 1| and the worst cell.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from txsuite.config.spec import CellConfig  # noqa: E402
from txsuite.measure.predict import HostModel, Observation  # noqa: E402
from txsuite.results import RunFolder  # noqa: E402


def matrices(folder: Path) -> dict[str, dict[str, list]]:
    """matrix -> cell id -> its ok repetitions with a step time and a peak."""
    out: dict[str, dict[str, list]] = {}
    for run in sorted((folder / "results").glob("*/*")):
        for r in RunFolder(run).records():
            if r.status == "ok" and r.metrics.get("step_time_p50_s") and r.metrics.get("peak_flops"):
                out.setdefault(run.parent.name, {}).setdefault(r.cell_id, []).append(r)
    return out


def measure_missing(configs: list[CellConfig]) -> int:
    """Measure the overheads and optimizer steps the current cache lacks; -> how many."""
    import torch

    from txsuite.measure.env import cpu_model
    from txsuite.train import step_costs
    made = 0
    for config in configs:
        threads = config.measure.threads or len(os.sched_getaffinity(0))
        torch.set_num_threads(threads)
        device = torch.device("cpu")
        made += not step_costs.overhead(torch, device, cpu_model(), config)["overhead_cached"]
        if step_costs.measures_optimizer(config):
            made += not step_costs.optimizer_step(torch, device, cpu_model(), config)["optimizer_cached"]
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--measure", action="store_true", help="measure what a folder's cache lacks, now, here")
    parser.add_argument("--bandwidth", type=float, help="bytes/s for folders from before the bandwidth was measured")
    args = parser.parse_args()
    if args.measure:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # the cells' setting (measure/peak.py, CELL_SPINCOUNT)
    for folder in args.folders:
        os.environ["TXSUITE_CACHE"] = str(folder / "cache")
        from txsuite.run.observed import Predictor  # noqa: E402 - reads TXSUITE_CACHE per call
        data = matrices(folder)
        configs = {r.cell_id: CellConfig.from_dict(r.config) for cells in data.values() for rs in cells.values()
                   for r in rs}
        if args.measure:
            made = measure_missing(list(configs.values()))
            print(f"{folder}: measured {made} overheads and optimizer steps now, here")
        lookup = Predictor()

        def observation(r) -> Observation:
            config = configs[r.cell_id]
            costs = lookup.costs(config)
            costs = replace(costs, peak_flops=r.metrics["peak_flops"],
                            bandwidth=r.metrics.get("memory_bandwidth") or costs.bandwidth or args.bandwidth)
            return Observation(config, r.metrics["step_time_p50_s"], None, costs, r.metrics.get("attention"))

        fitted = HostModel.fit([observation(r) for rs in data.get("precision", {}).values() for r in rs]) \
            if "precision" in data else None
        for matrix, cells in data.items():
            line = []
            for way, model in (("new host", HostModel.fit([])), ("after precision", fitted)):
                if model is None or (way == "after precision" and matrix == "precision"):
                    continue
                errors = []
                for cell_id, records in cells.items():
                    o = observation(records[0])
                    predicted = model.predict(o.config, o.costs).step_s
                    measured = statistics.median(r.metrics["step_time_p50_s"] for r in records)
                    if predicted:
                        errors.append((abs(measured / predicted - 1), records[0].label))
                if errors:
                    worst = max(errors)
                    line.append(f"{way} {statistics.median(e for e, _ in errors):.0%} (worst {worst[0]:.0%}: "
                                f"{worst[1][:60]})")
            print(f"{folder.name} {matrix}: {'; '.join(line)}")


if __name__ == "__main__":
    main()
