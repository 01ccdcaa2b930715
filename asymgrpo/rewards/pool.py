"""A small pool of worker processes that run reward calls, each under a wall-time limit.

Each worker runs one call at a time, sent over its own pipe. A call that runs past the limit,
or whose worker dies, is charged to that call: the worker is killed and replaced. Workers come
from the "forkserver" start method where there is one (Linux), else "spawn", never a plain fork
of the parent; they ignore SIGINT and SIGTERM, so a signal meant for the whole job (Ctrl-C in a
terminal, or torchrun's SIGTERM to each rank's process group) reaches only the parent, which
finishes its step with every reward; they are daemons (they die with it), leave when their pipe
closes, and are killed when they must stop mid-call.
"""

from __future__ import annotations

import math
import multiprocessing
import pickle
import reprlib
import signal
import time
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple

START_TIMEOUT_S = 60.0
"""How long a new worker may take to start and load the reward function."""

_CONTEXT = multiprocessing.get_context(
    "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
)


class Outcome(NamedTuple):
    """How one call went: ``kind`` is "ok" (the reward is ``value``), "error", "timeout" or "non_finite"."""

    kind: str
    value: float = 0.0
    detail: str = ""  # what went wrong, e.g. "raised RuntimeError: checker crashed"


class StartError(RuntimeError):
    """A worker process could not start or could not load the reward function."""


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _run(fn: Any, args: tuple) -> Outcome:
    try:
        result = fn(*args)
    except BaseException as error:  # noqa: BLE001 -- any failure of user code scores 0
        message = _one_line(str(error))
        return Outcome("error", detail=f"raised {type(error).__name__}" + (f": {message}" if message else ""))
    try:
        value = float(result)
    except Exception:  # noqa: BLE001 -- whatever float() rejects is not a reward
        return Outcome("error", detail=f"returned {type(result).__name__} {reprlib.repr(result)}, not a number")
    if not math.isfinite(value):
        return Outcome("non_finite", detail=f"returned {value}")
    return Outcome("ok", value)


def _serve(conn: Connection, fn_bytes: bytes) -> None:
    """A worker's main: load the reward, say so (None, or the error), then answer calls until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        fn = pickle.loads(fn_bytes)
    except BaseException as error:  # noqa: BLE001 -- reported to the parent, which raises
        conn.send(_one_line(f"{type(error).__name__}: {error}"))
        return
    conn.send(None)
    try:
        while True:
            conn.send(_run(fn, conn.recv()))
    except (EOFError, OSError):  # the parent closed the pipe or is gone
        pass


class _Worker:
    """One worker process, the parent's end of its pipe, and the call it is running."""

    def __init__(self, fn_bytes: bytes) -> None:
        self.conn, child_conn = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=_serve, args=(child_conn, fn_bytes), name="reward-worker", daemon=True)
        try:
            self.process.start()
        finally:
            child_conn.close()
        self.ready = False  # it has loaded the reward function
        self.index: int | None = None  # the call it is running
        self.deadline = time.monotonic() + START_TIMEOUT_S

    @property
    def busy(self) -> bool:
        """Starting, or running a call: a message is due before ``deadline``."""
        return not self.ready or self.index is not None

    def run(self, index: int, args: tuple, timeout_s: float) -> None:
        try:
            self.conn.send(args)
        except OSError:  # it has died: the pool finds its pipe closed and charges this call
            pass
        self.index, self.deadline = index, time.monotonic() + timeout_s

    def exit_code(self) -> int | None:
        self.process.join(1.0)
        return self.process.exitcode

    def stop(self) -> None:
        self.conn.close()  # an idle worker sees its pipe close and returns
        if self.busy:  # still starting, or mid-call (past its deadline, or abandoned): no waiting for it
            self.process.kill()
        self.process.join(1.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class WorkerPool:
    """``size`` worker processes that call the pickled function ``fn_bytes``, each call for at most ``timeout_s``.

    Workers start on the first ``imap`` and persist across calls until ``close``.
    """

    def __init__(self, fn_bytes: bytes, size: int, timeout_s: float) -> None:
        self.fn_bytes, self.size, self.timeout_s = fn_bytes, size, timeout_s
        self._workers: list[_Worker] = []

    def imap(self, calls: list[tuple]) -> Iterator[tuple[int, Outcome]]:
        """Run ``fn(*args)`` for every ``args`` of ``calls``; yield ``(index, outcome)`` as each finishes.

        Raises StartError (after closing the pool) if a worker cannot start. Closing the iterator
        before the end kills the workers still running its calls; the next ``imap`` replaces them.
        """
        self._top_up()
        pending = deque(enumerate(calls))
        try:
            while pending or any(worker.index is not None for worker in self._workers):
                for worker in self._workers:
                    if pending and not worker.busy:
                        worker.run(*pending.popleft(), self.timeout_s)
                busy = [worker for worker in self._workers if worker.busy]
                timeout = min(worker.deadline for worker in busy) - time.monotonic()
                readable = wait([worker.conn for worker in busy], max(0.0, timeout))
                now = time.monotonic()
                for slot, worker in enumerate(self._workers):
                    if worker.conn in readable:
                        yield from self._receive(slot)
                    elif worker.busy and worker.deadline <= now:
                        if not worker.ready:
                            raise self._start_failed(f"it did not start within {START_TIMEOUT_S:g} s")
                        yield worker.index, Outcome("timeout", detail=f"ran past the {self.timeout_s:g} s timeout")
                        self._replace(slot)
        finally:
            running = [worker for worker in self._workers if worker.index is not None]
            for worker in running:
                worker.stop()
            self._workers = [worker for worker in self._workers if worker not in running]

    def close(self) -> None:
        """Stop every worker (a later ``imap`` starts fresh ones)."""
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def _receive(self, slot: int) -> Iterator[tuple[int, Outcome]]:
        worker = self._workers[slot]
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            exit_code = worker.exit_code()
            if not worker.ready:
                raise self._start_failed(f"the worker process died (exit code {exit_code})") from None
            yield worker.index, Outcome("error", detail=f"crashed its worker process (exit code {exit_code})")
            self._replace(slot)
            return
        if worker.ready:
            index, worker.index = worker.index, None
            yield index, message
        elif message is None:
            worker.ready = True
        else:
            raise self._start_failed(message)

    def _top_up(self) -> None:
        for slot, worker in enumerate(self._workers):
            if not worker.process.is_alive():
                self._replace(slot)
        while len(self._workers) < self.size:
            self._workers.append(self._start())

    def _replace(self, slot: int) -> None:
        self._workers[slot].stop()
        self._workers[slot] = self._start()

    def _start(self) -> _Worker:
        try:
            return _Worker(self.fn_bytes)
        except OSError as error:
            raise self._start_failed(f"{type(error).__name__}: {error}") from error

    def _start_failed(self, reason: str) -> StartError:
        self.close()
        return StartError(reason)
