"""Barlow Twins terms as one dispatcher op: jem_fast::barlow_twins_forward / _backward.

    A, B = batch_norm(z_a), batch_norm(z_b)       (each with its own statistics, biased, eps 1e-5)
    C    = A^T B / N
    on_diagonal  = sum_i (C_ii - 1)^2
    off_diagonal = sum_{i != j} C_ij^2            (loss = on_diagonal + lambda * off_diagonal)

||C||_F^2 = <A A^T, B B^T>_F / N^2 gives the Gram route (two N x N matrices, no D x D); it costs
about 8 N^2 D FLOPs against 6 N D^2 for the D x D route, so 'auto' takes it when 4 N < 3 D,
where it is also the smaller in memory.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._extension import require_extension
from ._common import acc_dtype, check_devices, compute_dtype, guard_double_backward, shape_2d
from .vicreg import resolve_route

require_extension()

_NUM_COLSTATS = 6


class BarlowTwinsTerms(NamedTuple):
    on_diagonal: torch.Tensor
    off_diagonal: torch.Tensor


def barlow_twins_gram_if(n: int, d: int) -> bool:
    return 4 * n < 3 * d


@torch.library.register_fake("jem_fast::barlow_twins_forward")
def _barlow_twins_forward_fake(z_a, z_b, gram_route, check_finite):
    check_devices("barlow_twins_forward", (("z_a", z_a), ("z_b", z_b)))
    n, d = z_a.shape
    acc = acc_dtype(z_a.dtype)
    gram_shape = (2, n, n) if gram_route else (1, d, d)
    return (z_a.new_empty((2,), dtype=acc),
            z_a.new_empty((2, n, d), dtype=compute_dtype(z_a.dtype, z_a.device)),
            z_a.new_empty(gram_shape, dtype=acc),
            z_a.new_empty((_NUM_COLSTATS, d), dtype=acc))


@torch.library.register_fake("jem_fast::barlow_twins_backward")
def _barlow_twins_backward_fake(grad_terms, normalized, gram, colstats, gram_route):
    check_devices("barlow_twins_backward", (("normalized", normalized), ("grad_terms", grad_terms),
                                            ("gram", gram), ("colstats", colstats)))
    return torch.empty_like(normalized[0]), torch.empty_like(normalized[1])


def _setup_context(ctx, inputs, output):
    z_a, z_b, gram_route, _ = inputs
    _, normalized, gram, colstats = output
    ctx.save_for_backward(normalized, gram, colstats)
    ctx.gram_route = gram_route
    ctx.dtypes = (z_a.dtype, z_b.dtype)
    # The saved outputs get no gradient: don't let autograd allocate zero tensors for them.
    ctx.set_materialize_grads(False)
    # `normalized` stays differentiable (it never receives a gradient) so that a double backward
    # reaches z_a and z_b through it and raises (see vicreg.py, guard_double_backward).
    ctx.mark_non_differentiable(gram, colstats)


_WHAT = "BarlowTwinsLoss (jem_fast.ops.barlow_twins_terms, op jem_fast::barlow_twins_forward)"


def _backward(ctx, grad_terms, *unused):
    if grad_terms is None:
        return None, None, None, None
    normalized, gram, colstats = ctx.saved_tensors
    with torch.no_grad():
        grad_a, grad_b = torch.ops.jem_fast.barlow_twins_backward(grad_terms, normalized, gram,
                                                                  colstats, ctx.gram_route)
        grads = (grad_a.to(ctx.dtypes[0]), grad_b.to(ctx.dtypes[1]))
    grad_a, grad_b = guard_double_backward(_WHAT, grads, (normalized, grad_terms))
    return grad_a, grad_b, None, None


torch.library.register_autograd("jem_fast::barlow_twins_forward", _backward,
                                setup_context=_setup_context)


def barlow_twins_terms(z_a: torch.Tensor, z_b: torch.Tensor, route: str = "auto",
                       check_finite: bool = True) -> torch.Tensor:
    """The two Barlow Twins terms, fused.

    Args:
        z_a, z_b: (N, D) batches (N >= 2) of the same floating dtype and device.
            BarlowTwinsLoss promotes mixed dtypes before calling.
        route: 'auto' (N x N Gram matrices when 4N < 3D), 'gram' or 'covariance'.
        check_finite: raise if an input holds NaN/Inf (costs one device sync on CUDA).

    Returns:
        (2,) tensor [on_diagonal, off_diagonal] (sum_i (1 - C_ii)^2, sum_{i != j} C_ij^2),
        float32 (float64 for float64 inputs), differentiable w.r.t. both inputs.
    """
    n, d = shape_2d(z_a, "z_a")
    check_devices("barlow_twins_terms", (("z_a", z_a), ("z_b", z_b)))
    gram_route = resolve_route(route, n, d, barlow_twins_gram_if)
    return torch.ops.jem_fast.barlow_twins_forward(z_a, z_b, gram_route, bool(check_finite))[0]
