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


def _isatty(stream) -> bool:
    try:
        return bool(stream and stream.isatty())
    except (OSError, ValueError):  # a closed stream (`>&-` leaves sys.stdout None)
        return False


# A pipe or CI log is not 80 columns wide: do not wrap tables as if it were. No emoji codes:
# user text (a label ':x:', a reason) is printed as written, never as a picture.
console = Console(highlight=False, emoji=False, width=None if _isatty(sys.stdout) else 160)
err_console = Console(stderr=True, highlight=False, emoji=False, width=None if _isatty(sys.stderr) else 160)


class UsageProblem(click.ClickException):
    """Unusable input: one paragraph on stderr, exit 2."""
    exit_code = 2

    def show(self, file=None) -> None:  # one paragraph, no "Error:" prefix noise
        from rich.text import Text
        # the message holds user text (paths, patterns, labels): appended as plain text, never read
        # as markup (rich's escape leaves a backslash before '[' ambiguous)
        err_console.print(Text("txsuite:", style="bold red") + Text(" " + self.message), soft_wrap=True)


def _option_problem(param, value, exc) -> UsageProblem:
    """A NumberProblem of an option's value, as the matrix loader says one of a key's: one
    paragraph naming the option, the problem and what is allowed (exit 2)."""
    option = param.opts[0] if param is not None and param.opts else "the option"
    return UsageProblem(f"{option} {str(value)[:40]!r}: {exc.problem} Allowed: {exc.allowed}.")


class Seconds(click.ParamType):
    """A duration in seconds: a finite number above 0 (0, a negative number or nan would silently
    mean "no limit"), at most a week (txsuite.config.numbers.seconds: `select` overflows long
    before 1e12 s)."""
    name = "SECONDS"

    def convert(self, value, param, ctx):
        from txsuite.config import numbers
        if isinstance(value, float):
            return value
        try:
            return numbers.seconds(str(value))
        except numbers.NumberProblem as exc:
            raise _option_problem(param, value, exc) from None


class Size(click.ParamType):
    """A memory size: 4GiB, 512MiB, 2e9 (bytes), between 1 MiB and 1 PiB
    (txsuite.config.numbers.size); 0 is refused, never read as "no limit"."""
    name = "SIZE"

    def convert(self, value, param, ctx):
        from txsuite.config import numbers
        if isinstance(value, int):
            return value
        try:
            return numbers.size(str(value))
        except numbers.NumberProblem as exc:
            raise _option_problem(param, value, exc) from None


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


# --- what every command does with its output streams and with signals (main, in __init__.py) ---

class GuardedStream:
    """sys.stdout or sys.stderr for the length of a command. A write that fails (a full disk,
    a reader gone from the pipe, a closed descriptor) is remembered instead of raised, and what
    follows is dropped: the command finishes its work (a sweep still records every cell) and
    then exits 2, saying so on stderr (OutputGuard.exit_code)."""

    def __init__(self, name: str, stream) -> None:
        self.name, self.stream = name, stream
        self.error: str | None = None if stream is not None else "it is closed"

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self.error is None:
            try:
                return self.stream.write(text)
            except (OSError, ValueError) as exc:  # ValueError: I/O operation on a closed file
                self._failed(exc)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.error is None:
            try:
                self.stream.flush()
            except (OSError, ValueError) as exc:
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.error = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__
        # what the stream still buffers must not fail again (a traceback) when Python exits
        if self.stream is getattr(sys, f"__{self.name}__", None):
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, self.stream.fileno())
                os.close(null)
            except (OSError, ValueError):
                pass

    def isatty(self) -> bool:
        return _isatty(self.stream) if self.error is None else False

    def fileno(self) -> int:
        if self.stream is None:
            import io
            raise io.UnsupportedOperation(f"{self.name} is closed")
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:
        return getattr(self.stream, "errors", None) or "strict"

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str):
        if name == "buffer" or self.stream is None:  # bytes written past the guard would fail unseen
            raise AttributeError(name)
        return getattr(self.stream, name)


class OutputGuard:
    """For the length of a command: stdout and stderr guarded, a closed standard descriptor
    reopened on /dev/null (so that no file the command opens takes its number and a child's
    output never lands in it), and SIGTERM raised as `Terminated`, handled as Ctrl-C is."""

    def __enter__(self) -> "OutputGuard":
        for fd in (0, 1, 2):
            try:
                os.fstat(fd)
            except OSError:
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
        self.saved = sys.stdout, sys.stderr
        self.out, self.err = GuardedStream("stdout", sys.stdout), GuardedStream("stderr", sys.stderr)
        sys.stdout, sys.stderr = self.out, self.err
        import signal
        import threading
        self.handlers = {}
        if threading.current_thread() is threading.main_thread():
            signalled.clear()  # this command's signals only (a test runs many commands in one process)
            self.handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
            signal.signal(signal.SIGTERM, raise_terminated)
            signal.signal(signal.SIGINT, raise_interrupt)
        self.unraisablehook = sys.unraisablehook
        sys.unraisablehook = self.signal_lost_quietly
        return self

    def signal_lost_quietly(self, unraisable) -> None:
        """A signal's exception raised where Python cannot propagate it (logging's fork hook
        while a child is started, a finaliser) is already in `signalled` and raised again at the
        next progress callback: Python's "Exception ignored in ..." traceback would only tell the
        user of a txsuite crash that did not happen. Every other lost exception is printed as
        Python prints it."""
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        self.unraisablehook(unraisable)

    def __exit__(self, *exc) -> None:
        import signal
        sys.unraisablehook = self.unraisablehook
        for signum, handler in self.handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
        self.out.flush()
        self.err.flush()
        sys.stdout, sys.stderr = self.saved

    def exit_code(self, code: int) -> int:
        """The command's exit code, or 2 when its output could not be written (a signal's 130
        or 143 stays: the sweep was stopped, and that is what a caller must learn first)."""
        self.out.flush()
        self.err.flush()
        broken = [s for s in (self.out, self.err) if s.error]
        if not broken or code in (130, 143):
            return code
        if self.err.error is None:
            said = " and ".join(f"{s.name} ({s.error})" for s in broken)
            own = f" (its own exit code: {code})" if code != 2 else ""
            self.err.write(f"txsuite: could not write to {said}, so its printed output is incomplete; the command "
                           f"ran to its end{own} and what it wrote to files is kept.\n")
            self.err.flush()
        return 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's cancel, `kill`): handled as Ctrl-C is, exit 143."""

    def __init__(self, signum: int):
        import signal
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


# Every SIGINT/SIGTERM received, in order. A signal's exception can be lost: raised where Python
# ignores exceptions (a finaliser, logging's fork hooks: "Exception ignored in ..."), and the
# command would run on to a verdict. Progress callbacks raise it again (`raise_if_signalled`),
# and the command group exits 130/143 whenever one was received (txsuite/cli/__init__.py).
signalled: list[int] = []


def raise_terminated(signum, frame) -> None:
    signalled.append(signum)
    raise Terminated(signum)


def raise_interrupt(signum, frame) -> None:
    signalled.append(signum)
    raise KeyboardInterrupt


def raise_if_signalled() -> None:
    """A signal received whose exception was lost: raise it here, where it can stop the command."""
    import signal
    if signalled:
        if signalled[-1] == signal.SIGTERM:
            raise Terminated(signalled[-1])
        raise KeyboardInterrupt


def interrupted_exit(exc: KeyboardInterrupt, what: str):
    """Ctrl-C or SIGTERM: say what finished in one paragraph on stderr and exit as shells expect
    of a command ended by that signal (130 after Ctrl-C, 143 after SIGTERM). A further signal
    while saying it is ignored: the summary is the point."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    err_console.print(f"{how}: {what}", soft_wrap=True, markup=False)
    sys.exit(getattr(exc, "exit_code", 130))


REPORT_OWNERS = ".txsuite-reports.json"  # in each reports folder: report file name -> the run it shows


def report_path(folder: Path, stem: str, suffix: str, owner: str) -> tuple[Path, str | None]:
    """Where the report of OWNER (a run folder's resolved path, or two of them for a comparison)
    goes in FOLDER: STEM+SUFFIX, unless that file is the report of another run (the same run id
    under another --results-dir); then STEM-2+SUFFIX, -3, ..., with a sentence saying so (else
    None). Which run each report shows is kept in FOLDER/.txsuite-reports.json, claimed here
    under a lock before the report is written; a report from before that file is claimed by
    whichever run renders it next. An OSError (a folder that cannot be written) is the caller's
    to say."""
    import fcntl
    import json
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / REPORT_OWNERS, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        try:
            owners = json.loads(fh.read() or "{}")
        except ValueError:
            owners = {}
        owners = owners if isinstance(owners, dict) else {}
        n = 1
        while owners.get(name := f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}") not in (None, owner):
            n += 1
        if owners.get(name) != owner:
            owners[name] = owner
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps(owners, indent=1, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    if n == 1:
        return folder / name, None
    first = f"{stem}{suffix}"
    return folder / name, (f"{folder / first} is the report of another run ({owners[first]}); this one's report "
                           f"is {folder / name}")
