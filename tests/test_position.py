"""The data position in global samples and the step plan, under a changed number of processes or
global batch; the one line a resume on another topology prints."""

from __future__ import annotations

import pytest

from reid.data.samplers import GlobalBatchSampler
from reid.engine.position import DataPlan, describe_resume
from reid.engine.state import TrainState

PIDS = [pid for pid in range(40) for _ in range(5)]  # 200 rows


def plan(batch_size: int, processes: int, accum: int = 1, epochs: int = 3, max_steps: int = 0) -> DataPlan:
    sampler = GlobalBatchSampler(PIDS, batch_size, processes, 0, seed=1)
    return DataPlan(sampler, batch_size, processes, accum, epochs, max_steps)


def test_a_fresh_run_plans_whole_epochs_of_whole_accumulation_windows():
    p = plan(16, 1, accum=4)  # 12 batches of 16 per epoch -> 3 steps of 4 micro-batches
    state = TrainState()
    assert p.steps_per_epoch == 3 and p.micro_batches_left(state) == 12
    assert p.total_steps(state) == 9
    assert plan(16, 1, accum=4, max_steps=5).total_steps(state) == 5


def test_same_global_batch_on_more_processes_plans_the_same_run():
    one, two = plan(16, 1), plan(8, 2)
    state = TrainState(step=5, epoch=0, sample_in_epoch=80, epoch_global_batch=16)
    assert one.total_steps(state) == two.total_steps(state) == 36
    assert one.micro_batches_left(state) == two.micro_batches_left(state) == 7
    line = describe_resume({"world_size": 1, "batch_size": 16, "grad_accum": 1}, two, state, 36,
                           not_kept="per-process RNG streams", universal=False)
    assert line == ("resume: 1 process -> 2 processes; kept: global batch 16 (now 2 x 8), data position (epoch 0, "
                    "sample 80 of 192), lr schedule (step 5 of 36); not kept: per-process RNG streams")


def test_a_changed_global_batch_continues_from_the_same_sample():
    """1 x 16 -> 2 x 16 at sample 80 of epoch 0: the rest of epoch 0 (the old order's 112 rows) in
    batches of 32 is 3 steps (16 rows dropped), then 2 epochs of 6 steps."""
    two = plan(16, 2)
    state = TrainState(step=5, epoch=0, sample_in_epoch=80, epoch_global_batch=16)
    assert two.epoch_samples(state) == 192 and two.micro_batches_left(state) == 3
    assert two.total_steps(state) == 5 + 3 + 2 * 6
    line = describe_resume({"world_size": 1, "batch_size": 16, "grad_accum": 1, "total_steps": 36}, two, state, 20,
                           not_kept="RNG", universal=True)
    assert line.startswith("resume: 1 process -> 2 processes; global batch 16 -> 32 (1 x 16 -> 2 x 16; "
                           "data.batch_size=8 would keep it): continuing from the same sample (epoch 0, sample 80 of 192) "
                           "in batches of 32; the run now has 20 steps, not 36, and the lr schedule spans them")
    assert line.endswith("; optimizer state re-partitioned through DeepSpeed's universal checkpoint; not kept: RNG")


def test_an_epoch_end_checkpoint_resumes_on_any_global_batch():
    """The fault this fixes: 'start batch 10 is outside 0..5' (batches counted in the old size)."""
    two = plan(16, 2)
    ended = TrainState(step=12, epoch=0, sample_in_epoch=192, epoch_global_batch=16)  # stop at the epoch's last step
    assert two.micro_batches_left(ended) == 0
    wrapped = TrainState(step=12, epoch=1)  # the epoch end's own checkpoint
    assert two.micro_batches_left(wrapped) == 6 and two.total_steps(wrapped) == 12 + 2 * 6


def test_nothing_changed_prints_nothing():
    p = plan(16, 1)
    assert describe_resume({"world_size": 1, "batch_size": 16, "grad_accum": 1}, p, TrainState(), 36,
                           not_kept=None, universal=False) is None


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_the_sampler_yields_what_the_plan_counts(processes):
    p = plan(48 // processes, processes)
    state = TrainState(step=1, epoch=0, sample_in_epoch=16, epoch_global_batch=16)
    p.sampler.set_epoch(0)
    p.sampler.set_start(state.sample_in_epoch, state.epoch_global_batch)
    assert len(list(p.sampler)) == p.micro_batches_left(state) == (192 - 16) // 48
