"""Loss terms (pure functions) and the weighted criterion (the collectives: reid.distributed)."""

from reid.losses.criterion import TERM_NAMES, Criterion, diagnostics

__all__ = ["TERM_NAMES", "Criterion", "diagnostics"]
