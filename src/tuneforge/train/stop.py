"""A clean stop on Ctrl-C (SIGINT) and preemption (SIGTERM).

The first signal only asks: the loop finishes the optimizer step it is in, writes a checkpoint and
raises :class:`StoppedBySignal`, which the CLI turns into one line saying where the run stopped and
how to continue, and the exit status a shell expects (128 + the signal: 130, 143). A second signal
stops at once; checkpoints are written atomically (train/checkpoint.py), so the last complete one
stays loadable.

SIGTERM is how SLURM, Kubernetes and spot instances preempt a job, and what the UI's Stop button
sends, so all of them get the same clean stop.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StoppedBySignal(Exception):
    """Training stopped after a signal, at `step` of `total`, with a checkpoint of that step."""

    def __init__(self, signum: int, step: int, total: int):
        super().__init__(f"stopped at step {step} of {total}")
        self.signum, self.step, self.total = signum, step, total

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequests:
    """While active (a `with` block), SIGINT and SIGTERM set `signum` instead of ending the process;
    a second one restores the default handling and stops at once. Handlers can only be installed
    from the main thread: elsewhere (the UI runs training in a subprocess, tests in threads) the
    signals keep their default behaviour."""

    def __init__(self, say=print):
        self.signum: int | None = None
        self._say = say
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            self._say(f"{signal.Signals(signum).name}: stopping after this step, with a checkpoint "
                      "(signal again to stop at once)")
            return
        self._restore()
        self._say(f"{signal.Signals(signum).name} again: stopping now; the last complete checkpoint stays as it was")
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
