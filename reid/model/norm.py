"""Batch norm whose training statistics cover every process, on CPU (gloo) as well as GPU.

torch's ``nn.SyncBatchNorm`` refuses CPU tensors ("SyncBatchNorm expected input tensor to be on
GPU"), and DeepSpeed never synchronises buffers, so with plain BatchNorm1d each rank normalises with
its own statistics and a 2-rank run cannot match a 1-rank run. :class:`SyncBatchNorm1d` (the heads)
and :class:`SyncBatchNorm2d` (a ResNet image encoder) sum ``[sum x, sum x^2, count]`` over ranks
with one differentiable all_reduce per call (in float64, so the one-pass variance loses nothing to
cancellation) and normalise with the global statistics. Outside training, or with one process, each
*is* the ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` it replaces.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reid.distributed import all_reduce_with_grad, world_size


class _GlobalStatistics:
    """Training-mode statistics over all ranks, for a subclass of ``nn.BatchNorm1d`` / ``nn.BatchNorm2d``."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        return self._global_forward(x)

    def _global_forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]  # (B, C), (B, C, L) or (B, C, H, W): statistics per channel
        shape = [1, channels] + [1] * (x.dim() - 2)
        xd = x.double()
        count = torch.full((1,), x.numel() // channels, dtype=torch.float64, device=x.device)
        stats = all_reduce_with_grad(torch.cat([xd.sum(dims), (xd * xd).sum(dims), count]))
        n = stats[-1]
        mean = stats[:channels] / n  # (C,)
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp(min=0.0)  # biased, as BN normalises
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1).clamp(min=1.0))
        work = torch.float64 if x.dtype == torch.float64 else torch.float32  # normalise in >= fp32
        y = (x.to(work) - mean.to(work).view(shape)) * torch.rsqrt(var.to(work).view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        dtype = self.running_mean.dtype
        factor: Tensor | float = self.momentum  # a Python float: no host-to-device copy per step
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm1d does
            factor = (1.0 / self.num_batches_tracked).to(dtype)
        self.running_mean.lerp_(mean.to(dtype), factor)
        self.running_var.lerp_(unbiased_var.to(dtype), factor)


class SyncBatchNorm1d(_GlobalStatistics, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with statistics over all ranks in training mode (same state dict)."""


class SyncBatchNorm2d(_GlobalStatistics, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with statistics over all ranks in training mode (same state dict)."""


SYNCED = {nn.BatchNorm1d: SyncBatchNorm1d, nn.BatchNorm2d: SyncBatchNorm2d}


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` in ``module`` by its synchronised
    class (:data:`SYNCED`), in place.

    Parameters and buffers are shared, not copied (an optimizer built before still points at
    them), and the state-dict keys do not change. Returns ``module`` (or its replacement when
    ``module`` itself is a BatchNorm). Converting twice is harmless.
    """
    synced = SYNCED.get(type(module))
    if synced is not None:
        sync = synced(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        if module.track_running_stats:
            sync.running_mean, sync.running_var = module.running_mean, module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module
