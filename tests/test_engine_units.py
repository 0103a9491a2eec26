"""Engine parts that need no process group: parameter groups, the lr schedule, checkpoint markers,
the stop request."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from reid.config import OptimConfig
from reid.engine.checkpoint import MARKER, check_compatible, list_checkpoints, parameter_shapes, resolve_resume
from reid.engine.optim import apply_lr, build_optimizer, lr_factor, param_groups
from reid.engine.signals import StopRequest
from reid.errors import CheckpointError


class Toy(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.image_encoder = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.LayerNorm(width))
        self.text_encoder = torch.nn.Linear(3, width)
        self.head = torch.nn.Linear(width, 2)
        self.scale = torch.nn.Parameter(torch.ones(1))


def test_param_groups_split_encoders_heads_and_decay():
    groups = {g["name"]: g for g in param_groups(Toy(), OptimConfig(lr=1e-5, head_lr=1e-3, weight_decay=0.1))}
    assert set(groups) == {"encoders", "encoders_no_decay", "heads", "heads_no_decay"}
    assert groups["encoders"]["lr"] == 1e-5 and groups["heads"]["lr"] == 1e-3
    assert groups["heads_no_decay"]["weight_decay"] == 0.0 and groups["heads"]["weight_decay"] == 0.1
    assert all(p.ndim >= 2 for p in groups["encoders"]["params"])
    assert all(p.ndim <= 1 for g in ("encoders_no_decay", "heads_no_decay") for p in groups[g]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(list(Toy().parameters()))


def test_lr_warmup_then_cosine_to_floor():
    cfg = OptimConfig(warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(s, 20, cfg) for s in range(21)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))  # monotone decay
    assert factors[20] == pytest.approx(0.1)
    assert factors[12] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine


def test_apply_lr_sets_every_group():
    cfg = OptimConfig(lr=1e-5, head_lr=1e-3, warmup_steps=2)
    opt = build_optimizer(Toy(), cfg)
    lrs = apply_lr(opt, 0, 10, cfg)
    assert lrs["encoders"] == pytest.approx(0.5e-5) and lrs["heads"] == pytest.approx(0.5e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lrs[g["name"]] for g in opt.param_groups])


def _fake_checkpoint(root, step, model, **extra):
    d = root / f"step_{step:08d}"
    d.mkdir(parents=True)
    (d / MARKER).write_text(json.dumps({"step": step, "world_size": 1, "shapes": parameter_shapes(model), **extra}))
    return d


def test_latest_checkpoint_by_marker_ignores_incomplete(tmp_path):
    model = Toy()
    _fake_checkpoint(tmp_path, 5, model)
    newest = _fake_checkpoint(tmp_path, 12, model)
    (tmp_path / ".tmp-step_00000020").mkdir()  # a save that was killed
    (tmp_path / "step_00000030").mkdir()  # no marker: incomplete
    assert list_checkpoints(tmp_path)[-1] == newest
    assert resolve_resume("latest", tmp_path) == newest
    assert resolve_resume("latest", tmp_path / "none") is None
    with pytest.raises(CheckpointError, match="not a complete reid checkpoint"):
        resolve_resume(str(tmp_path / "step_00000030"), tmp_path)


def test_shape_mismatch_names_first_tensor(tmp_path):
    ckpt = _fake_checkpoint(tmp_path, 1, Toy(width=4))
    check_compatible(ckpt, Toy(width=4), world_size=1, deepspeed=False)
    with pytest.raises(CheckpointError, match=r"tensor 'image_encoder.0.weight' has shape \[4, 3\] in the checkpoint but \[8, 3\]"):
        check_compatible(ckpt, Toy(width=8), world_size=1, deepspeed=False)


def test_deepspeed_world_size_change_is_refused(tmp_path):
    ckpt = _fake_checkpoint(tmp_path, 1, Toy())
    with pytest.raises(CheckpointError, match="saved by 1 processes, resumed with 2"):
        check_compatible(ckpt, Toy(), world_size=2, deepspeed=True)


def test_stop_request_by_signal_and_by_file(tmp_path):
    stop = StopRequest(tmp_path / "STOP").install()
    try:
        assert not stop.poll()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.poll() and stop.reason == "SIGUSR1"
    finally:
        stop.uninstall()
    stop = StopRequest(tmp_path / "STOP")
    (tmp_path / "STOP").touch()
    assert stop.poll() and "stop file" in stop.reason


def test_a_save_killed_half_way_leaves_the_previous_checkpoint_usable(tmp_path):
    """The kill is simulated in-process (save_state raising after writing part of its files): a real
    SIGKILL lands at a random moment; this places it at the worst one, between files."""
    from accelerate import Accelerator

    from reid.engine.checkpoint import save_checkpoint
    from reid.engine.state import TrainState

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(Toy())
    state = TrainState(step=5)
    accelerator.register_for_checkpointing(state)
    meta = {"shapes": parameter_shapes(model)}
    first = save_checkpoint(accelerator, tmp_path, 5, meta, keep_last=2)

    real_save = accelerator.save_state

    def dies_half_way(path):
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt("killed during save")

    accelerator.save_state = dies_half_way
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, 9, meta, keep_last=2)
    assert resolve_resume("latest", tmp_path) == first
    state.step = 0
    accelerator.load_state(str(first))
    assert state.step == 5

    accelerator.save_state = real_save  # the next save cleans the debris up
    save_checkpoint(accelerator, tmp_path, 12, meta, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000005", "step_00000012"]
