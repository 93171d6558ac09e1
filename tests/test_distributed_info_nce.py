"""gather_distributed=True for NTXentLoss and InfoNCELoss with 2 and 3 gloo processes: negatives
from every rank; the mean over ranks of the loss equals the single-process loss on the
concatenated batch, and each rank's gradient / world size (DDP's averaging) equals the
single-process gradient of its slice."""
import pytest
import torch

import jem_fast
from jem_fast.reference import info_nce_loss_reference, ntxent_loss_reference

from conftest import make_pair
from distributed_utils import assert_equals_single_process, loss_and_grads_on_slice, run_gloo

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
    z_a, z_b = make_pair(ROWS_PER_RANK * world, 6, seed=7)
    return [loss_and_grads_on_slice(_make(name, kwargs), z_a, z_b, rank, ROWS_PER_RANK)
            for name, kwargs, _ in CASES]


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_gather_distributed_equals_single_process(world):
    per_rank = run_gloo(_rank_step, world)
    z_a, z_b = make_pair(ROWS_PER_RANK * world, 6, seed=7)
    for i, (name, kwargs, reference) in enumerate(CASES):
        assert_equals_single_process([r[i] for r in per_rank], reference, z_a, z_b,
                                     ROWS_PER_RANK, f"{name} {kwargs}")


def _enqueue_step(rank, world):
    from jem_fast.nn import MemoryBank
    bank = MemoryBank(size=(10, 3), gather_distributed=True)
    keys = torch.full((2, 3), float(rank))
    bank.enqueue(keys)
    return {"bank": bank.bank.clone(), "ptr": int(bank.bank_ptr)}


@pytest.mark.distributed
def test_memory_bank_enqueues_keys_of_every_rank():
    per_rank = run_gloo(_enqueue_step, 3)
    expected = torch.arange(3.0).repeat_interleave(2)[:, None].expand(6, 3)
    for r in per_rank:
        torch.testing.assert_close(r["bank"][:6], expected)
        assert r["ptr"] == 6
