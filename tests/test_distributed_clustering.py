"""Distributed Sinkhorn-Knopp, SwaVLoss and DINOLoss with 2 and 3 gloo processes.

- sinkhorn_knopp(gather_distributed=True): each rank's rows of Q equal the single-process Q on
  the concatenated batch (prototype sums over all ranks), also with uneven rows per rank.
- SwaVLoss(sinkhorn_gather_distributed=True): mean of the per-rank losses equals the loss
  computed with globally normalized codes, gradients (DDP-averaged) equal the single-process ones.
- DINOLoss: the center update averages the teacher rows of every rank (all-reduce), so after a
  few steps every rank's center equals the single-process center on the concatenated batch.
"""
import pytest
import torch
import torch.nn.functional as F

import jem_fast
from jem_fast.ops import sinkhorn_knopp
from jem_fast.reference import dino_loss_reference, sinkhorn_knopp_reference

from distributed_utils import run_gloo

K = 13


def scores(rows, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(rows, 8, generator=g, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(K, 8, generator=torch.Generator().manual_seed(99),
                                dtype=torch.float64), dim=1)
    return scale * (z @ c.T)


def rows_of(world, uneven):
    return [3 + 2 * r for r in range(world)] if uneven else [5] * world


def _sinkhorn_step(rank, world, uneven, epsilon, scale):
    rows = rows_of(world, uneven)
    S = scores(sum(rows), 1, scale)
    start = sum(rows[:rank])
    mine = S[start:start + rows[rank]]
    return {it: sinkhorn_knopp(mine, epsilon, it, gather_distributed=True) for it in (0, 1, 3)}


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("uneven", [False, True])
def test_sinkhorn_gathered_equals_single_process(world, uneven):
    per_rank = run_gloo(_sinkhorn_step, world, uneven, 0.05, 1.0)
    S = scores(sum(rows_of(world, uneven)), 1)
    for it in (0, 1, 3):
        got = torch.cat([r[it] for r in per_rank])
        torch.testing.assert_close(got, sinkhorn_knopp_reference(S, 0.05, it), rtol=1e-10,
                                   atol=1e-12)


@pytest.mark.distributed
def test_sinkhorn_gathered_extreme_epsilon():
    per_rank = run_gloo(_sinkhorn_step, 2, True, 0.005, 10.0)
    S = scores(sum(rows_of(2, True)), 1, 10.0)
    got = torch.cat([r[3] for r in per_rank])
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, sinkhorn_knopp(S, 0.005, 3), rtol=1e-9, atol=1e-12)


ROWS = 4


def _swav_crops(world, seed):
    return [scores(ROWS * world, seed + i).requires_grad_() for i in range(4)]  # 2 high + 2 low


def _swav_step(rank, world):
    crops = _swav_crops(world, 10)
    mine = [c.detach()[rank * ROWS:(rank + 1) * ROWS].clone().requires_grad_() for c in crops]
    loss = jem_fast.SwaVLoss(sinkhorn_gather_distributed=True)(mine[:2], mine[2:])
    loss.sum().backward()
    return {"loss": loss.detach(), "grads": [m.grad for m in mine]}


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_swav_gathered_equals_single_process(world):
    per_rank = run_gloo(_swav_step, world)
    crops = _swav_crops(world, 10)
    high, low = crops[:2], crops[2:]
    # single process on the concatenated batch: codes normalized over every row
    codes = [sinkhorn_knopp_reference(h.detach(), 0.05, 3) for h in high]
    ref = sum(-(codes[i] * F.log_softmax(x / 0.1, 1)).sum(1).mean()
              for i in range(2) for v, x in enumerate(crops) if v != i) / 6
    grads = torch.autograd.grad(ref, crops)
    torch.testing.assert_close(torch.cat([r["loss"] for r in per_rank]).mean(), ref)
    for rank, r in enumerate(per_rank):
        for g_rank, g_ref in zip(r["grads"], grads):
            torch.testing.assert_close(g_rank / world, g_ref[rank * ROWS:(rank + 1) * ROWS])


def _dino_batch(world, step):
    g = torch.Generator().manual_seed(50 + step)
    teacher = [torch.randn(ROWS * world, K, generator=g, dtype=torch.float64) for _ in range(2)]
    student = [torch.randn(ROWS * world, K, generator=g, dtype=torch.float64) for _ in range(5)]
    return teacher, student


def _dino_step(rank, world):
    loss_fn = jem_fast.DINOLoss(output_dim=K, center_momentum=0.8).double()
    out = []
    for step in range(3):
        teacher, student = _dino_batch(world, step)
        sl = slice(rank * ROWS, (rank + 1) * ROWS)
        s_mine = [s[sl].clone().requires_grad_() for s in student]
        loss = loss_fn([t[sl] for t in teacher], s_mine, epoch=step)
        loss.backward()
        out.append({"loss": loss.detach(), "grads": [s.grad for s in s_mine],
                    "center": loss_fn.center.clone()})
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_dino_center_all_reduced_equals_single_process(world):
    per_rank = run_gloo(_dino_step, world)
    center = torch.zeros(K, dtype=torch.float64)
    for step in range(3):
        teacher, student = _dino_batch(world, step)
        student = [s.requires_grad_() for s in student]
        ref, center = dino_loss_reference(teacher, student, center, 0.04, 0.1, 0.8)
        grads = torch.autograd.grad(ref, student)
        losses = torch.stack([r[step]["loss"] for r in per_rank])
        torch.testing.assert_close(losses.mean(), ref)
        for rank, r in enumerate(per_rank):
            torch.testing.assert_close(r[step]["center"].reshape(-1), center)
            for g_rank, g_ref in zip(r[step]["grads"], grads):
                torch.testing.assert_close(g_rank / world, g_ref[rank * ROWS:(rank + 1) * ROWS])


def _dino_sk_step(rank, world):
    loss_fn = jem_fast.DINOLoss(output_dim=K, teacher_centering="sinkhorn_knopp").double()
    teacher, student = _dino_batch(world, 7)
    sl = slice(rank * ROWS, (rank + 1) * ROWS)
    return loss_fn([t[sl] for t in teacher], [s[sl] for s in student], teacher_temp=0.07)


@pytest.mark.distributed
def test_dino_sinkhorn_centering_uses_global_batch():
    per_rank = run_gloo(_dino_sk_step, 2)
    teacher, student = _dino_batch(2, 7)
    # DINOv2 concatenates the global crops per rank; globally that is the rank-major order
    rows = [torch.cat([t[r * ROWS:(r + 1) * ROWS] for t in teacher]) for r in range(2)]
    q = sinkhorn_knopp_reference(torch.cat(rows), 0.07, 3)
    losses = []
    for r in range(2):
        q_r = q[r * 2 * ROWS:(r + 1) * 2 * ROWS].split(ROWS)
        s_r = [s[r * ROWS:(r + 1) * ROWS] for s in student]
        losses.append(sum(-(q_r[t] * F.log_softmax(s_r[v] / 0.1, 1)).sum(1).mean()
                          for t in range(2) for v in range(5) if v != t) / 8)
    torch.testing.assert_close(torch.stack(per_rank), torch.stack(losses))
