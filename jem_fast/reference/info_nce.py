"""InfoNCE losses as materialized in lightly / the official code: full logits matrices."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ntxent_loss_reference(out0, out1, temperature=0.5, negatives=None):
    """SimCLR NT-Xent (lightly's NTXentLoss, one process). negatives (M, D): MoCo mode, where the
    logits of each out0 row are [out0 . out1, out0 . negatives] and no in-batch negatives."""
    out0 = F.normalize(out0, dim=1)
    out1 = F.normalize(out1, dim=1)
    n = out0.shape[0]
    if negatives is not None:
        logits = torch.cat([(out0 * out1).sum(1, keepdim=True), out0 @ negatives.T], 1) / temperature
        return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=out0.device))
    z = torch.cat([out0, out1])
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    labels = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, labels)


def info_nce_loss_reference(query, key, temperature=0.07, negatives=None, symmetric=False,
                            in_batch_negatives=True, scale_loss_by_temperature=False):
    """q-vs-k InfoNCE (one process): positives on the diagonal of query . key^T.
    in_batch_negatives: the other keys are negatives (MoCo v3, CLIP); negatives (M, D): an extra
    queue (MoCo v2). symmetric: CLIP's (CE(rows) + CE(columns)) / 2."""
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
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy((k @ q.T) / temperature, labels))
    if scale_loss_by_temperature:
        loss = loss * 2 * temperature
    return loss
