"""The distributed context, in one place: who this process is, and the collectives losses and
batch norm use over the global batch.

:class:`DistContext` (``rank``, ``world``, ``gather``, ``max``) is what the criterion is handed
(``Criterion(..., dist=DistContext.current())``): the criterion reads no global state, so a test can
give it rank 1 of 2 with the other rank's tensors already in hand, without spawning processes.

The helpers below it: 

``gather_with_grad`` concatenates a tensor from every process in rank order *with gradient*
(``torch.distributed.nn.functional.all_gather``: its backward sums the gradient that every rank's
loss sends to each slice and returns the slice's share to its owner). With every rank computing
its share of a loss over the gathered batch and DDP/DeepSpeed averaging gradients over ranks, the
gradient equals a single process training on the concatenated batch (tests/test_gather.py).

All helpers are the identity when ``torch.distributed`` is not initialised or has one process.
Every process must pass a tensor of the same shape (equal per-process batch sizes: drop the last
partial batch).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor

# torch 2.13 deprecates torch.distributed.nn.functional in favour of the functional collectives
# (torch.distributed._functional_collectives.all_gather_single / all_reduce, autograd-aware and
# verified with gloo here); the old API still works on every supported torch, so keep it and
# silence the per-call warning around our own calls only (no process-wide filter).
_DEPRECATED = r"torch\.distributed\.nn\.functional\.\w+ is deprecated"


def world_size() -> int:
    """Number of training processes (1 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank (0 when torch.distributed is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def gather_with_grad(t: Tensor) -> Tensor:
    """``(b, ...)`` on each of W processes -> ``(W*b, ...)`` in rank order, differentiable."""
    if world_size() == 1:
        return t
    if t.dtype == torch.bool:  # not every backend reduces/gathers bool; labels need no gradient
        return gather_with_grad(t.to(torch.uint8)).bool()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED, category=FutureWarning)
        return torch.cat(dist_nn.all_gather(t.contiguous()), dim=0)


def all_reduce_with_grad(t: Tensor) -> Tensor:
    """Element-wise sum over processes, differentiable (backward sums the gradients likewise)."""
    if world_size() == 1:
        return t
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATED, category=FutureWarning)
        return dist_nn.all_reduce(t)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run and the collectives over the global batch. ``gather`` and
    ``max`` take the name of what they collect (``"image_embeds"``, ...), unused here and there for
    a test double that supplies the other ranks' values."""

    rank: int = 0
    world: int = 1

    @staticmethod
    def current() -> "DistContext":
        """The context of the initialised process group (rank 0 of 1 without one)."""
        return DistContext(rank(), world_size())

    def gather(self, name: str, t: Tensor) -> Tensor:
        """``(b, ...)`` -> ``(world * b, ...)`` in rank order, differentiable (:func:`gather_with_grad`)."""
        return gather_with_grad(t) if self.world > 1 else t

    def max(self, name: str, t: Tensor) -> Tensor:
        """Element-wise maximum over processes (no gradient)."""
        if self.world > 1:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t
