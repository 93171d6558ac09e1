"""VICRegLoss: drop-in for lightly.loss.VICRegLoss, on the fused jem_fast::vicreg op."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import all_gather_with_grad, check_gather_available, is_distributed
from ..ops._common import promote_floating
from ..ops.vicreg import VICRegTerms, vicreg_terms


class VICRegLoss(torch.nn.Module):
    """VICReg loss (Bardes et al., 2022) with lightly's arguments and defaults.

    loss = lambda_param * invariance + mu_param * variance + nu_param * covariance

    Args:
        lambda_param, mu_param, nu_param: weights of the invariance, variance, covariance terms.
        gather_distributed: compute the variance and covariance terms over the batches of all
            ranks (gradient-aware all-gather); the invariance term stays local, as in lightly
            and the official code.
        eps: added to the variance before the square root.
        route: 'auto' (N x N Gram matrices when N < D, D x D covariances otherwise), 'gram' or
            'covariance'. Only cost changes, not the value.
        check_finite: raise a ValueError-like RuntimeError naming the input when z_a or z_b
            holds NaN/Inf instead of returning a NaN loss (one device sync per call on CUDA).

    Inputs: z_a and z_b of shape (N, D) (N >= 2), floating-point. When their dtypes differ they
    are promoted as torch promotes (`torch.promote_types`, e.g. float16 with float32 computes in
    float32), as lightly accepts them; each input's gradient comes back in its own dtype. The
    loss is a 0-d tensor, float32 (float64 when either input is float64) whatever the input
    dtypes. After each forward, `last_terms` holds the detached VICRegTerms for logging.

    Example::

        criterion = VICRegLoss()
        loss = criterion(torch.randn(8, 32), torch.randn(8, 32))
    """

    def __init__(self, lambda_param: float = 25.0, mu_param: float = 25.0, nu_param: float = 1.0,
                 gather_distributed: bool = False, eps: float = 0.0001, route: str = "auto",
                 check_finite: bool = True):
        super().__init__()
        check_gather_available(gather_distributed)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.lambda_param = lambda_param
        self.mu_param = mu_param
        self.nu_param = nu_param
        self.gather_distributed = gather_distributed
        self.eps = eps
        self.route = route
        self.check_finite = check_finite
        self.last_terms: VICRegTerms | None = None

    def terms(self, z_a: torch.Tensor, z_b: torch.Tensor) -> VICRegTerms:
        """The three differentiable terms, unweighted.

        Args:
            z_a, z_b: (N, D) projections of the two views (dtypes promoted as in forward).

        Returns:
            VICRegTerms(invariance, variance, covariance): 0-d tensors, float32 (float64 when
            either input is float64), differentiable w.r.t. z_a and z_b.
        """
        z_a, z_b = promote_floating("VICRegLoss", (("z_a", z_a), ("z_b", z_b)))
        if self.gather_distributed and is_distributed():
            invariance = F.mse_loss(z_a.to(torch.promote_types(z_a.dtype, torch.float32)),
                                    z_b.to(torch.promote_types(z_b.dtype, torch.float32)))
            t = vicreg_terms(all_gather_with_grad(z_a), all_gather_with_grad(z_b), self.eps,
                             self.route, self.check_finite)
            return VICRegTerms(invariance.to(t.dtype), t[1], t[2])
        t = vicreg_terms(z_a, z_b, self.eps, self.route, self.check_finite)
        return VICRegTerms(t[0], t[1], t[2])

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        """VICReg loss of two batches of projections.

        Args:
            z_a: (N, D) projections of the first view, N >= 2, any floating dtype.
            z_b: (N, D) projections of the second view; a different floating dtype is promoted
                with z_a's (torch.promote_types).

        Returns:
            0-d tensor lambda_param * invariance + mu_param * variance + nu_param * covariance,
            float32 (float64 when either input is float64). Also sets `last_terms`.
        """
        t = self.terms(z_a, z_b)
        self.last_terms = VICRegTerms(*(x.detach() for x in t))
        return (self.lambda_param * t.invariance + self.mu_param * t.variance
                + self.nu_param * t.covariance)
