"""Multi-view soft cross-entropy (SwAV, DINO) and DINO's centered teacher softmax.

    loss = mean over pairs (t, v), v != t, of mean_b [ -sum_k y_tbk log_softmax(scale x_vb)_k ]

for T target distributions y (SwAV codes, DINO teacher probabilities; no gradient) and V
student logit tensors x (the first T student views are the same crops as the targets and are
not paired with them). With Y the summed targets of a student view, m its row maximum and
S = sum_k exp(scale (x_k - m)), -sum_k Y_k log_softmax(scale x)_k = scale sum_k Y_k (m - x_k) +
sum(Y) log S: one online pass per student view over sums of non-negative terms, reading every
logit once forward and once backward; no (B, K) log-softmax exists, and nothing cancels (float32
loss within about one rounding of float64, gradients more accurate than lightly's). Lists are
taken as they are: the multi-crop outputs are never stacked.

    p = centered_softmax(x, center, scale) = softmax(scale (x - center))   (float32, no grad)
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from .._extension import require_extension
from ._common import acc_dtype, check_devices, guard_double_backward, named_list

require_extension()


@torch.library.register_fake("jem_fast::multiview_cross_entropy")
def _multiview_ce_fake(targets, logits, scale, check_finite):
    check_devices("multiview_cross_entropy", named_list("logits", logits)
                  + named_list("targets", targets))
    x = logits[0]
    ct = acc_dtype(x.dtype)
    # lse is float64 for every logit dtype (the backward's exponent stays exact)
    lse = x.new_empty((len(logits), x.shape[0]), dtype=torch.float64)
    return x.new_empty((), dtype=ct), lse, x.new_empty((len(targets), x.shape[0]), dtype=ct)


@torch.library.register_fake("jem_fast::multiview_cross_entropy_backward")
def _multiview_ce_backward_fake(grad_loss, targets, logits, lse, mass, scale):
    check_devices("multiview_cross_entropy_backward",
                  named_list("logits", logits) + named_list("targets", targets)
                  + [("grad_loss", grad_loss), ("lse", lse), ("mass", mass)])
    return [torch.empty_like(x, memory_format=torch.contiguous_format) for x in logits]


@torch.library.register_fake("jem_fast::centered_softmax")
def _centered_softmax_fake(x, center, scale):
    check_devices("centered_softmax", (("x", x), ("center", center)))
    return x.new_empty(x.shape, dtype=acc_dtype(x.dtype))


def _setup_context(ctx, inputs, output):
    targets, logits, scale, _ = inputs
    _, lse, mass = output
    ctx.save_for_backward(lse, mass, *targets, *logits)
    ctx.num_targets = len(targets)
    ctx.scale = scale
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, grad_lse, grad_mass):
    lse, mass, *tensors = ctx.saved_tensors
    targets, logits = tensors[:ctx.num_targets], tensors[ctx.num_targets:]
    no_targets = [None] * len(targets)
    if grad_loss is None or not any(_flatten(ctx.needs_input_grad[1])):
        return no_targets, [None] * len(logits), None, None
    with torch.no_grad():
        grads = torch.ops.jem_fast.multiview_cross_entropy_backward(
            grad_loss, list(targets), list(logits), lse, mass, ctx.scale)
    grads = guard_double_backward(_WHAT, tuple(grads), (*logits, grad_loss))
    return no_targets, list(grads), None, None


_WHAT = ("SwaVLoss / DINOLoss (jem_fast.ops.multiview_cross_entropy, op "
         "jem_fast::multiview_cross_entropy)")


def _flatten(flags):
    return flags if isinstance(flags, (list, tuple)) else [flags]


torch.library.register_autograd("jem_fast::multiview_cross_entropy", _backward,
                                setup_context=_setup_context)


def _check_list(tensors, name: str) -> List[torch.Tensor]:
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence):
        raise TypeError(f"{name} must be a list of (batch, dim) tensors, got "
                        f"{type(tensors).__name__}")
    tensors = list(tensors)
    if not tensors:
        raise ValueError(f"{name} must not be empty")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name}[{i}] must be 2-D (batch, dim), got shape {tuple(t.shape)}")
    return tensors


def multiview_cross_entropy(targets: Sequence[torch.Tensor], logits: Sequence[torch.Tensor],
                            temperature: float, check_finite: bool = True) -> torch.Tensor:
    """Mean over pairs (t, v), v != t, of the batch-mean cross-entropy between targets[t]
    (probabilities, no gradient) and softmax(logits[v] / temperature).

    Args:
        targets: list of (B, K) probability rows (e.g. SwAV codes, DINO teacher softmax); they
            are cast to the accumulation dtype (float32; float64 for float64 logits).
        logits: list of (B, K) scores, one dtype for all (the losses promote mixed dtypes).
        temperature: > 0, divides the logits.
        check_finite: raise (naming the inputs) when the loss is NaN/Inf (one device sync).

    Returns:
        0-d tensor, float32 (float64 for float64 logits), differentiable w.r.t. the logits."""
    targets = _check_list(targets, "targets")
    logits = _check_list(logits, "logits")
    check_devices("multiview_cross_entropy", named_list("logits", logits)
                  + named_list("targets", targets))
    t = float(temperature)
    if not (t > 0 and t < math.inf):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    ct = acc_dtype(logits[0].dtype)
    targets = [y.detach().to(ct) for y in targets]
    loss, _, _ = torch.ops.jem_fast.multiview_cross_entropy(targets, logits, 1.0 / t,
                                                            bool(check_finite))
    return loss


def centered_softmax(x: torch.Tensor, center: Optional[torch.Tensor],
                     temperature: float) -> torch.Tensor:
    """DINO's teacher distribution softmax((x - center) / temperature), without gradient.

    Args:
        x: (B, K) teacher outputs, any floating dtype.
        center: (1, K), (1, 1, K) or (K,) center, or None for no centering.
        temperature: > 0, the teacher temperature.

    Returns:
        (B, K) probabilities over the last dim, float32 (float64 for float64 x)."""
    if x.dim() != 2:
        raise ValueError(f"teacher output must be 2-D (batch, dim), got shape {tuple(x.shape)}")
    check_devices("centered_softmax", (("teacher output", x), ("center", center)))
    t = float(temperature)
    if not (t > 0 and t < math.inf):
        raise ValueError(f"teacher temperature must be a finite number > 0, got {temperature}")
    return torch.ops.jem_fast.centered_softmax(x.detach(), center, 1.0 / t)
