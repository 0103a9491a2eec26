"""Graceful stop: a signal or a stop file → checkpoint at the next step boundary, exit 0.

What asks for a stop, and what a second request does:

- ``SIGUSR1`` (SLURM's ``--signal``), ``SIGTERM`` and ``SIGINT`` (Ctrl-C) set the flag the trainer
  polls between micro-batches; the ranks agree on it through the all-reduce the step does anyway,
  so all of them save the same step. The batch script's trap writes the stop file
  (``$REID_STOP_FILE``) instead, which every rank polls too.
- Once a stop is requested, a further ``SIGINT`` aborts at once without a checkpoint (the handler
  gives SIGINT back to the kernel's default action, so it works even while Python is blocked in a
  collective). After a Ctrl-C, ``SIGTERM`` aborts too: torchrun's agent turns a second Ctrl-C into
  SIGTERM for its workers. After a SIGTERM (SLURM and torchrun may each send one) a second SIGTERM
  changes nothing.
- The trainer never outlives its launcher: under ``accelerate launch`` / torchrun it asks the kernel
  (Linux ``PR_SET_PDEATHSIG``) for ``SIGUSR2`` when the launcher exits, and treats it as a stop
  request. A 1-process ``accelerate launch`` dies at once on SIGTERM or SIGINT without passing the
  signal on; this is how the trainer hears of it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

STOP_FILE_ENV = "REID_STOP_FILE"
LAUNCHER_GONE = signal.SIGUSR2  # the parent-death signal (never sent by SLURM, torchrun or a shell)
_LAUNCHERS = ("accelerate", "torchrun", "torch.distributed.run")  # program names / python -m targets
_LAUNCHER_SCRIPTS = ("torch/distributed/run.py",)
_PR_SET_PDEATHSIG = 1


class StopRequest:
    """A flag set by SIGUSR1/SIGTERM/SIGINT, the launcher's exit, or ``stop_file`` / ``$REID_STOP_FILE``."""

    def __init__(self, stop_file: str | os.PathLike | None = None, announce: bool = False) -> None:
        self.requested = False
        self.reason = ""
        self.announce = announce  # write one line when the first request arrives (the main rank)
        self.interrupted = False  # the first request was a Ctrl-C
        env = os.environ.get(STOP_FILE_ENV)
        self.stop_files = [Path(p) for p in (stop_file, env) if p]  # <run>/STOP and $REID_STOP_FILE
        self._previous: dict[int, object] = {}

    def install(self) -> "StopRequest":
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, LAUNCHER_GONE):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def uninstall(self) -> None:
        """Give the signals back; the launcher's exit is ignored from now on: the training it was to
        stop is over (a 1-process launcher dies on Ctrl-C while the trainer still prints its summary)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if sig == LAUNCHER_GONE else handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        name = "launcher exited" if signum == LAUNCHER_GONE else signal.Signals(signum).name
        self.request(name, interrupt=signum == signal.SIGINT)

    def request(self, reason: str, interrupt: bool = False) -> None:
        """Ask for a stop (also used by the trainer itself, e.g. when its output pipe closed)."""
        if self.requested:
            return
        self.requested, self.reason, self.interrupted = True, reason, interrupt
        # From now on the kernel's default action ends the process: a second Ctrl-C aborts at once.
        self._restore_default(signal.SIGINT)
        if interrupt:
            self._restore_default(signal.SIGTERM)
        if self.announce:
            hint = " (Ctrl-C again aborts without one)" if interrupt else " (Ctrl-C aborts without one)"
            _say(f"reid: {reason}: saving a checkpoint at the next step boundary, then stopping{hint}\n")

    def _restore_default(self, sig: int) -> None:
        if sig in self._previous:
            signal.signal(sig, signal.SIG_DFL)

    def poll(self) -> bool:
        """True once a signal arrived or the stop file exists (cheap: one stat per call)."""
        if not self.requested:
            for path in self.stop_files:
                if path.exists():
                    self.request(f"stop file {path}")
                    break
        return self.requested


def stop_with_launcher() -> bool:
    """Ask the kernel for ``LAUNCHER_GONE`` when our parent exits, if the parent is a launcher
    (``accelerate launch``, torchrun). Never for a shell: ``nohup python launch/train.py &`` must
    outlive it. True when armed; if the launcher is already gone, the signal is raised at once.

    Call it first thing: until a StopRequest is installed the signal's default action ends the
    process (nothing to save yet), afterwards it is a stop request."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    if not _is_launcher(parent):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(LAUNCHER_GONE), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # it exited before we asked
        os.kill(os.getpid(), LAUNCHER_GONE)
    return True


def _is_launcher(pid: int) -> bool:
    """``accelerate launch``, ``torchrun`` or ``python -m torch.distributed.run``, by its command line."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:3]
    except OSError:
        return False
    return any(os.path.basename(a) in _LAUNCHERS or a.endswith(_LAUNCHER_SCRIPTS) for a in args)


def _say(text: str) -> None:
    """From a signal handler: one raw write (print could re-enter a buffered stream mid-write)."""
    try:
        os.write(sys.stderr.fileno(), text.encode())
    except (OSError, ValueError):
        pass
