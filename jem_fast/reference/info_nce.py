"""InfoNCE losses as materialized in lightly / the official code: full logits matrices."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_stable(logits, labels):
    """F.cross_entropy(logits, labels) (mean over rows) as softplus(LSE of the other logits -
    the label's logit): the same value without F.cross_entropy's LSE(all) - logit, which cancels
    to nothing when the label's logit dominates (even in float64: at temperature 0.01 a loss of
    1e-30 reads as 0). The float64 truth of the precision tests."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    positive = logits[rows, labels]
    others = logits.index_put((rows, labels), torch.tensor(float("-inf"), dtype=logits.dtype,
                                                         device=logits.device))
    return F.softplus(torch.logsumexp(others, dim=1) - positive).mean()


def ntxent_loss_reference(out0, out1, temperature=0.5, negatives=None, stable=False):
    """SimCLR NT-Xent (lightly's NTXentLoss, one process). negatives (M, D): MoCo mode, where the
    logits of each out0 row are [out0 . out1, out0 . negatives] and no in-batch negatives.
    stable: the cross-entropy as cross_entropy_stable (same value, every digit kept)."""
    ce = cross_entropy_stable if stable else F.cross_entropy
    out0 = F.normalize(out0, dim=1)
    out1 = F.normalize(out1, dim=1)
    n = out0.shape[0]
    if negatives is not None:
        logits = torch.cat([(out0 * out1).sum(1, keepdim=True), out0 @ negatives.T], 1) / temperature
        return ce(logits, torch.zeros(n, dtype=torch.long, device=out0.device))
    z = torch.cat([out0, out1])
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return ce(logits, labels)


def info_nce_loss_reference(query, key, temperature=0.07, negatives=None, symmetric=False,
                            in_batch_negatives=True, scale_loss_by_temperature=False,
                            stable=False):
    """q-vs-k InfoNCE (one process): positives on the diagonal of query . key^T.
    in_batch_negatives: the other keys are negatives (MoCo v3, CLIP); negatives (M, D): an extra
    queue (MoCo v2). symmetric: CLIP's (CE(rows) + CE(columns)) / 2.
    stable: the cross-entropy as cross_entropy_stable (same value, every digit kept)."""
    ce = cross_entropy_stable if stable else F.cross_entropy
    q = F.normalize(query, dim=1)
    k = F.normalize(key, dim=1)
    n = q.shape[0]
    labels = torch.arange(n, device=q.device)
    pos = (q * k).sum(1, keepdim=True)
    parts = [q @ k.T] if in_batch_negatives else [pos]
    if negatives is not None:
        parts.append(q @ negatives.T)
    logits = torch.cat(parts, 1) / temperature
    target = labels if in_batch_negatives else torch.zeros_like(labels)
    loss = ce(logits, target)
    if symmetric:
        loss = 0.5 * (loss + ce((k @ q.T) / temperature, labels))
    if scale_loss_by_temperature:
        loss = loss * 2 * temperature
    return loss
