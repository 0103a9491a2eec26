"""Full training-state checkpoints: atomic, pruned, found by reading their marker, shape-checked.

Layout under ``<run>/checkpoints/``::

    step_00000120/               one complete checkpoint (Accelerate's save_state: model, optimizer,
        reid_checkpoint.json     RNG per rank, the registered TrainState; DeepSpeed's shards)
    .tmp-step_00000140/          a save in progress: never loaded, removed by the next save

A save goes to ``.tmp-*`` and is renamed once every rank has written its part and the marker
``reid_checkpoint.json`` (step, epoch, world size, parameter shapes) is in place, so a kill during a
save leaves the previous checkpoint usable. Only then are checkpoints beyond ``keep_last`` removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from reid.errors import CheckpointError

MARKER = "reid_checkpoint.json"


def parameter_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    """Full (unpartitioned) shape of every parameter; ZeRO-3 keeps it in ``ds_shape``."""
    shapes = {}
    for name, param in model.named_parameters():
        shape = getattr(param, "ds_shape", None) or param.shape
        shapes[name] = list(shape)
    return shapes


def save_checkpoint(accelerator: Any, root: Path, step: int, meta: dict[str, Any], keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the final directory."""
    root = Path(root)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker = dict(meta, step=step, world_size=accelerator.num_processes)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        if final.exists():  # same step saved twice (e.g. stop request right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (ordered by the step in their marker)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        marker = read_marker(child) if child.is_dir() and not child.name.startswith(".") else None
        if marker is not None:
            found.append((int(marker["step"]), child))
    return [path for _, path in sorted(found)]


def resolve_resume(resume: str, root: Path) -> Path | None:
    """``latest`` → the newest complete checkpoint under ``root`` (None if there is none yet);
    anything else is a checkpoint directory, which must be complete."""
    if resume == "latest":
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if read_marker(path) is None:
        raise CheckpointError(f"{path}: not a complete reid checkpoint (no readable {MARKER})")
    return path


def check_compatible(path: Path, model: torch.nn.Module, world_size: int, deepspeed: bool) -> dict[str, Any]:
    """Raise CheckpointError naming the first tensor whose shape differs (or that is missing)."""
    marker = read_marker(path)
    if marker is None:
        raise CheckpointError(f"{path}: not a complete reid checkpoint (no readable {MARKER})")
    saved = marker.get("shapes", {})
    for name, shape in parameter_shapes(model).items():
        if name not in saved:
            raise CheckpointError(f"{path}: checkpoint has no tensor '{name}' (a different model?)")
        if list(saved[name]) != shape:
            raise CheckpointError(
                f"{path}: tensor '{name}' has shape {saved[name]} in the checkpoint but {shape} in this "
                "model (different model config or number of identities?)"
            )
    extra = sorted(set(saved) - set(parameter_shapes(model)))
    if extra:
        raise CheckpointError(f"{path}: checkpoint tensor '{extra[0]}' does not exist in this model")
    if deepspeed and int(marker.get("world_size", world_size)) != world_size:
        raise CheckpointError(
            f"{path}: saved by {marker['world_size']} processes, resumed with {world_size}; DeepSpeed "
            "shards need the same world size (or DeepSpeed's universal checkpoint conversion)"
        )
    return marker
