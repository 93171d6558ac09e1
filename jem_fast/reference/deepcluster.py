"""DeepCluster-v2 as written in the official code (facebookresearch/swav main_deepclusterv2.py),
materialized: the oracle of the tests (float64) and the baseline of the benchmarks."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    # x / ||x||, and 0 for a zero row (cosine 0 with everything), the convention of
    # jem_fast::assign_to_centroids. F.normalize's eps would make tiny rows differ.
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / torch.where(norm > 0, norm, torch.ones_like(norm)),
                       torch.zeros_like(x))


def assign_to_centroids_reference(features: torch.Tensor, centroids: torch.Tensor):
    """(index, score): argmax over k of normalized(features) @ normalized(centroids)^T, the
    whole B x K matrix materialized. torch.max returns the first maximal index on ties."""
    scores = _unit_rows(features) @ _unit_rows(centroids).T
    score, index = scores.max(dim=1)
    return index, score


def deepcluster_v2_loss_reference(outputs: Sequence[torch.Tensor], assignments: Sequence[torch.Tensor],
                                  temperature: float = 0.1, ignore_index: int = -1) -> torch.Tensor:
    """Mean over prototype heads h of CE(outputs[h] / temperature, assignments[h])."""
    loss = 0
    for scores, targets in zip(outputs, assignments):
        loss = loss + F.cross_entropy(scores / temperature, targets, ignore_index=ignore_index)
    return loss / len(outputs)
