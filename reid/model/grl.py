"""Gradient reversal (Ganin & Lempitsky, 2015): identity forward, ``-alpha * grad`` backward."""

from __future__ import annotations

import torch
from torch import Tensor


class GradientReversal(torch.autograd.Function):
    """Forward returns ``x`` unchanged; backward multiplies the incoming gradient by ``-alpha``.

    Everything downstream of the reversal is trained normally, everything upstream of it is
    trained to *increase* the downstream losses (alpha scales how hard).
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:  # type: ignore[override]
        ctx.alpha = alpha
        return x.view_as(x)  # a view, so autograd records this node even though values are unchanged

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.alpha * grad_output, None


def grad_reverse(x: Tensor, alpha: float) -> Tensor:
    """Apply :class:`GradientReversal` with strength ``alpha`` (a Python float, set per epoch)."""
    return GradientReversal.apply(x, alpha)
