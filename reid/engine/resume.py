"""Which checkpoint a run resumes from: the newest intact one, checked before anything is loaded.

``--resume latest`` verifies the newest checkpoint of the run against its manifest (every file
there, with its recorded size and SHA-256). A damaged one is named with the file and the problem in
one line, and the next older one is tried; when none is intact the run stops with that line.
``--resume DIR`` loads exactly that checkpoint or stops with the line: no fallback when a specific
checkpoint was asked for. Nothing is written before this decision, so a bad path creates no run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from reid.engine.checkpoint import MARKER, candidates, read_marker
from reid.engine.collective import from_main
from reid.engine.disk import free_bytes, size_text
from reid.engine.manifest import find_damage
from reid.errors import CheckpointError, DiskFullError


def damage(path: Path, marker: dict[str, Any] | None) -> str | None:
    """What is wrong with the checkpoint at ``path`` (None: intact)."""
    if marker is None:
        return f"no readable {MARKER} (the save did not finish, or the file was removed or damaged)"
    files = marker.get("files")
    if not files:
        return f"its {MARKER} lists no files (written by a reid without checkpoint manifests): it cannot be verified"
    return find_damage(path, files)


def find_checkpoint(resume: str, root: Path, say: Callable[[str], None]) -> Path | None:
    """Main process only. ``latest``: the newest intact checkpoint under ``root`` (None when the run
    has none yet); otherwise ``resume`` is a checkpoint directory, which must be intact."""
    if resume != "latest":
        return _asked_for(Path(resume))
    found = candidates(root)
    problems = []
    for path, marker in found:
        problem = damage(path, marker)
        if problem is None:
            return path
        problems.append(f"{path.name}: {problem}")
        say(f"warning: checkpoint {path} is damaged: {problem}; trying the previous one")
    if problems:
        raise CheckpointError(f"no intact checkpoint under {root} (newest: {problems[0]}); "
                              "start a new run, or pass --resume DIR to name another checkpoint")
    return None


def _asked_for(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    marker = read_marker(path)
    if marker is None and (path / "checkpoints").is_dir():
        raise CheckpointError(f"{path}: a run directory, not a checkpoint: pass one of {path / 'checkpoints'}/step_*, "
                              f"or --resume latest train.run_name={path.name}")
    problem = damage(path, marker)
    if problem:
        raise CheckpointError(f"checkpoint {path} is damaged: {problem}")
    return path


def locate(accelerator: Any, resume: str | None, root: Path) -> tuple[Path, dict[str, Any]] | None:
    """Collective: the checkpoint to resume from and its marker, decided on the main process, or
    None for a fresh start. Raises the same CheckpointError / DiskFullError on every rank."""
    if not resume:
        return None
    outcome: tuple[str, Any] | None = None
    if accelerator.is_main_process:
        try:
            path = find_checkpoint(resume, root, _print)
            outcome = ("ok", str(path) if path else None)
            if path is not None:
                outcome = _room_for(path, root) or outcome
        except CheckpointError as exc:
            outcome = ("error", str(exc))
    kind, value = from_main(accelerator, outcome)
    if kind == "error":
        raise CheckpointError(value)
    if kind == "full":
        raise DiskFullError(value)
    if value is None:
        return None
    path = Path(value)
    return path, read_marker(path)


def _room_for(path: Path, root: Path) -> tuple[str, str] | None:
    """A resumed run will save a checkpoint of this size: refuse to start when it cannot fit."""
    needed = int(read_marker(path).get("bytes", 0))
    free = free_bytes(root)
    if needed and free < needed:
        return ("full", f"{size_text(free)} free on the disk of {root}, but the run's next checkpoint needs about "
                        f"{size_text(needed)} (the size of {path.name}): free space, then resume again")
    return None


def _print(message: str) -> None:
    print(message, flush=True)
