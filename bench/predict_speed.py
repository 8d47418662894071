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
|predicted / measured tokens/s - 1| and the worst cell. `--prior` first prints the speed prior
the records of every folder give (a and e fitted on all of them, no prior: how SPEED_PRIOR was
made).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from txsuite.config.spec import CellConfig  # noqa: E402
from txsuite.measure.predict import HostModel, Observation  # noqa: E402
from txsuite.results import RunFolder  # noqa: E402
from txsuite.verdict import state  # noqa: E402


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
    parser.add_argument("--prior", action="store_true", help="print the speed prior every folder's records give")
    args = parser.parse_args()
    if args.measure:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # the cells' setting (measure/peak.py, CELL_SPINCOUNT)
    loaded = {folder: load(folder, args) for folder in args.folders}
    if args.prior:
        everything = [o for data in loaded.values() for cells in data.values() for os_ in cells.values() for o in os_]
        pooled = HostModel.fit(everything, speed_prior=None)
        print(f"speed prior over {pooled.speed_fitted_on} repetitions: a {pooled.speed[0]:.3g}, e "
              f"{pooled.speed[1]:.3g} (relative sd of the fit {pooled.speed_error:.2f})")
    for folder, data in loaded.items():
        fitted = HostModel.fit([o for os_ in data["precision"].values() for o in os_]) if "precision" in data else None
        for matrix, cells in data.items():
            line = []
            for way, model in (("new host", HostModel.fit([])), ("after precision", fitted)):
                if model is None or (way == "after precision" and matrix == "precision"):
                    continue
                errors = []
                for label, observations in cells.items():
                    o = observations[0]
                    predicted = model.predict(o.config, o.costs).step_s
                    measured = statistics.median(x.measured_s for x in observations)
                    if predicted:
                        errors.append((abs(measured / predicted - 1), label))
                if errors:
                    worst = max(errors)
                    line.append(f"{way} {statistics.median(e for e, _ in errors):.1%} (worst {worst[0]:.0%}: "
                                f"{worst[1][:60]})")
            print(f"{folder.name} {matrix}: {'; '.join(line)}")


@dataclass(frozen=True)
class Measured(Observation):
    """An observation with its raw median step time, the figure a prediction is judged against
    (the fit's `step_s` is None for a repetition in a slow state)."""
    measured_s: float = 0.0


def load(folder: Path, args) -> dict[str, dict[str, list[Measured]]]:
    """matrix -> cell label -> its repetitions as the speed model observes them."""
    os.environ["TXSUITE_CACHE"] = str(folder / "cache")
    from txsuite.run.observed import Predictor  # noqa: E402 - reads TXSUITE_CACHE per call
    data = matrices(folder)
    configs = {r.cell_id: CellConfig.from_dict(r.config) for cells in data.values() for rs in cells.values()
               for r in rs}
    if args.measure:
        made = measure_missing(list(configs.values()))
        print(f"{folder}: measured {made} overheads and optimizer steps now, here")
    lookup = Predictor()

    def observation(r) -> Measured:
        config = configs[r.cell_id]
        cached = lookup.costs(config)
        costs = replace(cached, peak_flops=r.metrics["peak_flops"],
                        bandwidth=r.metrics.get("memory_bandwidth") or cached.bandwidth or args.bandwidth)
        machine = state.of(r.metrics)  # a slow state left out, as observed.py does
        return Measured(config, None if machine.slow else r.metrics["step_time_p50_s"], None, costs,
                        r.metrics.get("attention"), machine.factor or 1.0, r.metrics["step_time_p50_s"])

    return {matrix: {records[0].label: [observation(r) for r in records] for records in cells.values()}
            for matrix, cells in data.items()}


if __name__ == "__main__":
    main()
