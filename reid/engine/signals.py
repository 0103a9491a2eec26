"""Graceful stop: SIGUSR1 / SIGTERM / a stop file → checkpoint at the next step boundary, exit 0.

SLURM sends ``USR1`` to the batch shell ``--signal=B:USR1@<secs>`` before the time limit; the batch
script's trap writes the stop file (``$REID_STOP_FILE``), which every rank polls between steps. A
signal that reaches a worker directly (torchrun / ``accelerate launch`` forward TERM and INT) sets the
same flag. The ranks agree on stopping through the per-step all-reduce the trainer does anyway, so
all of them save the same step.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

STOP_FILE_ENV = "REID_STOP_FILE"


class StopRequest:
    """A flag set by SIGUSR1/SIGTERM or by the presence of ``stop_file`` or ``$REID_STOP_FILE``."""

    def __init__(self, stop_file: str | os.PathLike | None = None) -> None:
        self.requested = False
        self.reason = ""
        env = os.environ.get(STOP_FILE_ENV)
        self.stop_files = [Path(p) for p in (stop_file, env) if p]  # <run>/STOP and $REID_STOP_FILE
        self._previous: dict[int, object] = {}

    def install(self) -> "StopRequest":
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        self.reason = signal.Signals(signum).name

    def poll(self) -> bool:
        """True once a signal arrived or the stop file exists (cheap: one stat per call)."""
        if not self.requested:
            for path in self.stop_files:
                if path.exists():
                    self.requested = True
                    self.reason = f"stop file {path}"
                    break
        return self.requested
