"""`txsuite` command line (L7): one module per command, each parsing its options, calling the
levels below and printing; what commands share (consoles, errors, options) is in common.py.

Exit codes: 0 every cell ok or skipped; 1 a cell failed; 2 unusable input (printed as one
paragraph, never a traceback); 130/143 interrupted by Ctrl-C/SIGTERM. `guard` and `ab`: 0 PASS,
1 FAIL, 3 INCONCLUSIVE, 2 unusable input.
"""
from __future__ import annotations

import click

from txsuite.cli.ab import ab
from txsuite.cli.baseline import baseline
from txsuite.cli.compare import compare
from txsuite.cli.guard import guard
from txsuite.cli.plan import plan
from txsuite.cli.report import report
from txsuite.cli.run import run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="txsuite")
def main() -> None:
    """txsuite: what does each training technique cost and buy, on this hardware?"""


for command in (plan, run, report, compare, guard, ab, baseline):
    main.add_command(command)
