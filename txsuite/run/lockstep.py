"""Step lockstep (L6, never imports torch): one cell of `txsuite ab` on both sides at once, a
training step at a time, so that a neighbour's slow spell on a shared host hits both sides alike.

Both workers of a cell start together, each in its own process (from its side's fork server).
Each builds its cell in a turn of its own, first side first (the first time on a host, building
measures kernels and the matmul peak: two at once would spoil both). Then each training step is
a turn: the controller says go to one worker, which runs one step while the other waits, and
reports how long the step took; then the other's turn. The sides alternate ABBA at step level:

    turns   A B | B A | A B | B A ...    pair j = both sides' step j, back to back

so that over two consecutive pairs each side went first once (what going first or second does,
a cache the other process cooled, cancels). The machine-state probe before the first measured
step runs in that step's turn, and the one after the last step in a turn of its own. Once both
sides have had their last turn, both run free (final evaluation, the record).

The worker's end is txsuite.run.worker.LockstepGate, reached through the environment variable
GATE_ENV naming a Unix socket in a private folder; its docstring gives the protocol. A worker
that ends without a last turn (it failed, diverged, or was killed) closes its socket: the other
side takes the remaining turns alone.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

# the worker's txsuite.run.worker.LOCKSTEP_ENV (spelled twice: the worker imports torch;
# tests/test_lockstep.py checks they agree)
GATE_ENV = "TXSUITE_LOCKSTEP"
PROTOCOL = 2  # 2: the build takes a turn too; 1 (steps only) is still understood


class LockstepError(RuntimeError):
    """A worker spoke something other than the lockstep protocol."""


@dataclass(frozen=True)
class Turn:
    """One step of one side, as its worker reported it."""
    side: str
    step: int  # 0-based, warm-up steps included
    elapsed_s: float  # the step's own clock
    measured: bool  # a measured step (not warm-up)
    start: float  # the turn's bounds, time.perf_counter of the worker (CLOCK_MONOTONIC)
    end: float


@dataclass
class LockstepRound:
    """What one cell's round in lockstep gave: each side's result (what its launch returned),
    and every turn in the order they ran."""
    order: tuple[str, str]  # the side that went first in the first pair, then the other
    results: dict[str, Any]
    turns: list[Turn] = field(default_factory=list)

    def step_pairs(self, a: str, b: str) -> list[tuple[float, float]]:
        """(a's seconds, b's seconds) of each measured step both sides ran, by step index:
        the two steps of a pair ran back to back."""
        times = {side: {t.step: t.elapsed_s for t in self.turns if t.side == side and t.measured} for side in (a, b)}
        return [(times[a][s], times[b][s]) for s in sorted(times[a]) if s in times[b]]


def _short_tmp() -> str | None:
    """A folder for the sockets whose path stays under AF_UNIX's ~108 bytes."""
    return "/tmp" if os.path.isdir("/tmp") else None


class Lockstep:
    """The controller of an A/B job: a socket folder, and one long-lived thread per side.

    Each side's worker is launched from that side's own thread, the same one every round: the
    fork server a launch starts is bound to the thread that started it (Linux's parent-death
    signal follows the thread), so that thread must live as long as the job. `close` after the
    fork servers are closed."""

    def __init__(self, sides: Sequence[str]):
        self.folder = Path(tempfile.mkdtemp(prefix="txsuite-lockstep-", dir=_short_tmp()))
        self.threads = {side: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"txsuite-{side}")
                        for side in sides}

    def path(self, side: str) -> str:
        return str(self.folder / f"{side}.sock")

    def close(self) -> None:
        for pool in self.threads.values():
            pool.shutdown(wait=True, cancel_futures=True)
        for side in self.threads:
            Path(self.path(side)).unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass

    def run(self, order: tuple[str, str], launch: Mapping[str, Callable[[str], Any]]) -> LockstepRound:
        """Launch both sides at once, `launch[side](socket path)` in the side's thread (it blocks
        until that worker ended and returns its result), and alternate their steps in ABBA
        order starting with order[0]. Interrupted (Ctrl-C, SIGTERM), both workers are killed
        and the exception goes on."""
        listeners = {side: self._listen(side) for side in order}
        futures: dict[str, Future] = {side: self.threads[side].submit(launch[side], self.path(side)) for side in order}
        workers: dict[str, Worker] = {}
        turns: list[Turn] = []
        try:
            self._accept(listeners, futures, workers)
            for side in order:  # the builds, one at a time
                if side in workers and workers[side].builds:
                    workers[side].build()
            self._alternate(order, workers, turns)
            for worker in workers.values():  # both had their last turn: run free together
                worker.release()
        except BaseException:
            for worker in workers.values():
                worker.kill()
            raise
        finally:
            for side, listener in listeners.items():
                listener.close()
                Path(self.path(side)).unlink(missing_ok=True)
            for worker in workers.values():
                worker.close()
        return LockstepRound(order=order, results={side: futures[side].result() for side in order}, turns=turns)

    def _listen(self, side: str) -> socket.socket:
        Path(self.path(side)).unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path(side))
        listener.listen(1)
        return listener

    @staticmethod
    def _accept(listeners: dict[str, socket.socket], futures: dict[str, Future], workers: dict) -> None:
        """Wait until every side's worker has connected, or has ended without (it failed or
        was skipped before training: the other side then runs alone)."""
        waiting = dict(listeners)
        while waiting:
            ready, _, _ = select.select(list(waiting.values()), [], [], 0.5)
            for side, listener in list(waiting.items()):
                if listener in ready:
                    conn, _ = listener.accept()
                    workers[side] = Worker(side, conn)
                    del waiting[side]
                elif futures[side].done():
                    del waiting[side]

    @staticmethod
    def _alternate(order: tuple[str, str], workers: dict[str, "Worker"], turns: list[Turn]) -> None:
        """Turns until every connected worker has had its last: ABBA while both take turns,
        then the one left alone."""
        k = 0
        while True:
            active = [side for side in order if side in workers and not workers[side].ended]
            if not active:
                return
            wanted = order[0] if k % 4 in (0, 3) else order[1]
            k += 1
            turn = workers[wanted if wanted in active else active[0]].turn()
            if turn is not None:
                turns.append(turn)


class Worker:
    """The controller's end of one worker's connection."""

    def __init__(self, side: str, conn: socket.socket):
        self.side, self.conn = side, conn
        self.lines = conn.makefile("rb")
        self.ended = False  # its last turn is over, or it is gone
        self.released = False
        self.builds = False  # it waits for a go before building (protocol 2)
        hello = self.lines.readline().split()
        if len(hello) != 3 or hello[0] != b"hello":  # gone before it said hello
            self.ended, self.released, self.pid = True, True, None
            return
        self.protocol, self.pid = int(hello[1]), int(hello[2])
        if self.protocol not in (1, PROTOCOL):
            raise LockstepError(f"the {side} worker speaks lockstep protocol {self.protocol}, this controller "
                                f"{PROTOCOL}")
        self.builds = self.protocol >= 2

    def build(self) -> None:
        """Say go; wait until it has built (or is gone)."""
        words = self._go()
        if not words:
            self.ended = self.released = True
        elif words[0] != b"built":
            raise LockstepError(f"the {self.side} worker said {b' '.join(words)!r}, not 'built'")

    def _go(self) -> list[bytes]:
        """Say go; the words of its answer ([] when it is gone)."""
        try:
            self.conn.sendall(b"go\n")
            return self.lines.readline().split()
        except OSError:
            return []

    def turn(self) -> Turn | None:
        """Say go; the step it ran (None: its closing turn, or it is gone)."""
        words = self._go()
        line = b" ".join(words)
        if not words or words[0] == b"end":
            self.ended = True
            self.released = not words  # a worker that is gone needs no release
            return None
        if words[0] != b"done" or len(words) != 6:
            raise LockstepError(f"the {self.side} worker said {line!r}, not a lockstep report")
        _, step, elapsed, measured, start, end = words
        return Turn(self.side, int(step), float(elapsed), measured == b"1", float(start), float(end))

    def release(self) -> None:
        if not self.released:
            self.released = True
            try:
                self.conn.sendall(b"go\n")
            except OSError:
                pass

    def kill(self) -> None:
        """End the worker's process group now (the worker leads its own group)."""
        if self.pid and self.pid > 1 and self.pid != os.getpgrp():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        self.lines.close()
        self.conn.close()


__all__ = ["GATE_ENV", "Lockstep", "LockstepError", "LockstepRound", "Turn"]
