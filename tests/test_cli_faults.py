"""How every command-line program ends on an environmental fault: a reader that went away (quiet,
status 141 like any tool killed by SIGPIPE), a full disk (one line, status 2), Ctrl-C (one word,
status 130). The programs run as real processes writing into a real pipe whose reader is gone."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from reid.errors import BROKEN_PIPE_STATUS, report_user_errors


def _run_with_closed_pipe(args: list[str]) -> tuple[int, str]:
    """Start the program with stdout a pipe whose read end is already closed: its first write (or
    flush) meets EPIPE, as under `... | head` once head has gone."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.parametrize("program", [
    lambda root, tmp: [sys.executable, "-m", "reid.data.cli", "--data-root", str(root), "--dataset", "cuhk_pedes"],
    lambda root, tmp: [sys.executable, "-m", "reid.data.cli", "--data-root", str(root), "--dataset", "cuhk_pedes", "--json"],
    lambda root, tmp: [sys.executable, "-m", "reid.data.synth", "--out", str(tmp / "synth"), "--num-ids", "3"],
], ids=["reid-data", "reid-data --json", "reid-synth"])
def test_a_closed_pipe_ends_the_program_quietly(program, synth_root, tmp_path):
    status, err = _run_with_closed_pipe(program(synth_root, tmp_path))
    assert err == "" and status == BROKEN_PIPE_STATUS


def test_the_decorator_turns_environmental_faults_into_one_line(capsys):
    def raising(exc):
        @report_user_errors
        def main():
            raise exc
        return main()

    assert raising(BrokenPipeError()) == BROKEN_PIPE_STATUS
    assert raising(OSError(errno.ENOSPC, "No space left on device", "/runs/x/log.jsonl")) == 2
    assert raising(KeyboardInterrupt()) == 130
    assert raising(PermissionError(errno.EACCES, "Permission denied", "/runs")) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: /runs/x/log.jsonl: no space left on the device (No space left on device); free space and "
                   "run again (--resume latest continues a run from its newest checkpoint)", "interrupted",
                   "error: /runs: Permission denied"]
    with pytest.raises(FileNotFoundError):
        raising(FileNotFoundError(errno.ENOENT, "No such file or directory", "x"))  # a bug: keeps its traceback
