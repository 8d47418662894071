"""How far the uncorrected roofline (a new host's speed prediction) is from measured tokens/s:
the matmuls at the matmul peak alone, and with the step's other traffic at the memory bandwidth.

    python bench/predict_roofline.py /tmp/predict3 /tmp/predict4 ... [--bandwidth 1=1.8e10 2=3.7e10]

The folders are bench/predict_evidence.py's --out folders. Each repetition's own matmul peak is
used, and its recorded `memory_bandwidth`; records written before that field existed take the
--bandwidth given for their thread count (measured on the same host with
txsuite.measure.peak.measure_copy_bandwidth). Prints, per matrix, the median over its cells of
|predicted / measured tokens/s - 1|, per folder.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from txsuite.config.spec import CellConfig  # noqa: E402
from txsuite.measure.predict import HostModel  # noqa: E402
from txsuite.results import RunFolder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--bandwidth", nargs="*", default=[], help="THREADS=BYTES_PER_S for records without one")
    args = parser.parse_args()
    given = {int(k): float(v) for k, v in (item.split("=") for item in args.bandwidth)}
    cores = len(os.sched_getaffinity(0))
    new_host = HostModel.fit([])
    errors: dict[str, dict[str, list[list[float]]]] = {}  # matrix -> way -> per folder, cell errors
    for folder in args.folders:
        for run in sorted((folder / "results").glob("*/*")):
            cells: dict[str, list] = {}
            for r in RunFolder(run).records():
                if r.status == "ok" and r.metrics.get("tokens_per_s") and r.metrics.get("peak_flops"):
                    cells.setdefault(r.cell_id, []).append(r)
            ways: dict[str, list[float]] = {"matmuls alone": [], "with the traffic": []}
            for records in cells.values():
                r = records[0]
                config = CellConfig.from_dict(r.config)
                bandwidth = r.metrics.get("memory_bandwidth") or given.get(config.measure.threads or cores)
                measured = statistics.median(x.metrics["tokens_per_s"] for x in records)
                for way, bw in (("matmuls alone", None), ("with the traffic", bandwidth)):
                    predicted = new_host.predict(config, r.metrics["peak_flops"], bw).tokens_per_s
                    ways[way].append(abs(predicted / measured - 1))
            for way, values in ways.items():
                if values:
                    errors.setdefault(run.parent.name, {}).setdefault(way, []).append(values)
    for matrix, ways in sorted(errors.items()):
        line = "; ".join(f"{way} {', '.join(f'{statistics.median(v):.0%}' for v in runs)}" for way, runs in ways.items())
        print(f"{matrix}: {line}")


if __name__ == "__main__":
    main()
