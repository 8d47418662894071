"""Does a run folder cost the same per record at 20 records as at 20,000? (issue 28)

    python bench/store_scale.py [--records 20000] [--appends 40] [--dir DIR]

A sweep appends one record per finished repetition (RunFolder.append); an append that rewrote
the file made a large sweep pay O(N^2) (7.3 s for one append at 5,000 records of 11 kB). This
times appends to a run folder holding 20 records and to one holding --records, interleaved one
by one (a shared host's drift then hits both alike), each append of a record shaped like a real
one (~11 kB: 300-step loss curve and step times), and prints the medians and their ratio: the
judged figure, which should stay within 2x. It also times RunFolder.load() at a quarter of
--records and at --records (what the report reads first), which should grow about linearly.

The large folder is filled by writing its lines directly (fsyncing 20,000 appends would time the
disk, not the store); the appends timed are RunFolder.append, fsync included, so the figures
depend on the disk under --dir (default: the system's temporary folder).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from txsuite.config.record import Record  # noqa: E402
from txsuite.results import RunFolder  # noqa: E402


def record(i: int) -> Record:
    """A record of the size and shape the worker writes (~11 kB of JSON)."""
    rng = random.Random(i)
    steps = [round(0.05 + rng.random() * 0.01, 6) for _ in range(300)]
    return Record(matrix="scale", run_id="r", cell_id=f"c{i // 3:06d}", repeat=i % 3, status="ok",
                  label=f"cell {i // 3}", config={"model": {"n_layer": 2, "d_model": 64}, "train": {"steps": 300},
                                                  "precision": "fp32"},
                  env={"host": "bench", "cpu": "x86_64"},
                  metrics={"tokens_per_s": 1000.0 + i, "step_time_p50_s": statistics.median(steps),
                           "step_times_s": steps,
                           "loss_curve": [[s, round(s * 0.05, 3), round(5 - s / 100, 4)] for s in range(1, 301)]},
                  started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:00:20+00:00", duration_s=20.0)


def fill(folder: RunFolder, n: int) -> None:
    folder.create()
    with open(folder.records_path, "w") as fh:
        for i in range(n):
            fh.write(record(i).to_json() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--appends", type=int, default=40, help="appends timed in each folder")
    parser.add_argument("--dir", default=None, help="where the two run folders are made (removed after)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="store-scale-", dir=args.dir))
    try:
        small, large = RunFolder(root / "small"), RunFolder(root / "large")
        fill(small, 20)
        fill(large, args.records)
        size = large.records_path.stat().st_size
        print(f"large folder: {args.records:,} records, {size / 1e6:,.0f} MB ({size / args.records / 1e3:.1f} kB each)")
        times: dict[str, list[float]] = {"small": [], "large": []}
        new = [record(10**7 + i) for i in range(2 * args.appends)]
        for i in range(args.appends):
            order = [("small", small), ("large", large)] if i % 2 == 0 else [("large", large), ("small", small)]
            for name, folder in order:
                rec = new.pop()
                t0 = time.perf_counter()
                folder.append(rec)
                times[name].append(time.perf_counter() - t0)
        a, b = statistics.median(times["small"]), statistics.median(times["large"])
        print(f"append at {20:>6,} records: median {a * 1e3:.2f} ms (min {min(times['small']) * 1e3:.2f})")
        print(f"append at {args.records:>6,} records: median {b * 1e3:.2f} ms (min {min(times['large']) * 1e3:.2f})")
        print(f"ratio large/small: {b / a:.2f} (judged: within 2x)")
        quarter = RunFolder(root / "quarter")
        fill(quarter, args.records // 4)
        for name, folder, n in (("quarter", quarter, args.records // 4), ("large", large, args.records)):
            t0 = time.perf_counter()
            run = folder.load()
            took = time.perf_counter() - t0
            print(f"load() of {len(run.records):>6,} records: {took:.2f} s ({took / n * 1e6:.0f} us per record)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
