"""Decisions every rank must share, taken in one collective so that all ranks raise or go on together."""

from __future__ import annotations

from typing import Any

from accelerate.utils import broadcast_object_list, gather_object


def from_main(accelerator: Any, value: Any) -> Any:
    """The main process's ``value``, on every rank (picklable objects)."""
    if accelerator.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def first_reported(accelerator: Any, value: Any) -> Any:
    """The first non-None ``value`` in rank order, on every rank (e.g. the first rank's failure)."""
    if accelerator.num_processes == 1:
        return value
    return next((v for v in gather_object([value]) if v is not None), None)
