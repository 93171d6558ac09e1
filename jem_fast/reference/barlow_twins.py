"""Barlow Twins as in the paper's Algorithm 1 and lightly: D x D cross-correlation."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _batch_norm(z: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(z, running_mean=None, running_var=None, weight=None, bias=None,
                        training=True, eps=1e-5)


def barlow_twins_terms_reference(z_a: torch.Tensor, z_b: torch.Tensor):
    """(on_diagonal, off_diagonal) as a (2,) tensor in the input dtype."""
    n = z_a.shape[0]
    c = _batch_norm(z_a).T @ _batch_norm(z_b) / n
    diagonal = torch.diagonal(c)
    on_diagonal = (diagonal - 1).pow(2).sum()
    off_diagonal = c.pow(2).sum() - diagonal.pow(2).sum()
    return torch.stack([on_diagonal, off_diagonal])


def barlow_twins_loss_reference(z_a, z_b, lambda_param=5e-3):
    on, off = barlow_twins_terms_reference(z_a, z_b)
    return on + lambda_param * off
