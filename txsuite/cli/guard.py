"""`txsuite guard`: PASS, FAIL or INCONCLUSIVE of a run against a baseline (exit 0, 1, 3)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from txsuite.cli.common import (Seconds, UsageProblem, check_writable, console, interrupted_exit, json_option, load,
                                markdown_option, parse_thresholds, slow_state_option, thresholds_option, write_verdict)
from txsuite.cli.progress import SweepProgress


def _percent(text: str) -> float:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageProblem(f"--run-noise {text!r}: expected a percentage such as 16%.") from None


@click.command()
@click.argument("run_path", metavar="RUN")
@click.option("--baseline", "baseline_path", required=True, metavar="BASELINE",
              help="A run folder or a baseline file written by `txsuite baseline`.")
@thresholds_option
@click.option("--normalize", type=click.Choice(["none", "peak", "auto", "state"]), default="none", show_default=True,
              help="peak: compare throughput relative to each machine's measured matmul peak; auto: peak "
                   "when the hardware differs; state: one machine, time brought to its best state by each "
                   "repetition's probe (docs/guard.md).")
@click.option("--alpha", type=float, default=0.01, show_default=True, help="False-alarm level of each check.")
@click.option("--run-noise", "run_noise", default=None,
              help="How much a whole run's throughput moves from run to run on this machine (sd), e.g. 2%. "
                   "Default: the prior of docs/verdicts.md, combined with what a baseline of several runs "
                   "measures (the guard's notes name both).")
@slow_state_option("repetitions")
@click.option("--confirm", is_flag=True, help="Re-measure each failed cell once; it stays FAIL only if it fails again.")
@click.option("--results-dir", default=None, type=click.Path(file_okay=False),
              help="Where --confirm writes its re-measurement (default: beside RUN).")
@click.option("--timeout", "timeout_s", type=Seconds(), help="Seconds per re-measured cell repetition.")
@markdown_option
@json_option
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
def guard(run_path, baseline_path, thresholds, normalize, alpha, run_noise, slow_state, confirm, results_dir,
          timeout_s, markdown_out, json_out, seed) -> None:
    """PASS (exit 0), FAIL (1) or INCONCLUSIVE (3): RUN against BASELINE on the matrix's guard metrics."""
    from txsuite.guard import GuardInputError, cells_to_confirm, compare, load_side, merge_confirmation

    check_writable(markdown_out, "--markdown")
    check_writable(json_out, "--json")
    try:
        run_side = load_side(run_path)
        base_side = load_side(baseline_path)
        result = compare(run_side, base_side, parse_thresholds(thresholds), normalize=normalize,
                         alpha=alpha, seed=seed, run_noise=_percent(run_noise) if run_noise else None,
                         slow_state=slow_state)
    except GuardInputError as exc:
        raise UsageProblem(str(exc)) from None
    flagged = cells_to_confirm(result)
    if confirm and flagged:
        if run_side.kind != "run" or not run_side.source:
            raise UsageProblem(f"--confirm needs RUN to be a run folder whose matrix.json names its matrix file; "
                               f"{run_path} is not.")
        from txsuite.run.runner import run_matrix

        ids = {cid for cid, _ in flagged}
        devices = {run_side.cells[cid].config.get("device") for cid in ids}
        device = devices.pop() if len(devices) == 1 and None not in devices else None
        matrix = load(run_side.source, device if device in ("cpu", "cuda") else None, True, run_side.overrides)
        matrix.cells = [c for c in matrix.cells if c.cell_id in ids]
        if not matrix.cells:
            raise UsageProblem(f"--confirm: the flagged cells are no longer in {run_side.source}.")
        base_dir = Path(results_dir) / matrix.name if results_dir else run_side.run_dir.parent
        confirm_dir = base_dir / f"{run_side.run_dir.name}-confirm"
        console.print(f"re-measuring {len(matrix.cells)} flagged cell(s) into {confirm_dir}: "
                      + ", ".join(label for _, label in flagged), markup=False)
        try:  # SIGTERM arrives as Terminated, like Ctrl-C (txsuite.cli.Txsuite)
            with SweepProgress() as progress:
                run_matrix(matrix, confirm_dir, timeout_s=timeout_s, on_event=progress)
        except KeyboardInterrupt as exc:  # 130/143, never FAIL's 1
            interrupted_exit(exc, f"the re-measurement of the flagged cells stopped (what finished is recorded in "
                                  f"{confirm_dir}); no verdict. The same command re-measures and decides.")
        try:
            result = merge_confirmation(result, load_side(confirm_dir))
        except GuardInputError as exc:
            raise UsageProblem(str(exc)) from None
    console.print(result.to_text(), soft_wrap=True, markup=False, highlight=False)
    write_verdict(result, markdown_out, json_out)
    sys.exit(result.exit_code)
