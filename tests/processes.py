"""Watching real processes from a test: a launcher's descendants, and the exit status of a trainer
whose launcher died first (the test process becomes their "subreaper", Linux ``PR_SET_CHILD_SUBREAPER``,
so orphans are re-parented to it and it can wait for them)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from pathlib import Path
from typing import Iterator

_PR_SET_CHILD_SUBREAPER = 36


def children(pid: int) -> list[int]:
    """Live direct children of ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_for_child(pid: int, running: str, timeout: float = 60) -> int:
    """The child of ``pid`` whose command line contains ``running`` (e.g. the trainer under a
    1-process ``accelerate launch``; the launcher may start short-lived helpers too)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for child in children(pid):
            try:
                if running in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                    return child
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no {running} in {timeout} s")


@contextlib.contextmanager
def adopting_orphans() -> Iterator[None]:
    """While inside, processes orphaned below this one are re-parented to it (and can be waited for)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def wait_status(pid: int, timeout: float) -> int:
    """Exit status of an adopted orphan: its exit code, or minus the signal that ended it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"process {pid} still running after {timeout} s (killed)")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
