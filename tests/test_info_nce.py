"""InfoNCE family: the jem_fast::info_nce_lse op, NTXentLoss (SimCLR / MoCo memory bank) and
InfoNCELoss (CLIP symmetric, MoCo v2 queue, MoCo v3 scaling, learnable temperature) against the
float64 materialized references (jem_fast.reference.info_nce), lightly, gradcheck, opcheck and
torch.compile."""
import math

import pytest
import torch
import torch.nn.functional as F

import jem_fast
from jem_fast.nn import MemoryBank
from jem_fast.ops import logsumexp_logits, logsumexp_self_logits
from jem_fast.reference import info_nce_loss_reference, ntxent_loss_reference

from conftest import DEVICES, make_pair, value_and_grads

SHAPES = [(1, 1), (1, 4), (2, 1), (5, 3), (17, 1), (33, 16), (64, 7)]


def _lse_reference(q, k, scale, self_column=None):
    logits = scale * q @ k.T
    if self_column is not None:
        logits = logits.clone()
        rows = torch.arange(q.shape[0])[self_column >= 0]
        logits[rows, self_column[self_column >= 0]] = float("-inf")
    return torch.logsumexp(logits, 1), torch.logsumexp(logits, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk_rows", [0, 1, 3])
@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (5, 7, 3), (16, 9, 4), (33, 65, 8)])
def test_lse_op_matches_materialized(n, m, d, chunk_rows, device):
    g = torch.Generator().manual_seed(n * m + d)
    q = torch.randn(n, d, generator=g, dtype=torch.float64).to(device).requires_grad_()
    k = torch.randn(m, d, generator=g, dtype=torch.float64).to(device).requires_grad_()
    w_r = torch.randn(n, dtype=torch.float64, device=device)
    w_c = torch.randn(m, dtype=torch.float64, device=device)
    rows, cols = logsumexp_logits(q, k, 1.7, with_columns=True, chunk_rows=chunk_rows)
    ref_rows, ref_cols = _lse_reference(q, k, 1.7)
    torch.testing.assert_close(rows, ref_rows)
    torch.testing.assert_close(cols, ref_cols)
    got = torch.autograd.grad((rows * w_r).sum() + (cols * w_c).sum(), (q, k))
    want = torch.autograd.grad((ref_rows * w_r).sum() + (ref_cols * w_c).sum(), (q, k))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_lse_op_self_mask_and_fully_masked_row():
    q = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([0, -1, 4, 2])
    rows, _ = logsumexp_logits(q, k, 2.0, mask, chunk_rows=2)
    ref, _ = _lse_reference(q, k, 2.0, mask)
    torch.testing.assert_close(rows, ref)
    torch.testing.assert_close(torch.autograd.grad(rows.sum(), (q, k)),
                               torch.autograd.grad(ref.sum(), (q, k)))
    # One key, masked: an empty softmax gives -inf and no gradient (not NaN).
    q1 = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    rows, _ = logsumexp_logits(q1, q1.detach(), 1.0, torch.tensor([0]))
    assert rows.item() == float("-inf")
    (gq,) = torch.autograd.grad(rows.sum(), (q1,))
    assert torch.all(gq == 0)


def test_lse_op_gradcheck_and_opcheck():
    q = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([1, -1, 0, 5, 2])
    assert torch.autograd.gradcheck(lambda a, b: logsumexp_logits(a, b, 0.8, with_columns=True, chunk_rows=2), (q, k))
    assert torch.autograd.gradcheck(lambda a, b: logsumexp_logits(a, b, 3.0, mask)[0], (q, k))
    torch.library.opcheck(torch.ops.jem_fast.info_nce_lse, (q, k, 0.8, None, True, 2))
    torch.library.opcheck(torch.ops.jem_fast.info_nce_lse, (q.float(), k.float(), 2.0, mask, False, 0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tile_rows", [0, 1, 2, 5])
@pytest.mark.parametrize("n,d", [(2, 1), (7, 3), (16, 5), (33, 8)])
def test_self_lse_op_matches_materialized(n, d, tile_rows, device):
    g = torch.Generator().manual_seed(n + d)
    z = torch.randn(n, d, generator=g, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(n, dtype=torch.float64, device=device)
    lse = logsumexp_self_logits(z, 2.5, tile_rows)
    ref, _ = _lse_reference(z, z, 2.5, torch.arange(n, device=device))
    torch.testing.assert_close(lse, ref)
    torch.testing.assert_close(torch.autograd.grad((lse * w).sum(), z)[0],
                               torch.autograd.grad((ref * w).sum(), z)[0])


def test_self_lse_op_gradcheck_and_opcheck():
    z = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: logsumexp_self_logits(x, 1.3, 3), (z,))
    torch.library.opcheck(torch.ops.jem_fast.info_nce_self_lse, (z, 1.3, 3))
    torch.library.opcheck(torch.ops.jem_fast.info_nce_self_lse, (z.float(), 0.7, 0))
    with pytest.raises(RuntimeError, match="scale"):
        logsumexp_self_logits(z, 0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [0.01, 0.1, 0.5, 10.0])
@pytest.mark.parametrize("n,d", SHAPES)
def test_ntxent_matches_reference(n, d, temperature, device):
    out0, out1 = make_pair(n, d, device=device, seed=n * 10 + d)
    mine = value_and_grads(jem_fast.NTXentLoss(temperature, chunk_rows=3), out0, out1)
    ref = value_and_grads(lambda a, b: ntxent_loss_reference(a, b, temperature), out0, out1)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("temperature", [0.01, 0.07, 1.0])
@pytest.mark.parametrize("kwargs", [dict(), dict(symmetric=True), dict(scale_loss_by_temperature=True)])
@pytest.mark.parametrize("n,d", SHAPES)
def test_info_nce_in_batch_variants_match_reference(n, d, kwargs, temperature):
    q, k = make_pair(n, d, seed=n + 3 * d)
    mine = value_and_grads(jem_fast.InfoNCELoss(temperature, chunk_rows=4, **kwargs), q, k)
    ref = value_and_grads(lambda a, b: info_nce_loss_reference(a, b, temperature, **kwargs), q, k)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("in_batch", [True, False])
def test_info_nce_with_queue_matches_reference(in_batch):
    q, k = make_pair(9, 6, seed=2)
    queue = torch.randn(40, 6, dtype=torch.float64)
    mine = value_and_grads(lambda a, b: jem_fast.InfoNCELoss(0.2, in_batch_negatives=in_batch, chunk_rows=4)(a, b, queue), q, k)
    ref = value_and_grads(lambda a, b: info_nce_loss_reference(a, b, 0.2, negatives=F.normalize(queue, dim=1), in_batch_negatives=in_batch), q, k)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)


def test_learnable_temperature_gets_its_gradient():
    q, k = make_pair(8, 5, seed=4)
    loss_fn = jem_fast.InfoNCELoss(0.1, symmetric=True, learnable_temperature=True).double()
    loss = loss_fn(q, k)
    loss.backward()
    # d loss / d log_scale by finite differences of the reference.
    def ref(log_scale):
        return info_nce_loss_reference(q.detach(), k.detach(), 1.0 / math.exp(log_scale), symmetric=True)
    ls = math.log(10.0)
    numeric = (ref(ls + 1e-6) - ref(ls - 1e-6)) / 2e-6
    torch.testing.assert_close(loss_fn.log_logit_scale.grad, numeric, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(loss.detach(), ref(ls))


def test_ntxent_memory_bank_mode_matches_reference_and_updates():
    torch.manual_seed(0)
    loss_fn = jem_fast.NTXentLoss(0.2, memory_bank_size=(10, 4))
    bank0 = loss_fn.memory_bank.bank.clone()
    assert torch.allclose(bank0.norm(dim=1), torch.ones(10))
    out0, out1 = make_pair(6, 4, seed=5)
    mine = value_and_grads(loss_fn, out0, out1)
    ref = value_and_grads(lambda a, b: ntxent_loss_reference(a, b, 0.2, negatives=bank0.double()), out0, out1)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)
    # FIFO with lightly's wrap-around: 6 written at 0, pointer at 6; then 4 fit (6 + 6 >= 10).
    torch.testing.assert_close(loss_fn.memory_bank.bank[:6], F.normalize(out1.detach(), dim=1).float())
    assert int(loss_fn.memory_bank.bank_ptr) == 6
    loss_fn(out0, out1)
    assert int(loss_fn.memory_bank.bank_ptr) == 0
    # No update without gradient (evaluation).
    before = loss_fn.memory_bank.bank.clone()
    loss_fn(out0.detach(), out1.detach())
    torch.testing.assert_close(loss_fn.memory_bank.bank, before)


def test_memory_bank_module():
    bank = MemoryBank(size=4)  # dim from the first batch
    keys = torch.randn(3, 2)
    out, negatives = bank(keys, update=True)
    assert out is keys and negatives.shape == (4, 2)
    torch.testing.assert_close(bank.bank[:3], keys)
    with pytest.raises(ValueError, match="dim"):
        bank.negatives(torch.randn(1, 5))
    with pytest.raises(ValueError, match="memory bank size"):
        MemoryBank(size=(-1, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    out0, out1 = make_pair(10, 8, dtype=torch.float32, device=device, seed=6)
    for loss_fn, ref_fn in [(jem_fast.NTXentLoss(0.3), lambda a, b: ntxent_loss_reference(a, b, 0.3)),
                            (jem_fast.InfoNCELoss(0.1, symmetric=True), lambda a, b: info_nce_loss_reference(a, b, 0.1, symmetric=True))]:
        compiled = torch.compile(loss_fn, fullgraph=True)
        got = value_and_grads(compiled, out0, out1)
        want = value_and_grads(ref_fn, out0.double(), out1.double())
        for a, b in zip(got, want):
            torch.testing.assert_close(a.double(), b.to(a.device), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype, device):
    out0, out1 = make_pair(24, 16, dtype=dtype, device=device, seed=7)
    loss = jem_fast.NTXentLoss(0.1)(out0, out1)
    assert loss.dtype == torch.float32
    ga, gb = torch.autograd.grad(loss, (out0, out1))
    assert ga.dtype == dtype
    # The float64 oracle on the same rounded inputs; error dominated by the low-precision
    # normalization, which the reference in that dtype shares.
    ref = ntxent_loss_reference(out0.detach().double().cpu(), out1.detach().double().cpu(), 0.1)
    ref_lp = ntxent_loss_reference(out0.detach().float().cpu().to(dtype), out1.detach().float().cpu().to(dtype), 0.1)
    assert abs(loss.item() - ref.item()) <= max(2 * abs(ref_lp.double().item() - ref.item()), 1e-2)


def test_ntxent_large_batch_needs_no_n_by_n_memory():
    # 2N = 4096 rows: a float32 logits matrix would be 64 MiB; chunks of 64 rows use 1 MiB.
    out0, out1 = make_pair(2048, 8, dtype=torch.float32, seed=8)
    loss = jem_fast.NTXentLoss(0.5, chunk_rows=64)(out0, out1)
    ref = ntxent_loss_reference(out0.double(), out1.double(), 0.5)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)


def test_matches_lightly_ntxent():
    lightly_loss = pytest.importorskip("lightly.loss")
    out0, out1 = make_pair(12, 16, seed=9)
    mine = value_and_grads(jem_fast.NTXentLoss(0.3), out0, out1)
    ref = value_and_grads(lightly_loss.NTXentLoss(0.3), out0, out1)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)
    torch.manual_seed(1)
    theirs = lightly_loss.NTXentLoss(0.3, memory_bank_size=(20, 16))
    torch.manual_seed(1)
    ours = jem_fast.NTXentLoss(0.3, memory_bank_size=(20, 16))
    for step in range(3):  # lightly's bank is float32 and mixes no dtypes: float32 inputs
        a, b = make_pair(12, 16, dtype=torch.float32, seed=20 + step)
        for x, y in zip(value_and_grads(ours, a, b), value_and_grads(theirs, a, b)):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.memory_bank.bank, theirs.memory_bank.bank)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")])
def test_rejects_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        jem_fast.NTXentLoss(bad)
    with pytest.raises(ValueError, match="temperature"):
        jem_fast.InfoNCELoss(bad)


def test_rejects_bad_inputs():
    loss_fn = jem_fast.NTXentLoss()
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="empty batch"):
        loss_fn(torch.randn(0, 3), torch.randn(0, 3))
    with pytest.raises(TypeError, match="floating-point"):
        loss_fn(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="2-D"):
        loss_fn(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="negatives must be"):
        jem_fast.InfoNCELoss()(torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match="needs negatives"):
        jem_fast.InfoNCELoss(in_batch_negatives=False)(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(RuntimeError, match="same dimension"):
        logsumexp_logits(torch.randn(4, 3), torch.randn(5, 2), 1.0)
    with pytest.raises(RuntimeError, match="scale"):
        logsumexp_logits(torch.randn(4, 3), torch.randn(5, 3), -1.0)
    with pytest.raises(RuntimeError, match="self_column"):
        logsumexp_logits(torch.randn(4, 3), torch.randn(5, 3), 1.0, torch.zeros(3, dtype=torch.long))
