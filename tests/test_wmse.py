"""W-MSE: jem_fast.WMSELoss against the float64 loop reference (jem_fast.reference.wmse),
lightly (same seed: same permutations), gradcheck, low precision, running statistics, errors."""
import inspect

import pytest
import torch

import jem_fast
from jem_fast.losses import norm_mse_loss
from jem_fast.reference import norm_mse_reference, whiten_reference, wmse_loss_reference

from conftest import DEVICES

SEED = 1234


def make_views(num_samples, bs, d, dtype=torch.float64, device="cpu", seed=0):
    """num_samples correlated views stacked along dim 0, as WMSELoss takes them."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(bs, d, generator=g, dtype=torch.float64)
    views = [base + 0.5 * torch.randn(bs, d, generator=g, dtype=torch.float64)
             for _ in range(num_samples)]
    return torch.cat(views).to(device=device, dtype=dtype).requires_grad_()


def run_seeded(fn, x):
    """Value and input gradient of fn(x) after seeding the global generator (the permutations)."""
    torch.manual_seed(SEED)
    out = fn(x)
    (grad,) = torch.autograd.grad(out, x)
    return out.detach(), grad


def reference(x, module, **kw):
    """The loop reference with the module's arguments and a copy of its running statistics."""
    wh = module.whitening
    stats = {}
    if wh.track_running_stats:
        stats = dict(running_mean=wh.running_mean.detach().reshape(-1).double().clone(),
                     running_cov=wh.running_variance.detach().double().clone(),
                     use_running_stats=not wh.training)
    return wmse_loss_reference(x, module.w_size, module.num_samples, module.w_iter, wh.eps,
                               momentum=wh.momentum, **stats, **kw)


# (num_samples, w_iter, sub-batches per view, w_size, embedding_dim, eps)
CASES = [(2, 1, 1, 8, 4, 0.0), (2, 1, 3, 8, 4, 0.0), (2, 3, 2, 10, 5, 0.0),
         (3, 1, 2, 12, 6, 0.0), (4, 2, 2, 8, 3, 0.1), (2, 2, 1, 6, 3, 0.5), (3, 2, 3, 7, 2, 0.01)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("v,t,g,w,d,eps", CASES)
def test_matches_reference_float64(v, t, g, w, d, eps, device):
    loss_fn = jem_fast.WMSELoss(embedding_dim=d, momentum=0.3, eps=eps, w_iter=t, w_size=w,
                                num_samples=v).to(device=device, dtype=torch.float64)
    x = make_views(v, g * w, d, device=device, seed=v * 100 + g * 10 + d)
    with torch.no_grad():  # non-trivial starting statistics
        loss_fn.whitening.running_mean.add_(0.5)
        loss_fn.whitening.running_variance.mul_(2.0)
    torch.manual_seed(SEED)
    ref, ref_mean, ref_cov = reference(x, loss_fn)
    (ref_grad,) = torch.autograd.grad(ref, x)
    out, grad = run_seeded(loss_fn, x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(loss_fn.whitening.running_mean.reshape(-1), ref_mean,
                               rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loss_fn.whitening.running_variance, ref_cov,
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_eval_mode_uses_running_stats_and_leaves_them(device):
    loss_fn = jem_fast.WMSELoss(embedding_dim=3, w_size=6, w_iter=2, eps=0.05).double().to(device)
    x = make_views(2, 12, 3, device=device, seed=1)
    loss_fn(x)  # training step: statistics move away from (0, I)
    loss_fn.eval()
    before = [b.clone() for b in loss_fn.buffers()]
    torch.manual_seed(SEED)
    ref, _, _ = reference(x, loss_fn)
    (ref_grad,) = torch.autograd.grad(ref, x)
    out, grad = run_seeded(loss_fn, x)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(grad, ref_grad)
    for b, a in zip(before, loss_fn.buffers()):
        assert torch.equal(a, b)


def test_without_running_stats():
    loss_fn = jem_fast.WMSELoss(embedding_dim=3, w_size=6, track_running_stats=False).double()
    assert dict(loss_fn.state_dict()) == {}
    x = make_views(2, 12, 3, seed=2)
    torch.manual_seed(SEED)
    ref, _, _ = wmse_loss_reference(x, 6)
    loss_fn.eval()  # eval without running statistics still whitens with the batch statistics
    out, _ = run_seeded(loss_fn, x)
    torch.testing.assert_close(out, ref.detach())


def test_state_dict_names_and_shapes():
    sd = jem_fast.WMSELoss(embedding_dim=5, w_size=10).state_dict()
    assert list(sd) == ["whitening.running_mean", "whitening.running_variance"]
    assert sd["whitening.running_mean"].shape == (1, 5, 1, 1)
    assert torch.equal(sd["whitening.running_variance"], torch.eye(5))


def test_gradcheck():
    loss_fn = jem_fast.WMSELoss(embedding_dim=2, w_size=4, w_iter=2, num_samples=3, eps=0.1,
                                track_running_stats=False)
    x = make_views(3, 8, 2, seed=3)

    def seeded(inp):
        torch.manual_seed(SEED)  # every evaluation draws the same permutations
        return loss_fn(inp)

    assert torch.autograd.gradcheck(seeded, (x,))


def test_custom_loss_fn_sees_views_in_original_row_order():
    # A row-weighted loss is not permutation invariant: the whitened rows must be put back.
    weights = torch.linspace(0.1, 2.0, 16, dtype=torch.float64)

    def weighted(a, b):
        return (weights[:, None] * (a - b) ** 2).mean()

    loss_fn = jem_fast.WMSELoss(embedding_dim=3, w_size=8, w_iter=2, loss_fn=weighted).double()
    x = make_views(2, 16, 3, seed=4)
    torch.manual_seed(SEED)
    ref, _, _ = reference(x, loss_fn, loss_fn=weighted)
    (ref_grad,) = torch.autograd.grad(ref, x)
    out, grad = run_seeded(loss_fn, x)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(grad, ref_grad)


def test_global_generator_advances_like_lightly():
    # One torch.randperm(batch_size) per iteration and nothing else: code that draws random
    # numbers after the loss sees the same stream as with lightly.
    loss_fn = jem_fast.WMSELoss(embedding_dim=2, w_size=4, w_iter=3)
    torch.manual_seed(SEED)
    loss_fn(make_views(2, 8, 2, dtype=torch.float32, seed=5))
    after_loss = torch.rand(4)
    torch.manual_seed(SEED)
    for _ in range(3):
        torch.randperm(8)
    assert torch.equal(after_loss, torch.rand(4))


def test_norm_mse_loss():
    a, b = make_views(2, 7, 5, seed=6).detach().chunk(2)
    torch.testing.assert_close(norm_mse_loss(a, b), norm_mse_reference(a, b))
    half = norm_mse_loss(a.half(), b.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half.double(), norm_mse_reference(a.half().double(),
                                                                 b.half().double()))


def test_defaults():
    p = inspect.signature(jem_fast.WMSELoss.__init__).parameters
    expected = dict(embedding_dim=128, momentum=0.01, eps=0.0, track_running_stats=True,
                    w_iter=1, w_size=256, loss_fn=norm_mse_loss, num_samples=2)
    assert {k: p[k].default for k in expected} == expected
    loss_fn = jem_fast.WMSELoss()
    assert (loss_fn.num_pairs, loss_fn.loss_f) == (1, norm_mse_loss)
    assert loss_fn.whitening.num_features == 128 and loss_fn.whitening.momentum == 0.01


# ---------------------------------------------------------------------------------------------
# Low precision: whitening runs in float32 (autocast off), so the only error left against the
# float64 oracle on the same rounded inputs is float32 rounding through Cholesky and the
# triangular solve, which is backward stable: relative error O(eps32 * cond(cov)). The bound
# below is 64 * eps32 * the worst condition number of the whitened covariances, times the
# magnitude of the compared quantity.
# ---------------------------------------------------------------------------------------------
def _fp32_budget(x64, w):
    bs = x64.shape[0] // 2
    conds = []
    for view in x64.detach().split(bs):
        for block in view.split(w):
            conds.append(torch.linalg.cond(torch.cov(block.T)).item())
    return 64 * torch.finfo(torch.float32).eps * max(conds)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_whiten_in_float32(dtype, device):
    d, w = 8, 32
    loss_fn = jem_fast.WMSELoss(embedding_dim=d, w_size=w, track_running_stats=False).to(device)
    x = make_views(2, 2 * w, d, dtype=dtype, device=device, seed=7)
    out, grad = run_seeded(loss_fn, x)
    assert out.dtype == torch.float32 and grad.dtype == dtype
    x64 = x.detach().double().cpu().requires_grad_()
    torch.manual_seed(SEED)
    ref, _, _ = wmse_loss_reference(x64, w)
    (ref_grad,) = torch.autograd.grad(ref, x64)
    budget = _fp32_budget(x64, w)
    assert (out.double().cpu() - ref).abs() <= budget * ref.abs()
    # The gradient is rounded to the input dtype on the way out: add half an ulp of it.
    grad_tol = budget * ref_grad.abs().max() + torch.finfo(dtype).eps * ref_grad.abs()
    assert ((grad.double().cpu() - ref_grad).abs() <= grad_tol).all()


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_keeps_whitening_in_float32(device):
    lowp = torch.bfloat16 if device == "cpu" else torch.float16
    loss_fn = jem_fast.WMSELoss(embedding_dim=8, w_size=32, w_iter=2).to(device)
    x = make_views(2, 64, 8, dtype=torch.float32, device=device, seed=8)
    plain, plain_grad = run_seeded(loss_fn, x)
    stats = [b.clone() for b in loss_fn.buffers()]
    loss_fn.whitening.running_mean.zero_()
    loss_fn.whitening.running_variance.copy_(torch.eye(8))
    torch.manual_seed(SEED)
    with torch.autocast(device, dtype=lowp):
        amp = loss_fn(x)
    # Backward outside the autocast region, as recommended (and as training loops do).
    (amp_grad,) = torch.autograd.grad(amp, x)
    assert amp.dtype == torch.float32
    torch.testing.assert_close(amp, plain)
    torch.testing.assert_close(amp_grad, plain_grad)
    for a, b in zip(loss_fn.buffers(), stats):
        torch.testing.assert_close(a, b)


def test_torch_compile_with_graph_breaks():
    # fullgraph=True is not supported: the NaN/Inf and Cholesky-failure checks need the values
    # on the host (data-dependent errors), which Dynamo cannot trace. With graph breaks it runs.
    loss_fn = jem_fast.WMSELoss(embedding_dim=4, w_size=8, w_iter=2)
    x = make_views(2, 16, 4, dtype=torch.float32, seed=9)
    eager, eager_grad = run_seeded(loss_fn, x)
    compiled, compiled_grad = run_seeded(torch.compile(loss_fn), x)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)


# ---------------------------------------------------------------------------------------------
# lightly parity: same seed, same permutations, same values, gradients and running statistics.
# ---------------------------------------------------------------------------------------------
LIGHTLY_CASES = [dict(embedding_dim=4, w_size=8), dict(embedding_dim=4, w_size=8, w_iter=3),
                 dict(embedding_dim=3, w_size=6, num_samples=3, eps=0.1, momentum=0.2),
                 dict(embedding_dim=16, w_size=32, w_iter=2)]


@pytest.mark.parametrize("kwargs", LIGHTLY_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sub_batches", [1, 3])
def test_matches_lightly(kwargs, dtype, sub_batches):
    lightly_loss = pytest.importorskip("lightly.loss")
    ours = jem_fast.WMSELoss(**kwargs).to(dtype)
    theirs = lightly_loss.WMSELoss(**kwargs).to(dtype)
    v = kwargs.get("num_samples", 2)
    x = make_views(v, sub_batches * kwargs["w_size"], kwargs["embedding_dim"], dtype=dtype,
                   seed=sub_batches)
    for step in range(2):  # the second step starts from updated running statistics
        mine, mine_grad = run_seeded(ours, x)
        ref, ref_grad = run_seeded(theirs, x)
        torch.testing.assert_close(mine, ref)
        torch.testing.assert_close(mine_grad, ref_grad)
        torch.testing.assert_close(ours.state_dict(), theirs.state_dict())
    ours.eval()
    theirs.eval()
    if dtype == torch.float32:  # lightly's eval mode mixes dtypes for float64 input
        torch.testing.assert_close(run_seeded(ours, x)[0], run_seeded(theirs, x)[0])


def test_lightly_signature_and_state_dict_interchange():
    lightly_loss = pytest.importorskip("lightly.loss")
    ours_sig = inspect.signature(jem_fast.WMSELoss.__init__).parameters
    for name, p in inspect.signature(lightly_loss.WMSELoss.__init__).parameters.items():
        if name == "loss_fn":
            continue  # the default is each library's own norm_mse_loss
        assert name in ours_sig and ours_sig[name].default == p.default, name
    theirs = lightly_loss.WMSELoss(embedding_dim=4, w_size=8)
    theirs(make_views(2, 16, 4, dtype=torch.float32, seed=10))
    ours = jem_fast.WMSELoss(embedding_dim=4, w_size=8)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.state_dict(), theirs.state_dict())
    a, b = make_views(2, 9, 5, seed=11).detach().chunk(2)
    torch.testing.assert_close(norm_mse_loss(a, b), lightly_loss.wmse_loss.norm_mse_loss(a, b))


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument, never a crash or a silent NaN.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(embedding_dim=4, w_size=7), "w_size must be an integer >= 2 \\* embedding_dim = 8"),
    (dict(embedding_dim=0), "embedding_dim"),
    (dict(embedding_dim=2, w_size=4, w_iter=0), "w_iter"),
    (dict(embedding_dim=2, w_size=4, num_samples=1), "num_samples"),
    (dict(embedding_dim=2, w_size=4, momentum=1.5), "momentum"),
    (dict(embedding_dim=2, w_size=4, eps=-0.1), "eps"),
    (dict(embedding_dim=2, w_size=4, loss_fn="mse"), "loss_fn"),
])
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jem_fast.WMSELoss(**kwargs)


@pytest.mark.parametrize("shape,match", [
    ((16,), "input must be 2-D"), ((16, 3, 1), "input must be 2-D"),
    ((16, 5), "embedding_dim=3 columns"),
    ((15, 3), "divisible by num_samples=2"),
    ((2 * 4, 3), "multiple of w_size=6"),     # batch smaller than w_size
    ((2 * 9, 3), "multiple of w_size=6"),     # not a whole number of sub-batches
])
def test_rejects_bad_input_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        jem_fast.WMSELoss(embedding_dim=3, w_size=6)(torch.randn(shape))


def test_rejects_integer_input():
    with pytest.raises(ValueError, match="input must be a floating-point tensor"):
        jem_fast.WMSELoss(embedding_dim=3, w_size=6)(torch.ones(12, 3, dtype=torch.int64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_raises(value, device):
    loss_fn = jem_fast.WMSELoss(embedding_dim=3, w_size=6).to(device)
    x = torch.randn(12, 3, device=device)
    x[7, 1] = value
    with pytest.raises(ValueError, match="input contains NaN or Inf"):
        loss_fn(x)
    # Statistics are updated only after the checks pass.
    assert torch.equal(loss_fn.whitening.running_mean, torch.zeros(1, 3, 1, 1, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_singular_covariance_raises_and_eps_fixes_it(device):
    # A column that repeats another: the covariance has rank D - 1.
    x = torch.randn(2 * 8, 3, dtype=torch.float64, device=device)
    x[:, 2] = x[:, 0]
    with pytest.raises(torch.linalg.LinAlgError, match="not positive definite.*eps > 0"):
        jem_fast.WMSELoss(embedding_dim=3, w_size=8).double().to(device)(x)
    out = jem_fast.WMSELoss(embedding_dim=3, w_size=8, eps=1e-3).double().to(device)(x)
    assert torch.isfinite(out)


def test_whitening_module_alone():
    # The submodule whitens one batch like lightly's Whitening2d and updates its statistics.
    wh = jem_fast.losses.wmse.Whitening2d(4, momentum=0.25, eps=0.1).double()
    x = make_views(1, 12, 4, seed=12)
    z = wh(x)
    ref, mean, cov = whiten_reference(x, 0.1)
    torch.testing.assert_close(z, ref)
    torch.testing.assert_close(wh.running_mean.reshape(-1), 0.25 * mean.detach())
    torch.testing.assert_close(wh.running_variance,
                               0.25 * cov.detach() + 0.75 * torch.eye(4, dtype=torch.float64))
    # Without shrinkage the whitened batch has the identity covariance.
    z0 = jem_fast.losses.wmse.Whitening2d(4, track_running_stats=False).double()(x)
    torch.testing.assert_close(z0.T @ z0 / 11, torch.eye(4, dtype=torch.float64))
