"""Barlow Twins: jem_fast::barlow_twins_forward/backward and jem_fast.BarlowTwinsLoss against the
float64 reference (jem_fast.reference.barlow_twins), lightly, gradcheck, opcheck, compile."""
import inspect

import pytest
import torch

import jem_fast
from jem_fast.ops import barlow_twins_terms
from jem_fast.reference import barlow_twins_loss_reference, barlow_twins_terms_reference

from conftest import (DEVICES, assert_compiled_matches_reference,
                      assert_low_precision_within_budget, make_pair, value_and_grads)

SHAPES = [(2, 1), (2, 5), (3, 7), (7, 3), (5, 5), (16, 8), (8, 16), (33, 65), (65, 33), (130, 17)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ["gram", "covariance", "auto"])
@pytest.mark.parametrize("n,d", SHAPES)
def test_terms_and_gradients_match_reference_float64(n, d, route, device):
    z_a, z_b = make_pair(n, d, device=device, seed=n * 100 + d)
    w = torch.tensor([0.9, -0.4], dtype=torch.float64)
    out, ga, gb = value_and_grads(lambda a, b: barlow_twins_terms(a, b, route=route), z_a, z_b, w)
    ref, ra, rb = value_and_grads(barlow_twins_terms_reference, z_a, z_b, w)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(ga, ra, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(gb, rb, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("route", ["gram", "covariance"])
def test_gradcheck(route):
    z_a, z_b = make_pair(5, 7, seed=3)
    assert torch.autograd.gradcheck(lambda a, b: barlow_twins_terms(a, b, route=route), (z_a, z_b))


def test_constant_column_is_finite():
    # A dead feature (zero variance) is normalized with batch norm's eps, as in the reference.
    z_a, z_b = make_pair(8, 6, seed=4)
    a = z_a.detach().clone()
    a[:, 2] = 3.0
    a.requires_grad_()
    out, ga, gb = value_and_grads(lambda x, y: barlow_twins_terms(x, y), a, z_b)
    ref, ra, rb = value_and_grads(barlow_twins_terms_reference, a, z_b)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


@pytest.mark.parametrize("route", ["gram", "covariance"])
def test_opcheck(route):
    for dtype in (torch.float64, torch.float32):
        z_a, z_b = make_pair(6, 9, dtype=dtype, seed=5)
        torch.library.opcheck(torch.ops.jem_fast.barlow_twins_forward,
                              (z_a, z_b, route == "gram", True))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    assert_compiled_matches_reference(jem_fast.BarlowTwinsLoss(), barlow_twins_loss_reference, device, grad_atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,d", [(32, 96), (96, 32)])
def test_low_precision_accumulates_in_float32(dtype, n, d, device):
    assert_low_precision_within_budget(lambda a, b: barlow_twins_terms(a, b), barlow_twins_terms_reference, n, d, dtype, device)


def test_non_contiguous_inputs():
    base_a, base_b = make_pair(40, 30, seed=9)
    a = base_a.detach().t().contiguous().t()[::2, 1:].requires_grad_()
    b = base_b.detach()[::2, 1:].requires_grad_()
    assert not a.is_contiguous() and not b.is_contiguous()
    out, ga, gb = value_and_grads(lambda x, y: barlow_twins_terms(x, y), a, b)
    ref, ra, rb = value_and_grads(barlow_twins_terms_reference, a, b)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


def test_module_defaults_and_terms():
    sig = inspect.signature(jem_fast.BarlowTwinsLoss.__init__)
    assert sig.parameters["lambda_param"].default == 5e-3
    assert sig.parameters["gather_distributed"].default is False
    z_a, z_b = make_pair(10, 12, seed=10)
    loss_fn = jem_fast.BarlowTwinsLoss(lambda_param=0.02)
    torch.testing.assert_close(loss_fn(z_a, z_b), barlow_twins_loss_reference(z_a, z_b, 0.02))
    torch.testing.assert_close(torch.stack(list(loss_fn.last_terms)),
                               barlow_twins_terms_reference(z_a, z_b))


def test_matches_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    z_a, z_b = make_pair(24, 40, seed=11)
    mine, ma, mb = value_and_grads(jem_fast.BarlowTwinsLoss(), z_a, z_b)
    ref, ra, rb = value_and_grads(lightly_loss.BarlowTwinsLoss(), z_a, z_b)
    torch.testing.assert_close(mine, ref)
    torch.testing.assert_close(ma, ra)
    torch.testing.assert_close(mb, rb)
    ours_sig = inspect.signature(jem_fast.BarlowTwinsLoss.__init__).parameters
    for name, p in inspect.signature(lightly_loss.BarlowTwinsLoss.__init__).parameters.items():
        assert name in ours_sig and ours_sig[name].default == p.default, name


def test_bad_inputs_raise_clear_errors():
    with pytest.raises((ValueError, RuntimeError), match="z_a must be 2-D"):
        barlow_twins_terms(torch.randn(4), torch.randn(4))
    with pytest.raises(RuntimeError, match="same shape"):
        barlow_twins_terms(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(RuntimeError, match="at least 2 rows"):
        barlow_twins_terms(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(RuntimeError, match="floating-point"):
        barlow_twins_terms(torch.ones(4, 3, dtype=torch.int32), torch.ones(4, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="route"):
        barlow_twins_terms(torch.randn(4, 3), torch.randn(4, 3), route="dense")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad,which", [("a", "z_a"), ("b", "z_b")])
def test_non_finite_input_raises_naming_it(bad, which, device):
    z_a, z_b = torch.randn(6, 5, device=device), torch.randn(6, 5, device=device)
    (z_a if bad == "a" else z_b)[1, 1] = float("nan")
    with pytest.raises(RuntimeError, match=f"{which} contain"):
        jem_fast.BarlowTwinsLoss()(z_a, z_b)
    assert not torch.isfinite(jem_fast.BarlowTwinsLoss(check_finite=False)(z_a, z_b))
