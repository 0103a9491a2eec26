"""Where a run is in its data, in global samples, and how many optimizer steps remain — under any
number of processes — and the one line a resume on another topology prints.

An epoch's order is cut for the global batch it began with (``TrainState.epoch_global_batch``);
the run consumes it ``global_batch`` rows per micro-batch, in whole accumulation windows. When the
global batch changed on resume, the rest of the current epoch is still the old order (cut into the
new size) and the next epochs are the new size's own; the step count is planned from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reid.data.samplers import GlobalBatchSampler
from reid.engine.state import TrainState


@dataclass
class DataPlan:
    sampler: GlobalBatchSampler
    batch_size: int  # per process (data.batch_size)
    num_processes: int
    grad_accum: int
    epochs: int
    max_steps: int  # 0: no limit

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_processes

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in a whole epoch cut for this run's global batch."""
        return self.sampler.num_batches_for(self.global_batch) // self.grad_accum

    def order_size(self, state: TrainState) -> int:
        """The global batch the current epoch's order is cut for."""
        return state.epoch_global_batch if state.sample_in_epoch else self.global_batch

    def epoch_samples(self, state: TrainState) -> int:
        return self.sampler.epoch_rows(self.order_size(state))

    def micro_batches_left(self, state: TrainState) -> int:
        """Micro-batches left in the current epoch, in whole accumulation windows."""
        rows = self.epoch_samples(state) - state.sample_in_epoch
        return max(0, rows // self.global_batch // self.grad_accum * self.grad_accum)

    def total_steps(self, state: TrainState) -> int:
        """The optimizer step the run ends at, planned from where ``state`` is."""
        full = state.step
        if state.epoch < self.epochs:
            full += self.micro_batches_left(state) // self.grad_accum
            full += (self.epochs - state.epoch - 1) * self.steps_per_epoch
        return min(full, self.max_steps) if self.max_steps else full


def describe_resume(marker: dict[str, Any], plan: DataPlan, state: TrainState, total: int, *,
                    not_kept: str | None, universal: bool) -> str | None:
    """One line when the run resumes on another topology (None when nothing changed)."""
    world_before, world = int(marker["world_size"]), plan.num_processes
    batch_before = int(marker.get("batch_size", plan.batch_size))
    accum_before = int(marker.get("grad_accum", plan.grad_accum))
    global_before = batch_before * world_before
    if world_before == world and global_before == plan.global_batch and accum_before == plan.grad_accum:
        return None
    where = f"epoch {state.epoch}, sample {state.sample_in_epoch} of {plan.epoch_samples(state)}"
    parts = [f"resume: {_procs(world_before)} -> {_procs(world)}" if world != world_before else "resume:"]
    if global_before == plan.global_batch and accum_before == plan.grad_accum:
        parts.append(f"kept: global batch {plan.global_batch} (now {world} x {plan.batch_size}), data position "
                     f"({where}), lr schedule (step {state.step} of {total})")
    else:
        keep = (f"; data.batch_size={global_before // world} would keep it"
                if global_before % world == 0 and accum_before == plan.grad_accum else "")
        accum = f", train.grad_accum {accum_before} -> {plan.grad_accum}" if accum_before != plan.grad_accum else ""
        before = marker.get("total_steps")
        steps = f"the run now has {total} steps" + (f", not {before}," if before and int(before) != total else "")
        parts.append(f"global batch {global_before} -> {plan.global_batch} ({world_before} x {batch_before} -> "
                     f"{world} x {plan.batch_size}{accum}{keep}): continuing from the same sample ({where}) in "
                     f"batches of {plan.global_batch}; {steps} and the lr schedule spans them")
    if universal:
        parts.append("optimizer state re-partitioned through DeepSpeed's universal checkpoint")
    if not_kept:
        parts.append(f"not kept: {not_kept}")
    return parts[0] + " " + "; ".join(parts[1:]) if parts[0] == "resume:" else "; ".join(parts)


def _procs(n: int) -> str:
    return f"{n} process" + ("" if n == 1 else "es")
