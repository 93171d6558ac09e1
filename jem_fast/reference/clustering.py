"""References of the clustering losses: SwAV's Sinkhorn-Knopp and loss (as in the official code
and lightly), DINO's loss with centering. Plain formulas, any dtype (the tests run float64)."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def sinkhorn_knopp_reference(scores: torch.Tensor, epsilon: float = 0.05,
                             iterations: int = 3) -> torch.Tensor:
    """SwAV's algorithm as written (Q = exp(S / eps)^T, total, then prototype / sample
    normalizations), with one max subtraction before the exp: it cancels in the first
    normalization and keeps the reference finite wherever exp(S / eps - max) does not underflow."""
    logits = scores / epsilon
    Q = torch.exp(logits - logits.max()).t()
    Q = Q / Q.sum()
    K, B = Q.shape
    for _ in range(iterations):
        Q = Q / Q.sum(dim=1, keepdim=True)
        Q = Q / K
        Q = Q / Q.sum(dim=0, keepdim=True)
        Q = Q / B
    return (Q * B).t()


@torch.no_grad()
def sinkhorn_knopp_log_reference(scores: torch.Tensor, epsilon: float = 0.05,
                                 iterations: int = 3) -> torch.Tensor:
    """The same iterations in the log domain (log Q normalized by logsumexp): the oracle for
    extreme epsilon / score magnitudes where any linear-domain form underflows."""
    log_q = (scores / epsilon).t()
    log_q = log_q - torch.logsumexp(log_q.flatten(), dim=0)
    K, B = log_q.shape
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(K)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(B)
    return (torch.exp(log_q) * B).t()


def swav_loss_reference(high_resolution_outputs: Sequence[torch.Tensor],
                        low_resolution_outputs: Sequence[torch.Tensor],
                        queue_outputs: Optional[Sequence[torch.Tensor]] = None,
                        temperature: float = 0.1, sinkhorn_iterations: int = 3,
                        sinkhorn_epsilon: float = 0.05) -> torch.Tensor:
    """SwAV multi-crop loss: codes of every high-resolution crop (with its queue rows appended,
    then dropped) predicted from every other crop; averaged over the other crops and the
    high-resolution crops."""
    crops = list(high_resolution_outputs) + list(low_resolution_outputs)
    loss = 0.0
    for i, z in enumerate(high_resolution_outputs):
        with torch.no_grad():
            s = z.detach()
            if queue_outputs is not None:
                s = torch.cat((s, queue_outputs[i].detach()))
            q = sinkhorn_knopp_reference(s, sinkhorn_epsilon, sinkhorn_iterations)[: z.shape[0]]
        sub = 0.0
        for v, x in enumerate(crops):
            if v != i:
                sub = sub - torch.mean(torch.sum(q * F.log_softmax(x / temperature, dim=1), dim=1))
        loss = loss + sub / (len(crops) - 1)
    return loss / len(high_resolution_outputs)


def dino_loss_reference(teacher_out: Sequence[torch.Tensor], student_out: Sequence[torch.Tensor],
                        center: torch.Tensor, teacher_temp: float, student_temp: float,
                        center_momentum: float = 0.9):
    """(loss, new_center) of DINO: teacher softmax with centering and sharpening (no gradient),
    cross-entropy over every (teacher, student) pair with different crop index, summed and
    divided by (pairs x batch); center <- m center + (1 - m) mean of the teacher rows."""
    teacher = torch.stack([t.detach() for t in teacher_out])
    p = F.softmax((teacher - center.reshape(1, 1, -1)) / teacher_temp, dim=-1)
    log_s = F.log_softmax(torch.stack(list(student_out)) / student_temp, dim=-1)
    terms = -torch.einsum("tbd,sbd->ts", p, log_s)
    mask = torch.ones_like(terms)
    n = min(terms.shape)
    mask[range(n), range(n)] = 0
    pairs = terms.numel() - n
    loss = (terms * mask).sum() / (pairs * teacher.shape[1])
    batch_center = teacher.mean(dim=(0, 1))
    new_center = center.reshape(-1) * center_momentum + batch_center * (1 - center_momentum)
    return loss, new_center
