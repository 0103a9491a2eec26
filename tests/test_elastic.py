"""Elastic resume through the real `accelerate launch`: a checkpoint resumes on another number of
CPU processes — DDP, and DeepSpeed ZeRO-2 / ZeRO-3 through DeepSpeed's universal checkpoint.

With the global batch kept (data.batch_size x processes), the resumed run logs the same losses at
every later step as the uninterrupted run on the original number of processes (dropout off: the
per-process RNG streams cannot carry over, and the run says so). With the global batch changed,
the run says so and continues from the same sample of the same epoch order. Checkpoints are taken
from the reference run itself (`--resume DIR`), so the resume point is known exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_launch

pytestmark = pytest.mark.slow

TRAIN = str(REPO / "launch" / "train.py")
ONE = ["--num_processes", "1"]


def args(tmp: Path, root: Path, name: str, batch: int, *extra: str) -> list[str]:
    return [TRAIN, f"data.root={root}", f"data.cache_dir={tmp / 'cache'}", f"data.batch_size={batch}", "data.num_workers=0",
            "model.mlp_dropout=0", "train.log_every=1", "train.progress=false", "train.max_grad_norm=1000",
            "train.epochs=2", "train.save_every=5", "train.keep_last=10", "train.eval_every=0",
            f"train.output_dir={tmp / 'runs'}", f"train.run_name={name}", *extra]


def launch_args(accel: str, procs: int) -> list[str]:
    """One process of a 2-process Accelerate config: `--num_processes 1` (plain 1-process DDP runs use
    run_launch's own flags)."""
    return [] if procs == 2 or accel == "cpu_ddp" else ONE


def read_log(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"}


def final_state(run: Path) -> dict[str, torch.Tensor]:
    """Weights and buffers at the last step, from its checkpoint (DeepSpeed's shards gathered in fp32;
    a 1-process ZeRO-3 export on CPU is not used: see the report of issue 9)."""
    checkpoint = run / "checkpoints" / "step_00000022"
    if (checkpoint / "model.safetensors").is_file():
        return load_file(str(checkpoint / "model.safetensors"))
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag="pytorch_model")


@pytest.fixture(scope="module")
def work(tmp_path_factory, synth_root) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("elastic"), synth_root


@pytest.fixture(scope="module")
def reference(work):
    """Uninterrupted runs (2 epochs of 11 steps, a checkpoint every 5 steps), one per setup."""
    tmp, root = work
    made = {}

    def get(setup: str) -> Path:
        if setup not in made:
            accel, procs = setup.split("-")
            run_launch(launch_args(accel, int(procs)) + args(tmp, root, f"ref-{setup}", 16 // int(procs)),
                       accel_config=None if (accel, procs) == ("cpu_ddp", "1") else accel)
            made[setup] = tmp / "runs" / f"ref-{setup}"
        return made[setup]

    return get


def resume_from(work, source: Path, step: int, name: str, accel: str, procs: int, batch: int) -> tuple[Path, str]:
    tmp, root = work
    run = tmp / "runs" / name
    checkpoint = run / "checkpoints" / f"step_{step:08d}"
    shutil.copytree(source / "checkpoints" / f"step_{step:08d}", checkpoint)
    proc = run_launch(launch_args(accel, procs) + args(tmp, root, name, batch) + ["--resume", str(checkpoint)],
                      accel_config=None if (accel, procs) == ("cpu_ddp", 1) else accel)
    return run, proc.stdout + proc.stderr


def assert_continues_exactly(run: Path, ref: Path, first: int) -> None:
    """Every later step's losses as in the uninterrupted run; at the end the same BatchNorm counters
    and statistics, and weights within what a different summation order leaves: parameters whose
    true gradient is zero (attention key biases, biases before a BatchNorm) follow Adam-normalised
    rounding noise, so the whole weight vector is compared (observed: 1e-3 relative)."""
    resumed, whole = read_log(run), read_log(ref)
    assert sorted(resumed) == list(range(first, 23))
    for step, record in resumed.items():
        assert record["samples"] == whole[step]["samples"] == 16 * step
        # 1 and 2 processes sum in another order, and training amplifies the rounding step by step
        # (observed after resuming at 11: < 1e-5 relative up to step 16, 4e-4 by step 22 on one data
        # draw). The first four steps, which cross the epoch boundary (step 12), must agree to
        # rounding; later ones to what the amplification leaves. A wrong batch moves the loss by
        # several percent (consecutive batches differ by ~5 %).
        tight = step < first + 4
        assert record["loss/total"] == pytest.approx(whole[step]["loss/total"], rel=5e-5 if tight else 5e-3), step
        assert record["grad_norm"] == pytest.approx(whole[step]["grad_norm"], rel=1e-3 if tight else 2e-2), step
    a, b = final_state(ref), final_state(run)
    assert a.keys() == b.keys()
    buffers = [k for k in a if k.endswith(("running_var", "num_batches_tracked"))]
    assert buffers and all(int(a[k].max()) == 22 for k in a if k.endswith("num_batches_tracked"))
    for key in buffers:
        torch.testing.assert_close(b[key], a[key], rtol=1e-2, atol=1e-6, msg=key)  # the amplified rounding again
    names = [k for k in sorted(a) if k not in buffers and not k.endswith("running_mean")]
    wa, wb = (torch.cat([state[k].float().flatten() for k in names]) for state in (a, b))
    assert (wb - wa).norm() <= 5e-3 * wa.norm()


@pytest.mark.parametrize("setup, to, accel", [
    ("cpu_ddp-1", 2, "cpu_ddp"),
    ("cpu_zero2-1", 2, "cpu_zero2"),
    ("cpu_zero3-2", 1, "cpu_zero3"),
])
def test_the_same_global_batch_on_another_number_of_processes_continues_exactly(work, reference, setup, to, accel):
    ref = reference(setup)
    frm = int(setup.split("-")[1])
    run, out = resume_from(work, ref, 10, f"{setup}-to-{to}", accel, to, 16 // to)
    plural = {1: "1 process", 2: "2 processes"}
    line = next(line for line in out.splitlines() if line.startswith("resume: "))
    assert line.startswith(f"resume: {plural[frm]} -> {plural[to]}; kept: global batch 16 (now {to} x {16 // to}), "
                           "data position (epoch 0, sample 160 of 176), lr schedule (step 10 of 22)")
    assert ("optimizer state re-partitioned through DeepSpeed's universal checkpoint" in line) == ("zero" in accel)
    assert line.endswith("not kept: per-process RNG streams (dropout), reseeded from train.seed, the step and the rank")
    assert_continues_exactly(run, ref, 11)
    assert not list((run / "checkpoints").glob(".universal-*"))  # the conversion is removed after loading
    if "zero" in accel:
        assert json.loads((run / "checkpoints" / "step_00000022" / "reid_checkpoint.json").read_text())["world_size"] == to


@pytest.mark.parametrize("step, expected", [
    (5, [(6, 0), (7, 0), (8, 0), (9, 1), (10, 1), (11, 1), (12, 1), (13, 1)]),  # mid-epoch: the rest of epoch 0's order
    (11, [(12, 1), (13, 1), (14, 1), (15, 1), (16, 1)]),  # an epoch end ("start batch 10 is outside 0..5" before)
])
def test_a_changed_global_batch_is_said_and_continues_from_the_same_sample(work, reference, step, expected):
    ref = reference("cpu_ddp-1")
    run, out = resume_from(work, ref, step, f"bigger-from-{step}", "cpu_ddp", 2, 16)
    where = "epoch 0, sample 80 of 176" if step == 5 else "epoch 1, sample 0 of 160"
    total = expected[-1][0]
    assert (f"resume: 1 process -> 2 processes; global batch 16 -> 32 (1 x 16 -> 2 x 16; data.batch_size=8 would keep "
            f"it): continuing from the same sample ({where}) in batches of 32; the run now has {total} steps, not 22, "
            "and the lr schedule spans them") in out
    log = read_log(run)
    assert [(s, log[s]["epoch"]) for s in sorted(log)] == expected
    samples = [log[s]["samples"] for s in sorted(log)]
    assert samples == [16 * step + 32 * (i + 1) for i in range(len(samples))]  # counted in global samples
    assert (run / "final").is_dir()


def test_a_checkpoint_of_another_backend_is_refused_before_anything_is_written(work, reference):
    tmp, root = work
    source = reference("cpu_ddp-1") / "checkpoints" / "step_00000010"
    proc = run_launch([*args(tmp, root, "wrong-backend", 8), "--resume", str(source)], accel_config="cpu_zero2", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {source}: written under DDP, resumed under DeepSpeed ZeRO-2: resume it with an Accelerate "
                     "config of the same kind (DDP and each ZeRO stage store the optimizer differently; moving between "
                     "them would need a conversion reid does not do)"]
    assert not (tmp / "runs" / "wrong-backend").exists()
