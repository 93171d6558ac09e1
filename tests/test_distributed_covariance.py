"""gather_distributed=True for VICRegLoss and BarlowTwinsLoss with 2 and 3 gloo processes.

Contract: the mean over ranks of the loss equals the single-process loss on the concatenated
batch, and each rank's input gradient divided by the world size (DDP's averaging) equals the
single-process gradient of its slice."""
import pytest
import torch

import jem_fast
from jem_fast.reference import barlow_twins_loss_reference, vicreg_loss_reference

from conftest import make_pair
from distributed_utils import run_gloo

ROWS_PER_RANK = 5
CASES = [("vicreg", "gram", 11), ("vicreg", "covariance", 3), ("barlow_twins", "gram", 17),
         ("barlow_twins", "covariance", 4)]


def _make_loss(name, route):
    if name == "vicreg":
        return jem_fast.VICRegLoss(gather_distributed=True, route=route)
    return jem_fast.BarlowTwinsLoss(gather_distributed=True, route=route)


def _reference(name):
    return vicreg_loss_reference if name == "vicreg" else barlow_twins_loss_reference


def _rank_step(rank, world):
    results = []
    for name, route, dim in CASES:
        z_a, z_b = make_pair(ROWS_PER_RANK * world, dim, seed=dim)
        rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        a = z_a.detach()[rows].clone().requires_grad_()
        b = z_b.detach()[rows].clone().requires_grad_()
        loss = _make_loss(name, route)(a, b)
        loss.backward()
        results.append({"loss": loss.detach(), "grad_a": a.grad, "grad_b": b.grad})
    return results


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_gather_distributed_equals_single_process(world):
    per_rank = run_gloo(_rank_step, world)
    for i, (name, route, dim) in enumerate(CASES):
        z_a, z_b = make_pair(ROWS_PER_RANK * world, dim, seed=dim)
        ref = _reference(name)(z_a, z_b)
        ref_a, ref_b = torch.autograd.grad(ref, (z_a, z_b))
        losses = torch.stack([r[i]["loss"] for r in per_rank])
        torch.testing.assert_close(losses.mean(), ref.detach(), msg=f"{name}/{route} value")
        for rank, r in enumerate(per_rank):
            rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
            torch.testing.assert_close(r[i]["grad_a"] / world, ref_a[rows],
                                       msg=f"{name}/{route} rank {rank} grad z_a")
            torch.testing.assert_close(r[i]["grad_b"] / world, ref_b[rows],
                                       msg=f"{name}/{route} rank {rank} grad z_b")


def test_gather_distributed_without_process_group_is_local():
    z_a, z_b = make_pair(6, 4, seed=1)
    for name in ("vicreg", "barlow_twins"):
        torch.testing.assert_close(_make_loss(name, "auto")(z_a, z_b), _reference(name)(z_a, z_b))
