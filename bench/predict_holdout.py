"""How general the memory model is: each matrix predicted by a heap prior fitted without any
record of that matrix (leave one matrix out), on the records of earlier evidence runs.

    python bench/predict_holdout.py /tmp/predict3 /tmp/predict4 ...   # bench/predict_evidence.py's --out folders

For every matrix found it refits `HEAP_PRIOR` on the records of every other matrix, then prints
the median |predicted / measured - 1| of train memory over the matrix's cells, per run: as a new
host predicts it (the prior alone) and after that run's precision.yaml (the prior joined by
precision's records, as txsuite/measure/predict.py fits them). The first line is the fit over
every record: what HEAP_PRIOR holds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import txsuite.measure.predict as predict  # noqa: E402
from txsuite.config.spec import CellConfig  # noqa: E402
from txsuite.results import RunFolder  # noqa: E402


def load(folders: list[Path]) -> dict[Path, dict[str, dict[str, list]]]:
    """evidence folder -> matrix -> cell label -> its ok records with a train memory."""
    data: dict[Path, dict[str, dict[str, list]]] = {}
    for folder in folders:
        for run in sorted((folder / "results").glob("*/*")):
            for r in RunFolder(run).records():
                if r.status == "ok" and r.metrics.get("train_mem_bytes"):
                    data.setdefault(folder, {}).setdefault(run.parent.name, {}).setdefault(r.label, []).append(r)
    return data


def observation(r) -> predict.Observation:
    m = r.metrics
    return predict.Observation(CellConfig.from_dict(r.config), m.get("step_time_p50_s"), m["train_mem_bytes"],
                               predict.HostCosts(peak_flops=m.get("peak_flops")), m.get("attention"))


def observations(data, keep) -> list[predict.Observation]:
    return [observation(r) for folder, matrices in data.items() for name, cells in matrices.items()
            if keep(folder, name) for records in cells.values() for r in records]


def median_error(model: predict.HostModel, cells: dict[str, list]) -> str:
    errors = [abs(model.predict(CellConfig.from_dict(records[0].config)).train_mem_bytes
                  / statistics.median(r.metrics["train_mem_bytes"] for r in records) - 1) for records in cells.values()]
    return f"{statistics.median(errors):.0%} (worst {max(errors):.0%})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+", type=Path)
    data = load(parser.parse_args().folders)
    everything = observations(data, lambda folder, name: True)
    print(f"prior over every record ({len(everything)}): {[f'{c:.3g}' for c in predict.heap_fit(everything)]}")
    for matrix in sorted({name for matrices in data.values() for name in matrices}):
        prior = predict.heap_fit(observations(data, lambda folder, name: name != matrix))
        fresh = [median_error(predict.HostModel.fit([], prior), m[matrix]) for m in data.values() if matrix in m]
        after = [median_error(predict.HostModel.fit(observations(data, lambda f, n: (f, n) == (folder, "precision")),
                                                    prior), m[matrix])
                 for folder, m in data.items() if matrix in m and "precision" in m and matrix != "precision"]
        print(f"{matrix}: fresh host {', '.join(fresh)}; after precision {', '.join(after) or '-'}")


if __name__ == "__main__":
    main()
