"""How `txsuite history` marks steps on real runs: a series of smoke runs in which a ~15 %
slower step is committed part-way, then the history site over all of them.

    python bench/history_evidence.py --runs 30 --change-at 20 --out /tmp/history-evidence [--load]

It clones this checkout's HEAD twice into --out: `same` as it is, and `slow15` with a commit
that adds real work at the end of `Trainer.step` (five iterations of bench/ab_evidence.py's
burn, ~15 % of a smoke step). Runs 1 .. change-at - 1 come from `same`, the rest from `slow15`,
each `txsuite run matrices/smoke.yaml --no-report` into one results folder; then `txsuite
history` over it. It prints every step found, and whether it lies where the change was
committed: between run change-at - 1 and run change-at. `--load` keeps another process busy
40 s of every 100 s (ab_evidence's neighbour).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_evidence import SLOW, VARIANTS, neighbour_if, prepare  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS["slow15"] = (SLOW[0].replace("~25 %", "~15 %").replace("_burn()", "_burn15()"),
                      SLOW[1].replace("def _burn()", "def _burn15()").replace("range(6)", "range(5)"))


def clone(out: Path, variant: str) -> Path:
    """ab_evidence's clone of HEAD with the variant's edit, committed: each side has a commit
    of its own, as the history orders and shows them."""
    path = prepare(variant, out)
    if VARIANTS[variant]:
        subprocess.run(["git", "-C", str(path), "-c", "user.name=bench", "-c", "user.email=bench@localhost",
                        "commit", "-qam", f"{variant}: a slower step"], check=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--change-at", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("/tmp/history-evidence"))
    parser.add_argument("--load", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    before, after = clone(args.out, "same"), clone(args.out, "slow15")
    results = args.out / "results"
    with neighbour_if(args.load):
        for n in range(1, args.runs + 1):
            source = before if n < args.change_at else after
            run_id = f"run{n:02d}"
            if (results / "smoke" / run_id / "matrix.json").exists():
                continue
            proc = subprocess.run([sys.executable, "-m", "txsuite.cli", "run", "matrices/smoke.yaml", "--run-id",
                                   run_id, "--results-dir", str(results), "--no-report"], cwd=source,
                                  capture_output=True, text=True, env=_env(source))
            print(f"{run_id} from {source.name}: exit {proc.returncode}", flush=True)
    site = args.out / "site"
    subprocess.run([sys.executable, "-m", "txsuite.cli", "history", str(results), "-o", str(site)], check=True,
                   cwd=REPO)
    changes = json.loads((site / "history.json").read_text())["changes"]
    expected = (f"run{args.change_at - 1:02d}", f"run{args.change_at:02d}")
    for c in changes:
        where = (c["before"]["run_id"], c["after"]["run_id"])
        print(f"{c['cell']:40s} {c['metric']:16s} {c['words']:8s} {c['ratio']:.3f} "
              f"[{c['low'] or 0:.3f}, {c['high'] or 0:.3f}] {where[0]} -> {where[1]}"
              f"{'' if c['confirmed'] else ' (to confirm)'} {'AT THE CHANGE' if where == expected else 'elsewhere'}")
    timed = [c for c in changes if c["metric"] in ("tokens_per_s", "mfu")]
    print(f"time steps at the change: {sum((c['before']['run_id'], c['after']['run_id']) == expected for c in timed)}; "
          f"elsewhere: {sum((c['before']['run_id'], c['after']['run_id']) != expected for c in timed)}")


def _env(source: Path) -> dict:
    import os
    return {**os.environ, "PYTHONPATH": str(source)}


if __name__ == "__main__":
    main()
