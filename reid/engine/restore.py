"""Load a verified checkpoint into the prepared model and optimizer: exactly, or on another number
of processes.

**Same number of processes.** Accelerate's ``load_state`` restores model, optimizer, the registered
TrainState and the RNG states; then each rank reads its RNG file again, strictly: Accelerate skips
an RNG file it cannot read without a word, and a resume that silently lost its RNG is no longer
exact.

**Another number of processes** (elastic resume):

- DDP: model and optimizer are single copies, so ``load_state`` restores them as they are.
- DeepSpeed ZeRO-2/3: the optimizer state is partitioned by the old world size. The checkpoint is
  converted to DeepSpeed's universal format (``deepspeed.checkpoint.ds_to_universal``: each
  parameter's fp32 value and Adam moments, whole) into the run's ``checkpoints/.universal-step_*``, loaded with
  ``checkpoint.load_universal`` (set in the DeepSpeed config before ``prepare``), then removed. The
  module's buffers (BatchNorm statistics), which a universal checkpoint does not hold, come from the
  module state DeepSpeed saved. Two things DeepSpeed 0.19.8's ZeRO-3 universal load gets wrong are
  put right after it: every parameter group receives the first group's hyperparameters (weight
  decay, name), and all groups share one Adam step tensor, which each group's update then advances
  again.
- Either way the per-process RNG streams (dropout) cannot continue, since there are now more or
  fewer of them: every rank is reseeded from (train.seed, step, rank), deterministically, and the
  run says so. The data order does not use them: it is a function of the seed, epoch and position.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.checkpointing import load_custom_state
from accelerate.utils import load, set_seed

from reid.data.samplers import sample_seed
from reid.engine.collective import from_main
from reid.engine.disk import free_bytes, size_text
from reid.errors import CheckpointError

RNG_FILE = "random_states_{rank}.pkl"  # Accelerate's name for each rank's RNG states
DEEPSPEED_TAG = "pytorch_model"  # the tag Accelerate's save_state gives DeepSpeed's checkpoint


def elastic(accelerator: Any, marker: dict[str, Any]) -> bool:
    return int(marker["world_size"]) != accelerator.num_processes


def prepare_deepspeed_load(accelerator: Any, marker: dict[str, Any], deepspeed: bool) -> None:
    """Before ``prepare``: a DeepSpeed engine that will load a universal checkpoint must be built
    with ``checkpoint.load_universal``."""
    if deepspeed and elastic(accelerator, marker):
        accelerator.state.deepspeed_plugin.deepspeed_config["checkpoint"] = {"load_universal": True}


def load_checkpoint(accelerator: Any, model: Any, path: Path, marker: dict[str, Any], custom: list[Any], *,
                    deepspeed: bool, seed: int, scratch: Path) -> str | None:
    """Restore everything from ``path``. Returns what could not be carried over (None: exact).
    ``custom``: the objects registered for checkpointing, in registration order (the train state,
    then the identity-text memory where there is one). ``scratch``: where a universal checkpoint may
    be converted to (the run's checkpoint folder)."""
    if not elastic(accelerator, marker):
        _guarded(path, lambda: accelerator.load_state(str(path)))
        restore_rng(path, accelerator.process_index)
        return None
    if deepspeed:
        _load_universal(accelerator, model, path, marker, custom, Path(scratch) / f".universal-{path.name}")
    else:
        _guarded(path, lambda: accelerator.load_state(str(path)))
    set_seed(sample_seed(seed, int(marker["step"]), accelerator.process_index) % 2**32)
    return "per-process RNG streams (dropout), reseeded from train.seed, the step and the rank"


def restore_rng(path: Path, rank: int) -> None:
    """Set this rank's Python, NumPy, torch (and CUDA) RNG states from the checkpoint, or raise."""
    file = Path(path) / RNG_FILE.format(rank=rank)
    try:
        states = load(file)
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])
    except Exception as exc:  # noqa: BLE001 - any failure means the resume would not be exact
        raise CheckpointError(f"{file}: the RNG state of rank {rank} cannot be restored ({_first_line(exc)}); "
                              "the resume would not be exact") from exc


def _guarded(path: Path, load_fn: Any) -> None:
    try:
        load_fn()
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a verified checkpoint that still does not load: one line
        raise CheckpointError(f"{path}: cannot be loaded ({type(exc).__name__}: {_first_line(exc)})") from exc


def _load_universal(accelerator: Any, engine: Any, path: Path, marker: dict[str, Any], custom: list[Any], work: Path) -> None:
    problem = from_main(accelerator, _convert(path, work, marker) if accelerator.is_main_process else None)
    if problem:
        raise CheckpointError(problem)
    groups = [{k: v for k, v in g.items() if k not in ("params", "step")} for g in engine.optimizer.param_groups]
    try:
        loaded, _ = engine.load_checkpoint(str(work), tag=DEEPSPEED_TAG)
        if loaded is None:
            raise CheckpointError(f"{work}: DeepSpeed found no universal checkpoint to load")
        _repair_groups(engine.optimizer, groups)
        _restore_buffers(engine.module, path)
        for index, obj in enumerate(custom):
            load_custom_state(obj, str(path), index)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: the universal checkpoint does not load ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from exc
    finally:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(work, ignore_errors=True)


def _convert(path: Path, work: Path, marker: dict[str, Any]) -> str | None:
    """Main process: DeepSpeed checkpoint → universal checkpoint; a one-line problem, or None."""
    try:
        ds_to_universal = importlib.import_module("deepspeed.checkpoint.ds_to_universal")
    except ImportError as exc:
        return (f"{path}: written by {marker['world_size']} processes; resuming on another number needs "
                f"DeepSpeed's universal checkpoint (deepspeed.checkpoint.ds_to_universal, DeepSpeed >= 0.14): {exc}")
    shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    needed, free = int(marker.get("bytes", 0)), free_bytes(work.parent)
    if free < needed:
        return (f"{path}: converting it to DeepSpeed's universal checkpoint needs about {size_text(needed)} free "
                f"in {work.parent}, {size_text(free)} are")
    args = argparse.Namespace(
        input_folder=str(path / DEEPSPEED_TAG), output_folder=str(work / DEEPSPEED_TAG), num_extract_workers=1,
        num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True,
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ds_to_universal.main(args)
    except Exception as exc:  # noqa: BLE001
        shutil.rmtree(work, ignore_errors=True)
        return f"{path}: DeepSpeed cannot convert it to a universal checkpoint ({type(exc).__name__}: {_first_line(exc)})"
    return None


def _restore_buffers(module: torch.nn.Module, path: Path) -> None:
    """A universal checkpoint holds parameters and optimizer state only: BatchNorm's running
    statistics and counters come from the module state DeepSpeed saved beside them (the same on
    every rank: the statistics are synchronised)."""
    files = sorted((path / DEEPSPEED_TAG).glob("*model_states.pt"))
    if not files:
        raise CheckpointError(f"{path / DEEPSPEED_TAG}: no *model_states.pt (the module's buffers)")
    saved = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    with torch.no_grad():
        for prefix, owner in module.named_modules():
            for name, buffer in owner.named_buffers(recurse=False):
                key = f"{prefix}.{name}" if prefix else name
                if name in owner._non_persistent_buffers_set:
                    continue
                if key not in saved:
                    raise CheckpointError(f"{files[0]}: buffer '{key}' is missing")
                buffer.copy_(saved[key])


def _repair_groups(optimizer: Any, groups: list[dict[str, Any]]) -> None:
    """Undo what DeepSpeed's ZeRO-3 universal load does to the groups (see the module docstring)."""
    for group, saved in zip(optimizer.param_groups, groups):
        group.update(saved)
    inner = getattr(optimizer, "optimizer", optimizer)
    for per_param in inner.state.values():
        if torch.is_tensor(per_param.get("step")):
            per_param["step"] = per_param["step"].clone()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
