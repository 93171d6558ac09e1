"""Gradient-aware collectives for losses with batch statistics.

`all_gather_with_grad(x)` concatenates every rank's (N, ...) slice along dim 0. Its backward
returns to each rank the sum over ranks of the gradient of its slice, computed with a single
reduce-scatter where the backend has one (NCCL) and one all-reduce + slice otherwise (gloo).
With DDP's averaging (division by the world size) the gradient of every slice then equals the
single-process gradient on the concatenated batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


__all__ = ["all_gather_with_grad", "is_distributed", "check_gather_available"]


def is_distributed() -> bool:
    """Returns True when torch.distributed is initialized with more than one process (the only
    case in which the losses gather or all-reduce anything)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_gather_available(gather_distributed: bool) -> None:
    """Constructor check of every loss with a gather_distributed flag.

    Args:
        gather_distributed: the flag passed to the loss.

    Raises ValueError when it is True but this torch build has no torch.distributed.
    """
    if gather_distributed and not dist.is_available():
        raise ValueError("gather_distributed=True but torch.distributed is not available")


def _supports_reduce_scatter(group) -> bool:
    return dist.get_backend(group) == "nccl"


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        world = dist.get_world_size(group)
        ctx.rank = dist.get_rank(group)
        ctx.rows = x.shape[0]
        x = x.contiguous()
        out = x.new_empty((world * x.shape[0],) + tuple(x.shape[1:]))
        if _supports_reduce_scatter(group):
            dist.all_gather_into_tensor(out, x, group=group)
        else:
            dist.all_gather(list(out.chunk(world)), x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        group = ctx.group
        if _supports_reduce_scatter(group):
            out = grad.new_empty((ctx.rows,) + tuple(grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, group=group)
            return out, None
        total = grad.clone()
        dist.all_reduce(total, group=group)
        start = ctx.rank * ctx.rows
        return total[start:start + ctx.rows], None


def all_gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate x from every rank along dim 0, keeping the autograd graph.

    Args:
        x: (N, ...) tensor, the same shape on every rank.
        group: process group (None: the default group).

    Returns:
        (world_size * N, ...) tensor, rank r's slice at rows [r * N, (r + 1) * N); x itself
        when not distributed. Its backward gives each rank the sum over ranks of the gradient
        of its own slice (one reduce-scatter on NCCL, one all-reduce + slice otherwise).
    """
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x, group)
