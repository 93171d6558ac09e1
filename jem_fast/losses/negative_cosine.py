"""NegativeCosineSimilarity (BYOL, SimSiam): drop-in for lightly.loss.NegativeCosineSimilarity on
the fused jem_fast::cosine_similarity_rows op, plus the symmetric two-view form."""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple

import torch

from ..ops.negative_cosine import cosine_similarity_rows


def _check_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float32, float64, float16 or "
                        f"bfloat16), got {x.dtype}")


def _rows(x0: torch.Tensor, x1: torch.Tensor, dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """x0, x1 as (rows, D) with D the size of `dim`: `dim` moved last, the rest flattened."""
    _check_tensor(x0, "x0")
    _check_tensor(x1, "x1")
    if x0.dtype != x1.dtype:  # as F.cosine_similarity (and so lightly) promotes
        dtype = torch.promote_types(x0.dtype, x1.dtype)
        x0, x1 = x0.to(dtype), x1.to(dtype)
    if x0.device != x1.device:
        raise ValueError(f"x0 and x1 must be on the same device, got {x0.device} and {x1.device}")
    if x0.shape != x1.shape:
        try:
            shape = torch.broadcast_shapes(x0.shape, x1.shape)
        except RuntimeError:
            raise ValueError(f"x0 and x1 must have the same shape or broadcast to one, got "
                             f"{tuple(x0.shape)} and {tuple(x1.shape)}") from None
        # Broadcasting as F.cosine_similarity does; the expanded operand is copied once by the op
        # (as large as the other input), autograd sums its gradient back.
        x0, x1 = x0.expand(shape), x1.expand(shape)
    if x0.dim() == 0:
        raise ValueError("x0 and x1 must have at least one dimension, got scalars")
    if not -x0.dim() <= dim < x0.dim():
        raise ValueError(f"dim={dim} is out of range for x0 and x1 of shape {tuple(x0.shape)}")
    d = x0.shape[dim]
    if d == 0:
        raise ValueError(f"x0 and x1 are empty along dim={dim} (shape {tuple(x0.shape)})")
    if x0.numel() == 0:
        raise ValueError(f"x0 and x1 are an empty batch (shape {tuple(x0.shape)})")
    if x0.dim() == 1:
        return x0.unsqueeze(0), x1.unsqueeze(0)
    # movedim is a view; reshape copies only when the rows are not already contiguous.
    return (x0.movedim(dim, -1).reshape(-1, d), x1.movedim(dim, -1).reshape(-1, d))


def negative_cosine_similarity(x0: torch.Tensor, x1: torch.Tensor, dim: int = 1,
                               eps: float = 1e-8) -> torch.Tensor:
    """-mean(cosine_similarity(x0, x1, dim, eps)) on the fused op (see NegativeCosineSimilarity).

    Args:
        x0, x1: tensors of the same shape (or shapes that broadcast), any floating dtypes
            (different dtypes are promoted with torch.promote_types, as F.cosine_similarity).
        dim: the dimension holding the vectors; every other dimension indexes rows.
        eps: each norm is clamped to at least eps.

    Returns:
        0-d tensor, float32 (float64 when an input is float64).
    """
    a, b = _rows(x0, x1, dim)
    return -cosine_similarity_rows(a, b, eps).mean()


class NegativeCosineSimilarity(torch.nn.Module):
    """Negative cosine similarity (SimSiam, BYOL): `-cosine_similarity(x0, x1, dim, eps).mean()`,
    lightly's arguments and defaults. Detach the target yourself, as with lightly.

    Any rank and `dim`: `dim` is moved last and the other dimensions flattened into rows, then one
    fused kernel computes every row's cosine (and, backward, one pass writes both gradients, or
    only x0's when x1 is detached). x0 and x1 may broadcast against each other, as in
    F.cosine_similarity (the broadcast operand is then copied once).

    Args:
        dim: the dimension holding the vectors.
        eps: each norm is clamped to at least eps separately (torch 2.x semantics of
            F.cosine_similarity; >= 0).

    x0 and x1 of different floating dtypes are promoted as F.cosine_similarity (and so lightly)
    promotes them (torch.promote_types: float16 with float32 computes in float32); each input's
    gradient comes back in its own dtype.

    Differences from lightly, on purpose: the loss is float32 for float16/bfloat16 inputs (float32
    accumulation; torch's autocast also runs cosine_similarity in float32); an empty batch or an
    empty `dim` raises ValueError instead of returning NaN / 0; eps must be >= 0.
    """

    def __init__(self, dim: int = 1, eps: float = 1e-8) -> None:
        super().__init__()
        eps = float(eps)
        if not (eps >= 0.0 and eps < float("inf")):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        self.dim = dim
        self.eps = eps

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """-mean cosine similarity of x0 and x1 along `dim`.

        Args:
            x0: prediction, any shape with the vectors along `dim`, any floating dtype.
            x1: target, the same shape (or broadcastable); detach it yourself (stop-gradient).

        Returns:
            0-d tensor, float32 (float64 when an input is float64).
        """
        return negative_cosine_similarity(x0, x1, self.dim, self.eps)


def symmetric_negative_cosine(pairs: Iterable[Sequence[torch.Tensor]], dim: int = 1,
                              eps: float = 1e-8) -> torch.Tensor:
    """Mean over (prediction, target) pairs of -mean cos(prediction, target.detach()).

    SimSiam with two views: `symmetric_negative_cosine([(p1, z2), (p2, z1)])`
    = 0.5 * (D(p1, z2) + D(p2, z1)), D(p, z) = -mean cos(p, stopgrad(z)), the paper's loss.

    BYOL: its loss per direction is mean |p/|p| - z/|z||^2 = 2 - 2 mean cos(p, z), and the
    official code sums the two directions, so BYOL's symmetric loss = 4 + 4 * this (for one
    direction: 2 + 2 * NegativeCosineSimilarity()(p, z.detach())). The constant does not change
    the gradient, which is 4x this function's. (BYOL normalizes with eps 1e-12 inside
    F.normalize; the gradients agree with eps 1e-8 here for any row norm above 1e-8.)

    Targets are detached here, so the fused backward writes only the predictions' gradients.

    Args:
        pairs: iterable of (prediction, target) tensor pairs of the same shape; a prediction
            and its target of different floating dtypes are promoted (torch.promote_types).
        dim, eps: as in NegativeCosineSimilarity.

    Returns:
        0-d tensor, float32 (float64 when an input is float64).
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs must hold at least one (prediction, target) pair")
    total = None
    for k, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pairs[{k}] must be a (prediction, target) pair, got {len(pair)} "
                             "items")
        p, z = pair
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"pairs[{k}] target must be a torch.Tensor, got {type(z).__name__}")
        term = negative_cosine_similarity(p, z.detach(), dim, eps)
        total = term if total is None else total + term
    return total / len(pairs)
