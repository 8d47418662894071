"""A fork server for CPU cells (L5): torch and txsuite imported once, each cell in a fork.

Starting a worker process costs seconds before the cell does anything (importing torch and
txsuite), more than the cell's own set-up (docs/measurements.md, "Per-cell overhead, the fork
server and torch.compile"). The fork server imports
them once and forks a child per cell repetition: every repetition still has a process of its
own (its own allocator, threads, crash), but starts in milliseconds.

    python -m txsuite.run.forkserver        # started by txsuite.run.executors, talks over stdin/stdout

Protocol, one JSON object per line: the runner sends {"args": [cell.json, result.json],
"log": path, "env": {name: value}, "ranks": N}; the server forks, answers {"pid": child}, and
when the child ends {"pid": child, "status": exit code, or -signal}. The child starts its own
process group (the runner kills the group on a timeout), sends its output to the log, sets the
environment and torch's thread count it was given, and runs txsuite.run.worker.main.

A distributed CPU cell on one node (ranks > 1) is launched here instead of by torchrun, which
would start every rank as a new interpreter (seconds per cell; docs/measurements.md): the child
becomes the cell's launcher and forks the ranks with torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT; one OpenMP thread each unless the cell sets threads, as torchrun
does), and like torchrun ends them all when one fails, naming that rank in the log.

CUDA cells, and ranks spread over several nodes, are not forked: forking a process that holds
a CUDA context is not safe, and other nodes need torchrun's rendezvous. The server itself never
runs a torch operator, so no OpenMP thread exists when it forks (libgomp does not survive a
fork of a process whose pool has started).
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

    import txsuite.compress.inference  # noqa: F401
    import txsuite.measure.counters  # noqa: F401
    import txsuite.measure.nvml  # noqa: F401
    import txsuite.measure.peak  # noqa: F401
    import txsuite.measure.probe  # noqa: F401
    import txsuite.run.worker  # noqa: F401
    import txsuite.techniques.compression  # noqa: F401
    import txsuite.train  # noqa: F401
    import txsuite.train.finetune  # noqa: F401


def child(args: list[str], log: str, env: dict[str, str], ranks: int = 1) -> None:
    """In the forked child: become a process group of its own with its output in the log, then
    run the worker (or launch `ranks` of them), never return."""
    def cell() -> int:
        _become_cell_process(log, env)
        return launch_ranks(args, env, ranks) if ranks > 1 else run_worker(args, env)
    _run_and_exit(cell)


def _run_and_exit(body) -> None:
    """In a forked process: run body() -> exit code, print any exception to the log (the runner
    reads it; the exit code says it failed), flush, and leave without running the parent's
    clean-up (os._exit)."""
    code = 1
    try:
        code = body()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _become_cell_process(log: str, env: dict[str, str]) -> None:
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


def run_worker(args: list[str], env: dict[str, str]) -> int:
    import torch
    threads = env.get("OMP_NUM_THREADS")
    if threads:  # before the first operator starts the OpenMP pool
        torch.set_num_threads(int(threads))
    from txsuite.run.worker import main
    return main(args)


# After the first rank fails, the others get SIGTERM and this long to end before SIGKILL
# (torchrun's default grace is 30 s; a rank blocked in a collective never ends by itself).
RANK_GRACE_S = 3.0


def launch_ranks(args: list[str], env: dict[str, str], ranks: int) -> int:
    """torchrun --standalone for one node, in this process: fork `ranks` workers with the
    environment torchrun gives them, wait for all; when one fails, end the rest and name it.
    Returns 0 when every rank exited 0, else 1 (as torchrun)."""
    import time

    port = _free_port()
    threads = env.get("OMP_NUM_THREADS") or "1"  # torchrun's default when it starts several ranks
    pids: dict[int, int] = {}  # pid -> rank
    for rank in range(ranks):
        pid = os.fork()
        if pid == 0:
            rank_env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(ranks),
                        "LOCAL_WORLD_SIZE": str(ranks), "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port), "OMP_NUM_THREADS": threads}

            def rank_process() -> int:
                _die_with_parent()  # the launcher's death ends the rank
                os.environ.update(rank_env)
                return run_worker(args, {**env, **rank_env})
            _run_and_exit(rank_process)
        pids[pid] = rank
    failure: tuple[int, int, int] | None = None  # (rank, pid, exit code or -signal)
    deadline = None
    while pids:
        flags = os.WNOHANG if deadline is not None else 0
        pid, status = os.waitpid(-1, flags)
        if pid == 0:  # ranks still ending after the first failure
            if time.monotonic() > deadline:
                for other in pids:
                    _kill(other, signal.SIGKILL)
            time.sleep(0.05)
            continue
        if pid not in pids:
            continue
        rank = pids.pop(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if code != 0 and failure is None:
            failure = (rank, pid, code)
            # exit code, or -signal (the runner names the signal in the record's reason)
            print(f"[txsuite launcher] Root cause: rank {rank} (pid {pid}) ended first: exit {code}; "
                  f"ending the other ranks", flush=True)
            for other in pids:
                _kill(other, signal.SIGTERM)
            deadline = time.monotonic() + RANK_GRACE_S
    return 0 if failure is None else 1


def _free_port() -> int:
    """A TCP port free on this host now, for the ranks' rendezvous (torchrun --standalone picks
    one the same way)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def serve(stdin=sys.stdin, stdout=sys.stdout) -> None:
    _die_with_parent()  # the runner's death ends the server, and the server's its child
    preload()
    # "ranks": this server launches distributed cells (a server of an older checkout does not
    # know the field, and would run such a cell as one process)
    print(json.dumps({"ready": os.getpid(), "ranks": True}), file=stdout, flush=True)
    for line in stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request["args"], request["log"], request.get("env", {}), int(request.get("ranks", 1)))
        print(json.dumps({"pid": pid}), file=stdout, flush=True)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"pid": pid, "status": code}), file=stdout, flush=True)


if __name__ == "__main__":
    serve()
