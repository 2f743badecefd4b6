"""Stopping a run safely on SIGTERM / SIGINT (cluster preemption, Ctrl-C).

The first signal only sets a flag: the trainer finishes the iteration it is in, writes a
resumable ``last.pth`` at that iteration, logs a ``stop`` line and raises :class:`Preempted`
(the CLIs exit with :data:`PREEMPTED_EXIT_CODE`). A second signal ends the process at once, with
the signal's default action - unless it comes within :data:`DUPLICATE_WINDOW_S` of the first:
schedulers signal every process of a job and ``torchrun`` forwards the signal to its workers as
well, so one stop request often arrives twice.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Any

#: Exit status of a run stopped by a signal after writing its checkpoint (EX_TEMPFAIL from
#: sysexits.h: "try again later" - resume with --resume / --resume auto).
PREEMPTED_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: A repeat within this many seconds is the same stop request delivered twice, not a second one.
DUPLICATE_WINDOW_S = 2.0


class Preempted(RuntimeError):
    """The run was stopped by a signal; ``checkpoint`` holds its state at ``iteration``."""

    def __init__(self, signal_name: str, iteration: int, checkpoint: str) -> None:
        super().__init__(f"stopped by {signal_name} after iteration {iteration}; resumable checkpoint "
                         f"{checkpoint} (continue with --resume, or --resume auto in a requeued job)")
        self.signal_name = signal_name
        self.iteration = iteration
        self.checkpoint = checkpoint


class StopSignals:
    """Context manager that turns SIGTERM/SIGINT into a flag (:attr:`received`) while active.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._received_at = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.received is None:
            self.received, self._received_at = signum, now
        elif now - self._received_at > DUPLICATE_WINDOW_S:  # a second request: no more waiting
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    @property
    def name(self) -> str:
        """Name of the signal received (empty if none)."""
        return signal.Signals(self.received).name if self.received is not None else ""

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
