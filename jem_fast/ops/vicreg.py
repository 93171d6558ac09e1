"""VICReg terms as one dispatcher op: jem_fast::vicreg_forward / jem_fast::vicreg_backward.

    invariance = mean((z_a - z_b)^2)
    variance   = 0.5 * (mean_d relu(1 - sqrt(var_d(z_a) + eps)) + same for z_b)   (unbiased var)
    covariance = sum_{i != j} C_ij(z_a)^2 / D + same for z_b,  C = x^T x / (N - 1), x centered

The covariance term is computed as ||x x^T||_F^2 - sum_d C_dd^2 when N < D ("gram" route, never
a D x D matrix) and directly from the D x D matrix otherwise ("covariance" route). That
subtraction (and the gradient's (x x^T) x - x diag(C)) cancels when a few columns dominate, so
the Gram matrices are formed and saved in float64 for float32/float64 inputs: always on CUDA, on
the CPU when the column sums of squares predict a cancellation (else in float32). The covariance
route sets the diagonal of C to zero, which is exact.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._extension import require_extension
from ._common import (acc_dtype, check_devices, check_route, compute_dtype,
                      guard_double_backward, shape_2d)

require_extension()

_NUM_COLSTATS = 6


class VICRegTerms(NamedTuple):
    invariance: torch.Tensor
    variance: torch.Tensor
    covariance: torch.Tensor


def resolve_route(route: str, n: int, d: int, gram_if=lambda n, d: n < d) -> bool:
    """Whether the N x N Gram route is taken.

    Args:
        route: 'auto', 'gram' or 'covariance'.
        n, d: batch size N and embedding dimension D.
        gram_if: the 'auto' rule, gram_if(n, d) -> bool (N < D by default, VICReg's).

    Returns:
        True for the Gram route, False for the D x D covariance route.
    """
    check_route(route)
    if route == "auto":
        return bool(gram_if(n, d))
    return route == "gram"


@torch.library.register_fake("jem_fast::vicreg_forward")
def _vicreg_forward_fake(z_a, z_b, eps, gram_route, check_finite):
    check_devices("vicreg_forward", (("z_a", z_a), ("z_b", z_b)))
    n, d = z_a.shape
    r = n if gram_route else d
    acc = acc_dtype(z_a.dtype)
    ct = compute_dtype(z_a.dtype, z_a.device)
    # float32/float64 Gram matrices are kept in float64 (see vicreg.cpp: gram_exact)
    gram_dtype = torch.float64 if gram_route and ct in (torch.float32, torch.float64) else acc
    return (z_a.new_empty((3,), dtype=acc),
            z_a.new_empty((2, n, d), dtype=ct),
            z_a.new_empty((2, r, r), dtype=gram_dtype),
            z_a.new_empty((_NUM_COLSTATS, d), dtype=acc))


@torch.library.register_fake("jem_fast::vicreg_backward")
def _vicreg_backward_fake(grad_terms, centered, gram, colstats, gram_route):
    check_devices("vicreg_backward", (("centered", centered), ("grad_terms", grad_terms),
                                      ("gram", gram), ("colstats", colstats)))
    return torch.empty_like(centered[0]), torch.empty_like(centered[1])


def _setup_context(ctx, inputs, output):
    z_a, z_b, _, gram_route, _ = inputs
    _, centered, gram, colstats = output
    ctx.save_for_backward(centered, gram, colstats)
    ctx.gram_route = gram_route
    ctx.dtypes = (z_a.dtype, z_b.dtype)
    # The saved outputs get no gradient: don't let autograd allocate zero tensors for them.
    ctx.set_materialize_grads(False)
    # `centered` stays differentiable (it never receives a gradient) so that, in a backward with
    # create_graph=True, the gradients can be tied to z_a and z_b through it: a double backward
    # then raises instead of silently dropping the second-order term (guard_double_backward).
    ctx.mark_non_differentiable(gram, colstats)


_WHAT = "VICRegLoss (jem_fast.ops.vicreg_terms, op jem_fast::vicreg_forward)"


def _backward(ctx, grad_terms, *unused):
    if grad_terms is None:
        return None, None, None, None, None
    centered, gram, colstats = ctx.saved_tensors
    with torch.no_grad():
        grad_a, grad_b = torch.ops.jem_fast.vicreg_backward(grad_terms, centered, gram, colstats,
                                                            ctx.gram_route)
        grads = (grad_a.to(ctx.dtypes[0]), grad_b.to(ctx.dtypes[1]))
    grad_a, grad_b = guard_double_backward(_WHAT, grads, (centered, grad_terms))
    return grad_a, grad_b, None, None, None


torch.library.register_autograd("jem_fast::vicreg_forward", _backward,
                                setup_context=_setup_context)


def vicreg_terms(z_a: torch.Tensor, z_b: torch.Tensor, eps: float = 1e-4, route: str = "auto",
                 check_finite: bool = True) -> torch.Tensor:
    """The three VICReg terms (invariance, variance, covariance), fused.

    Args:
        z_a, z_b: (N, D) batches (N >= 2) of the same floating dtype (float32, float64,
            float16 or bfloat16) and device. VICRegLoss promotes mixed dtypes before calling.
        eps: added to the variance before the square root (>= 0).
        route: 'auto' (N x N Gram matrices when N < D), 'gram' or 'covariance'.
        check_finite: raise if an input holds NaN/Inf (costs one device sync on CUDA).

    Returns:
        (3,) tensor [invariance, variance, covariance], float32 (float64 for float64 inputs),
        differentiable w.r.t. both inputs (gradients in the inputs' dtype).
    """
    n, d = shape_2d(z_a, "z_a")
    check_devices("vicreg_terms", (("z_a", z_a), ("z_b", z_b)))
    gram_route = resolve_route(route, n, d)
    return torch.ops.jem_fast.vicreg_forward(z_a, z_b, float(eps), gram_route,
                                             bool(check_finite))[0]

