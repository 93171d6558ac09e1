"""NTXentLoss: drop-in for lightly.loss.NTXentLoss (SimCLR, and MoCo with a memory bank), on the
memory-linear jem_fast::info_nce_lse op: the 2N x 2N (or N x bank) logits never exist."""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..distributed import all_gather_with_grad, check_gather_available, is_distributed
from ..nn.memory_bank import MemoryBank
from ..ops._common import promote_floating
from ..ops.info_nce import (check_chunk_rows, check_pair, check_temperature, logsumexp_logits,
                             logsumexp_self_logits)


class NTXentLoss(torch.nn.Module):
    """Normalized temperature-scaled cross-entropy (SimCLR), lightly's arguments and defaults.

    Without a memory bank: the 2N embeddings of both views against each other (self-pairs
    excluded), each row's positive is its other view; the mean over the 2N rows. With
    gather_distributed, local rows against the embeddings of every rank.
    With memory_bank_size ((num_keys, dim), or an int as older lightly): each out0 row against
    [its out1 positive, the bank], the bank (a MemoryBank of past out1) consumed by the kernel
    directly; the bank is updated with out1 when out0 requires grad, as in lightly.

    Args:
        temperature: finite and > 0; logits are cos(out0_i, out1_j) / temperature.
        memory_bank_size: 0 (no bank), (num_keys, dim), or an int num_keys (dim taken from the
            first batch).
        gather_distributed: negatives from the batches of every rank (torch.distributed).
        chunk_rows: query rows per logits chunk (distributed / memory bank; 0: 64 MiB of
            float32 logits, 32 MiB on CUDA), or the side of the square tiles of the symmetric
            single-process path (0: 512 on CPU, 2048 on CUDA).

    Differences from lightly, on purpose: temperature must be finite and > 0 (lightly accepts
    negative values); the loss is computed and returned in float32 (float64 when an input is
    float64); out0 and out1 of different floating dtypes are promoted (torch.promote_types,
    e.g. float16 with float32 computes in float32) where lightly raises.
    """

    def __init__(self, temperature: float = 0.5,
                 memory_bank_size: Union[int, Sequence[int]] = 0,
                 gather_distributed: bool = False, chunk_rows: int = 0):
        super().__init__()
        self.temperature = check_temperature(temperature)
        check_gather_available(gather_distributed)
        self.memory_bank = MemoryBank(size=memory_bank_size, gather_distributed=gather_distributed)
        self.gather_distributed = gather_distributed
        self.chunk_rows = check_chunk_rows(chunk_rows)

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """NT-Xent loss of two batches of projections.

        Args:
            out0: (N, D) projections of the first view (N >= 1), any floating dtype.
            out1: (N, D) projections of the second view: row i is out0 row i's positive. A
                different floating dtype is promoted with out0's (torch.promote_types). With a
                memory bank, out1 is enqueued after the loss when out0 requires grad.

        Returns:
            0-d tensor, the mean over rows of -log softmax of the positive logit; float32
            (float64 when an input is float64). Each input's gradient has its own dtype.
        """
        check_pair(out0, out1, "out0", "out1")
        out0, out1 = promote_floating("NTXentLoss", (("out0", out0), ("out1", out1)))
        scale = 1.0 / self.temperature
        out0 = F.normalize(out0, dim=1)
        out1 = F.normalize(out1, dim=1)
        acc = torch.float64 if out0.dtype == torch.float64 else torch.float32
        positive = scale * (out0.to(acc) * out1.to(acc)).sum(1)

        # Each row's loss is log(1 + sum_neg exp(l_neg - l_pos)) = softplus(LSE_neg - l_pos),
        # with the positive left out of the log-sum-exp: LSE(all) - l_pos would cancel to
        # nothing when the positive dominates (low temperature, confident positives).
        negatives = self.memory_bank.negatives(out1)
        if negatives is not None:
            lse_bank, _ = logsumexp_logits(out0, negatives.to(out0), scale,
                                           chunk_rows=self.chunk_rows)
            loss = F.softplus(lse_bank - positive).mean()
            if out0.requires_grad:
                self.memory_bank.enqueue(out1)
            return loss

        n = out0.shape[0]
        if not (self.gather_distributed and is_distributed()):
            # Keys are the queries: the symmetric op forms only half of the logit tiles.
            lse_neg = logsumexp_self_logits(torch.cat([out0, out1]), scale, self.chunk_rows,
                                            pair_offset=n)
            return F.softplus(lse_neg - positive.repeat(2)).mean()
        rank, world = dist.get_rank(), dist.get_world_size()
        keys = torch.cat([all_gather_with_grad(out0), all_gather_with_grad(out1)])
        own = torch.arange(n, device=out0.device) + rank * n
        self_column = torch.cat([own, own + n * world])
        positive_column = torch.cat([own + n * world, own])
        lse_neg, _ = logsumexp_logits(torch.cat([out0, out1]), keys, scale, self_column,
                                      chunk_rows=self.chunk_rows, positive_column=positive_column)
        return F.softplus(lse_neg - positive.repeat(2)).mean()
