"""jem_fast.ops.sinkhorn_knopp: SwAV's Sinkhorn-Knopp in the log domain, against the float64
references (the official algorithm, and its log-domain form for extreme inputs), lightly's
`sinkhorn` where importable, low precision, odd shapes, the step ops, compile and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

import jem_fast  # noqa: F401
from jem_fast.ops import sinkhorn_knopp
from jem_fast.reference import sinkhorn_knopp_log_reference, sinkhorn_knopp_reference

from conftest import DEVICES


def prototype_scores(B, K, D=16, dtype=torch.float64, device="cpu", seed=0):
    """Cosine similarities of normalized features and prototypes, as SwAV feeds them."""
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(K, D, generator=g, dtype=torch.float64), dim=1)
    return (z @ c.T).to(device=device, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,K", [(1, 1), (1, 7), (37, 1), (37, 11), (300, 257), (64, 3000)])
@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_matches_reference_float64(device, B, K, iterations):
    S = prototype_scores(B, K, device=device)
    got = sinkhorn_knopp(S, 0.05, iterations)
    ref = sinkhorn_knopp_reference(S.cpu(), 0.05, iterations)
    assert got.dtype == torch.float64 and got.shape == (B, K)
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-10, atol=1e-12)
    if iterations > 0:  # SwAV's definition: every row of Q sums to 1
        torch.testing.assert_close(got.sum(1).cpu(), torch.ones(B, dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
def test_columns_carry_equal_mass_after_many_iterations(device):
    S = prototype_scores(512, 48, device=device)
    Q = sinkhorn_knopp(S, 0.05, 200)
    torch.testing.assert_close(Q.sum(0).cpu(), torch.full((48,), 512 / 48, dtype=torch.float64),
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_scores_compute_in_float32(device, dtype):
    S = prototype_scores(200, 97, dtype=dtype, device=device, seed=3)
    got = sinkhorn_knopp(S, 0.05, 3)
    assert got.dtype == torch.float32
    ref = sinkhorn_knopp_reference(S.double().cpu(), 0.05, 3)  # same rounded inputs
    # float32 logits of magnitude 1/eps = 20: relative error ~ 20 * 2^-24 per exp, a few steps.
    torch.testing.assert_close(got.double().cpu(), ref, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("epsilon,magnitude", [(0.01, 10.0), (0.001, 1.0), (0.005, 30.0)])
def test_extreme_epsilon_stays_finite_and_correct(device, epsilon, magnitude):
    """exp(S / eps) overflows float32 (and float64 at eps=0.001 * 30): the official code and
    lightly return inf/NaN here. The log-domain op matches the float64 log-domain oracle."""
    g = torch.Generator().manual_seed(1)
    S = (magnitude * torch.randn(96, 40, generator=g, dtype=torch.float64))
    got = sinkhorn_knopp(S.float().to(device), epsilon, 3).double().cpu()
    assert torch.isfinite(got).all()
    ref = sinkhorn_knopp_log_reference(S.float().double(), epsilon, 3)
    # float32 logits of magnitude |S| / eps ~ 1e3-3e4: absolute logit error ~ that * 2^-24.
    logit_err = magnitude / epsilon * 2 ** -24 * 8
    torch.testing.assert_close(got, ref, rtol=logit_err, atol=1e-6)
    torch.testing.assert_close(got.sum(1), torch.ones(96, dtype=torch.float64), rtol=0,
                               atol=logit_err)
    # float64 too: the exact column potentials of prototypes far from every sample
    got64 = sinkhorn_knopp(S.to(device), epsilon, 3).cpu()
    torch.testing.assert_close(got64, sinkhorn_knopp_log_reference(S, epsilon, 3), rtol=1e-9,
                               atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_scores(device):
    S = prototype_scores(64, 50, device=device).T.contiguous().T  # transposed strides
    assert not S.is_contiguous()
    torch.testing.assert_close(sinkhorn_knopp(S, 0.05, 3).cpu(),
                               sinkhorn_knopp_reference(S.cpu(), 0.05, 3))
    S2 = prototype_scores(64, 100, device=device)[:, ::2]
    torch.testing.assert_close(sinkhorn_knopp(S2, 0.05, 3).cpu(),
                               sinkhorn_knopp_reference(S2.cpu(), 0.05, 3))


def test_matches_lightly():
    swav = pytest.importorskip("lightly.loss.swav_loss")
    S = prototype_scores(256, 300, dtype=torch.float32, seed=4)
    for iterations in (0, 3):
        torch.testing.assert_close(sinkhorn_knopp(S, 0.05, iterations),
                                   swav.sinkhorn(S, iterations=iterations, epsilon=0.05),
                                   rtol=1e-4, atol=1e-6)


def test_step_ops_compose_to_the_fused_op():
    """The distributed loop (column stats merged across ranks, row potential, plan) is built
    from these ops: on one rank it must equal the fused op."""
    S = prototype_scores(45, 19, seed=5)
    ops = torch.ops.jem_fast
    f = None
    for _ in range(3):
        stats = ops.sinkhorn_column_stats(S, 20.0, f)
        g = -(stats[0] + stats[1].log()) - math.log(19)
        f = ops.sinkhorn_row_potential(S, 20.0, g, math.log(45))
    Q = ops.sinkhorn_plan(S, 20.0, f, g, 45.0)
    torch.testing.assert_close(Q, sinkhorn_knopp(S, 0.05, 3))


def test_opcheck():
    S = prototype_scores(23, 9, dtype=torch.float32)
    torch.library.opcheck(torch.ops.jem_fast.sinkhorn_knopp.default, (S, 0.05, 3, True))
    f = torch.zeros(23, dtype=torch.float64)  # potentials are float64 for every score dtype
    g = torch.zeros(9, dtype=torch.float64)
    torch.library.opcheck(torch.ops.jem_fast.sinkhorn_column_stats.default, (S, 20.0, f))
    torch.library.opcheck(torch.ops.jem_fast.sinkhorn_row_potential.default, (S, 20.0, g, 3.0))
    torch.library.opcheck(torch.ops.jem_fast.sinkhorn_plan.default, (S, 20.0, f, g, 23.0))


def test_compile_fullgraph():
    S = prototype_scores(40, 30, dtype=torch.float32)
    fn = torch.compile(lambda s: sinkhorn_knopp(s, 0.05, 3) * 2.0, fullgraph=True)
    torch.testing.assert_close(fn(S), 2.0 * sinkhorn_knopp(S, 0.05, 3))


def test_no_gradient_flows():
    S = prototype_scores(8, 5).requires_grad_()
    Q = sinkhorn_knopp(S)
    assert not Q.requires_grad


@pytest.mark.parametrize("bad,match", [
    (lambda: sinkhorn_knopp(torch.randn(3, 4, 5)), "2-D"),
    (lambda: sinkhorn_knopp(torch.randn(0, 4)), "non-empty"),
    (lambda: sinkhorn_knopp(torch.randn(4, 0)), "non-empty"),
    (lambda: sinkhorn_knopp(torch.ones(4, 3, dtype=torch.int64)), "floating-point"),
    (lambda: sinkhorn_knopp(torch.randn(4, 3), epsilon=0.0), "epsilon"),
    (lambda: sinkhorn_knopp(torch.randn(4, 3), epsilon=float("nan")), "epsilon"),
    (lambda: sinkhorn_knopp(torch.randn(4, 3), iterations=-1), "iterations"),
    (lambda: sinkhorn_knopp("scores"), "torch.Tensor"),
])
def test_bad_input(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bad()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_scores_raise(value):
    S = prototype_scores(10, 6, dtype=torch.float32)
    S[3, 2] = value
    with pytest.raises(RuntimeError, match="NaN or"):
        sinkhorn_knopp(S)
    assert sinkhorn_knopp(S, check_finite=False).shape == (10, 6)  # documented opt-out


def test_op_rejects_bad_potentials():
    S = prototype_scores(10, 6, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="col_potential"):
        torch.ops.jem_fast.sinkhorn_row_potential(S, 20.0, torch.zeros(5, dtype=torch.float64),
                                                  1.0)
    with pytest.raises(RuntimeError, match="row_potential must be float64"):
        torch.ops.jem_fast.sinkhorn_plan(S, 20.0, torch.zeros(10),
                                         torch.zeros(6, dtype=torch.float64), 10.0)
    with pytest.raises(RuntimeError, match="col_potential must be float64"):
        torch.ops.jem_fast.sinkhorn_row_potential(S, 20.0, torch.zeros(6), 1.0)
