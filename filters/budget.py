"""A wall-clock limit per call, for work that no in-process check can bound.

lxml and trafilatura run in C and in long Python loops that look at no clock; a
thread cannot be stopped and a signal only reaches the main thread (Beam runs
DoFns in its own threads). So the calls that parse a page run in one child
process per DoFn instance: a call that runs over its budget has the child killed
and replaced, and the caller gets :class:`OverBudget`. Nothing can leak: the
child holds no state between calls, and it exits when its pipe closes (a dead
parent takes it down).

Costs: one process start per DoFn instance and after each overrun (about a
second: it imports trafilatura), and pickling a page's text across a pipe (well
under a millisecond for a typical page, against tens of milliseconds of parsing).

No Beam here: it sits beside the filters whose calls it bounds (``filters/html.py``'s
extraction, ``filters/captions.py``'s <img> scan), run under it by ``transforms/pages.py``.
"""

from __future__ import annotations

import gc
import multiprocessing
import traceback
from typing import Any, Callable, Optional


class OverBudget(Exception):
    """The call ran longer than its budget; its process was killed."""


class ChildFailed(Exception):
    """The function raised in the child (its type and message are in the text)."""


def _serve(conn):
    frozen = False
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result = ("ok", fn(*args))
        except Exception as exc:
            result = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=3))
        if not frozen:      # after the first call, what it imported (trafilatura, lxml) stays:
            gc.collect()    # kept out of the collector's sight for the child's life
            gc.freeze()
            frozen = True
        try:
            conn.send(result)
        except Exception as exc:            # an unpicklable result
            conn.send(("error", f"{type(exc).__name__}: {exc}", ""))


class TimeBoundCalls:
    """``call(fn, *args)`` runs ``fn`` (a module-level function) in a child
    process and returns its result within ``budget_s`` seconds, or raises
    :class:`OverBudget`. ``budget_s`` <= 0 runs in-process with no limit."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = None
        self._conn = None
        self.restarts = 0

    def _start(self):
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child,), name="kosmos-page-worker",
                                 daemon=not multiprocessing.current_process().daemon)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent

    def call(self, fn: Callable, *args) -> Any:
        if self.budget_s <= 0:
            return fn(*args)
        if self._proc is None or not self._proc.is_alive():
            self._start()
        try:
            self._conn.send((fn, args))
            ready = self._conn.poll(self.budget_s)
            reply: Optional[tuple] = self._conn.recv() if ready else None
        except (EOFError, OSError, BrokenPipeError) as exc:     # the child died (out of memory, say)
            self.close()
            raise ChildFailed(f"page worker process died: {type(exc).__name__}") from exc
        if reply is None:
            self.close()
            self.restarts += 1
            raise OverBudget(f"over the {self.budget_s:g} s budget")
        if reply[0] == "ok":
            return reply[1]
        raise ChildFailed(reply[1])

    def close(self):
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(timeout=5)
        self._proc = self._conn = None
