"""A fork server for CPU cells (L5): torch and txsuite imported once, each cell in a fork.

Starting a worker process costs ~3.5 s on this 2-core machine before the cell does anything
(importing torch and txsuite); the cell's own set-up is under 1 s. The fork server imports
them once and forks a child per cell repetition: every repetition still has a process of its
own (its own allocator, threads, crash), but starts in milliseconds.

    python -m suite.run.forkserver        # started by suite.run.executors, talks over stdin/stdout

Protocol, one JSON object per line: the runner sends {"args": [cell.json, result.json],
"log": path, "env": {name: value}}; the server forks, answers {"pid": child}, and when the
child ends {"pid": child, "status": exit code, or -signal}. The child starts its own process
group (the runner kills the group on a timeout), sends its output to the log, sets the
environment and torch's thread count it was given, and runs suite.run.worker.main.

Only CPU cells in one process go through it: forking a process that holds a CUDA context, or
one that must be started by torchrun, is not safe. The server itself never runs a torch
operator, so no OpenMP thread exists when it forks (libgomp does not survive a fork of a
process whose pool has started).
"""
from __future__ import annotations

import json
import os
import signal
import sys


def preload() -> None:
    """What every cell needs, imported before any fork (no torch operator is run)."""
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import suite.compress.inference  # noqa: F401
    import suite.measure.counters  # noqa: F401
    import suite.measure.nvml  # noqa: F401
    import suite.measure.peak  # noqa: F401
    import suite.measure.probe  # noqa: F401
    import suite.run.worker  # noqa: F401
    import suite.techniques.compression  # noqa: F401
    import suite.train  # noqa: F401
    import suite.train.finetune  # noqa: F401


def child(args: list[str], log: str, env: dict[str, str]) -> None:
    """In the forked child: become a process group of its own, run the worker, never return."""
    code = 1
    try:
        os.setsid()
        _die_with_parent()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        os.environ.update(env)
        import torch
        threads = env.get("OMP_NUM_THREADS")
        if threads:
            torch.set_num_threads(int(threads))
        from suite.run.worker import main
        code = main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the runner reads the log; the exit code says it failed
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _die_with_parent() -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def serve(stdin=sys.stdin, stdout=sys.stdout) -> None:
    _die_with_parent()  # the runner's death ends the server, and the server's its child
    preload()
    print(json.dumps({"ready": os.getpid()}), file=stdout, flush=True)
    for line in stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request["args"], request["log"], request.get("env", {}))
        print(json.dumps({"pid": pid}), file=stdout, flush=True)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"pid": pid, "status": code}), file=stdout, flush=True)


if __name__ == "__main__":
    serve()
