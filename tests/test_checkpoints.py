"""Checkpoints in one process, with a real Accelerator and real files: the manifest, damage found
and named, the fallback to the newest intact checkpoint, a full disk (a real tmpfs), RNG states
restored strictly, the backend check. Through the real launcher: tests/test_faults.py."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from reid.engine.checkpoint import MARKER, check_compatible, list_checkpoints, parameter_shapes, read_marker, save_checkpoint
from reid.engine.disk import is_disk_full
from reid.engine.manifest import find_damage
from reid.engine.resume import damage, find_checkpoint
from reid.engine.state import TrainState
from reid.errors import CheckpointError, DiskFullError
from tests.conftest import remount


class Toy(torch.nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.body = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def accel():
    """One prepared model + optimizer that has taken a step (so the optimizer has state)."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = Toy(512)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(3, 512)).sum().backward()
    optimizer.step()
    state = TrainState(step=5)
    accelerator.register_for_checkpointing(state)
    return accelerator, model, state


def _save(accel, root: Path, step: int, keep_last: int = 5) -> Path:
    accelerator, model, state = accel
    state.step = step
    return save_checkpoint(accelerator, root, step, {"shapes": parameter_shapes(model)}, keep_last)


def test_a_checkpoint_records_each_file_with_its_size_and_checksum(accel, tmp_path):
    path = _save(accel, tmp_path, 5)
    marker = read_marker(path)
    assert set(marker["files"]) == {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"}
    assert marker["bytes"] == sum(f.stat().st_size for f in path.iterdir() if f.name != MARKER)
    assert all(len(entry["sha256"]) == 64 for entry in marker["files"].values())
    assert find_damage(path, marker["files"]) is None


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fault, expected", [
    (lambda c: _truncate(c / "optimizer.bin"), r"optimizer.bin has \d+ bytes, \d+ when saved \(truncated"),
    (lambda c: _truncate(c / "model.safetensors"), r"model.safetensors has \d+ bytes"),
    (lambda c: _truncate(c / "custom_checkpoint_0.pkl"), r"custom_checkpoint_0.pkl has \d+ bytes"),
    (lambda c: (c / "model.safetensors").unlink(), r"model.safetensors is missing"),
    (lambda c: (c / "random_states_0.pkl").unlink(), r"random_states_0.pkl is missing"),
    (lambda c: _flip_a_byte(c / "random_states_0.pkl"), r"random_states_0.pkl has changed since it was saved"),
    (lambda c: (c / MARKER).unlink(), r"no readable reid_checkpoint.json"),
    (lambda c: (c / MARKER).write_text('{"step": 9, "world_size": 1}'), r"lists no files \(written by a reid without"),
])
def test_damage_is_found_and_named(accel, tmp_path, fault, expected):
    older = _save(accel, tmp_path, 5)
    newest = _save(accel, tmp_path, 9)
    fault(newest)
    said: list[str] = []
    assert find_checkpoint("latest", tmp_path, said.append) == older
    assert len(said) == 1 and f"checkpoint {newest} is damaged: " in said[0] and "trying the previous one" in said[0]
    assert __import__("re").search(expected, said[0]), said[0]
    with pytest.raises(CheckpointError, match=f"checkpoint {newest} is damaged: "):
        find_checkpoint(str(newest), tmp_path, said.append)  # asked for by name: no fallback


def test_no_intact_checkpoint_stops_the_resume(accel, tmp_path):
    for step in (5, 9):
        _truncate(_save(accel, tmp_path, step) / "optimizer.bin")
    said: list[str] = []
    with pytest.raises(CheckpointError, match=r"no intact checkpoint under .* \(newest: step_00000009: optimizer.bin has"):
        find_checkpoint("latest", tmp_path, said.append)
    assert len(said) == 2
    assert find_checkpoint("latest", tmp_path / "none", said.append) is None  # a run with no checkpoint yet


def test_a_bad_resume_path_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        find_checkpoint(str(tmp_path / "nonexistent"), tmp_path, print)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"a run directory, not a checkpoint: .*--resume latest train.run_name=run"):
        find_checkpoint(str(tmp_path / "run"), tmp_path, print)


def test_a_save_killed_half_way_leaves_the_previous_checkpoint_usable(accel, tmp_path):
    """The kill is simulated in-process (save_state raising after writing part of its files): a real
    SIGKILL lands at a random moment (tests/test_distributed.py); this places it between files."""
    accelerator, model, state = accel
    first = _save(accel, tmp_path, 5, keep_last=2)
    real_save = accelerator.save_state

    def dies_half_way(path):
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt("killed during save")

    accelerator.save_state = dies_half_way
    try:
        with pytest.raises(KeyboardInterrupt):
            _save(accel, tmp_path, 9, keep_last=2)
    finally:
        accelerator.save_state = real_save
    assert find_checkpoint("latest", tmp_path, print) == first
    state.step = 0
    accelerator.load_state(str(first))
    assert state.step == 5
    _save(accel, tmp_path, 12, keep_last=2)  # the next save cleans the debris up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000005", "step_00000012"]


def test_a_disk_that_fills_during_a_save(accel, tmpfs):
    """A real full disk (tmpfs smaller than one checkpoint): one line saying so, the partial save
    removed, exit path clean; with room again the same save works."""
    disk = tmpfs("1m")  # a checkpoint is ~3 MB (weights 1 MB, AdamW moments 2 MB)
    root = disk / "checkpoints"
    with pytest.raises(DiskFullError) as info:
        _save(accel, root, 5)
    message = str(info.value)
    assert message.startswith("checkpoint step_00000005 not written: no space left on the disk under ")
    assert "the partial save was removed, complete checkpoints are kept" in message and "\n" not in message
    assert sorted(p.name for p in root.iterdir()) == []
    remount(disk, "8m")
    assert damage(_save(accel, root, 5), read_marker(root / "step_00000005")) is None


def test_free_space_is_checked_before_writing(accel, tmpfs):
    """Once one checkpoint exists the size of the next is known: with less room, nothing is written."""
    disk = tmpfs("4m")
    root = disk / "checkpoints"
    first = _save(accel, root, 5)
    size = read_marker(first)["bytes"]
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * (free - size // 2))
    with pytest.raises(DiskFullError, match=rf"checkpoint step_00000009 not written: \d+ bytes .* free on the disk of "
                                            rf"{root}, a checkpoint needs about {size} bytes .*\(the size of step_00000005\)"):
        _save(accel, root, 9)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000005"]
    assert damage(first, read_marker(first)) is None


def test_disk_full_is_recognised_however_it_is_reported(tmp_path):
    inner = OSError(errno.ENOSPC, "No space left on device")
    outer = RuntimeError("[enforce fail at inline_container.cc] unexpected pos 123")
    outer.__cause__ = inner
    assert is_disk_full(outer, tmp_path)
    assert is_disk_full(RuntimeError("basic_ios::clear: No space left on device"), tmp_path)
    assert not is_disk_full(ValueError("something else"), tmp_path)


def test_an_unreadable_rng_state_is_an_error_not_a_silent_skip(accel, tmp_path):
    from reid.engine.restore import restore_rng

    path = _save(accel, tmp_path, 5)
    restore_rng(path, 0)
    (path / "random_states_0.pkl").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=r"random_states_0.pkl: the RNG state of rank 0 cannot be restored .* would not be exact"):
        restore_rng(path, 0)


def test_keep_last_prunes_only_complete_older_checkpoints(accel, tmp_path):
    for step in (1, 2, 3):
        _save(accel, tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]


def test_a_checkpoint_of_another_backend_is_refused(tmp_path):
    model = Toy()
    marker = {"step": 1, "world_size": 2, "shapes": parameter_shapes(model), "backend": "DeepSpeed ZeRO-2"}
    check_compatible(tmp_path, marker, model, "DeepSpeed ZeRO-2")
    with pytest.raises(CheckpointError, match="written under DeepSpeed ZeRO-2, resumed under DDP: resume it with an"):
        check_compatible(tmp_path, marker, model, "DDP")
    with pytest.raises(CheckpointError, match=r"tensor 'body.weight' has shape \[4, 4\] in the checkpoint but \[8, 8\]"):
        check_compatible(tmp_path, marker, Toy(8), "DeepSpeed ZeRO-2")
    json.dumps(marker)  # markers stay plain JSON


def test_a_checkpoint_with_other_optimizer_groups_is_refused(tmp_path):
    model = Toy()
    four = ["encoders", "encoders_no_decay", "heads", "heads_no_decay"]
    six = four + ["image_encoder", "image_encoder_no_decay"]
    marker = {"step": 1, "world_size": 1, "shapes": parameter_shapes(model), "backend": "DDP", "optimizer_groups": four}
    check_compatible(tmp_path, marker, model, "DDP", four)
    with pytest.raises(CheckpointError, match=r"parameter groups are \[.*'heads_no_decay'\] in the checkpoint but .*"
                                              r"'image_encoder_no_decay'\] in this run \(optim.image_lr"):
        check_compatible(tmp_path, marker, model, "DDP", six)
    del marker["optimizer_groups"]  # written before the groups were recorded: not checked for them
    check_compatible(tmp_path, marker, model, "DDP", six)
    marker["optimizer_group_sizes"] = [4, 4, 6, 6]  # the same groups, an encoder frozen in one run only
    check_compatible(tmp_path, marker, model, "DDP", four, [4, 4, 6, 6])
    with pytest.raises(CheckpointError, match=r"groups hold \[4, 4, 6, 6\] tensors in the checkpoint but \[2, 2, 6, 6\] "
                                              r"in this run \(model.image_encoder.frozen"):
        check_compatible(tmp_path, marker, model, "DDP", four, [2, 2, 6, 6])


def test_another_number_of_processes_without_universal_checkpoints_is_one_line(tmp_path, monkeypatch):
    """A DeepSpeed without ``deepspeed.checkpoint.ds_to_universal`` (before 0.14) cannot re-partition
    ZeRO shards: the resume says what it would need. (The import is made to fail here; the real
    conversion runs in tests/test_elastic.py.)"""
    import sys

    from reid.engine.restore import _convert

    monkeypatch.setitem(sys.modules, "deepspeed.checkpoint.ds_to_universal", None)
    problem = _convert(tmp_path / "step_00000010", tmp_path / ".universal-step_00000010", {"world_size": 2, "bytes": 1})
    assert problem.startswith(f"{tmp_path / 'step_00000010'}: written by 2 processes; resuming on another number needs "
                              "DeepSpeed's universal checkpoint (deepspeed.checkpoint.ds_to_universal, DeepSpeed >= 0.14)")
