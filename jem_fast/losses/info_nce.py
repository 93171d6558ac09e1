"""InfoNCELoss: the query-vs-key InfoNCE variants lightly does not have, on the memory-linear
jem_fast::info_nce_lse op: CLIP's symmetric loss, MoCo v3 (in-batch keys, 2 tau scaling),
MoCo v2 (positive + a negatives queue), and a learnable temperature."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..distributed import all_gather_with_grad, check_gather_available, is_distributed
from ..ops._common import check_devices, promote_floating
from ..ops.info_nce import check_chunk_rows, check_pair, check_temperature, logsumexp_logits


class InfoNCELoss(torch.nn.Module):
    """InfoNCE between queries and keys whose positives are the pairs (query_i, key_i).

    Args:
        temperature: initial/fixed temperature tau (logits = q . k / tau on normalized vectors).
        symmetric: CLIP-style (CE over rows + CE over columns) / 2; needs in-batch negatives and
            no extra negatives.
        in_batch_negatives: the other keys of the (global) batch are negatives (MoCo v3, CLIP).
            False: only the positive and `negatives` (MoCo v2).
        scale_loss_by_temperature: multiply the loss by 2 tau (MoCo v3's convention).
        learnable_temperature: learn the logit scale 1/tau (CLIP: initialized to 1/temperature,
            stored as its log, clamped to max_logit_scale); it receives its gradient.
        gather_distributed: keys (and, when symmetric, queries) of every rank are negatives;
            the loss and the DDP-averaged gradients equal the single-process result on the
            concatenated batch.
        chunk_rows: query rows per logits chunk (0: 64 MiB of float32 logits per chunk).

    forward(query, key, negatives=None): (N, D) each, negatives (M, D) (e.g. MemoryBank keys;
    normalized like the queries, no gradient is sent to them). Inputs of different floating
    dtypes are promoted to one (torch.promote_types: float16 with float32 computes in float32).
    Returns a 0-d loss, float32 (float64 when any input is float64).
    """

    def __init__(self, temperature: float = 0.07, symmetric: bool = False,
                 in_batch_negatives: bool = True, scale_loss_by_temperature: bool = False,
                 learnable_temperature: bool = False, max_logit_scale: float = 100.0,
                 gather_distributed: bool = False, chunk_rows: int = 0):
        super().__init__()
        temperature = check_temperature(temperature)
        check_gather_available(gather_distributed)
        if symmetric and not in_batch_negatives:
            raise ValueError("symmetric=True needs in_batch_negatives=True")
        self.temperature = temperature
        self.symmetric = symmetric
        self.in_batch_negatives = in_batch_negatives
        self.scale_loss_by_temperature = scale_loss_by_temperature
        self.max_logit_scale = max_logit_scale
        self.gather_distributed = gather_distributed
        self.chunk_rows = check_chunk_rows(chunk_rows)
        if learnable_temperature:
            self.log_logit_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        else:
            self.log_logit_scale = None

    def logit_scale(self) -> torch.Tensor | float:
        """Returns 1 / temperature: a float, or with learnable_temperature the differentiable
        0-d tensor exp(log_logit_scale) clamped to max_logit_scale."""
        if self.log_logit_scale is None:
            return 1.0 / self.temperature
        return self.log_logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, query: torch.Tensor, key: torch.Tensor,
                negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
        """InfoNCE loss of queries against keys (and extra negatives).

        Args:
            query: (N, D) query embeddings, any floating dtype.
            key: (N, D) key embeddings; key i is query i's positive.
            negatives: optional (M, D) extra negative keys (a queue of past keys, e.g.
                `MemoryBank.negatives(key)`); no gradient is sent to them.
            query, key and negatives of different floating dtypes are promoted to one
            (torch.promote_types); each input's gradient comes back in its own dtype.

        Returns:
            0-d tensor, the mean InfoNCE loss (symmetric: the mean of the row and column
            losses); float32 (float64 when any input is float64).
        """
        check_pair(query, key, "query", "key")
        if negatives is not None:
            query, key, negatives = promote_floating(
                "InfoNCELoss", (("query", query), ("key", key), ("negatives", negatives)))
        else:
            query, key = promote_floating("InfoNCELoss", (("query", query), ("key", key)))
        if negatives is not None:
            check_devices("InfoNCELoss", (("query", query), ("negatives", negatives)),
                          error=ValueError)
            if negatives.dim() != 2 or negatives.shape[1] != query.shape[1]:
                raise ValueError(f"negatives must be (num_negatives, {query.shape[1]}), got "
                                 f"{tuple(negatives.shape)}")
            if self.symmetric:
                raise ValueError("symmetric=True does not take extra negatives")
        elif not self.in_batch_negatives:
            raise ValueError("in_batch_negatives=False needs negatives (e.g. a MemoryBank's keys)")
        q = F.normalize(query, dim=1)
        k = F.normalize(key, dim=1)
        if negatives is not None:  # no gradient is sent to a queue of past keys
            negatives = F.normalize(negatives.detach().to(q.dtype), dim=1)
        scale = self.logit_scale()
        if isinstance(scale, torch.Tensor):
            # A learnable scale multiplies the queries, so it gets its gradient through autograd
            # and every logit (both directions) is scaled once; the op then runs with scale 1.
            q = q * scale.to(q.dtype)
            op_scale = 1.0
        else:
            op_scale = scale
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        positive = op_scale * (q.to(acc) * k.to(acc)).sum(1)

        # Each row's loss is log(1 + sum_neg exp(l_neg - l_pos)) = softplus(LSE_neg - l_pos): the
        # positive is left out of the log-sum-exps (positive_column), since LSE(all) - l_pos
        # would cancel to nothing when the positive dominates (low temperature, confident pairs).
        distributed = self.gather_distributed and is_distributed()
        if self.in_batch_negatives:
            n = q.shape[0]
            own = torch.arange(n, device=q.device)
            if distributed:
                own = own + dist.get_rank() * n
            keys = all_gather_with_grad(k) if distributed else k
            if self.symmetric and not distributed:
                lse_rows, lse_cols = logsumexp_logits(q, k, op_scale, with_columns=True,
                                                      chunk_rows=self.chunk_rows,
                                                      positive_column=own)
                loss = 0.5 * (F.softplus(lse_rows - positive).mean()
                              + F.softplus(lse_cols - positive).mean())
                return self._finish(loss, scale)
            lse, _ = logsumexp_logits(q, keys, op_scale, chunk_rows=self.chunk_rows,
                                      positive_column=own)
            if negatives is not None:
                lse_neg, _ = logsumexp_logits(q, negatives, op_scale,
                                              chunk_rows=self.chunk_rows)
                lse = torch.logaddexp(lse, lse_neg)
            loss = F.softplus(lse - positive).mean()
            if self.symmetric:  # distributed: columns are local keys against all queries
                queries = all_gather_with_grad(q)
                lse_k, _ = logsumexp_logits(k, queries, op_scale, chunk_rows=self.chunk_rows,
                                            positive_column=own)
                loss = 0.5 * (loss + F.softplus(lse_k - positive).mean())
            return self._finish(loss, scale)

        lse_neg, _ = logsumexp_logits(q, negatives, op_scale,
                                      chunk_rows=self.chunk_rows)
        loss = F.softplus(lse_neg - positive).mean()
        return self._finish(loss, scale)

    def _finish(self, loss: torch.Tensor, scale) -> torch.Tensor:
        if self.scale_loss_by_temperature:
            loss = loss * (2.0 / scale)
        return loss
