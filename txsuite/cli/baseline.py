"""`txsuite baseline`: a compact, committable baseline of one or more runs for `guard`."""
from __future__ import annotations

import json

import click

from txsuite.cli.common import UsageProblem, console


@click.command()
@click.argument("run_paths", metavar="RUN...", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The baseline file to write, e.g. baselines/smoke.json (commit it).")
def baseline(run_paths: tuple[str, ...], output: str) -> None:
    """Write a compact baseline of RUN (samples kept) for `txsuite guard --baseline`. Several
    runs of the same matrix on the same machine make one baseline that measures how much a
    whole run moves from run to run there (the guard then uses that, not only --run-noise)."""
    from txsuite.guard import GuardInputError, write_baseline

    try:
        out = write_baseline(list(run_paths), output)
    except GuardInputError as exc:
        raise UsageProblem(str(exc)) from None
    except OSError as exc:  # exit 2, not a traceback's 1 (which `guard` uses for FAIL)
        raise UsageProblem(f"-o {output}: cannot write the baseline there ({exc.strerror or exc}"
                           f"{f': {exc.filename}' if exc.filename and str(exc.filename) != output else ''}); "
                           f"give a writable file path. The runs are untouched.") from None
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes)", markup=False)
    noise = json.loads(out.read_text())["quality"]["noise"]
    if noise.get("tokens_per_s") is not None:
        line = f"tokens/s: repetitions within a run vary by {noise['tokens_per_s']:.1%}"
        if noise.get("runs", 1) > 1:
            between = noise.get("between_runs")
            line += (f"; whole runs by {between:.1%} ({noise['runs']} runs)" if between is not None
                     else f"; whole runs: not measured ({noise['runs']} runs, no cell in two of them)")
        console.print(line, markup=False, highlight=False)
