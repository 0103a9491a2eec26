"""Full training-state checkpoints: atomic, verified, pruned, found by reading their marker.

Layout under ``<run>/checkpoints/``::

    step_00000120/               one complete checkpoint (Accelerate's save_state: model, optimizer,
        reid_checkpoint.json     RNG per rank, the registered TrainState; DeepSpeed's shards)
    .tmp-step_00000140/          a save in progress: never loaded, removed by the next save

A save goes to ``.tmp-*``. Once every rank has written its part, the main process records what the
checkpoint holds — each file's size and SHA-256 (:mod:`reid.engine.manifest`) beside step, epoch,
data position, world size and parameter shapes — in the marker ``reid_checkpoint.json``, then
renames the directory. So a kill during a save leaves the previous checkpoint usable, and a file
damaged later is found before it is loaded. Only then are checkpoints beyond ``keep_last`` removed.

A save that cannot be completed (full disk, failed write) removes its ``.tmp-*``, keeps every
complete checkpoint and raises one line on every rank (the one exception: a rank of a multi-process
DeepSpeed run that fails inside DeepSpeed's own save reports it alone and leaves the ``.tmp-*`` to
the next save, since the others may still be writing into it). Before writing, the free space is
compared with the size of the newest complete checkpoint (when there is one: the size of the next
is then known).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from reid.engine.collective import first_reported, from_main
from reid.engine.disk import free_bytes, full_reason, size_text
from reid.engine.manifest import build_manifest, total_bytes
from reid.errors import CheckpointError, DiskFullError

MARKER = "reid_checkpoint.json"
FORMAT = 2  # 2: with a file manifest and the data position in global samples
_STEP_DIR = re.compile(r"step_(\d+)$")
# How a collective reports that another rank has gone (gloo; NCCL aborts its communicator).
_PEER_LOST = ("closed by peer", "reset by peer", "remote worker", "communicator was aborted")


def parameter_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    """Full (unpartitioned) shape of every parameter; ZeRO-3 keeps it in ``ds_shape``."""
    shapes = {}
    for name, param in model.named_parameters():
        shape = getattr(param, "ds_shape", None) or param.shape
        shapes[name] = list(shape)
    return shapes


def save_checkpoint(
    accelerator: Any, root: Path, step: int, meta: dict[str, Any], keep_last: int, *,
    failures_are_local: bool = False, resume_hint: str = "--resume latest",
) -> Path:
    """Collective: every rank calls it. Returns the final directory.

    ``failures_are_local``: a rank whose write fails raises at once instead of telling the others:
    DeepSpeed's save has barriers of its own, where the others may be waiting, and a collective of
    ours opposite one of them would wait for ever. The others then lose their peer and end quietly
    (the failed rank prints the line; the launcher ends what is left)."""
    root = Path(root)
    final, tmp = root / f"step_{step:08d}", root / f".tmp-step_{step:08d}"
    after = f"complete checkpoints are kept; free space, then resume with {resume_hint}"
    problem, needed = from_main(accelerator, _prepare(root, final, after) if accelerator.is_main_process else None)
    if problem:
        raise _as_error(problem)
    alone = accelerator.num_processes == 1
    failure = _write_state(accelerator, tmp, final, after, needed, removed=alone or not failures_are_local)
    if failures_are_local and failure:
        _discard(tmp, alone)  # others may still be writing into it: then the next save removes it
        raise _as_error(failure, every_rank=failure[0] != "peer")
    try:
        failure = first_reported(accelerator, failure)  # also the barrier: every rank's part is written
    except RuntimeError as exc:  # a rank that failed alone has gone
        raise _as_error(("peer", f"checkpoint {final.name} not written: {_first_line(exc)}")) from exc
    if failure:
        _discard(tmp, accelerator.is_main_process)
        raise _as_error(failure)
    marker = dict(meta, format=FORMAT, step=step, world_size=accelerator.num_processes)
    done = _complete(tmp, final, marker, keep_last, after) if accelerator.is_main_process else None
    failure = from_main(accelerator, done)
    if failure:
        raise _as_error(failure)
    return final


def _prepare(root: Path, final: Path, after: str) -> tuple[tuple[str, str] | None, int]:
    """Main process, before writing: remove the debris of killed saves; refuse when the disk cannot
    hold a checkpoint of the newest one's size. Returns (problem, bytes a checkpoint needs or 0)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _describe_failure(exc, root, final, after, 0), 0
    for stale in [*root.glob(".tmp-*"), *root.glob(".universal-*")]:  # left by a killed save / resume
        shutil.rmtree(stale, ignore_errors=True)
    found = list_checkpoints(root)
    needed = int(read_marker(found[-1]).get("bytes", 0)) if found else 0
    free = free_bytes(root)
    if needed and free < needed:
        return ("full", f"checkpoint {final.name} not written: {size_text(free)} free on the disk of {root}, "
                        f"a checkpoint needs about {size_text(needed)} (the size of {found[-1].name}); {after}"), needed
    return None, needed


def _write_state(accelerator: Any, tmp: Path, final: Path, after: str, needed: int, removed: bool) -> tuple[str, str] | None:
    try:
        accelerator.save_state(str(tmp))
        return None
    except Exception as exc:  # noqa: BLE001 - reported in one line on every rank, then raised
        return _describe_failure(exc, tmp, final, after, needed, removed)


def _describe_failure(exc: BaseException, tmp: Path, final: Path, after: str, needed: int,
                      removed: bool = True) -> tuple[str, str]:
    if any(sign in str(exc) for sign in _PEER_LOST):
        return ("peer", f"checkpoint {final.name} not written: another process failed ({_first_line(exc)})")
    partial = "the partial save was removed" if removed else f"the partial {tmp.name} goes at the next save"
    reason = full_reason(exc, tmp)
    if reason:
        need = f", a checkpoint needs about {size_text(needed)}" if needed else ""
        return ("full", f"checkpoint {final.name} not written: {reason} under {tmp.parent} "
                        f"({size_text(free_bytes(tmp.parent))} free{need}); {partial}, {after}")
    return ("failed", f"checkpoint {final.name} not written: {type(exc).__name__}: {_first_line(exc)}; "
                      f"{partial}, {after}")


def _as_error(failure: tuple[str, str], every_rank: bool = False) -> Exception:
    """``every_rank``: met by this process alone, so printed by it; ``peer`` failures are not
    printed at all (the process that failed says why)."""
    kind, message = failure
    error = DiskFullError(message) if kind == "full" else CheckpointError(message)
    error.every_rank = every_rank  # type: ignore[attr-defined]
    error.quiet = kind == "peer"  # type: ignore[attr-defined]
    return error


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _discard(tmp: Path, is_main: bool) -> None:
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)


def _complete(tmp: Path, final: Path, marker: dict[str, Any], keep_last: int, after: str) -> tuple[str, str] | None:
    """Main process: record the manifest, rename, prune. A failure removes the partial save."""
    try:
        files = build_manifest(tmp, skip=frozenset({MARKER}))
        marker.update(files=files, bytes=total_bytes(files))
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        if final.exists():  # the same step saved by an earlier attempt of this run
            shutil.rmtree(final)
        tmp.rename(final)
    except Exception as exc:  # noqa: BLE001 - reported in one line on every rank, then raised
        shutil.rmtree(tmp, ignore_errors=True)
        return _describe_failure(exc, tmp, final, after, int(marker.get("bytes", 0)))
    for old in list_checkpoints(final.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return None


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
        return marker if isinstance(marker, dict) and "step" in marker else None
    except (OSError, ValueError):
        return None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (ordered by the step in their marker)."""
    return [path for step, path, marker in _scan(root) if marker is not None]


def candidates(root: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """Every checkpoint directory under ``root``, newest first, with its marker (None when it has no
    readable marker: a save that never finished, or a damaged one). Directories without a marker
    are placed by the step in their name."""
    return [(path, marker) for _, path, marker in reversed(_scan(root))]


def _scan(root: Path) -> list[tuple[int, Path, dict[str, Any] | None]]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if not child.is_dir() or child.name.startswith("."):
            continue
        marker = read_marker(child)
        named = _STEP_DIR.match(child.name)
        if marker is not None:
            found.append((int(marker["step"]), child, marker))
        elif named:
            found.append((int(named.group(1)), child, None))
    return sorted(found, key=lambda item: (item[0], item[2] is not None))


def check_backend(path: Path, marker: dict[str, Any], backend: str) -> None:
    """Raise CheckpointError naming the backend the checkpoint needs when it was written under another."""
    theirs = marker.get("backend", backend)
    if theirs != backend:
        raise CheckpointError(
            f"{path}: written under {theirs}, resumed under {backend}: resume it with an Accelerate config of "
            "the same kind (DDP and each ZeRO stage store the optimizer differently; moving between them "
            "would need a conversion reid does not do)"
        )


def check_compatible(path: Path, marker: dict[str, Any], model: torch.nn.Module, backend: str,
                     groups: list[str] | None = None, sizes: list[int] | None = None) -> None:
    """Raise CheckpointError naming the first tensor whose shape differs (or that is missing), the
    backend the checkpoint needs when it was written under another one, or the optimizer's parameter
    groups when they differ from the checkpoint's: ``groups`` by name, ``sizes`` by the number of
    tensors each holds (markers written before either was recorded are not checked for it)."""
    check_backend(path, marker, backend)
    for key, ours, verb, unit, cause, section in (
        ("optimizer_groups", groups, "are", "", "optim.image_lr", "optim"),
        ("optimizer_group_sizes", sizes, "hold", " tensors",
         "model.image_encoder.frozen or model.text_encoder.frozen", "model"),
    ):
        saved_value = marker.get(key)
        if ours is not None and saved_value is not None and list(saved_value) != list(ours):
            raise CheckpointError(
                f"{path}: the optimizer's parameter groups {verb} {saved_value}{unit} in the checkpoint but "
                f"{ours} in this run ({cause} set in one and not the other?): resume with the {section} "
                "settings it was written with")
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
