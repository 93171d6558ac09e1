"""Row-wise cosine similarity: jem_fast::cosine_similarity_rows / ..._backward.

    cos[i] = x0_i . x1_i / (max(|x0_i|, eps) * max(|x1_i|, eps))       x0, x1: (N, D)

The eps semantics are torch.nn.functional.cosine_similarity's in torch 2.x (2.13 and 2.14 were
checked, value and gradient): each norm is clamped to eps on its own (not the product of the
squared norms, as torch 1.x did), and the clamp is invisible to autograd, so a row whose norm is
below eps still gets the gradient through its unclamped norm. A zero row gives cos = 0 and the
gradient x_other / (eps * c_other) for the zero row.

The forward reads each row pair once (dot and both squared norms, float32 accumulation; float64
for float64 inputs) and saves cos and the two unclamped norms, (2, N) floats; the backward is one
elementwise pass writing grad_x0 and grad_x1 (each only when needed), no reduction.
"""
from __future__ import annotations

import torch

from .._extension import require_extension
from ._common import acc_dtype, check_devices, guard_double_backward

require_extension()


@torch.library.register_fake("jem_fast::cosine_similarity_rows")
def _cosine_rows_fake(x0, x1, eps):
    check_devices("cosine_similarity_rows", (("x0", x0), ("x1", x1)))
    acc = acc_dtype(x0.dtype)
    return x0.new_empty((x0.shape[0],), dtype=acc), x0.new_empty((2, x0.shape[0]), dtype=acc)


@torch.library.register_fake("jem_fast::cosine_similarity_rows_backward")
def _cosine_rows_backward_fake(grad_cos, x0, x1, cos, norms, eps, need_grad_x0, need_grad_x1):
    check_devices("cosine_similarity_rows_backward",
                  (("x0", x0), ("x1", x1), ("grad_cos", grad_cos), ("cos", cos), ("norms", norms)))
    g0 = torch.empty_like(x0, memory_format=torch.contiguous_format) if need_grad_x0 else x0.new_empty((0,))
    g1 = torch.empty_like(x1, memory_format=torch.contiguous_format) if need_grad_x1 else x1.new_empty((0,))
    return g0, g1


def _setup_context(ctx, inputs, output):
    x0, x1, eps = inputs
    cos, norms = output
    ctx.mark_non_differentiable(norms)
    ctx.save_for_backward(x0, x1, cos, norms)
    ctx.eps = eps
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_cos, _grad_norms):
    x0, x1, cos, norms = ctx.saved_tensors
    need0, need1 = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_cos is None or not (need0 or need1):
        return None, None, None
    with torch.no_grad():
        g0, g1 = torch.ops.jem_fast.cosine_similarity_rows_backward(
            grad_cos, x0, x1, cos, norms, ctx.eps, need0, need1)
    g0, g1 = guard_double_backward(_WHAT, ((g0 if need0 else None), (g1 if need1 else None)),
                                   (x0, x1, grad_cos))
    return g0, g1, None


_WHAT = ("NegativeCosineSimilarity / symmetric_negative_cosine "
         "(jem_fast.ops.cosine_similarity_rows, op jem_fast::cosine_similarity_rows)")


torch.library.register_autograd("jem_fast::cosine_similarity_rows", _backward,
                                setup_context=_setup_context)


def cosine_similarity_rows(x0: torch.Tensor, x1: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of corresponding rows, fused.

    Args:
        x0, x1: (N, D) tensors of the same floating dtype and device.
        eps: each row norm is clamped to at least eps (>= 0, finite).

    Returns:
        (N,) cosines, float32 (float64 for float64 inputs) whatever the input dtype.
        Differentiable w.r.t. x0 and x1 (a detached x1, BYOL's target, costs no gradient pass
        for it)."""
    check_devices("cosine_similarity_rows", (("x0", x0), ("x1", x1)))
    return torch.ops.jem_fast.cosine_similarity_rows(x0, x1, float(eps))[0]
