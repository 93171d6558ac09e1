"""BarlowTwinsLoss: drop-in for lightly.loss.BarlowTwinsLoss, on the fused jem_fast op."""
from __future__ import annotations

import torch

from ..distributed import all_gather_with_grad, check_gather_available, is_distributed
from ..ops.barlow_twins import BarlowTwinsTerms, barlow_twins_terms


class BarlowTwinsLoss(torch.nn.Module):
    """Barlow Twins loss (Zbontar et al., 2021) with lightly's arguments and defaults.

    loss = sum_i (C_ii - 1)^2 + lambda_param * sum_{i != j} C_ij^2,  C = BN(z_a)^T BN(z_b) / N

    Args:
        lambda_param: weight of the redundancy-reduction (off-diagonal) term.
        gather_distributed: normalize and correlate over the batches of all ranks (global batch
            statistics, as the official SyncBatchNorm code), with exact gradients: the value is
            the single-process value on the concatenated batch. lightly instead averages
            per-rank matrices normalized with per-rank statistics; see the README.
        route: 'auto' (N x N Gram matrices when 4N < 3D, D x D otherwise), 'gram', 'covariance'.
        check_finite: raise naming the input when z_a or z_b holds NaN/Inf (one device sync per
            call on CUDA).

    The loss is returned in float32 (float64 for float64 inputs). After each forward,
    `last_terms` holds the detached BarlowTwinsTerms for logging.
    """

    def __init__(self, lambda_param: float = 5e-3, gather_distributed: bool = False,
                 route: str = "auto", check_finite: bool = True):
        super().__init__()
        check_gather_available(gather_distributed)
        self.lambda_param = lambda_param
        self.gather_distributed = gather_distributed
        self.route = route
        self.check_finite = check_finite
        self.last_terms: BarlowTwinsTerms | None = None

    def terms(self, z_a: torch.Tensor, z_b: torch.Tensor) -> BarlowTwinsTerms:
        if self.gather_distributed and is_distributed():
            z_a, z_b = all_gather_with_grad(z_a), all_gather_with_grad(z_b)
        t = barlow_twins_terms(z_a, z_b, self.route, self.check_finite)
        return BarlowTwinsTerms(t[0], t[1])

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        t = self.terms(z_a, z_b)
        self.last_terms = BarlowTwinsTerms(*(x.detach() for x in t))
        return t.on_diagonal + self.lambda_param * t.off_diagonal
