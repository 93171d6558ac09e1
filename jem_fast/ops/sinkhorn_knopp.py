"""Log-domain Sinkhorn-Knopp: jem_fast::sinkhorn_knopp and its distributed steps.

    Q = sinkhorn_knopp(scores (B, K), epsilon, iterations)     # rows of Q sum to 1

is SwAV's `sinkhorn` (lightly's `lightly.loss.swav_loss.sinkhorn`): exp(scores / epsilon) made
doubly stochastic by alternating normalizations, prototypes (columns) first, samples (rows) last.
jem_fast keeps the plan as exp(scores / epsilon + f_b + g_k) with two potentials, each step
shifted by its exact maximum, so no epsilon and no score magnitude overflows (epsilon = 0.01 with
scores of magnitude 10 is fine), and Q is written once at the end.

With gather_distributed=True (and torch.distributed initialized with more than one rank) the
prototype step sums over the global batch: each rank's per-column (max, sum) statistics are
all-gathered (one collective of 2 x K float64 values per rank per iteration) and merged exactly,
so the result equals the single-process one on the concatenated batch.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .._extension import require_extension
from ..distributed import is_distributed
from ._common import acc_dtype, check_devices

require_extension()


@torch.library.register_fake("jem_fast::sinkhorn_knopp")
def _sinkhorn_knopp_fake(scores, epsilon, iterations, check_finite):
    return scores.new_empty(scores.shape, dtype=acc_dtype(scores.dtype))


@torch.library.register_fake("jem_fast::sinkhorn_column_stats")
def _column_stats_fake(scores, scale, row_potential):
    check_devices("sinkhorn_column_stats", (("scores", scores), ("row_potential", row_potential)))
    return scores.new_empty((2, scores.shape[1]), dtype=torch.float64)  # float64 statistics


@torch.library.register_fake("jem_fast::sinkhorn_row_potential")
def _row_potential_fake(scores, scale, col_potential, log_rows):
    check_devices("sinkhorn_row_potential", (("scores", scores), ("col_potential", col_potential)))
    return scores.new_empty((scores.shape[0],), dtype=torch.float64)  # float64 potentials


@torch.library.register_fake("jem_fast::sinkhorn_plan")
def _plan_fake(scores, scale, row_potential, col_potential, rows):
    check_devices("sinkhorn_plan", (("scores", scores), ("row_potential", row_potential),
                                    ("col_potential", col_potential)))
    return scores.new_empty(scores.shape, dtype=acc_dtype(scores.dtype))


def _check(scores: torch.Tensor, epsilon: float, iterations: int) -> None:
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (batch, prototypes), got shape {tuple(scores.shape)}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must be non-empty, got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got {scores.dtype}")
    if not (epsilon > 0 and epsilon < math.inf):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")


def _merge_column_stats(stats: torch.Tensor) -> torch.Tensor:
    """(2, K) local (max, shifted sum) -> the same over every rank, identical on all ranks."""
    world = dist.get_world_size()
    gathered = [torch.empty_like(stats) for _ in range(world)]
    dist.all_gather(gathered, stats.contiguous())
    stacked = torch.stack(gathered)                      # (W, 2, K)
    colmax = stacked[:, 0].amax(dim=0)
    scaled = stacked[:, 1] * torch.exp(stacked[:, 0] - colmax)
    scaled = torch.where(stacked[:, 1] > 0, scaled, torch.zeros_like(scaled))  # empty ranks
    return torch.stack([colmax, scaled.sum(dim=0)])


def _column_potential(stats: torch.Tensor, K: int) -> torch.Tensor:
    return -(stats[0] + stats[1].log()) - math.log(K)


@torch.no_grad()
def _sinkhorn_distributed(scores: torch.Tensor, epsilon: float, iterations: int,
                          check_finite: bool) -> torch.Tensor:
    B, K = scores.shape
    scale = 1.0 / epsilon
    world = dist.get_world_size()
    rows = torch.tensor([B], device=scores.device, dtype=torch.int64)
    dist.all_reduce(rows)
    B_global = int(rows.item())
    ops = torch.ops.jem_fast
    if iterations == 0:
        stats = _merge_column_stats(ops.sinkhorn_column_stats(scores, scale, None))
        total = torch.logsumexp(stats[0] + stats[1].log(), dim=0)
        f = (-total).expand(B).contiguous()
        g = torch.zeros(K, dtype=f.dtype, device=f.device)
    else:
        f = None
        for _ in range(iterations):
            stats = _merge_column_stats(ops.sinkhorn_column_stats(scores, scale, f))
            g = _column_potential(stats, K)
            f = ops.sinkhorn_row_potential(scores, scale, g, math.log(B_global))
    if check_finite:
        ok = torch.stack([torch.isfinite(f).all(), torch.isfinite(g).all()]).all().to(torch.int32)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if not bool(ok.item()):
            raise ValueError("sinkhorn_knopp: scores contain NaN or +Inf on some rank, or a row "
                             "or column with every score at -inf (a -inf score elsewhere is "
                             "allowed: an impossible assignment, 0 in the plan)")
    del world
    return ops.sinkhorn_plan(scores, scale, f, g, float(B_global))


def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3,
                   gather_distributed: bool = False, check_finite: bool = True) -> torch.Tensor:
    """SwAV codes: (B, K) assignments whose rows sum to 1 and whose columns carry mass B/K
    (exactly after the last prototype step, up to the final sample step).

    Args:
        scores: (B, K) similarities of normalized features and prototypes, float32, float64,
            float16 or bfloat16.
        epsilon: entropic regularization (> 0); any value works (log domain).
        iterations: Sinkhorn-Knopp iterations (>= 0).
        gather_distributed: normalize the prototype sums over the batches of all ranks.
        check_finite: validate the scores (see below; one device synchronization).

    Returns:
        (B, K) codes, float32 (float64 for float64 scores), no gradient.

    The potentials are float64 and
    the exponents extended precision, so float32 codes match the float64 computation to float32
    rounding whatever |scores| / epsilon, and every row sums to 1 to float32 rounding. Runs
    without gradient.

    Non-finite scores: a -inf score is an impossible assignment and is allowed (its entry of Q is
    0) as long as every row and every column keeps a finite score. check_finite (one device
    synchronization) raises on NaN or +inf scores and on a row or column whose scores are all
    -inf; with check_finite=False these give NaN codes.
    """
    epsilon = float(epsilon)
    iterations = int(iterations)
    _check(scores, epsilon, iterations)
    scores = scores.detach()
    if gather_distributed and is_distributed():
        return _sinkhorn_distributed(scores, epsilon, iterations, check_finite)
    return torch.ops.jem_fast.sinkhorn_knopp(scores, epsilon, iterations, bool(check_finite))
