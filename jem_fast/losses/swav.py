"""SwaVLoss: drop-in for lightly.loss.SwaVLoss on the fused Sinkhorn-Knopp and multi-view
cross-entropy ops."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..distributed import check_gather_available
from ..ops._common import check_devices, crop_list, named_list, promote_floating
from ..ops.multiview_cross_entropy import multiview_cross_entropy
from ..ops.sinkhorn_knopp import sinkhorn_knopp


class SwaVLoss(torch.nn.Module):
    """SwAV loss (Caron et al., 2020) with lightly's arguments, defaults and forward signature.

    For every high-resolution crop i, its codes q_i = sinkhorn(scores_i) (with the queue rows of
    that crop appended, then dropped) are predicted from every other crop v:
    -mean_b sum_k q_i log_softmax(z_v / temperature); averaged over the other crops and over the
    high-resolution crops. The codes run without gradient, in float32 with log-domain scaling (no
    overflow for any epsilon); the cross-entropies of all pairs are one fused op that reads each
    crop's scores once forward and once backward.

    Args:
        temperature: softmax temperature of the predictions.
        sinkhorn_iterations, sinkhorn_epsilon: Sinkhorn-Knopp iterations and entropic epsilon.
        sinkhorn_gather_distributed: normalize the codes over the batches of all ranks.
        check_finite: raise instead of returning a NaN loss (one device sync per call).

    Like lightly, the loss is returned with shape (1,); it is float32 (float64 when any crop is
    float64) whatever the input dtypes. Crops (and queue outputs) of different floating dtypes
    are promoted to one (torch.promote_types: float16 with float32 computes in float32), and
    each crop's gradient comes back in its own dtype.
    """

    def __init__(self, temperature: float = 0.1, sinkhorn_iterations: int = 3,
                 sinkhorn_epsilon: float = 0.05, sinkhorn_gather_distributed: bool = False,
                 check_finite: bool = True):
        super().__init__()
        check_gather_available(sinkhorn_gather_distributed)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not sinkhorn_epsilon > 0:
            raise ValueError(f"sinkhorn_epsilon must be > 0, got {sinkhorn_epsilon}")
        if sinkhorn_iterations < 0:
            raise ValueError(f"sinkhorn_iterations must be >= 0, got {sinkhorn_iterations}")
        self.temperature = temperature
        self.sinkhorn_iterations = sinkhorn_iterations
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.sinkhorn_gather_distributed = sinkhorn_gather_distributed
        self.check_finite = check_finite

    @torch.no_grad()
    def codes(self, high_resolution_outputs: Sequence[torch.Tensor],
              queue_outputs: Optional[Sequence[torch.Tensor]] = None) -> List[torch.Tensor]:
        """The Sinkhorn codes of every high-resolution crop (queue rows dropped), no gradient.

        Args:
            high_resolution_outputs: list of (B, K) prototype scores, one per crop.
            queue_outputs: optional list of (Q, K) queue scores, one per high-resolution crop,
                appended before Sinkhorn-Knopp and dropped from its result.

        Returns:
            list of (B, K) code matrices (rows sum to 1), float32 (float64 for float64 scores).
        """
        out = []
        for i, z in enumerate(high_resolution_outputs):
            scores = z.detach()
            if queue_outputs is not None:
                scores = torch.cat((scores, queue_outputs[i].detach().to(scores.dtype)))
            q = sinkhorn_knopp(scores, self.sinkhorn_epsilon, self.sinkhorn_iterations,
                               self.sinkhorn_gather_distributed, self.check_finite)
            out.append(q[: z.shape[0]])
        return out

    def forward(self, high_resolution_outputs: List[torch.Tensor],
                low_resolution_outputs: List[torch.Tensor],
                queue_outputs: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """SwAV loss: each high-resolution crop's codes predicted from every other crop.

        Args:
            high_resolution_outputs: list of (B, K) prototype scores, one per high-resolution
                crop (a stacked (V, B, K) tensor is taken as its V crops, as lightly does).
            low_resolution_outputs: list of (B, K) prototype scores of the low-resolution crops
                (may be empty).
            queue_outputs: optional list of (Q, K) queue scores, one per high-resolution crop.
            Different floating dtypes across crops are promoted to one (torch.promote_types).

        Returns:
            tensor of shape (1,), float32 (float64 when any input is float64).
        """
        high = crop_list("SwaVLoss", "high_resolution_outputs", high_resolution_outputs,
                         accept_stacked=True, allow_empty=True)
        low = crop_list("SwaVLoss", "low_resolution_outputs", low_resolution_outputs,
                        accept_stacked=True, allow_empty=True)
        if queue_outputs is not None:
            queue_outputs = crop_list("SwaVLoss", "queue_outputs", queue_outputs,
                                      accept_stacked=True, allow_empty=True)
        if not high:
            raise ValueError("high_resolution_outputs must hold at least one crop")
        if len(high) + len(low) < 2:
            raise ValueError("SwaVLoss needs at least two crops in total (each crop's codes are "
                             f"predicted from the others), got {len(high)} high-resolution and "
                             f"{len(low)} low-resolution crop(s)")
        if queue_outputs is not None and len(queue_outputs) != len(high):
            raise ValueError("queue_outputs must hold one tensor per high-resolution crop, got "
                             f"{len(queue_outputs)} for {len(high)} crops")
        check_devices("SwaVLoss", named_list("high_resolution_outputs", high)
                      + named_list("low_resolution_outputs", low)
                      + named_list("queue_outputs", queue_outputs or []), error=ValueError)
        named = (named_list("high_resolution_outputs", high)
                 + named_list("low_resolution_outputs", low)
                 + named_list("queue_outputs", queue_outputs or []))
        promoted = promote_floating("SwaVLoss", named)
        high, low = promoted[:len(high)], promoted[len(high):len(high) + len(low)]
        if queue_outputs is not None:
            queue_outputs = promoted[len(high) + len(low):]
        codes = self.codes(high, queue_outputs)
        loss = multiview_cross_entropy(codes, high + low, self.temperature, self.check_finite)
        return loss.reshape(1)
