"""VICReg as in the official code (facebookresearch/vicreg) and lightly: D x D covariances."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _variance(x: torch.Tensor, eps: float) -> torch.Tensor:
    std = torch.sqrt(x.var(dim=0) + eps)
    return torch.mean(F.relu(1.0 - std))


def _covariance(x: torch.Tensor) -> torch.Tensor:
    n, d = x.shape
    x = x - x.mean(dim=0)
    cov = (x.T @ x) / (n - 1)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d


def vicreg_terms_reference(z_a: torch.Tensor, z_b: torch.Tensor, eps: float = 1e-4):
    """(invariance, variance, covariance) as a (3,) tensor in the input dtype."""
    invariance = F.mse_loss(z_a, z_b)
    variance = 0.5 * (_variance(z_a, eps) + _variance(z_b, eps))
    covariance = _covariance(z_a) + _covariance(z_b)
    return torch.stack([invariance, variance, covariance])


def vicreg_loss_reference(z_a, z_b, lambda_param=25.0, mu_param=25.0, nu_param=1.0, eps=1e-4):
    inv, var, cov = vicreg_terms_reference(z_a, z_b, eps)
    return lambda_param * inv + mu_param * var + nu_param * cov
