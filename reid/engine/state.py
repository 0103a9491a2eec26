"""The training counters, registered with Accelerate so they travel inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class TrainState:
    """Everything besides weights/optimizer/RNG that a resumed run needs to continue exactly.

    The position in the data is counted in **global samples**, not in this run's batches, so it
    means the same thing under any number of processes: a resumed run re-creates the epoch's order
    (cut for ``epoch_global_batch`` rows per global batch, the size the epoch began with) and starts
    at sample ``sample_in_epoch`` of it.
    """

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    sample_in_epoch: int = 0  # global samples of `epoch`'s order already consumed
    epoch_global_batch: int = 0  # data.batch_size x processes when `epoch` began (0: not begun)
    samples_seen: int = 0  # global samples consumed since the run began
    best_metric: float = -1.0  # best val value of eval.select so far
    best_step: int = -1
    best_metrics: dict = field(default_factory=dict)  # every val metric at best_step (the summary's table)
    bad_steps_in_row: int = 0  # consecutive non-finite losses
    bad_steps_total: int = 0
    bad_images_total: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in fields(self):
            if f.name in state:  # a checkpoint from before best_metrics existed simply lacks it
                setattr(self, f.name, type(getattr(self, f.name))(state[f.name]))
