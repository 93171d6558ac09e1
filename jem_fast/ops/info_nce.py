"""Memory-linear InfoNCE core: jem_fast::info_nce_lse / jem_fast::info_nce_lse_backward.

    row_lse[i] = log sum_{j != self_column[i]} exp(scale * q_i . k_j)
    col_lse[j] = log sum_i exp(scale * q_i . k_j)                 (with_columns=True)

Every InfoNCE variant is `loss_i = LSE_i - scale * q_i . k_pos(i)`: the op gives the LSE, the
positive term and the reductions are plain PyTorch in the losses. Logits are formed one chunk of
query rows at a time (chunk_rows, default: 64 MiB of float32 logits), so the extra memory is
O(chunk_rows x M + (N + M) x D) and no N x M tensor exists.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._extension import require_extension

require_extension()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("jem_fast::info_nce_lse")
def _info_nce_lse_fake(q, k, scale, self_column, with_columns, chunk_rows):
    ct = _compute_dtype(q.dtype)
    return (q.new_empty((q.shape[0],), dtype=ct),
            q.new_empty((k.shape[0] if with_columns else 0,), dtype=ct))


@torch.library.register_fake("jem_fast::info_nce_lse_backward")
def _info_nce_lse_backward_fake(grad_row, grad_col, q, k, row_lse, col_lse, scale, self_column,
                                with_columns, need_grad_k, chunk_rows):
    grad_k = torch.empty_like(k) if need_grad_k else q.new_empty((0,), dtype=_compute_dtype(q.dtype))
    return torch.empty_like(q), grad_k


def _setup_context(ctx, inputs, output):
    q, k, scale, self_column, with_columns, chunk_rows = inputs
    row_lse, col_lse = output
    ctx.save_for_backward(q, k, row_lse, col_lse, self_column)
    ctx.scale, ctx.with_columns, ctx.chunk_rows = scale, with_columns, chunk_rows
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_row, grad_col):
    q, k, row_lse, col_lse, self_column = ctx.saved_tensors
    need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if (grad_row is None and grad_col is None) or not (need_q or need_k):
        return None, None, None, None, None, None
    if grad_row is None:
        grad_row = torch.zeros_like(row_lse)
    grad_q, grad_k = torch.ops.jem_fast.info_nce_lse_backward(
        grad_row, grad_col, q, k, row_lse, col_lse, ctx.scale, self_column,
        ctx.with_columns and grad_col is not None, need_k, ctx.chunk_rows)
    return (grad_q if need_q else None, grad_k if need_k else None, None, None, None, None)


torch.library.register_autograd("jem_fast::info_nce_lse", _backward, setup_context=_setup_context)


def logsumexp_logits(q: torch.Tensor, k: torch.Tensor, scale: float,
                     self_column: Optional[torch.Tensor] = None, with_columns: bool = False,
                     chunk_rows: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(row_lse (N,), col_lse (M,) or (0,)) of the logits scale * q k^T without materializing
    them. self_column (N,) int64 masks one column per row (-1: none). Differentiable w.r.t. q and
    k; float32 results (float64 for float64 inputs)."""
    return torch.ops.jem_fast.info_nce_lse(q, k, float(scale), self_column, bool(with_columns),
                                           int(chunk_rows))


@torch.library.register_fake("jem_fast::info_nce_self_lse")
def _info_nce_self_lse_fake(z, scale, tile_rows):
    return z.new_empty((z.shape[0],), dtype=_compute_dtype(z.dtype))


@torch.library.register_fake("jem_fast::info_nce_self_lse_backward")
def _info_nce_self_lse_backward_fake(grad, z, lse, scale, tile_rows):
    return torch.empty_like(z)


def _setup_self_context(ctx, inputs, output):
    z, scale, tile_rows = inputs
    ctx.save_for_backward(z, output)
    ctx.scale, ctx.tile_rows = scale, tile_rows


def _self_backward(ctx, grad):
    z, lse = ctx.saved_tensors
    grad_z = torch.ops.jem_fast.info_nce_self_lse_backward(grad, z, lse, ctx.scale, ctx.tile_rows)
    return grad_z, None, None


torch.library.register_autograd("jem_fast::info_nce_self_lse", _self_backward,
                                setup_context=_setup_self_context)


def logsumexp_self_logits(z: torch.Tensor, scale: float, tile_rows: int = 0) -> torch.Tensor:
    """lse[i] = log sum_{j != i} exp(scale * z_i . z_j) (SimCLR's rows), using the symmetry of
    z z^T: only tiles on and above the diagonal are formed, forward and backward. tile_rows: side
    of the square logits tiles (0: 512 on CPU, 2048 on CUDA)."""
    return torch.ops.jem_fast.info_nce_self_lse(z, float(scale), int(tile_rows))


def check_temperature(temperature) -> float:
    t = float(temperature)
    if not (t > 0.0 and t < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return t


def check_pair(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    for t, name in ((a, name_a), (b, name_b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if a.shape[0] == 0:
        raise ValueError(f"{name_a} is an empty batch")
