"""NegativeCosineSimilarity (BYOL, SimSiam) and the jem_fast::cosine_similarity_rows op against
the float64 reference (F.cosine_similarity, lightly's formula), gradcheck, opcheck,
torch.compile, low precision, odd shapes, torch's eps semantics and lightly itself."""
import pytest
import torch
import torch.nn.functional as F

import jem_fast
from jem_fast.losses import NegativeCosineSimilarity, negative_cosine_similarity, symmetric_negative_cosine
from jem_fast.ops import cosine_similarity_rows
from jem_fast.reference import (byol_loss_reference, negative_cosine_reference,
                                symmetric_negative_cosine_reference)

from conftest import (DEVICES, assert_compiled_matches_reference,
                      assert_low_precision_within_budget, make_pair, value_and_grads)

SHAPES = [(1, 1), (1, 7), (5, 1), (2, 3), (17, 16), (33, 65), (64, 1030), (3, 2500)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,d", SHAPES)
def test_op_matches_reference_value_and_grads(n, d, device):
    x0, x1 = make_pair(n, d, device=device, seed=n * 31 + d)
    w = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(d)).to(device)
    mine = value_and_grads(lambda a, b: cosine_similarity_rows(a, b), x0, x1, w)
    ref = value_and_grads(lambda a, b: F.cosine_similarity(a, b, dim=1, eps=1e-8), x0, x1, w)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_matches_reference(dtype, device):
    x0, x1 = make_pair(37, 129, dtype=dtype, device=device, seed=3)
    mine = value_and_grads(NegativeCosineSimilarity(), x0, x1)
    ref = value_and_grads(negative_cosine_reference, x0.double(), x1.double())
    assert mine[0].dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else {}
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a.double(), b, **tol)


def test_gradcheck_and_opcheck():
    x0, x1 = make_pair(6, 5, seed=1)
    assert torch.autograd.gradcheck(lambda a, b: cosine_similarity_rows(a, b), (x0, x1))
    # A larger eps that clamps no row (below eps torch's gradient, which jem_fast matches, is not
    # the derivative of the clamped function: see test_eps_semantics_match_torch...).
    assert torch.autograd.gradcheck(lambda a, b: cosine_similarity_rows(a, b, 0.05), (x0, x1))
    assert torch.autograd.gradcheck(NegativeCosineSimilarity(dim=0), (x0, x1))
    for args in [(x0, x1, 1e-8), (x0.float(), x1.float(), 1e-8), (x0.detach(), x1, 0.3),
                 (x0.half().detach().requires_grad_(), x1.half().detach(), 1e-8),
                 (x0.bfloat16().detach().requires_grad_(), x1.bfloat16().detach().requires_grad_(), 1e-8)]:
        torch.library.opcheck(torch.ops.jem_fast.cosine_similarity_rows, args)


def test_only_needed_gradients_are_computed():
    x0, x1 = make_pair(8, 4, seed=2)
    loss = NegativeCosineSimilarity()(x0, x1.detach())
    (g0,) = torch.autograd.grad(loss, (x0,))
    ref = torch.autograd.grad(negative_cosine_reference(x0, x1.detach()), (x0,))[0]
    torch.testing.assert_close(g0, ref)
    # Backward op directly: an unneeded gradient is an empty tensor, never computed.
    cos, norms = torch.ops.jem_fast.cosine_similarity_rows(x0.detach(), x1.detach(), 1e-8)
    g0, g1 = torch.ops.jem_fast.cosine_similarity_rows_backward(
        torch.ones(8, dtype=torch.float64), x0.detach(), x1.detach(), cos, norms, 1e-8, True, False)
    assert g0.shape == (8, 4) and g1.numel() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("eps", [1e-8, 1e-2, 0.5])
def test_eps_semantics_match_torch_for_small_and_zero_rows(eps, device):
    # torch 2.x: each norm clamped to eps separately, the gradient flows through the unclamped
    # norm (the clamp is done under no_grad). Rows: normal, tiny x0, tiny x1, both tiny, zero x0.
    x0, x1 = make_pair(6, 5, seed=4)
    with torch.no_grad():
        x0[1] *= 1e-4
        x1[2] *= 1e-4
        x0[3] *= 1e-3
        x1[3] *= 1e-3
        x0[4] = 0.0
        x1[5] = 0.0
    x0, x1 = x0.detach().to(device).requires_grad_(), x1.detach().to(device).requires_grad_()
    w = torch.arange(1.0, 7.0, dtype=torch.float64, device=device)
    mine = value_and_grads(lambda a, b: cosine_similarity_rows(a, b, eps), x0, x1, w)
    ref = value_and_grads(lambda a, b: F.cosine_similarity(a, b, dim=1, eps=eps), x0, x1, w)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)
    assert mine[0][4] == 0 and torch.isfinite(mine[1]).all() and torch.isfinite(mine[2]).all()


def test_tiny_norms_do_not_overflow_in_float32():
    # Norms ~1e-30: cos / n first keeps every intermediate in range (c0 * n0 would underflow).
    x0 = torch.full((2, 4), 1e-31, requires_grad=True)
    x1 = torch.randn(2, 4, requires_grad=True)
    out, g0, g1 = value_and_grads(lambda a, b: cosine_similarity_rows(a, b), x0, x1)
    ref = value_and_grads(lambda a, b: F.cosine_similarity(a, b, dim=1), x0.double(), x1.double())
    for a, b in zip((out, g0, g1), ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,dim", [((4, 6, 5), 1), ((4, 6, 5), -1), ((4, 6, 5), 0),
                                       ((3, 2, 4, 5), 2), ((7,), 0), ((1, 1, 1), 1)])
def test_any_rank_and_dim(shape, dim, device):
    g = torch.Generator().manual_seed(len(shape) * 10 + dim)
    x0 = torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_()
    x1 = torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_()
    mine = value_and_grads(NegativeCosineSimilarity(dim=dim), x0, x1)
    ref = value_and_grads(lambda a, b: negative_cosine_reference(a, b, dim=dim), x0, x1)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_broadcast_inputs(device):
    base0, base1 = make_pair(20, 12, device=device, seed=5)
    views = [
        (base0[::2], base1[1::2]),                    # strided rows
        (base0[:, ::3], base1[:, 1::3]),              # strided columns
        (base0.reshape(12, 20).T, base1.reshape(12, 20).T),  # transposed (column-major rows)
        (base0, base1[:1]),                           # broadcast (1, D) target
        (base0[:5].unsqueeze(1), base1[:3].unsqueeze(0)),  # (5, 1, D) x (1, 3, D) -> (5, 3)
    ]
    for a, b in views:
        dim = -1
        mine = value_and_grads(NegativeCosineSimilarity(dim=dim), a, b)
        ref = value_and_grads(lambda u, v: negative_cosine_reference(u, v, dim=dim), a, b)
        for x, y in zip(mine, ref):
            torch.testing.assert_close(x, y)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    assert_compiled_matches_reference(NegativeCosineSimilarity(), negative_cosine_reference,
                                      device, grad_atol=1e-6)
    # Rank 3, dim 2, and the symmetric helper, under one compiled graph.
    x0, x1 = make_pair(6, 20, dtype=torch.float32, device=device, seed=8)
    fn = torch.compile(lambda a, b: NegativeCosineSimilarity(dim=2)(a.view(2, 3, 20), b.view(2, 3, 20))
                       + symmetric_negative_cosine([(a, b), (b, a)]), fullgraph=True)
    ref = lambda a, b: (negative_cosine_reference(a.view(2, 3, 20), b.view(2, 3, 20), dim=2)
                        + symmetric_negative_cosine_reference(a, a, b, b))
    got = value_and_grads(fn, x0, x1)
    want = value_and_grads(ref, x0.double(), x1.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype, device):
    # float32 accumulation: against the float64 oracle on the same rounded inputs, the error is
    # at most twice that of torch's own cosine_similarity run in the input dtype (which rounds
    # every product and partial sum to 8-11 mantissa bits), or a 1e-3 relative floor.
    assert_low_precision_within_budget(lambda a, b: cosine_similarity_rows(a, b),
                                       lambda a, b: F.cosine_similarity(a, b, dim=1),
                                       64, 300, dtype, device)
    x0, x1 = make_pair(64, 300, dtype=dtype, device=device, seed=9)
    loss = NegativeCosineSimilarity()(x0, x1)
    assert loss.dtype == torch.float32
    g0, g1 = torch.autograd.grad(loss, (x0, x1))
    assert g0.dtype == dtype and g1.dtype == dtype
    ref = negative_cosine_reference(x0.detach().double().cpu(), x1.detach().double().cpu())
    assert abs(loss.item() - ref.item()) < 1e-5


def test_fp16_large_values_do_not_overflow():
    # |x|^2 summed over 256 entries of 300 is 2.3e7 > 65504: fine with float32 accumulation.
    x0 = torch.full((4, 256), 300.0, dtype=torch.float16, requires_grad=True)
    x1 = torch.full((4, 256), -300.0, dtype=torch.float16, requires_grad=True)
    loss = NegativeCosineSimilarity()(x0, x1)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss, (x0, x1)))


def test_symmetric_simsiam_and_byol_relations():
    p0, z0 = make_pair(9, 7, seed=10)
    p1, z1 = make_pair(9, 7, seed=11)
    mine = symmetric_negative_cosine([(p0, z1), (p1, z0)])
    ref = symmetric_negative_cosine_reference(p0, z0, p1, z1)
    torch.testing.assert_close(mine, ref)
    inputs = (p0, p1, z0, z1)
    g_mine = torch.autograd.grad(mine, inputs, allow_unused=True)
    g_ref = torch.autograd.grad(ref, inputs, allow_unused=True)
    torch.testing.assert_close(g_mine[:2], g_ref[:2])
    assert g_mine[2] is None and g_mine[3] is None  # targets detached
    # BYOL: per direction 2 - 2 cos, both directions summed = 4 + 4 * symmetric.
    byol = byol_loss_reference(p0, z1) + byol_loss_reference(p1, z0)
    sym = symmetric_negative_cosine([(p0, z1), (p1, z0)])
    torch.testing.assert_close(byol, 4 + 4 * sym)
    torch.testing.assert_close(byol_loss_reference(p0, z1), 2 + 2 * NegativeCosineSimilarity()(p0, z1.detach()))
    torch.testing.assert_close(torch.autograd.grad(byol, (p0,))[0],
                               4 * torch.autograd.grad(sym, (p0,))[0])


def test_matches_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    for shape, dim, eps in [((12, 16), 1, 1e-8), ((3, 5, 4), 1, 1e-8), ((3, 5, 4), 2, 0.1)]:
        g = torch.Generator().manual_seed(sum(shape))
        x0 = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
        x1 = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
        with torch.no_grad():
            x0.view(-1)[:shape[-1]] *= 1e-3  # a row below eps in some cases
        mine = value_and_grads(NegativeCosineSimilarity(dim, eps), x0, x1)
        theirs = value_and_grads(lightly_loss.NegativeCosineSimilarity(dim, eps), x0, x1)
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b)
    x0, x1 = make_pair(10, 32, dtype=torch.float32, seed=12)
    mine = value_and_grads(NegativeCosineSimilarity(), x0, x1)
    theirs = value_and_grads(lightly_loss.NegativeCosineSimilarity(), x0, x1)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_rejects_bad_inputs():
    loss_fn = NegativeCosineSimilarity()
    with pytest.raises(ValueError, match=r"x0 and x1 must have the same shape or broadcast.*\(4, 3\).*\(5, 3\)"):
        loss_fn(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="empty batch"):
        loss_fn(torch.randn(0, 3), torch.randn(0, 3))
    with pytest.raises(ValueError, match="empty along dim=1"):
        loss_fn(torch.randn(3, 0), torch.randn(3, 0))
    with pytest.raises(ValueError, match="dim=1 is out of range"):
        loss_fn(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="at least one dimension"):
        loss_fn(torch.tensor(1.0), torch.tensor(2.0))
    with pytest.raises(TypeError, match="x0 must be a floating-point"):
        loss_fn(torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3))
    with pytest.raises(TypeError, match="x1 must be a torch.Tensor"):
        loss_fn(torch.ones(4, 3), [[1.0] * 3] * 4)
    # mixed dtypes are promoted as F.cosine_similarity and lightly do (tests/test_mixed_dtypes.py)
    assert loss_fn(torch.ones(4, 3), torch.ones(4, 3, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError, match="eps"):
        NegativeCosineSimilarity(eps=-1.0)
    with pytest.raises(ValueError, match="at least one"):
        symmetric_negative_cosine([])
    with pytest.raises(ValueError, match=r"pairs\[0\] must be a \(prediction, target\) pair"):
        symmetric_negative_cosine([(torch.randn(2, 3),)])
    # The op's own checks (TORCH_CHECK), reached without the module.
    op = torch.ops.jem_fast.cosine_similarity_rows
    with pytest.raises(RuntimeError, match="x0 must be 2-D"):
        op(torch.randn(4), torch.randn(4), 1e-8)
    with pytest.raises(RuntimeError, match="same shape"):
        op(torch.randn(4, 3), torch.randn(4, 2), 1e-8)
    with pytest.raises(RuntimeError, match="empty batch"):
        op(torch.randn(0, 3), torch.randn(0, 3), 1e-8)
    with pytest.raises(RuntimeError, match="same dtype"):
        op(torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64), 1e-8)
    with pytest.raises(RuntimeError, match="floating-point"):
        op(torch.ones(4, 3, dtype=torch.int32), torch.ones(4, 3, dtype=torch.int32), 1e-8)
    with pytest.raises(RuntimeError, match="eps must be finite and >= 0"):
        op(torch.randn(4, 3), torch.randn(4, 3), float("nan"))


def test_device_errors():
    if not torch.cuda.is_available():
        # No second device here: the device check is reached through the meta device.
        with pytest.raises((ValueError, RuntimeError), match="same device"):
            NegativeCosineSimilarity()(torch.randn(4, 3), torch.randn(4, 3, device="meta"))
        return
    with pytest.raises(ValueError, match="same device"):
        NegativeCosineSimilarity()(torch.randn(4, 3), torch.randn(4, 3, device="cuda"))
    if not jem_fast.build_info()["with_cuda"]:
        with pytest.raises(RuntimeError, match="Rebuild"):
            cosine_similarity_rows(torch.randn(4, 3, device="cuda"), torch.randn(4, 3, device="cuda"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_unaligned_and_odd_rows(dtype, device):
    # Rows whose length is not a multiple of the CUDA 16-byte pack, and a storage offset that
    # breaks pack alignment: the scalar-load path.
    big0, big1 = make_pair(50, 131, dtype=dtype, device=device, seed=13)
    for a, b in [(big0, big1), (big0[:, 1:129], big1[:, 1:129]), (big0[3:], big1[:-3])]:
        got = cosine_similarity_rows(a, b)
        want = F.cosine_similarity(a.double(), b.double(), dim=1)
        torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-6)
