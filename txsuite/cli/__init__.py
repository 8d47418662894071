"""`txsuite` command line (L7): one module per command, each parsing its options, calling the
levels below and printing; what commands share (consoles, errors, options) is in common.py.

Exit codes: 0 every cell ok or skipped; 1 a cell failed; 2 unusable input, an output that could
not be written (stdout, a report, a file named by an option: printed as one paragraph, never a
traceback); 130/143 interrupted by Ctrl-C/SIGTERM, with what finished. `guard` and `ab`: 0 PASS,
1 FAIL, 3 INCONCLUSIVE, 2 unusable input or output, 130/143 interrupted.
"""
from __future__ import annotations

import sys

import click

from txsuite.cli.ab import ab
from txsuite.cli.baseline import baseline
from txsuite.cli.common import OutputGuard, err_console, interrupted_exit, signalled
from txsuite.cli.compare import compare
from txsuite.cli.export import export
from txsuite.cli.guard import guard
from txsuite.cli.history import history
from txsuite.cli.plan import plan
from txsuite.cli.report import report
from txsuite.cli.run import run


class Txsuite(click.Group):
    """The command group, with what every command's exit owes its caller: a Ctrl-C or SIGTERM
    anywhere exits 130 or 143 with one line (click would say "Aborted!" and exit 1, which `guard`
    and `ab` use for FAIL), and output that could not be written exits 2 with one line, once the
    command's work is done (OutputGuard)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        with OutputGuard() as guard:
            try:
                super().main(args, prog_name, complete_var, standalone_mode, **extra)
                code = 0
            except SystemExit as exc:
                if exc.code is not None and not isinstance(exc.code, int):
                    raise
                code = exc.code or 0
            except KeyboardInterrupt as exc:  # outside a command (click's own parsing, --help)
                try:
                    interrupted_exit(exc, "stopped before the command started.")
                except SystemExit as stop:
                    code = stop.code
            if signalled and code not in (130, 143):  # its exception was lost; the signal still decides
                err_console.print("txsuite: a signal arrived where Python could not stop the command at once; "
                                  "what it printed after the signal does not count.", markup=False, soft_wrap=True)
                code = 128 + signalled[-1]
            code = guard.exit_code(code)
        sys.exit(code)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # a command that has nothing more to say than this
            interrupted_exit(exc, f"`txsuite {ctx.invoked_subcommand or ''}` stopped before it finished.")


@click.group(cls=Txsuite, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="txsuite")
def main() -> None:
    """txsuite: what does each training technique cost and buy, on this hardware?"""


for command in (plan, run, report, export, compare, history, guard, ab, baseline):
    main.add_command(command)
