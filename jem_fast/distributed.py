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


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_gather_available(gather_distributed: bool) -> None:
    """Constructor check of every loss with a gather_distributed flag."""
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
    """Concatenate x from every rank along dim 0, keeping the autograd graph (see module doc).

    All ranks must pass the same shape."""
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x, group)
