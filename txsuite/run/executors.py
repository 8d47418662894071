"""Where a cell's worker process runs (L6, beside the runner; never imports torch).

LocalExecutor   a child process group on this host. With GPUs, single-GPU cells run
                concurrently, one per free device (CUDA_VISIBLE_DEVICES); CPU cells one at a
                time, since two would measure each other. CPU cells in one process are forked
                from a fork server that has torch and txsuite imported (txsuite.run.forkserver;
                TXSUITE_FORKSERVER=0 starts a fresh interpreter per cell instead).
SlurmExecutor   one Slurm job per cell repetition through submitit; `cluster="local"` uses
                submitit's local backend (same code path, no cluster needed: how it is tested).

`execute` blocks until the cell ends and returns its Outcome; the runner calls it from up to
`slots` threads at once.
"""
from __future__ import annotations

import json
import math
import os
import queue
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from txsuite.measure.env import visible_devices

KILL_GRACE_S = 5.0


@dataclass
class Outcome:
    returncode: int | None
    timed_out: bool
    where: str = ""  # e.g. "cuda:1" or "slurm job 1234", for the log
    # what ended the cell when it was not the cell itself nor a timeout (the fork server died
    # under it), in words for the record; None otherwise
    reason: str | None = None


def host_gpu_ids(nvidia_smi_count: int, env=os.environ) -> tuple[list[str], dict[str, str]]:
    """The GPUs this run may use, as CUDA_VISIBLE_DEVICES entries, and what a cell's environment
    needs so that an entry names the same device for CUDA as for the caller.

    A CUDA_VISIBLE_DEVICES the run was started with (a scheduler's share of the node) is kept:
    its entries (indices or UUIDs, up to the first invalid one, where CUDA stops) are the
    devices, meant in the caller's own device order. Otherwise nvidia-smi's count is used, and
    nvidia-smi numbers GPUs in PCI order while CUDA by default puts the fastest first, so cells
    get CUDA_DEVICE_ORDER=PCI_BUS_ID (unless the caller chose an order)."""
    visible = visible_devices(env)
    if visible is not None:
        return visible, {}
    order = {} if "CUDA_DEVICE_ORDER" in env else {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    return [str(i) for i in range(nvidia_smi_count)], (order if nvidia_smi_count else {})


class LocalExecutor:
    def __init__(self, gpu_ids: list[str] | list[int] | None = None, gpu_env: dict[str, str] | None = None):
        self.gpu_ids = [str(g) for g in (gpu_ids or [])]
        self._servers: dict[tuple[str, ...], ForkServer] = {}  # one fork server per version of the code
        self._unforkable: set[tuple[str, ...]] = set()  # code whose fork server would not start
        self.gpu_env = dict(gpu_env or {})  # added to a GPU cell's environment (host_gpu_ids)
        self._free: queue.Queue[str] = queue.Queue()
        for gpu in self.gpu_ids:
            self._free.put(gpu)

    @property
    def slots(self) -> int:
        return max(1, len(self.gpu_ids))

    def concurrent(self, uses_gpu: bool) -> bool:
        """Only single-GPU cells share the host; CPU cells would disturb each other's timing."""
        return uses_gpu and len(self.gpu_ids) > 1

    def execute(self, cmd: list[str], env: dict, log_path: Path, timeout: float, uses_gpu: bool) -> Outcome:
        gpu = self._free.get() if uses_gpu and self.gpu_ids else None  # blocks until a device is free
        try:
            if gpu is not None:
                env = dict(env, **self.gpu_env, CUDA_VISIBLE_DEVICES=gpu)
            returncode, timed_out = run_process_group(cmd, env, log_path, timeout)
            return Outcome(returncode, timed_out, f"cuda:{gpu}" if gpu is not None else "local")
        finally:
            if gpu is not None:
                self._free.put(gpu)

    @property
    def forks(self) -> bool:
        """Whether CPU cells are forked from a fork server (TXSUITE_FORKSERVER=0: never)."""
        return os.environ.get("TXSUITE_FORKSERVER", "1") != "0"

    def execute_forked(self, launch: tuple[str, ...], args: list[str], env: dict, log_path: Path,
                       timeout: float, ranks: int = 1) -> Outcome | None:
        """A CPU cell forked from the fork server of this code (`launch`: the interpreter's
        arguments that run a module, e.g. ("-m",)), started on first use with `env`; `ranks` > 1
        forks that many ranks of a distributed cell. None when this code has no working fork
        server (an older checkout, or one that cannot launch ranks): start a process instead."""
        if launch in self._unforkable:
            return None
        server = self._servers.get(launch)
        if server is None or not server.alive:
            try:
                server = self._servers[launch] = ForkServer(launch, env)
            except RuntimeError:
                self._unforkable.add(launch)
                return None
        if ranks > 1 and not server.launches_ranks:
            return None
        returncode, timed_out, reason = server.run(args, env, log_path, timeout, ranks)
        return Outcome(returncode, timed_out, f"server pid {server.pid}", reason)

    def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()


class SlurmExecutor:
    def __init__(self, folder: Path, partition: str | None = None, gpus_per_node: int = 0,
                 time_min: int | None = None, cpus_per_task: int | None = None, max_parallel: int = 32,
                 cluster: str | None = None):
        self.folder = Path(folder)
        self.partition = partition
        self.gpus_per_node = gpus_per_node
        self.time_min = time_min
        self.cpus_per_task = cpus_per_task
        self.max_parallel = max_parallel
        self.cluster = cluster  # None: auto (slurm where sbatch exists); "local": submitit's local backend

    @property
    def slots(self) -> int:
        return self.max_parallel

    def concurrent(self, uses_gpu: bool) -> bool:
        return True  # every job gets its own allocation

    def execute(self, cmd: list[str], env: dict, log_path: Path, timeout: float, uses_gpu: bool) -> Outcome:
        import submitit  # optional dependency: `pip install submitit`

        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        params: dict = {"timeout_min": self.time_min or max(1, math.ceil(timeout / 60)), "name": "txsuite"}
        if self.cluster != "local":
            params.update({"slurm_partition": self.partition, "gpus_per_node": self.gpus_per_node,
                           "cpus_per_task": self.cpus_per_task})
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        job = executor.submit(submitit.helpers.CommandFunction(cmd, env=env, verbose=False))
        returncode, timed_out = 0, False
        try:
            output = job.result()  # CommandFunction returns the command's captured stdout
            log_path.write_text(output if isinstance(output, str) else "")
        except Exception as exc:  # noqa: BLE001 - submitit's job errors: the record says what happened
            state = str(job.state)
            timed_out = "TIMEOUT" in state
            returncode = 1
            log_path.write_text(f"submitit: job {job.job_id} ended in state {state}: {exc}\n")
        _append_job_output(job, log_path)
        return Outcome(returncode, timed_out, f"slurm job {job.job_id}")


def _append_job_output(job, log_path: Path) -> None:
    with open(log_path, "a") as log:
        for read in (job.stdout, job.stderr):
            try:
                text = read()
            except Exception:  # noqa: BLE001 - a missing output file is not worth failing the cell
                text = None
            if text:
                log.write(text)


class ForkServer:
    """A running txsuite.run.forkserver (one per version of the code), and the cells it forks."""

    START_TIMEOUT_S = 300.0  # importing torch on a busy machine

    def __init__(self, launch: tuple[str, ...], env: dict):
        self.env = dict(env)
        self.proc = subprocess.Popen([sys.executable, *launch, "txsuite.run.forkserver"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self.env, text=True,
                                     bufsize=1, start_new_session=True, preexec_fn=_die_with_parent)
        # its answers, read from the pipe's descriptor by this object alone: select() sees only
        # what the pipe still holds, so lines a buffered reader had taken in already (a cell's
        # start and its end, written a moment apart) would wait out the timeout
        self._unread = b""
        try:
            ready = self._reply(self.START_TIMEOUT_S)
        except ServerGone:
            ready = None
        if ready is None or "ready" not in ready:
            self.close()
            raise RuntimeError("the txsuite fork server did not start (run with TXSUITE_FORKSERVER=0 to see why)")
        self.pid = ready["ready"]
        self.launches_ranks = bool(ready.get("ranks"))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _reply(self, timeout: float | None) -> dict | None:
        """The server's next answer; None when none came within `timeout`. ServerGone when its
        output ended (it died) or is not an answer: that is not a timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._unread:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ServerGone()
            self._unread += chunk
        line, self._unread = self._unread.split(b"\n", 1)
        try:
            answer = json.loads(line)
        except ValueError:
            raise ServerGone() from None
        if not isinstance(answer, dict):
            raise ServerGone()
        return answer

    def _death(self, when: str) -> str:
        """The record's reason when the server died `when`: how it ended, if it has."""
        try:
            code = self.proc.wait(timeout=KILL_GRACE_S)  # its output has ended: it is exiting
        except subprocess.TimeoutExpired:
            code = None
        how = ("" if code is None else f": {signal.Signals(-code).name}" if code < 0 and -code in
               signal.valid_signals() else f": exit {code}")
        return (f"the txsuite fork server (pid {self.pid}) died {when}{how}; the cell's process ended with it "
                f"(not a timeout). The next cell starts a new server; TXSUITE_FORKSERVER=0 runs cells without one")

    def run(self, args: list[str], env: dict, log_path: Path, timeout: float,
            ranks: int = 1) -> tuple[int | None, bool, str | None]:
        """(the cell's exit status or None, whether it timed out, why it ended otherwise or None)."""
        changed = {k: v for k, v in env.items() if self.env.get(k) != v}
        try:
            self.proc.stdin.write(json.dumps({"args": args, "log": str(log_path), "env": changed, "ranks": ranks})
                                  + "\n")
            self.proc.stdin.flush()
            started = self._reply(self.START_TIMEOUT_S)
        except (ServerGone, OSError):  # OSError: a broken pipe to a server that has just died
            return None, False, self._death("before the cell started")
        if started is None or "pid" not in started:
            raise RuntimeError("the txsuite fork server stopped answering")
        pid = started["pid"]
        try:
            done = self._reply(timeout)
        except ServerGone:  # killed, or the OOM killer's choice: the cell died with it (PDEATHSIG)
            _signal_group(pid, signal.SIGKILL)
            return None, False, self._death("while the cell ran")
        except BaseException:  # the runner is interrupted: take the cell down too
            _signal_group(pid, signal.SIGKILL)
            raise
        timed_out = done is None
        if timed_out:  # the child's whole group goes (SIGTERM, then SIGKILL), and the server says how
            _signal_group(pid, signal.SIGTERM)
            try:
                done = self._reply(KILL_GRACE_S)
                if done is None:
                    _signal_group(pid, signal.SIGKILL)
                    done = self._reply(KILL_GRACE_S + 5.0)
            except ServerGone:
                done = None
        _signal_group(pid, signal.SIGKILL)  # stragglers of the group (compile workers)
        return (done.get("status") if done else None), timed_out, None

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


class ServerGone(Exception):
    """The fork server's output ended (it died) or stopped being its protocol."""


def _signal_group(pgid: int, sig: int) -> None:
    """Signal a cell's process group: one the fork server's child made with setsid, named by the
    child's pid. Never init's group or the runner's own, whatever a server answered."""
    if pgid <= 1 or pgid == os.getpgrp():
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_process_group(cmd: list[str], env: dict, log_path: Path, timeout: float) -> tuple[int | None, bool]:
    """Run cmd in its own process group with output to log_path; kill the group on timeout or
    when the caller is interrupted. Returns (returncode, timed_out)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, preexec_fn=_die_with_parent)
        try:
            return proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return proc.returncode, True
        finally:
            if proc.poll() is None:  # the runner itself is being interrupted: take the cell down too
                _kill_group(proc)


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it if the runner dies (even by kill -9),
    so an interrupted sweep leaves no orphan cell competing with the resumed one."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the runner's own cleanup still handles SIGINT/SIGTERM


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the worker's whole process group (it may have children: compile workers,
    torchrun ranks), then SIGKILL whatever is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
