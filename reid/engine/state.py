"""The training counters, registered with Accelerate so they travel inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class TrainState:
    """Everything besides weights/optimizer/RNG that a resumed run needs to continue exactly.

    ``epoch`` and ``batch_in_epoch`` locate the data order: a resumed run re-creates the epoch's
    sampler order and skips the ``batch_in_epoch`` micro-batches already consumed.
    """

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_metric: float = -1.0  # best val R1 so far
    best_step: int = -1
    bad_steps_in_row: int = 0  # consecutive non-finite losses
    bad_steps_total: int = 0
    bad_images_total: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in fields(self):
            if f.name in state:
                setattr(self, f.name, type(getattr(self, f.name))(state[f.name]))
