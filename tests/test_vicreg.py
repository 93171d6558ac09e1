"""VICReg: jem_fast::vicreg_forward/backward and jem_fast.VICRegLoss against the float64
reference formulas (jem_fast.reference.vicreg), lightly, gradcheck, opcheck and torch.compile."""
import inspect

import pytest
import torch

import jem_fast
from jem_fast.ops import vicreg_terms
from jem_fast.reference import vicreg_loss_reference, vicreg_terms_reference

from conftest import (DEVICES, assert_compiled_matches_reference,
                      assert_low_precision_within_budget, make_pair, value_and_grads)

SHAPES = [(2, 1), (2, 5), (3, 7), (7, 3), (5, 5), (16, 8), (8, 16), (33, 65), (65, 33), (130, 17)]
ROUTES = ["gram", "covariance", "auto"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("n,d", SHAPES)
def test_terms_and_gradients_match_reference_float64(n, d, route, device):
    z_a, z_b = make_pair(n, d, device=device, seed=n * 100 + d)
    w = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)
    out, ga, gb = value_and_grads(lambda a, b: vicreg_terms(a, b, route=route), z_a, z_b, w)
    ref, ra, rb = value_and_grads(vicreg_terms_reference, z_a, z_b, w)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ga, ra, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gb, rb, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("route", ["gram", "covariance"])
def test_gradcheck(route):
    z_a, z_b = make_pair(5, 7, seed=3)
    assert torch.autograd.gradcheck(lambda a, b: vicreg_terms(a, b, route=route), (z_a, z_b))


def test_hinge_inactive_and_active_columns():
    # Columns with std > 1 (hinge off) next to columns with std < 1 (hinge on).
    z_a, z_b = make_pair(9, 6, seed=4)
    scale = torch.tensor([3.0, 0.1, 2.0, 0.2, 1.5, 0.05], dtype=torch.float64)
    a, b = (z_a.detach() * scale).requires_grad_(), (z_b.detach() * scale).requires_grad_()
    out, ga, gb = value_and_grads(lambda x, y: vicreg_terms(x, y), a, b)
    ref, ra, rb = value_and_grads(vicreg_terms_reference, a, b)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


@pytest.mark.parametrize("route", ["gram", "covariance"])
def test_opcheck(route):
    z_a, z_b = make_pair(6, 9, seed=5)
    gram_route = route == "gram"
    torch.library.opcheck(torch.ops.jem_fast.vicreg_forward, (z_a, z_b, 1e-4, gram_route, True))
    z_a, z_b = make_pair(6, 9, dtype=torch.float32, seed=5)
    torch.library.opcheck(torch.ops.jem_fast.vicreg_forward, (z_a, z_b, 1e-4, gram_route, True))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    assert_compiled_matches_reference(jem_fast.VICRegLoss(), vicreg_loss_reference, device, grad_atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d", [(32, 96), (96, 32)])
def test_low_precision_accumulates_in_float32(dtype, n, d, device):
    assert_low_precision_within_budget(lambda a, b: vicreg_terms(a, b), vicreg_terms_reference, n, d, dtype, device)


def test_float32_large_offset_is_stable():
    # Column means far from zero: the shifted moments keep float32 accurate.
    z_a, z_b = make_pair(64, 48, seed=8, offset=1e4)
    ref = vicreg_terms_reference(z_a.detach(), z_b.detach())
    out = vicreg_terms(z_a.detach().float(), z_b.detach().float())
    torch.testing.assert_close(out.double(), ref, rtol=2e-3, atol=1e-4)


def test_non_contiguous_inputs():
    base_a, base_b = make_pair(40, 30, seed=9)
    a = base_a.detach().t().contiguous().t()[::2, 1:].requires_grad_()  # strided view
    b = base_b.detach()[::2, 1:].requires_grad_()
    assert not a.is_contiguous() and not b.is_contiguous()
    out, ga, gb = value_and_grads(lambda x, y: vicreg_terms(x, y), a, b)
    ref, ra, rb = value_and_grads(vicreg_terms_reference, a, b)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


def test_module_defaults_and_weights():
    sig = inspect.signature(jem_fast.VICRegLoss.__init__)
    assert sig.parameters["lambda_param"].default == 25.0
    assert sig.parameters["mu_param"].default == 25.0
    assert sig.parameters["nu_param"].default == 1.0
    assert sig.parameters["gather_distributed"].default is False
    assert sig.parameters["eps"].default == 1e-4
    z_a, z_b = make_pair(10, 12, seed=10)
    loss_fn = jem_fast.VICRegLoss(lambda_param=3.0, mu_param=5.0, nu_param=0.5, eps=1e-3)
    out = loss_fn(z_a, z_b)
    ref = vicreg_loss_reference(z_a, z_b, 3.0, 5.0, 0.5, 1e-3)
    torch.testing.assert_close(out, ref)
    terms = loss_fn.last_terms
    torch.testing.assert_close(torch.stack(list(terms)), vicreg_terms_reference(z_a, z_b, 1e-3))
    assert not terms.invariance.requires_grad


def test_matches_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    z_a, z_b = make_pair(24, 40, seed=11)
    ours = jem_fast.VICRegLoss()
    theirs = lightly_loss.VICRegLoss()
    mine, ma, mb = value_and_grads(ours, z_a, z_b)
    ref, ra, rb = value_and_grads(theirs, z_a, z_b)
    torch.testing.assert_close(mine, ref)
    torch.testing.assert_close(ma, ra)
    torch.testing.assert_close(mb, rb)
    ours_sig = inspect.signature(jem_fast.VICRegLoss.__init__).parameters
    for name, p in inspect.signature(lightly_loss.VICRegLoss.__init__).parameters.items():
        assert name in ours_sig and ours_sig[name].default == p.default, name


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, never a crash or a silent NaN.
# ---------------------------------------------------------------------------------------------
def test_rejects_wrong_rank():
    with pytest.raises((ValueError, RuntimeError), match="z_a must be 2-D"):
        vicreg_terms(torch.randn(4, 3, 2), torch.randn(4, 3, 2))
    with pytest.raises(RuntimeError, match="z_b must be 2-D"):
        torch.ops.jem_fast.vicreg_forward(torch.randn(4, 3), torch.randn(4), 1e-4, True, True)


def test_rejects_shape_mismatch():
    with pytest.raises(RuntimeError, match="z_a and z_b must have the same shape"):
        vicreg_terms(torch.randn(4, 3), torch.randn(5, 3))


@pytest.mark.parametrize("n", [0, 1])
def test_rejects_too_small_batch(n):
    with pytest.raises(RuntimeError, match="at least 2 rows"):
        vicreg_terms(torch.randn(n, 3), torch.randn(n, 3))


def test_rejects_integer_and_mixed_dtypes():
    with pytest.raises(RuntimeError, match="z_a must be a floating-point tensor"):
        vicreg_terms(torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="same dtype"):
        vicreg_terms(torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64))


def test_rejects_bad_route_and_eps():
    with pytest.raises(ValueError, match="route"):
        vicreg_terms(torch.randn(4, 3), torch.randn(4, 3), route="fast")
    with pytest.raises(ValueError, match="eps"):
        jem_fast.VICRegLoss(eps=-1.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad,which", [("a", "z_a"), ("b", "z_b")])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_raises_naming_it(bad, which, value, device):
    z_a, z_b = torch.randn(6, 5, device=device), torch.randn(6, 5, device=device)
    (z_a if bad == "a" else z_b)[2, 3] = value
    with pytest.raises(RuntimeError, match=f"{which} contain"):
        jem_fast.VICRegLoss()(z_a, z_b)
    # Opting out propagates the non-finite value instead (documented policy).
    assert not torch.isfinite(jem_fast.VICRegLoss(check_finite=False)(z_a, z_b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rejects_mixed_devices():
    with pytest.raises(RuntimeError, match="same device"):
        vicreg_terms(torch.randn(4, 3), torch.randn(4, 3, device="cuda"))
