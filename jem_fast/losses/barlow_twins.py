"""BarlowTwinsLoss: drop-in for lightly.loss.BarlowTwinsLoss, on the fused jem_fast op."""
from __future__ import annotations

import torch

from ..distributed import all_gather_with_grad, check_gather_available, is_distributed
from ..ops._common import promote_floating
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

    Inputs: z_a and z_b of shape (N, D) (N >= 2), floating-point. Different dtypes are promoted
    as torch promotes (`torch.promote_types`: float16 with float32 computes in float32; lightly
    raises there); each input's gradient comes back in its own dtype. The loss is a 0-d tensor,
    float32 (float64 when either input is float64). After each forward, `last_terms` holds the
    detached BarlowTwinsTerms for logging.
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
        """The two differentiable terms, unweighted.

        Args:
            z_a, z_b: (N, D) projections of the two views (dtypes promoted as in forward).

        Returns:
            BarlowTwinsTerms(on_diagonal, off_diagonal): 0-d tensors, float32 (float64 when
            either input is float64), differentiable w.r.t. z_a and z_b.
        """
        z_a, z_b = promote_floating("BarlowTwinsLoss", (("z_a", z_a), ("z_b", z_b)))
        if self.gather_distributed and is_distributed():
            z_a, z_b = all_gather_with_grad(z_a), all_gather_with_grad(z_b)
        t = barlow_twins_terms(z_a, z_b, self.route, self.check_finite)
        return BarlowTwinsTerms(t[0], t[1])

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """Barlow Twins loss of two batches of projections.

        Args:
            z_a: (N, D) projections of the first view, N >= 2, any floating dtype.
            z_b: (N, D) projections of the second view; a different floating dtype is promoted
                with z_a's (torch.promote_types).

        Returns:
            0-d tensor on_diagonal + lambda_param * off_diagonal, float32 (float64 when either
            input is float64). Also sets `last_terms`.
        """
        t = self.terms(z_a, z_b)
        self.last_terms = BarlowTwinsTerms(*(x.detach() for x in t))
        return t.on_diagonal + self.lambda_param * t.off_diagonal
