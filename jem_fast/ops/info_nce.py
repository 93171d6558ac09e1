"""Memory-linear InfoNCE core: jem_fast::info_nce_lse / jem_fast::info_nce_lse_backward.

    row_lse[i] = log sum_{j != self_column[i]} exp(scale * q_i . k_j)
    col_lse[j] = log sum_i exp(scale * q_i . k_j)                 (with_columns=True)

Every InfoNCE variant is `loss_i = LSE_i - scale * q_i . k_pos(i)`, computed as
`softplus(LSE_neg_i - scale * q_i . k_pos(i))` with the positive left out of the LSE
(positive_column / pair_offset): the subtraction of two nearly equal numbers would lose every digit
of a loss whose positive dominates. The op gives the LSE, the positive term and the reductions are
plain PyTorch in the losses. Logits are formed one chunk of
query rows at a time (chunk_rows, default: 64 MiB of float32 logits), so the extra memory is
O(chunk_rows x M + (N + M) x D) and no N x M tensor exists.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._extension import require_extension
from ._common import check_devices, guard_double_backward

require_extension()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("jem_fast::info_nce_lse")
def _info_nce_lse_fake(q, k, scale, self_column, with_columns, chunk_rows, positive_column=None):
    check_devices("info_nce_lse", (("query", q), ("key", k), ("self_column", self_column),
                                   ("positive_column", positive_column)))
    torch._check(chunk_rows >= 0, lambda: f"info_nce_lse: chunk_rows must be >= 0 (0: automatic), "
                 f"got {chunk_rows}")
    ct = _compute_dtype(q.dtype)
    return (q.new_empty((q.shape[0],), dtype=ct),
            q.new_empty((k.shape[0] if with_columns else 0,), dtype=ct))


@torch.library.register_fake("jem_fast::info_nce_lse_backward")
def _info_nce_lse_backward_fake(grad_row, grad_col, q, k, row_lse, col_lse, scale, self_column,
                                with_columns, need_grad_k, chunk_rows, positive_column=None):
    check_devices("info_nce_lse_backward", (("q", q), ("k", k), ("grad_row", grad_row),
                                            ("grad_col", grad_col), ("row_lse", row_lse),
                                            ("col_lse", col_lse), ("self_column", self_column)))
    grad_k = torch.empty_like(k) if need_grad_k else q.new_empty((0,), dtype=_compute_dtype(q.dtype))
    return torch.empty_like(q), grad_k


def _setup_context(ctx, inputs, output):
    q, k, scale, self_column, with_columns, chunk_rows = inputs[:6]
    positive_column = inputs[6] if len(inputs) > 6 else None
    row_lse, col_lse = output
    ctx.save_for_backward(q, k, row_lse, col_lse, self_column, positive_column)
    ctx.scale, ctx.with_columns, ctx.chunk_rows = scale, with_columns, chunk_rows
    ctx.set_materialize_grads(False)


_WHAT = ("NTXentLoss / InfoNCELoss (jem_fast.ops.logsumexp_logits, op "
         "jem_fast::info_nce_lse)")
_SELF_WHAT = ("NTXentLoss (jem_fast.ops.logsumexp_self_logits, op "
              "jem_fast::info_nce_self_lse)")


def _backward(ctx, grad_row, grad_col):
    q, k, row_lse, col_lse, self_column, positive_column = ctx.saved_tensors
    need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if (grad_row is None and grad_col is None) or not (need_q or need_k):
        return None, None, None, None, None, None, None
    with torch.no_grad():
        if grad_row is None:
            grad_row = torch.zeros_like(row_lse)
        grad_q, grad_k = torch.ops.jem_fast.info_nce_lse_backward(
            grad_row, grad_col, q, k, row_lse, col_lse, ctx.scale, self_column,
            ctx.with_columns and grad_col is not None, need_k, ctx.chunk_rows, positive_column)
    grad_q, grad_k = guard_double_backward(
        _WHAT, (grad_q if need_q else None, grad_k if need_k else None),
        (q, k, grad_row, grad_col))
    return grad_q, grad_k, None, None, None, None, None


torch.library.register_autograd("jem_fast::info_nce_lse", _backward, setup_context=_setup_context)


def logsumexp_logits(q: torch.Tensor, k: torch.Tensor, scale: float,
                     self_column: Optional[torch.Tensor] = None, with_columns: bool = False,
                     chunk_rows: int = 0, positive_column: Optional[torch.Tensor] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row (and column) log-sum-exps of the logits scale * q k^T without materializing them.

    Args:
        q: (N, D) queries; k: (M, D) keys, the same floating dtype and device.
        scale: the logit scale (1 / temperature).
        self_column: optional (N,) int64, one masked column per row: -1 for none, otherwise a
            key index in [0, M - 1]; any other entry raises when self_column is on the CPU
            (checked on the host; on CUDA the range is not checked, since that would cost a
            device synchronization, and an out-of-range entry masks nothing).
        with_columns: also return the column log-sum-exps (CLIP's symmetric loss).
        chunk_rows: query rows per logits chunk, >= 0 (0: automatic).
        positive_column: optional (N,) int64 (same rules as self_column) that leaves each
            row's positive out as well: the LSEs are then over the negatives only, and a loss
            is softplus(lse - positive_logit), which keeps every digit when the positive
            dominates (LSE of all minus the positive cancels then). With with_columns, the
            entries (i, positive_column[i]) are left out of their columns too.

    Returns:
        (row_lse (N,), col_lse (M,), or (0,) without with_columns), float32 (float64 for
        float64 inputs), differentiable w.r.t. q and k.
    """
    check_devices("logsumexp_logits", (("q", q), ("k", k), ("self_column", self_column),
                                       ("positive_column", positive_column)))
    if int(chunk_rows) < 0:
        raise RuntimeError(f"logsumexp_logits: chunk_rows must be >= 0 (0: automatic), got "
                           f"{chunk_rows}")
    if (self_column is not None and self_column.device.type == "cpu"
            and not torch.compiler.is_compiling()):
        _check_self_column(self_column, q, k)
    if positive_column is None:
        return torch.ops.jem_fast.info_nce_lse(q, k, float(scale), self_column,
                                               bool(with_columns), int(chunk_rows))
    if positive_column.device.type == "cpu" and not torch.compiler.is_compiling():
        _check_self_column(positive_column, q, k, "positive_column")
    return torch.ops.jem_fast.info_nce_lse(q, k, float(scale), self_column, bool(with_columns),
                                           int(chunk_rows), positive_column)


def _check_self_column(self_column: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                       name: str = "self_column") -> None:
    """Range check of a CPU self_column on the host (the C++ op repeats it for direct calls;
    its shape, dtype and the other arguments are checked by the op)."""
    if (self_column.dim() != 1 or self_column.dtype != torch.int64 or self_column.numel() == 0
            or k.dim() != 2):
        return
    m = k.shape[0]
    lo, hi = (int(v) for v in torch.aminmax(self_column))
    if lo < -1 or hi >= m:
        bad = self_column[(self_column < -1) | (self_column >= m)]
        raise RuntimeError(f"logsumexp_logits: {name} entries must be -1 (no masked "
                           f"column) or a key index in [0, {m - 1}] ({m} keys), got "
                           f"{int(bad[0])} (and {bad.numel() - 1} more out of range)")


@torch.library.register_fake("jem_fast::info_nce_self_lse")
def _info_nce_self_lse_fake(z, scale, tile_rows, pair_offset=0):
    torch._check(tile_rows >= 0, lambda: f"info_nce_self_lse: tile_rows must be >= 0 (0: "
                 f"automatic), got {tile_rows}")
    return z.new_empty((z.shape[0],), dtype=_compute_dtype(z.dtype))


@torch.library.register_fake("jem_fast::info_nce_self_lse_backward")
def _info_nce_self_lse_backward_fake(grad, z, lse, scale, tile_rows, pair_offset=0):
    check_devices("info_nce_self_lse_backward", (("z", z), ("grad", grad), ("lse", lse)))
    return torch.empty_like(z)


def _setup_self_context(ctx, inputs, output):
    z, scale, tile_rows = inputs[:3]
    ctx.save_for_backward(z, output)
    ctx.scale, ctx.tile_rows = scale, tile_rows
    ctx.pair_offset = inputs[3] if len(inputs) > 3 else 0


def _self_backward(ctx, grad):
    z, lse = ctx.saved_tensors
    with torch.no_grad():
        grad_z = torch.ops.jem_fast.info_nce_self_lse_backward(grad, z, lse, ctx.scale,
                                                               ctx.tile_rows, ctx.pair_offset)
    grad_z, = guard_double_backward(_SELF_WHAT, (grad_z,), (z, grad))
    return grad_z, None, None, None


torch.library.register_autograd("jem_fast::info_nce_self_lse", _self_backward,
                                setup_context=_setup_self_context)


def logsumexp_self_logits(z: torch.Tensor, scale: float, tile_rows: int = 0,
                          pair_offset: int = 0) -> torch.Tensor:
    """lse[i] = log sum_{j != i} exp(scale * z_i . z_j) (SimCLR's rows), using the symmetry of
    z z^T: only tiles on and above the diagonal are formed, forward and backward.

    Args:
        z: (N, D) embeddings (both views concatenated for SimCLR), floating-point.
        scale: the logit scale (1 / temperature).
        tile_rows: side of the square logits tiles (0: 512 on CPU, 2048 on CUDA).
        pair_offset: N / 2 (N even): rows i and i + N/2 are each other's positives and each row
            also leaves its positive out, giving the LSE of the negatives for
            softplus(lse - positive_logit) (SimCLR); 0: none.

    Returns:
        (N,) log-sum-exps, float32 (float64 for float64 z), differentiable w.r.t. z.
    """
    if int(tile_rows) < 0:
        raise RuntimeError(f"logsumexp_self_logits: tile_rows must be >= 0 (0: automatic), "
                           f"got {tile_rows}")
    if int(pair_offset) == 0:
        return torch.ops.jem_fast.info_nce_self_lse(z, float(scale), int(tile_rows))
    return torch.ops.jem_fast.info_nce_self_lse(z, float(scale), int(tile_rows), int(pair_offset))


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
    if a.device != b.device:
        raise ValueError(f"{name_a} and {name_b} must be on the same device, got {name_a} on "
                         f"{a.device} and {name_b} on {b.device}")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if a.shape[0] == 0:
        raise ValueError(f"{name_a} is an empty batch")


def check_chunk_rows(chunk_rows) -> int:
    """Constructor check of the losses' chunk_rows (0: automatic)."""
    if isinstance(chunk_rows, bool) or int(chunk_rows) != chunk_rows or chunk_rows < 0:
        raise ValueError(f"chunk_rows must be an integer >= 0 (0: automatic), got {chunk_rows!r}")
    return int(chunk_rows)
