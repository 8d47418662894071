"""The GPU check's summary (bench/gpu_check.sh, step 4): one line per cell, the MFU headline,
energy per token, and the verdict. Reads only the run folder's JSON; prints to stdout.

    python bench/gpu_summary.py RUN_DIR TESTS_RC MFU_RC MATRIX_RC ELAPSED_S REHEARSAL

Stdlib only: it must run with whatever interpreter the check found.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# The cells the MFU target is about (matrices/gpu.yaml: bf16, compiled, 16 x 1024 tokens).
# Every cell's MFU is against its own precision's measured peak, so a cell with a slow peak
# (fp32 on CUDA cores) can score higher without being what the target asks about.
MFU_PRESETS = ("1.3b", "gpt2-350m")


def fmt(value, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "-" if value is None else f"{value * scale:{spec}}{unit}"


def load(run_dir: Path) -> tuple[list[dict], list[str]]:
    """(records, planned cell labels) of a run folder; either may be empty."""
    records = []
    if (run_dir / "records.jsonl").exists():
        records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines() if line.strip()]
    planned = []
    if (run_dir / "matrix.json").exists():
        matrix = json.loads((run_dir / "matrix.json").read_text())
        planned = [c.get("label") for c in matrix.get("cells", [])] if isinstance(matrix, dict) else []
    return records, planned


def mfu_headline(records: list[dict]) -> list[str]:
    """'MFU reached' lines: the MFU cells', best first; the bf16 cells' if none finished ok."""
    ok = [r for r in records if r["status"] == "ok" and (r.get("metrics") or {}).get("mfu") is not None]
    lines = []
    chosen = [r for r in ok if (r.get("config") or {}).get("model", {}).get("preset") in MFU_PRESETS]
    if not chosen:
        chosen = [r for r in ok if (r.get("config") or {}).get("precision") == "bf16"]
        if chosen:
            lines.append("MFU cells (1.3B, 350M) did not finish ok; the bf16 cells stand in:")
    for r in sorted(chosen, key=lambda r: -r["metrics"]["mfu"]):
        m = r["metrics"]
        lines.append(f"MFU reached: {m['mfu']:.1%} of the measured {m.get('peak_flops', 0) / 1e12:.0f} TFLOP/s "
                     f"peak (HFU {fmt(m.get('hfu'), '.1%')}; vs nominal {fmt(m.get('mfu_nominal'), '.1%')}, "
                     f"{fmt(m.get('nominal_peak_flops'), '.0f', 1e-12)} TFLOP/s) in '{r.get('label')}'")
    return lines


def summary(run_dir: Path, tests_rc: int, mfu_rc: int, matrix_rc: int, elapsed: int, rehearsal: bool) -> list[str]:
    records, planned = load(run_dir)
    out = [f"txsuite GPU check: {run_dir}"]
    if rehearsal:
        out.append("REHEARSAL on a host without a GPU: every cell should be skipped; nothing below is a GPU figure")
    out.append(f"{'cell':58} {'status':8} {'tok/s':>9} {'MFU':>6} {'MFU nom':>7} {'mem GiB':>7} {'J/token':>9} energy")
    for r in records:
        m = r.get("metrics") or {}
        out.append(f"{(r.get('label') or r['cell_id'])[:58]:58} {r['status']:8} {fmt(m.get('tokens_per_s'), ',.0f'):>9} "
                   f"{fmt(m.get('mfu'), '.1%'):>6} {fmt(m.get('mfu_nominal'), '.1%'):>7} "
                   f"{fmt(m.get('peak_mem_bytes'), '.2f', 2**-30):>7} {fmt(m.get('energy_per_token_j'), '.2e'):>9} "
                   f"{m.get('energy_source') or '-'}")
        if r["status"] != "ok":
            out.append(f"    reason: {(r.get('reason') or '')[:160]}")
    done = {r.get("label") for r in records}
    missing = [label for label in planned if label not in done]
    if missing:
        out.append(f"not run (budget exhausted or crashed): {', '.join(missing)}")
    out.extend(mfu_headline(records))
    energy = [r for r in records if (r.get("metrics") or {}).get("energy_per_token_j") is not None]
    for r in energy:
        m = r["metrics"]
        out.append(f"energy per token: {m['energy_per_token_j']:.3e} J ({m.get('energy_source')}, mean power "
                   f"{fmt(m.get('power_mean_w'), '.0f', unit=' W')}) in '{r.get('label')}'")
    if records and not energy:
        notes = {(r.get("metrics") or {}).get("telemetry_note") for r in records} - {None}
        out.append("energy per token: not recorded" + (f" ({'; '.join(sorted(notes))[:300]})" if notes else
                                                       " (the worker did not record NVML telemetry)"))
    bad = [r for r in records if r["status"] not in ("ok", "skipped")]
    passed = tests_rc == 0 and mfu_rc == 0 and matrix_rc == 0 and not bad and not missing
    if rehearsal:  # a rehearsal passes only when nothing pretended to run on a GPU
        passed = passed and bool(records) and all(r["status"] == "skipped" for r in records)
    verdict = ("REHEARSAL " if rehearsal else "") + ("PASS" if passed else "FAIL")
    out.append(f"tests rc {tests_rc} (pytest -m gpu), MFU phase rc {mfu_rc}, matrix rc {matrix_rc} "
               f"(124: cut off by its budget); {len(records)} records, {len(bad)} not ok/skipped; "
               f"{elapsed} s; {verdict}")
    return out


def main(argv: list[str]) -> int:
    run_dir, (tests_rc, mfu_rc, matrix_rc, elapsed, rehearsal) = Path(argv[0]), map(int, argv[1:6])
    print("\n".join(summary(run_dir, tests_rc, mfu_rc, matrix_rc, elapsed, bool(rehearsal))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
