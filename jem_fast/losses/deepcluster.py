"""DeepCluster-v2 loss: cross-entropy of prototype scores against k-means assignments."""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops._common import check_devices
from ..ops.info_nce import check_temperature


class DeepClusterV2Loss(torch.nn.Module):
    """loss = mean over prototype heads h of CE(scores_h / temperature, targets_h), each CE the
    mean over the rows whose target is not ignore_index (the official code's formula).

    forward(outputs, targets):
      outputs: (N, K) scores of one head, or a list of them (heads may have different K).
      targets: (N,) int64 cluster indices for one head, (num_heads, N), or a list of (N,)
          tensors; rows with ignore_index (default -1, what jem_fast.cluster gives rows without
          an assignment) do not count. In the official training loop the targets of a batch
          are `assignments[h][idx].repeat(num_crops)`, one per crop.

    Args:
        temperature: finite and > 0; the scores are divided by it before the softmax.
        ignore_index: target value of rows without an assignment.

    The scores of every head are cast to one dtype before the softmax: float32, or float64 when
    any head is float64 (heads of different floating dtypes mix, as in a torch expression);
    integer or bool scores and an empty batch (no rows or no prototypes) raise, as in the other
    losses. A head whose rows are all ignored contributes 0 (torch's mean would be 0/0 = NaN).
    """

    def __init__(self, temperature: float = 0.1, ignore_index: int = -1):
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.ignore_index = int(ignore_index)

    def forward(self, outputs: Union[Tensor, Sequence[Tensor]],
                targets: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        """Mean over heads of the cross-entropy of scores / temperature against assignments.

        Args:
            outputs: (N, K) prototype scores of one head, or a list of them (K may differ per
                head; heads may have different floating dtypes).
            targets: (N,) int64 cluster indices, (num_heads, N), or a list of (N,) tensors;
                ignore_index rows do not count.

        Returns:
            0-d tensor, float32 (float64 when a head's scores are float64). Each head's
            gradient has that head's dtype.
        """
        heads = [outputs] if isinstance(outputs, Tensor) else list(outputs)
        if not heads:
            raise ValueError("outputs must hold the scores of at least one prototype head")
        if isinstance(targets, Tensor):
            labels = [targets] if targets.dim() == 1 else list(targets.unbind(0))
        else:
            labels = list(targets)
        if len(labels) != len(heads):
            raise ValueError(f"targets: expected one target vector per head ({len(heads)}), got "
                             f"{len(labels)}")
        # Heads of different floating dtypes are computed in one promoted dtype (at least
        # float32), as a torch expression mixing them would be.
        head_dtype = torch.float32
        for h, scores in enumerate(heads):
            if isinstance(scores, Tensor) and scores.is_floating_point():
                head_dtype = torch.promote_types(head_dtype, scores.dtype)
        loss = None
        for h, (scores, t) in enumerate(zip(heads, labels)):
            if not isinstance(scores, Tensor):
                raise TypeError(f"outputs[{h}] must be a torch.Tensor, got "
                                f"{type(scores).__name__}")
            if not isinstance(t, Tensor):
                raise TypeError(f"targets[{h}] must be a torch.Tensor, got {type(t).__name__}")
            if scores.dim() != 2:
                raise ValueError(f"outputs[{h}] must be 2-D (batch, num_prototypes), got shape "
                                 f"{tuple(scores.shape)}")
            if not scores.is_floating_point():
                raise TypeError(f"outputs[{h}] must be floating-point prototype scores (float32, "
                                f"float64, float16 or bfloat16), got {scores.dtype}")
            if scores.shape[0] == 0 or scores.shape[1] == 0:
                raise ValueError(f"outputs[{h}] must be non-empty (at least one row and one "
                                 f"prototype), got shape {tuple(scores.shape)}")
            check_devices("DeepClusterV2Loss", ((f"outputs[{h}]", scores),
                                                (f"targets[{h}]", t)), error=ValueError)
            if t.dim() != 1 or t.shape[0] != scores.shape[0]:
                raise ValueError(f"targets[{h}] must be a vector with one entry per row of "
                                 f"outputs[{h}] ({scores.shape[0]}), got shape {tuple(t.shape)}")
            if t.dtype != torch.int64:
                raise ValueError(f"targets[{h}] must be int64 cluster indices, got {t.dtype}")
            logits = scores.to(head_dtype)
            total = F.cross_entropy(logits / self.temperature, t, ignore_index=self.ignore_index,
                                    reduction="sum")
            valid = (t != self.ignore_index).sum().clamp_min(1)
            term = total / valid
            loss = term if loss is None else loss + term
        return loss / len(heads)
