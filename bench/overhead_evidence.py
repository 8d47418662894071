"""Issue 31's evidence: what each cell pays outside its steps on a fresh host, whether two runs'
MFU move as their tokens/s do, and (optionally) whether `attention: auto` chose the kernel
whose whole step was faster.

    python bench/overhead_evidence.py --out /tmp/overhead-evidence                 # precision.yaml
    python bench/overhead_evidence.py --out /tmp/overhead-evidence --check-choice  # + pinned kernels

Run it on a quiet host (nothing else on the cores): the figures are timings.

1. The cache folder --out/cache is emptied, so the first run meets a fresh host; the matrix then
   runs twice back to back (`txsuite run --no-report`, run ids ev1 and ev2, the same cache).
2. Per run: the sweep's setup (host_setup.json: the one-time host measurements, outside every
   cell), then each repetition's `cell_overhead_s` in the order they ran: the first cell's, the
   median, the largest, and the first cell's phases. Target: median <= 1.0 s, the first cell
   included.
3. Per cell and repetition in both runs: MFU(ev2)/MFU(ev1) beside tokens/s(ev2)/tokens/s(ev1),
   and whether both records name the same peak (`mfu_peak.key` and `flops`). With one peak the
   two ratios are equal; the table's last column is their difference.
4. --check-choice: the matrix runs again with model.attention pinned to each kernel; per cell,
   auto's choice (and its block-trial times) beside each pinned kernel's measured step time, and
   whether auto picked the one whose step was faster.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from txsuite.results import RunFolder  # noqa: E402

OVERHEAD_TARGET_S = 1.0


def run(matrix: str, run_id: str, out: Path, env: dict, overrides: list[str] = ()) -> Path:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "txsuite.cli", "run", matrix, *overrides, "--run-id", run_id,
                           "--no-report", "--results-dir", str(out / "results")], env=env, cwd=REPO,
                          capture_output=True, text=True)
    print(f"{run_id}: txsuite run {matrix} {' '.join(overrides)} -> exit {done.returncode} in "
          f"{time.monotonic() - started:.1f} s")
    if done.returncode not in (0, 1):
        print(done.stdout[-2000:], done.stderr[-2000:])
    return next((out / "results").glob(f"*/{run_id}"))


def ran(run_dir: Path) -> list:
    """The run's ok records in the order they started."""
    return sorted((r for r in RunFolder(run_dir).records() if r.status == "ok"), key=lambda r: r.started_at or "")


def overheads(run_dir: Path) -> None:
    setup_file = run_dir / "host_setup.json"
    setup = json.loads(setup_file.read_text()) if setup_file.exists() else {}
    groups = ", ".join(f"{g.get('device')} threads {g.get('threads') or 'default'}: {g.get('seconds')} s, "
                       f"{g.get('status')}" for g in setup.get("groups", []))
    print(f"\n{run_dir.name}: the sweep's setup {setup.get('seconds', 'n/a')} s ({groups or 'none'})")
    records = ran(run_dir)
    paid = [r.metrics.get("cell_overhead_s") for r in records if r.metrics.get("cell_overhead_s") is not None]
    if not paid:
        print("  no ok records with cell_overhead_s")
        return
    first = records[0]
    median = statistics.median(paid)
    print(f"  per-cell overhead: first cell {paid[0]:.2f} s ({first.label}), median {median:.2f} s, "
          f"max {max(paid):.2f} s over {len(paid)} repetitions -> "
          f"{'meets' if median <= OVERHEAD_TARGET_S and paid[0] <= OVERHEAD_TARGET_S else 'misses'} "
          f"the {OVERHEAD_TARGET_S} s target (median and first cell)")
    print(f"  first cell's phases: {first.metrics.get('phase_s')}")


def mfu_against_tokens(first: Path, second: Path) -> None:
    a = {(r.cell_id, r.repeat): r for r in ran(first)}
    b = {(r.cell_id, r.repeat): r for r in ran(second)}
    print(f"\nMFU ratio vs tokens/s ratio, {second.name} / {first.name}")
    print("| cell | rep | tokens/s ratio | MFU ratio | same peak | MFU ratio - tokens/s ratio |")
    print("|---|---:|---:|---:|---|---:|")
    worst = 0.0
    for key in sorted(a.keys() & b.keys()):
        ma, mb = a[key].metrics, b[key].metrics
        if not (ma.get("mfu") and mb.get("mfu")):
            continue
        speed, mfu = mb["tokens_per_s"] / ma["tokens_per_s"], mb["mfu"] / ma["mfu"]
        pa, pb = ma.get("mfu_peak") or {}, mb.get("mfu_peak") or {}
        same = pa.get("key") == pb.get("key") and pa.get("flops") == pb.get("flops")
        worst = max(worst, abs(mfu - speed))
        print(f"| {a[key].label} | {key[1]} | {speed:.4f} | {mfu:.4f} | {'yes' if same else 'NO: ' + str(pb.get('flops'))} "
              f"| {mfu - speed:+.2e} |")
    print(f"largest |MFU ratio - tokens/s ratio|: {worst:.2e}")


def choice_against_step(auto_run: Path, pinned: dict[str, Path]) -> None:
    def cell_key(r) -> str:
        config = json.loads(json.dumps(r.config))
        config["model"].pop("attention", None)
        return json.dumps(config, sort_keys=True)

    def step_p50(run_dir: Path) -> dict[str, float]:
        steps: dict[str, list[float]] = {}
        for r in ran(run_dir):
            steps.setdefault(cell_key(r), []).append(r.metrics["step_time_p50_s"])
        return {k: statistics.median(v) for k, v in steps.items()}

    pinned_steps = {kernel: step_p50(d) for kernel, d in pinned.items()}
    print("\nattention: auto's choice against the step each kernel produced (median step p50 over repetitions)")
    print("| cell | chosen | block trial (ms) | " + " | ".join(f"step {k} (ms)" for k in pinned) + " | right? |")
    print("|---|---|---|" + "---:|" * len(pinned) + "---|")
    seen = set()
    for r in ran(auto_run):
        key = cell_key(r)
        if key in seen or "attention_auto" not in r.metrics:
            continue
        seen.add(key)
        chosen, times = r.metrics["attention"], r.metrics["attention_auto"]["times_s"]
        steps = {k: pinned_steps[k].get(key) for k in pinned}
        known = {k: v for k, v in steps.items() if v is not None}
        right = (min(known, key=known.get) == chosen) if len(known) == len(pinned) else None
        print(f"| {r.label} | {chosen} | {', '.join(f'{k} {v * 1e3:.2f}' for k, v in times.items())} | "
              + " | ".join("n/a" if v is None else f"{v * 1e3:.2f}" for v in steps.values())
              + f" | {'n/a' if right is None else ('yes' if right else 'NO')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/overhead-evidence"))
    parser.add_argument("--matrix", default="matrices/precision.yaml")
    parser.add_argument("--check-choice", action="store_true", help="also run the matrix with each attention kernel pinned")
    args = parser.parse_args()
    if (args.out / "cache").exists():
        shutil.rmtree(args.out / "cache")  # a fresh host
    if (args.out / "results").exists():
        shutil.rmtree(args.out / "results")
    env = {**os.environ, "TXSUITE_CACHE": str(args.out / "cache")}
    first = run(args.matrix, "ev1", args.out, env)
    second = run(args.matrix, "ev2", args.out, env)
    overheads(first)
    overheads(second)
    mfu_against_tokens(first, second)
    if args.check_choice:
        pinned = {k: run(args.matrix, f"ev-{k}", args.out, env, [f"model.attention={k}"]) for k in ("sdpa", "matmul")}
        choice_against_step(first, pinned)


if __name__ == "__main__":
    main()
