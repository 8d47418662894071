"""How `txsuite ab` decides on real runs: unchanged code, code slowed ~25 % or ~10 % per step,
and code with one extra 384x384 matmul per step, each guarded N times with the CI recipe.

    python bench/ab_evidence.py --trials 10 --out /tmp/ab-evidence [--load] [--variants same,slow,slow10,matmul]

For every variant it clones this checkout (HEAD) into a scratch folder, edits the clone's
working tree (`Trainer.step` gains real extra work; `same` edits nothing), and runs, from the
clone, `txsuite ab matrices/smoke.yaml --base HEAD` (the head side is the edited working tree)
`--trials` times. `--load` starts another process that keeps both cores busy for 40 s out of
every 100 s, as a shared CI runner has. It prints one line per run and a summary table in
Markdown (the table of docs/guard.md), and keeps every A/B folder under --out.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINER = "txsuite/train/trainer.py"
ANCHOR = "        self.apply_gradients()\n        return total\n"  # the end of Trainer.step

# ~25 % of the smoke matrix's plain fp32 step (20 ms at one thread on this machine): six
# 256x256 matmuls with an element-wise op each, ~5 ms of real work inside every step (measured: the
# paired ratio comes out near 0.8, i.e. a step 25 % longer)
SLOW = ("        _burn()  # bench/ab_evidence.py: real extra work, ~25 % of a smoke step\n",
        """

_BURN = [torch.randn(256, 256, generator=torch.Generator().manual_seed(0)) for _ in range(2)]


def _burn() -> None:
    a, b = _BURN
    for _ in range(6):
        a = torch.tanh(a @ b * 0.01)
""")
MATMUL = ("        _extra()  # bench/ab_evidence.py: one 384x384 matmul per step\n",
          """

_EXTRA = torch.randn(384, 384, generator=torch.Generator().manual_seed(0))


def _extra() -> None:
    _EXTRA @ _EXTRA
""")
# the same work, three iterations instead of six: ~10 % slower (each iteration cost ~3 % of a
# smoke step on the AVX512-BF16 runner of 2026-12-06)
SLOW10 = (SLOW[0].replace("~25 %", "~10 %").replace("_burn()", "_burn10()"),
          SLOW[1].replace("def _burn()", "def _burn10()").replace("range(6)", "range(3)"))
VARIANTS = {"same": None, "slow": SLOW, "slow10": SLOW10, "matmul": MATMUL}


def prepare(variant: str, scratch: Path) -> Path:
    """A clone of this checkout's HEAD whose working tree has the variant's edit: a call at the
    end of Trainer.step, and the function it calls at the end of the module."""
    clone = scratch / variant
    if not clone.exists():
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", "--", "."], check=True)
    patch = VARIANTS[variant]
    if patch:
        call, helper = patch
        path = clone / TRAINER
        text = path.read_text()
        if ANCHOR not in text:
            raise SystemExit(f"{TRAINER} changed: the patch anchor is gone")
        path.write_text(text.replace(ANCHOR, call + ANCHOR, 1) + helper)
    return clone


def neighbour(stop_at: float) -> None:
    """Another process on the cores: busy 40 s, idle 60 s, until stop_at."""
    import torch
    torch.set_num_threads(2)
    a = torch.randn(1024, 1024)
    while time.time() < stop_at:
        busy_until = time.time() + 40
        while time.time() < min(busy_until, stop_at):
            a = a @ a * 1e-3
        time.sleep(min(60, max(0.0, stop_at - time.time())))


@contextlib.contextmanager
def neighbour_if(enabled: bool):
    """With `enabled`, another process runs `neighbour` for as long as the block does."""
    load = None
    if enabled:
        load = multiprocessing.Process(target=neighbour, args=(time.time() + 24 * 3600,), daemon=True)
        load.start()
    try:
        yield
    finally:
        if load is not None:
            load.terminate()


def txsuite_run(folder: Path, matrix: str, run_id: str, code: Path = REPO) -> None:
    """One `txsuite run` of `matrix` (a file in `folder`) with `code`'s txsuite, records only;
    prints how it ended and how long it took."""
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "txsuite.cli", "run", matrix, "--run-id", run_id, "--no-report"],
                          cwd=folder, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(code)})
    print(f"{run_id}: exit {proc.returncode} in {time.time() - started:.0f} s", flush=True)


def run_one(clone: Path, out: Path, run_id: str) -> dict:
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "txsuite.cli", "ab", "matrices/smoke.yaml", "--base", "HEAD",
                           "--results-dir", str(out), "--run-id", run_id], cwd=clone, capture_output=True, text=True)
    verdict_file = out / "ab" / "smoke" / run_id / "ab.json"
    verdict = json.loads(verdict_file.read_text()) if verdict_file.exists() else {}
    rows = verdict.get("rows", [])
    return {"exit": proc.returncode, "verdict": verdict.get("verdict", f"error ({proc.returncode})"),
            "rounds": verdict.get("rounds"), "minutes": (time.time() - started) / 60,
            "ratios": [(r["label"], r["ratio"], r["ci"], r["verdict"]) for r in rows],
            "counters": verdict.get("counters", []), "machine": verdict.get("machine_state", []),
            "stderr": proc.stderr[-500:] if proc.returncode == 2 else ""}


def describe(result: dict) -> str:
    """One A/B's verdict line: verdict, rounds, minutes, each cell's ratio, interval and verdict."""
    ratios = "; ".join(f"{label.split('=')[-1]} {ratio:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] {v}"
                       for label, ratio, ci, v in result["ratios"] if ratio and ci)
    return f"{result['verdict']} after {result['rounds']} rounds ({result['minutes']:.1f} min): {ratios}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ab-evidence"))
    parser.add_argument("--variants", default="same,slow,matmul")
    parser.add_argument("--load", action="store_true", help="another process busy 40 s of every 100 s")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    with neighbour_if(args.load):
        for variant in args.variants.split(","):
            clone = prepare(variant, args.out / "clones")
            for trial in range(args.trials):
                result = run_one(clone, args.out / variant, f"t{trial}")
                results.setdefault(variant, []).append(result)
                print(f"{variant} {trial}: {describe(result)}; counters: {result['counters'] or 'identical'}"
                      + (f"; {result['stderr']}" if result["stderr"] else ""), flush=True)
                (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print("\n| code | runs | PASS | FAIL | INCONCLUSIVE | counters report a change | median rounds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant, runs in results.items():
        n = len(runs)
        count = {v: sum(r["verdict"] == v for r in runs) for v in ("PASS", "FAIL", "INCONCLUSIVE")}
        changed = sum(bool(r["counters"]) for r in runs)
        rounds = sorted(r["rounds"] or 0 for r in runs)[n // 2]
        print(f"| {variant} | {n} | {count['PASS']} | {count['FAIL']} | {count['INCONCLUSIVE']} | {changed} | {rounds} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
