"""`txsuite ab`: the matrix on two versions of the code, alternating in one job (with
--lockstep their training steps in lockstep), decided on paired ratios (exit 0 PASS, 1 FAIL, 3 INCONCLUSIVE)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from txsuite.cli.common import (Seconds, UsageProblem, check_writable, console, device_option, interrupted_exit,
                                json_option, load, markdown_option, matrix_argument, only_option, parse_thresholds,
                                results_dir_option, run_id_callback, slow_state_option, thresholds_option,
                                raise_if_signalled, write_verdict)


@click.command()
@matrix_argument
@click.option("--base", "base_ref", required=True, metavar="REF",
              help="The version to compare against: a git ref of this checkout (branch, tag, commit).")
@click.option("--head", "head_ref", metavar="REF", help="The version under test (default: the working tree).")
@results_dir_option
@click.option("--run-id", callback=run_id_callback, help="Name of the A/B folder (default: a timestamp).")
@device_option
@only_option
@thresholds_option
@click.option("--alpha", type=float, default=0.01, show_default=True,
              help="False-FAIL (and false-PASS) level over all looks together.")
@click.option("--min-rounds", type=click.IntRange(min=2), default=4, show_default=True,
              help="Rounds (one repetition per cell per side) before the first look.")
@click.option("--max-rounds", type=click.IntRange(min=2), default=64, show_default=True,
              help="Rounds at most while a check stays INCONCLUSIVE (each look doubles them: 4, 8, 16, 32, 64). "
                   "Fewer end sooner and decide less often (docs/guard.md).")
@click.option("--budget", "budget_s", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Start no round after this many seconds; decide on what was measured.")
@slow_state_option("pairs")
@click.option("--lockstep/--no-lockstep", default=False, show_default=True,
              help="Run the two repetitions of a cell at once, one training step at a time (ABBA step by step), "
                   "so a neighbour's slow spell hits both sides alike (docs/guard.md: not yet shown to narrow the "
                   "interval, hence off by default); --no-lockstep runs them one after the other. A base older "
                   "than lockstep, distributed and CUDA cells run one after the other anyway.")
@click.option("--timeout", "timeout_s", type=Seconds(),
              help="Seconds per cell repetition (default: the matrix's timeout_s or 1800).")
@markdown_option
@json_option
def ab(matrix_path, base_ref, head_ref, results_dir, run_id, device, only, thresholds, alpha, min_rounds, max_rounds,
       budget_s, slow_state, lockstep, timeout_s, markdown_out, json_out) -> None:
    """Same-job A/B: MATRIX on two versions of the code, alternating, decided on paired ratios.
    Exit 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 unusable input."""
    from datetime import datetime

    from txsuite.guard import GuardInputError
    from txsuite.guard.decide import resolve_guard
    from txsuite.guard.side import Side
    from txsuite.run import ab as abrun
    from txsuite.run.runner import select

    check_writable(markdown_out, "--markdown")
    check_writable(json_out, "--json")
    if not 0.0 < alpha < 0.5:
        raise UsageProblem(f"--alpha {alpha}: expected a level between 0 and 0.5, e.g. 0.01.")
    if max_rounds < min_rounds:
        raise UsageProblem(f"--max-rounds {max_rounds} is below --min-rounds {min_rounds}.")
    matrix = load(matrix_path, device, True)
    matrix.cells = select(matrix.cells, only)
    if not matrix.cells:
        raise UsageProblem(f"--only {only!r} matches no cell of {matrix.source}.")
    try:
        limits, _ = resolve_guard(Side(path=matrix.source, kind="run", guard=matrix.guard),
                                  Side(path=matrix.source, kind="run"), parse_thresholds(thresholds))
    except GuardInputError as exc:
        raise UsageProblem(str(exc)) from None
    work = abrun.work_folder()
    # SIGTERM arrives as Terminated, like Ctrl-C (txsuite.cli.Txsuite): the cell in flight is
    # stopped with its process group, the worktrees removed, and the rounds done are said
    progress = AbProgress(max_rounds)
    try:
        repo = abrun.repo_root(Path.cwd())
        checkouts = abrun.Checkouts(repo)
        try:
            base = abrun.prepare_side("base", base_ref, repo, work, checkouts)
            head = abrun.prepare_side("head", head_ref, repo, work, checkouts)
            matrix_file = Path(matrix_path).resolve()
            plans = [abrun.plan_side(side, matrix_file, device) for side in (base, head)]
            plan = abrun.pair_plans(matrix, *plans)
            plan.cells = [c for c in plan.cells if c in matrix.cells]
            out_dir = Path(results_dir) / "ab" / matrix.name / (run_id or datetime.now().strftime("%Y%m%d-%H%M%S"))
            console.print(f"A/B of {matrix.source}: {base.describe()} against {head.describe()}, "
                          f"{len(plan.cells)} cell(s), {min_rounds} to {max_rounds} rounds; records in {out_dir}",
                          markup=False)
            progress.begin(out_dir, len(plan.cells))
            settings = abrun.AbSettings(thresholds=limits, alpha=alpha, min_rounds=min_rounds, max_rounds=max_rounds,
                                        budget_s=budget_s, slow_state=slow_state, lockstep=lockstep,
                                        timeout_s=timeout_s or matrix.timeout_s or 1800.0)
            outcome = abrun.run_ab(plan, base, head, out_dir, settings, on_event=progress)
        finally:
            checkouts.close()
    except abrun.AbError as exc:
        raise UsageProblem(str(exc)) from None
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: 130/143 with the rounds done, never FAIL's 1
        interrupted_exit(exc, progress.summary())
    finally:
        abrun.remove_work_folder(work)
    result = outcome.result
    console.print(result.to_text(), soft_wrap=True, markup=False, highlight=False)
    write_verdict(result, markdown_out, json_out)
    sys.exit(result.exit_code)


class AbProgress:
    """A line per cell repetition and per look, and the tally an interrupted A/B reports: the
    rounds finished on both sides, the repetitions recorded, the last look's verdict."""

    def __init__(self, max_rounds: int) -> None:
        self.max_rounds, self.out_dir, self.cells = max_rounds, None, 0
        self.ended: dict[int, int] = {}  # round -> cell repetitions recorded in it (both sides)
        self.last_look: str | None = None

    def begin(self, out_dir: Path, cells: int) -> None:
        self.out_dir, self.cells = out_dir, cells

    def __call__(self, kind: str, info: dict) -> None:
        raise_if_signalled()
        if kind == "cell_end":
            r = info["record"]
            self.ended[info["round"]] = self.ended.get(info["round"], 0) + 1
            tps = r.metrics.get("tokens_per_s")
            state = r.metrics.get("machine_slowdown")
            console.print(f"  round {info['round'] + 1} {info['side']:4s} {info['label']}: {r.status}"
                          + (f", {tps:,.0f} tokens/s" if tps else "")
                          + (f", machine state {state:.2f}x its best" if state else ""), markup=False)
        elif kind == "look":
            self.last_look = f"{info['verdict']} after {info['rounds']} rounds"
            console.print(f"after {info['rounds']} rounds: {info['verdict']}", markup=False)

    def summary(self) -> str:
        if self.out_dir is None:
            return "stopped while preparing the two versions; nothing was measured."
        rounds = sum(1 for n in self.ended.values() if n == 2 * self.cells)
        recorded = sum(self.ended.values())
        look = f"the last look said {self.last_look}" if self.last_look else "no look yet"
        return (f"{rounds} of at most {self.max_rounds} rounds finished on both sides ({recorded} cell repetitions "
                f"recorded in {self.out_dir}); {look}. No verdict: an interrupted A/B decides nothing; run it again "
                f"with another --run-id (or none) to decide.")
