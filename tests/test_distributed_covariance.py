"""gather_distributed=True for VICRegLoss and BarlowTwinsLoss with 2 and 3 gloo processes.

Contract: the mean over ranks of the loss equals the single-process loss on the concatenated
batch, and each rank's input gradient divided by the world size (DDP's averaging) equals the
single-process gradient of its slice."""
import pytest
import torch

import jem_fast
from jem_fast.reference import barlow_twins_loss_reference, vicreg_loss_reference

from conftest import make_pair
from distributed_utils import assert_equals_single_process, loss_and_grads_on_slice, run_gloo

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
        results.append(loss_and_grads_on_slice(_make_loss(name, route), z_a, z_b, rank, ROWS_PER_RANK))
    return results


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_gather_distributed_equals_single_process(world):
    per_rank = run_gloo(_rank_step, world)
    for i, (name, route, dim) in enumerate(CASES):
        z_a, z_b = make_pair(ROWS_PER_RANK * world, dim, seed=dim)
        assert_equals_single_process([r[i] for r in per_rank], _reference(name), z_a, z_b,
                                     ROWS_PER_RANK, f"{name}/{route}")


def test_gather_distributed_without_process_group_is_local():
    z_a, z_b = make_pair(6, 4, seed=1)
    for name in ("vicreg", "barlow_twins"):
        torch.testing.assert_close(_make_loss(name, "auto")(z_a, z_b), _reference(name)(z_a, z_b))
