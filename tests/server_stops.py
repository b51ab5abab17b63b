"""What the two stop scripts of tests/test_vllm.py share (a batch, an eval run, each in its own
fresh Python): a stand-in vLLM server, a Ctrl-C handler that records the server's request count
when the main thread takes the signal, and one case at a time stopped at a chosen call, by a real
SIGINT or a search's error, with what the test checks about it."""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time

import torch

from test_vllm import tiny_vllm

SIGNAL_WAIT_S = 60      # how long a case waits for the main thread to take its Ctrl-C
CASE_WATCHDOG_S = 120   # a case that hangs dumps every thread's stack and exits the script

_taken: list[int] = []  # the server's request count when the main thread took the Ctrl-C
_taken_now = threading.Event()


def serve() -> dict:
    """One torch thread, a TinyVllm server (RAINTOOLS_SERVER points at it), SIGINT taken by the
    handler below (a background job starts with SIGINT ignored); returns the server's state."""
    torch.set_num_threads(1)
    url, state = tiny_vllm()
    os.environ["RAINTOOLS_SERVER"] = url

    def on_sigint(signum, frame):
        _taken.append(state["requests"])
        _taken_now.set()
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)
    return state


class Case:
    """One case: at the `at`-th call of `hit` (from a search's thread), `where` = "interrupt" sends
    that thread a SIGINT and waits until the main thread has taken it, "error" raises ValueError.

    `mark`: the server's request count then (when the main thread took the signal: on a loaded CPU
    it may take it late, and jobs started meanwhile are legitimate), None while nothing has stopped
    the run (e.g. the run failed before the call, or the signal was not taken: `result` says so
    instead of the test failing on a missing value). Calls are counted under a lock: two threads
    counting at once without one could both pass `at`, and nothing would stop the run.

    `runs_on`: the module whose `side_by_side` runs the searches; its `stop` callable is watched,
    so that the requests the server gets after the run's stop itself are counted (`at_stop`: the
    count when it was first called; between the mark and the stop the searches rightly go on)."""

    def __init__(self, state: dict, where: str, at: int, runs_on):
        faulthandler.dump_traceback_later(CASE_WATCHDOG_S, exit=True)
        self.state, self.where, self.at = state, where, at
        self.calls, self.late, self.mark, self.at_stop, self.signal_s = 0, 0, None, None, None
        self._lock = threading.Lock()
        real = runs_on.__dict__.setdefault("_unwatched_side_by_side", runs_on.side_by_side)

        def side_by_side(jobs, workers=None, progress=False, serve=None, stop=None):
            def stopping():
                with self._lock:
                    if self.at_stop is None:
                        self.at_stop = self.state["requests"]
                stop()
            return real(jobs, workers, progress, serve, stopping if stop is not None else None)
        runs_on.side_by_side = side_by_side

    def hit(self) -> None:
        with self._lock:
            self.calls += 1
            if self.calls != self.at:
                return
        if self.where == "error":
            self.mark = self.state["requests"]
            raise ValueError(self.where)
        _taken.clear()
        _taken_now.clear()
        t0 = time.perf_counter()
        # to this thread, as the kernel may deliver a Ctrl-C (it picks any thread of the process):
        # the main thread, waiting for a lock, takes it only when it next wakes (batch.WAKE_S)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        if not _taken_now.wait(SIGNAL_WAIT_S):
            faulthandler.dump_traceback(all_threads=True)      # where the main thread is waiting
            raise RuntimeError(f"the main thread did not take the SIGINT within {SIGNAL_WAIT_S} s")
        self.signal_s = round(time.perf_counter() - t0, 3)
        self.mark = _taken[0]
        time.sleep(0.2)                    # a search that went on would send requests meanwhile

    def started(self) -> None:
        """A job (a prompt's search) starts: counted as late once the run has stopped."""
        with self._lock:
            self.late += self.mark is not None

    def result(self, job, threads: tuple[str, ...]) -> dict:
        """Run `job`; what the test checks: the error it raised (`got`), the threads named
        `threads` still alive (`left`), jobs started after the mark (`late`), the requests the
        server got after the run's stop, allowing 0.3 s for any a search left running would send
        (`after`)."""
        try:
            job()
            got = None
        except BaseException as exc:  # noqa: BLE001
            got = repr(exc)
        left = [t.name for t in threading.enumerate() if t.name.startswith(threads)]
        time.sleep(0.3)
        stopped = self.mark is not None and self.at_stop is not None
        return dict(where=self.where, got=got, left=left, late=self.late, stopped=stopped,
                    after=self.state["requests"] - self.at_stop if stopped else None,
                    before=self.at_stop - self.mark if stopped else None, calls=self.calls,
                    signal_s=self.signal_s)
