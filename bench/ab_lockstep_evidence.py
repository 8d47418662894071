"""Does step lockstep make `txsuite ab` decide better? Unchanged code, a step exactly 10 % and
5 % slower, and ~10 % of real extra work, each guarded N times with `txsuite ab
matrices/smoke.yaml --base HEAD`, alternating --lockstep and --no-lockstep (the default).

    python bench/ab_lockstep_evidence.py --trials 10 --out /tmp/ab-lockstep [--load]
        [--variants same,spin10,spin5,slow10] [--modes lockstep,no-lockstep] [--max-rounds N] [--min-rounds N]

For every variant it clones this checkout's HEAD into a scratch folder and edits the clone's
working tree (bench/ab_evidence.py's `prepare`; `same` edits nothing), then runs `txsuite ab`
from the clone (head: the edited working tree, base: its HEAD), the modes alternating trial by
trial. `spinN` (spin10, spin5, any whole N) ends every `Trainer.step` busy for N % of the
step's own time so far, so the step is that much slower on any host and under any load;
`slow10` is ab_evidence's real work (three 256x256 matmuls per step, ~10 % of a smoke step on
the host it was sized on). `--load` keeps another process busy on both cores 40 s of every
100 s. `--threshold METRIC=CHANGE` is passed to every `txsuite ab` (the smoke matrix guards
tokens_per_s: -5%).

Mind the line: a step exactly 5 % slower is a tokens/s ratio of 1/1.05 = 0.952, inside the
smoke matrix's -5 % limit, so its right verdict there is not FAIL (its interval holds 0.95).
To ask whether a 5 % change is caught, run spin5 with `--threshold tokens_per_s=-3%` (and
`same` with it too, for the false FAILs), or spin6 and up at the matrix's -5 %.

Prints one line per A/B (verdict, rounds, minutes, each cell's ratio and interval) and a
Markdown table per variant and mode: the verdict counts, the median and the longest wall time,
and how many took over 6 minutes. Every A/B folder is kept under --out, results.json beside.
What the issue asks (run it idle, then with --load): unchanged code PASS >= 8/10 idle and
>= 6/10 loaded, FAIL 0/20; spin10 FAIL >= 9/10; spin5 FAIL >= 8/10 idle; each within 6 minutes.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import ab_evidence as kit  # bench/ is this script's folder, first on sys.path

START = "        self.model.train()\n        total = torch.zeros((), device=self.device)\n"  # Trainer.step begins
SPIN_HELPER = '''

import time as _spin_time


def _spin_after(started: float, fraction: float) -> None:
    """bench/ab_lockstep_evidence.py: busy for `fraction` of this step's time so far, so that
    the step is exactly that much slower on any host, idle or loaded."""
    until = _spin_time.perf_counter() + fraction * (_spin_time.perf_counter() - started)
    while _spin_time.perf_counter() < until:
        pass
'''
SPIN = re.compile(r"^spin(\d+)$")  # spinN: N % slower


def prepare(variant: str, scratch: Path) -> Path:
    """A clone of HEAD with the variant's edit in its working tree."""
    spin = SPIN.match(variant)
    if spin:
        return spin_clone(variant, scratch, repr(int(spin.group(1)) / 100))
    return kit.prepare(variant, scratch)


def spin_clone(name: str, scratch: Path, fraction: str, module_tail: str = "") -> Path:
    """A clone of HEAD (scratch/name) whose Trainer.step ends busy for `fraction` (a Python
    expression, evaluated in the step: `self` is the trainer) of its own time; `module_tail` is
    appended to the trainer module (what the expression reads)."""
    kit.VARIANTS.setdefault(name, None)  # a plain clone first, then the two-anchor edit below
    clone = kit.prepare(name, scratch)
    path = clone / kit.TRAINER
    text = path.read_text()
    if START not in text or kit.ANCHOR not in text:
        raise SystemExit(f"{kit.TRAINER} changed: the patch anchors are gone")
    text = text.replace(START, "        _spin_started = _spin_time.perf_counter()\n" + START, 1)
    # between apply_gradients and return: the whole step is timed before the spin
    last, ret = kit.ANCHOR.splitlines(keepends=True)
    text = text.replace(kit.ANCHOR, last + f"        _spin_after(_spin_started, {fraction})\n" + ret, 1)
    path.write_text(text + SPIN_HELPER + module_tail)
    return clone


def run_ab(clone: Path, out: Path, run_id: str, mode: str, thresholds: list[str], extra: list[str] = ()) -> dict:
    """One `txsuite ab` from the clone; what it decided and how long it took."""
    started = time.time()
    cmd = [sys.executable, "-m", "txsuite.cli", "ab", "matrices/smoke.yaml", "--base", "HEAD",
           "--results-dir", str(out), "--run-id", run_id] + (["--lockstep"] if mode == "lockstep" else ["--no-lockstep"])
    cmd += [arg for threshold in thresholds for arg in ("--threshold", threshold)] + list(extra)
    proc = subprocess.run(cmd, cwd=clone, capture_output=True, text=True)
    verdict_file = out / "ab" / "smoke" / run_id / "ab.json"
    verdict = json.loads(verdict_file.read_text()) if verdict_file.exists() else {}
    return {"mode": mode, "exit": proc.returncode, "verdict": verdict.get("verdict", f"error ({proc.returncode})"),
            "rounds": verdict.get("rounds"), "minutes": (time.time() - started) / 60,
            "ratios": [(r["label"], r["ratio"], r["ci"], r["verdict"]) for r in verdict.get("rows", [])],
            "notes": [n for n in verdict.get("notes", []) if "lockstep" in n or "alternating" in n],
            "stderr": proc.stderr[-500:] if proc.returncode == 2 else ""}


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| code | mode | runs | PASS | FAIL | INCONCLUSIVE | median rounds | median min | max min | over 6 min |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, runs in results.items():
        for mode in dict.fromkeys(r["mode"] for r in runs):
            mine = [r for r in runs if r["mode"] == mode]
            count = {v: sum(r["verdict"] == v for r in mine) for v in ("PASS", "FAIL", "INCONCLUSIVE")}
            minutes = [r["minutes"] for r in mine]
            rounds = statistics.median(r["rounds"] or 0 for r in mine)
            lines.append(f"| {variant} | {mode} | {len(mine)} | {count['PASS']} | {count['FAIL']} | "
                         f"{count['INCONCLUSIVE']} | {rounds:g} | {statistics.median(minutes):.1f} | "
                         f"{max(minutes):.1f} | {sum(m > 6 for m in minutes)} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="A/B jobs per variant and mode")
    parser.add_argument("--out", type=Path, default=Path("/tmp/ab-lockstep"))
    parser.add_argument("--variants", default="same,spin10,spin5")
    parser.add_argument("--modes", default="lockstep,no-lockstep", help="alternated trial by trial")
    parser.add_argument("--load", action="store_true", help="another process busy 40 s of every 100 s")
    parser.add_argument("--threshold", action="append", default=[], metavar="METRIC=CHANGE",
                        help="passed to every txsuite ab, e.g. tokens_per_s=-3%% (repeatable)")
    parser.add_argument("--max-rounds", type=int, help="passed to every txsuite ab (its default otherwise)")
    parser.add_argument("--min-rounds", type=int, help="passed to every txsuite ab; with --max-rounds the same, "
                        "every A/B runs that many rounds (for bench/ab_between.py)")
    args = parser.parse_args(argv)
    extra = ["--max-rounds", str(args.max_rounds)] if args.max_rounds else []
    extra += ["--min-rounds", str(args.min_rounds)] if args.min_rounds else []
    args.out.mkdir(parents=True, exist_ok=True)
    modes = args.modes.split(",")
    results: dict[str, list[dict]] = {}
    with kit.neighbour_if(args.load):
        for variant in args.variants.split(","):
            clone = prepare(variant, args.out / "clones")
            for trial in range(args.trials):
                # the modes alternate, and which goes first alternates too: neither owns a quiet hour
                for mode in (modes if trial % 2 == 0 else modes[::-1]):
                    result = run_ab(clone, args.out / variant / mode, f"t{trial}", mode, args.threshold, extra)
                    results.setdefault(variant, []).append(result)
                    print(f"{variant} {mode} {trial}: {kit.describe(result)}"
                          + (f"; {result['stderr']}" if result["stderr"] else ""), flush=True)
                    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'with a neighbour busy 40 s of every 100 s' if args.load else 'idle'}"
          f"{', ' + ', '.join(args.threshold) if args.threshold else ''}"
          f"{', --max-rounds ' + str(args.max_rounds) if args.max_rounds else ''}:\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
