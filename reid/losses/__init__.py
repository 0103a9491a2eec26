"""Loss terms (pure functions), the weighted criterion, and cross-process gathering."""

from reid.losses.criterion import TERM_NAMES, Criterion, diagnostics
from reid.losses.gather import all_reduce_with_grad, gather_with_grad, rank, world_size

__all__ = [
    "TERM_NAMES",
    "Criterion",
    "all_reduce_with_grad",
    "diagnostics",
    "gather_with_grad",
    "rank",
    "world_size",
]
