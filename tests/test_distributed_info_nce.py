"""gather_distributed=True for NTXentLoss and InfoNCELoss with 2 and 3 gloo processes: negatives
from every rank; the mean over ranks of the loss equals the single-process loss on the
concatenated batch, and each rank's gradient / world size (DDP's averaging) equals the
single-process gradient of its slice."""
import pytest
import torch

import jem_fast
from jem_fast.reference import info_nce_loss_reference, ntxent_loss_reference

from conftest import make_pair
from distributed_utils import run_gloo

ROWS_PER_RANK = 4
CASES = [
    ("ntxent", {}, lambda a, b: ntxent_loss_reference(a, b, 0.3)),
    ("info_nce", {}, lambda a, b: info_nce_loss_reference(a, b, 0.3)),
    ("info_nce", {"symmetric": True}, lambda a, b: info_nce_loss_reference(a, b, 0.3, symmetric=True)),
]


def _make(name, kwargs):
    if name == "ntxent":
        return jem_fast.NTXentLoss(0.3, gather_distributed=True, chunk_rows=3)
    return jem_fast.InfoNCELoss(0.3, gather_distributed=True, chunk_rows=3, **kwargs)


def _rank_step(rank, world):
    results = []
    for name, kwargs, _ in CASES:
        z_a, z_b = make_pair(ROWS_PER_RANK * world, 6, seed=7)
        rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        a = z_a.detach()[rows].clone().requires_grad_()
        b = z_b.detach()[rows].clone().requires_grad_()
        loss = _make(name, kwargs)(a, b)
        loss.backward()
        results.append({"loss": loss.detach(), "grad_a": a.grad, "grad_b": b.grad})
    return results


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_gather_distributed_equals_single_process(world):
    per_rank = run_gloo(_rank_step, world)
    for i, (name, kwargs, reference) in enumerate(CASES):
        z_a, z_b = make_pair(ROWS_PER_RANK * world, 6, seed=7)
        ref = reference(z_a, z_b)
        ref_a, ref_b = torch.autograd.grad(ref, (z_a, z_b))
        losses = torch.stack([r[i]["loss"] for r in per_rank])
        torch.testing.assert_close(losses.mean(), ref.detach(), msg=f"{name} {kwargs} value")
        for rank, r in enumerate(per_rank):
            rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
            torch.testing.assert_close(r[i]["grad_a"] / world, ref_a[rows], msg=f"{name} {kwargs} rank {rank} grad a")
            torch.testing.assert_close(r[i]["grad_b"] / world, ref_b[rows], msg=f"{name} {kwargs} rank {rank} grad b")
