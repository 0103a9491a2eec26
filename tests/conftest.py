"""Shared fixtures: a small synthetic dataset, and a runner for the real `accelerate launch`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# DeepSpeed JIT-compiles its CPU comm op once; a project-local cache keeps other venvs from
# invalidating it (see shared DISTRIBUTED-NOTES: "give the project its own TORCH_EXTENSIONS_DIR").
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A shell without job control that starts pytest in the background (`pytest &`, nohup, some CI
# runners) hands it SIGINT *ignored*, and every process it starts inherits that: the Ctrl-C tests
# need the usual disposition, so restore it (children then start with SIGINT at its default).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A 16-identity synthetic CUHK-PEDES-format dataset (generated once per test session)."""
    from reid.data.synth import generate

    root = tmp_path_factory.mktemp("synth") / "cuhk"
    generate(root, num_ids=16, seed=3, image_size=(128, 64))
    return root


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_bin() -> str:
    return str(Path(sys.executable).with_name("accelerate"))


def run_launch(args: list[str], *, accel_config: str | None = None, env: dict | None = None, timeout: int = 600,
               cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    """`accelerate launch [--config_file X] <args>` as a user would type it; output captured."""
    cmd = [accelerate_bin(), "launch"]
    if accel_config:  # a fresh port: a killed run's port may still be held for a moment
        cmd += ["--config_file", str(REPO / "accelerate_configs" / f"{accel_config}.yaml"),
                "--main_process_port", str(free_port())]
    else:
        cmd += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += args
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size) -> Path``: a small real filesystem (a tmpfs mount) to fill up; resize it with
    ``remount(path, size)``. Needs root (CI and the dev machine have it); skipped otherwise."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): needs root")
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)
