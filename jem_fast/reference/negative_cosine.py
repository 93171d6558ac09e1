"""BYOL / SimSiam losses as written in lightly and the official code (float64-capable)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine_reference(x0, x1, dim=1, eps=1e-8):
    """lightly.loss.NegativeCosineSimilarity: -mean(cosine_similarity(x0, x1, dim, eps))."""
    return -F.cosine_similarity(x0, x1, dim, eps).mean()


def symmetric_negative_cosine_reference(p0, z0, p1, z1, eps=1e-8):
    """SimSiam: 0.5 * (D(p0, z1) + D(p1, z0)), D(p, z) = -mean cos(p, stopgrad(z))."""
    return 0.5 * (negative_cosine_reference(p0, z1.detach(), eps=eps)
                  + negative_cosine_reference(p1, z0.detach(), eps=eps))


def byol_loss_reference(p, z):
    """BYOL's regression loss, mean over the batch: |p/|p| - z/|z||^2 = 2 - 2 cos(p, z)."""
    p = F.normalize(p, dim=-1)
    z = F.normalize(z.detach(), dim=-1)
    return (2 - 2 * (p * z).sum(-1)).mean()
