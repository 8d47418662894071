"""What every command shares: the consoles, the one-paragraph usage error, option types and the
options several commands declare (declared once here, used by name in each command)."""
from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from txsuite.config.matrix import DEFAULT_MAX_CELLS, Matrix, MatrixError, load_matrix
from txsuite.measure.env import plan_host

# a pipe or CI log is not 80 columns wide: do not wrap tables as if it were
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


class UsageProblem(click.ClickException):
    """Unusable input: one paragraph on stderr, exit 2."""
    exit_code = 2

    def show(self, file=None) -> None:  # one paragraph, no "Error:" prefix noise
        from rich.markup import escape
        err_console.print(f"[bold red]txsuite:[/] {escape(self.message)}", soft_wrap=True)


class Seconds(click.ParamType):
    """A duration in seconds: a finite number above 0 (0, a negative number or nan would silently
    mean "no limit")."""
    name = "SECONDS"

    def convert(self, value, param, ctx):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r}: expected a finite number of seconds above 0", param, ctx)
        return seconds


def run_id_callback(ctx, param, value):
    from txsuite.config.matrix import name_problem
    if value is None:
        return None
    problem = name_problem(value)
    if problem:
        raise click.BadParameter(f"{value!r} {problem}; e.g. --run-id nightly-main")
    return value


# --- options more than one command declares ------------------------------------------------
matrix_argument = click.argument("matrix_path", metavar="MATRIX")
overrides_argument = click.argument("overrides", metavar="[KEY=VALUE]...", nargs=-1)
device_option = click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Force every cell onto this device.")
only_option = click.option("--only", "only", metavar="PATTERN",
                           help="Only cells whose label or id matches (glob or substring).")
yes_option = click.option("--yes", is_flag=True, help="Accept a matrix of more than 500 cells.")
run_id_option = click.option("--run-id", callback=run_id_callback, help="Name of the run folder; an existing one is resumed.")
results_dir_option = click.option("--results-dir", default="results", show_default=True,
                                  type=click.Path(file_okay=False))
reports_dir_option = click.option("--reports-dir", default="reports", show_default=True,
                                  type=click.Path(file_okay=False))
thresholds_option = click.option("--threshold", "thresholds", multiple=True, metavar="METRIC=CHANGE",
                                 help="Override the matrix's guard block, e.g. tokens_per_s=-5% (repeatable).")
markdown_option = click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False),
                               help="Also append the verdict as Markdown to this file (e.g. $GITHUB_STEP_SUMMARY).")
json_option = click.option("--json", "json_out", type=click.Path(dir_okay=False),
                           help="Also write the verdict as JSON.")


def slow_state_option(what: str):
    return click.option("--slow-state", type=click.FloatRange(min=1, min_open=True), default=2.0, show_default=True,
                        help=f"Leave out {what} measured while the machine was this many times slower than its best.")


OVERRIDES_HELP = ("KEY=VALUE settings after MATRIX override the file: a cell setting for every cell "
                  "(train.steps=3, precision=bf16), a list for an axis (precision=[fp32,bf16]), or repeats, "
                  "seeds, timeout_s, guard.METRIC.")


@functools.cache
def this_host():
    """The plan's view of this host (nvidia-smi, installed packages, CPU flags), read once per
    command: the plan, its notes and a follower node all ask."""
    return plan_host()


def load(matrix_path: str, device: str | None, yes: bool, overrides: tuple[str, ...] = ()) -> Matrix:
    """The matrix file with the command line's overrides, validated; a problem is a UsageProblem."""
    from txsuite.data import check_data_sources  # stdlib-only at import: keeps torch out of the runner

    try:
        return load_matrix(Path(matrix_path), host=this_host(), device_override=device,
                           max_cells=None if yes else DEFAULT_MAX_CELLS, check_data=check_data_sources,
                           overrides=overrides)
    except MatrixError as exc:
        raise UsageProblem(str(exc)) from None


def parse_thresholds(items: tuple[str, ...]) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for item in items:
        metric, sep, change = item.partition("=")
        if not sep:
            raise UsageProblem(f"--threshold {item!r}: expected METRIC=CHANGE, e.g. tokens_per_s=-5%.")
        out[metric.strip()] = change.strip()
    return out


def check_writable(path: str | None, option: str) -> None:
    """Refuse an output a command could not write before any work is done (exit 2, not 1: the
    guard's own failure must never read as a regression)."""
    if not path:
        return
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        problem = "it is a folder"
    elif not folder.is_dir():
        problem = f"its folder {folder} does not exist"
    elif not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        problem = "it is read-only"
    else:
        return
    raise UsageProblem(f"{option} {path}: cannot write there ({problem}); give a writable file path.")


def write_verdict(result, markdown_out: str | None, json_out: str | None) -> None:
    import json
    try:
        if markdown_out:
            with open(markdown_out, "a") as fh:
                fh.write(result.to_markdown())
        if json_out:
            Path(json_out).write_text(json.dumps(result.to_dict(), indent=1, default=str) + "\n")
    except OSError as exc:
        raise UsageProblem(f"the verdict ({result.verdict}) was printed above, but "
                           f"{exc.filename or markdown_out or json_out} could not be written ({exc.strerror}).") from None


def print_lines(lines: list[str]) -> None:
    """Sentences made of user text (labels, reasons), printed as they are: no markup, no emoji."""
    for line in lines:
        console.print(line, soft_wrap=True, markup=False, highlight=False, emoji=False)
