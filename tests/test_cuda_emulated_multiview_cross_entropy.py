"""The multi-view cross-entropy CUDA launchers (csrc/losses/multiview_cross_entropy_cuda.cu: the
forward partial + merge kernels and the backward kernel) run on the CPU under HIP-CPU emulation
(tests/cuda_emu), replaying the CUDA branch of the host op (multiview_cross_entropy.cpp), against
the float64 definition of the loss (SwAV / DINO multi-crop cross-entropy, as in
jem_fast.reference.clustering) and its autograd gradient.

Covered: all four logit dtypes (targets float32, float64 with float64 logits), T < V, T == V,
T > V (the skipped same-index pairs), T = kMaxTargets = 8, K below one warp, K with a tail after
several column chunks (the chunk is 4 KiB of a target row: 1024 float / 512 double columns),
rows whose FIRST logits are -inf followed by finite values (online log-sum-exp, defect of
add_lse: exp(-inf - -inf) = NaN; zero targets on -inf logits contribute 0), and large logits.

Tolerances: logits are read in their dtype (the references get the same rounded values in
float64). lse and the contributions are float64 outputs; the kernels form the exponents and the
sums of non-negative terms (sum_k Y_k (m - x_k), S = sum_k exp(scale (x_k - m))) in float32
(float64 for float64 logits) without cancellation, so lse is within ~1e-8 relative and the
contributions ~2e-7 (measured): lse rtol = atol = 1e-7, contributions rtol = 2e-6 / atol = 1e-6,
loss rtol = 1e-6 (1e-13 / 1e-12 in float64). Gradients are stored in the logit dtype:
elementwise budget of grad_bound below.
"""

import pytest
import torch
import torch.nn.functional as F

from cuda_emu import emu

pytestmark = pytest.mark.cuda_emu

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
MAX_TARGETS = 8  # multiview_ce::kMaxTargets (multiview_cross_entropy_kernels.h)


@pytest.fixture(scope="module", autouse=True)
def _lib():
    return emu.load()


def pair_count(T, V):
    return T * V - min(T, V)


def make_inputs(T, V, B, K, dtype, seed, scale_x=2.0, normalized=True):
    g = torch.Generator().manual_seed(seed)
    acc = emu.acc_dtype(dtype)
    logits = [(scale_x * torch.randn(B, K, generator=g, dtype=torch.float64)).to(dtype)
              for _ in range(V)]
    if normalized:  # teacher probabilities / SwAV codes
        targets = [torch.softmax(3 * torch.randn(B, K, generator=g, dtype=torch.float64), -1)
                   .to(acc) for _ in range(T)]
    else:  # any non-negative weights (the kernels never assume rows summing to 1)
        targets = [torch.rand(B, K, generator=g, dtype=torch.float64).to(acc) for _ in range(T)]
    return targets, logits


# ------------------------------------------------------------------------------------------------
# The CUDA branch of jem_fast::multiview_cross_entropy(_backward), launcher by launcher
# ------------------------------------------------------------------------------------------------

def forward_emulated(targets, logits, scale):
    T, V = len(targets), len(logits)
    B, K = logits[0].shape
    dtype = logits[0].dtype
    acc = emu.acc_dtype(dtype)
    n = torch.zeros(1, dtype=torch.int64)
    emu.call("multiview_ce_forward_partials_cuda", T, V, B, K, float(scale), emu.is_double(dtype),
             n)
    nan = float("nan")
    partial = torch.full((int(n),), nan, dtype=acc)
    lse = torch.full((V, B), nan, dtype=torch.float64)  # float64 for every logit dtype
    contribution = torch.full((V, B), nan, dtype=torch.float64)
    mass = torch.full((T, B), nan, dtype=acc)
    emu.call("multiview_ce_forward_cuda", emu.dtype_code(dtype), T, V, B, K, float(scale),
             emu.pointer_array(targets), emu.pointer_array(logits), partial, lse, contribution,
             mass)
    # as the host op: summed in float64, rounded once to the accumulation dtype
    loss = (contribution.sum() / float(pair_count(T, V) * B)).to(acc)
    return loss, lse, mass, contribution, int(n)


def backward_emulated(grad_loss, targets, logits, lse, mass, scale):
    T, V = len(targets), len(logits)
    B, K = logits[0].shape
    dtype = logits[0].dtype
    acc = emu.acc_dtype(dtype)
    coef = torch.tensor([grad_loss], dtype=torch.float64).to(acc) * (
        scale / float(pair_count(T, V) * B))
    grads = [torch.full_like(x, float("nan")) for x in logits]
    emu.call("multiview_ce_backward_cuda", emu.dtype_code(dtype), T, V, B, K, float(scale),
             emu.pointer_array(targets), emu.pointer_array(logits),
             lse.to(torch.float64).contiguous(), mass.to(acc).contiguous(), coef,
             emu.pointer_array(grads))
    return grads


# ------------------------------------------------------------------------------------------------
# float64 references
# ------------------------------------------------------------------------------------------------

def reference_loss(targets, logits, scale):
    """mean over pairs (t, v), v != t, of mean_b -sum_k y_tbk log_softmax(scale x_vb)_k, a zero
    target contributing 0 even on a -inf logit (multiview_cross_entropy_kernels.h)."""
    T, V = len(targets), len(logits)
    total = 0.0
    for t, y in enumerate(targets):
        for v, x in enumerate(logits):
            if v != t:
                logp = F.log_softmax(scale * x, dim=-1)
                total = total - torch.where(y == 0, 0.0, y * logp).sum(-1).mean()
    return total / pair_count(T, V)


def reference_contribution(targets, logits, scale):
    """Per (view, row): sum_k Y_vbk (lse_vb - scale x_vbk), Y_vb = sum_{t != v} y_tb, zero
    targets contributing 0 (multiview_cross_entropy_kernels.h)."""
    out = []
    for v, x in enumerate(logits):
        Y = sum(y for t, y in enumerate(targets) if t != v)
        Y = torch.zeros_like(x) if isinstance(Y, int) else Y
        lse = torch.logsumexp(scale * x, -1, keepdim=True)
        out.append(torch.where(Y == 0, 0.0, Y * (lse - scale * x)).sum(-1))
    return torch.stack(out)


def reference_grads_formula(grad_loss, targets, logits, scale):
    """d loss / d x_vbk = g scale / (pairs B) (W_vb softmax(scale x_vb)_k - Y_vbk): finite for
    -inf logits (softmax 0 there), where autograd of the log-softmax form is NaN."""
    T, V = len(targets), len(logits)
    B = logits[0].shape[0]
    coef = grad_loss * scale / (pair_count(T, V) * B)
    grads = []
    for v, x in enumerate(logits):
        Y = sum(y for t, y in enumerate(targets) if t != v)
        Y = torch.zeros_like(x) if isinstance(Y, int) else Y
        grads.append(coef * (Y.sum(-1, keepdim=True) * torch.softmax(scale * x, -1) - Y))
    return grads


def tols(dtype):
    """(rtol, atol) of lse and of the per-row contributions, rtol of the loss: see the module
    docstring."""
    if dtype == torch.float64:
        return dict(lse=dict(rtol=1e-13, atol=1e-13), contribution=dict(rtol=1e-12, atol=1e-12),
                    loss=dict(rtol=1e-12, atol=0.0))
    return dict(lse=dict(rtol=1e-7, atol=1e-7), contribution=dict(rtol=2e-6, atol=1e-6),
                loss=dict(rtol=1e-6, atol=0.0))


def grad_bound(grad_loss, targets, logits, scale, dtype):
    """Elementwise error budget of the gradient kernel: p = exp(scale x - lse) carries a relative
    error ~ (|scale x| + |lse| + 2) ulp of the accumulation type; Y_vb = (sum of all T targets)
    minus the view's own target and W_vb = (total mass) minus its own mass both cancel, so their
    error is a few ulps of the full sums; the store rounds once to the logit dtype (relative, or
    the subnormal spacing)."""
    T, V = len(targets), len(logits)
    B = logits[0].shape[0]
    coef = abs(grad_loss) * scale / (pair_count(T, V) * B)
    acc_eps = 2.0 ** -52 if dtype == torch.float64 else 2.0 ** -23
    out_eps = 2.0 ** -52 if dtype == torch.float64 else torch.finfo(dtype).eps
    # spacing of the dtype's subnormals (float16: 6e-8, reached by small gradients)
    out_tiny = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
    y_all = sum(y.abs() for y in targets)
    w_all = y_all.sum(-1, keepdim=True)
    bounds = []
    for v, x in enumerate(logits):
        Y = sum(y for t, y in enumerate(targets) if t != v)
        Y = torch.zeros_like(x) if isinstance(Y, int) else Y
        lse = torch.logsumexp(scale * x, -1, keepdim=True)
        p = torch.softmax(scale * x, -1)
        z = torch.where(torch.isfinite(x), (scale * x).abs(), torch.zeros_like(x)) + lse.abs() + 2
        exact = coef * (Y.sum(-1, keepdim=True) * p - Y)
        budget = 4 * acc_eps * coef * (w_all * p * z + y_all)
        bounds.append(budget + out_eps * exact.abs() + out_tiny)
    return bounds


def check_grads(got, want, bounds, dtype):
    for v, (g, w, bound) in enumerate(zip(got, want, bounds)):
        assert g.dtype == dtype
        assert torch.isfinite(g).all(), f"grad {v} not finite"
        err = (g.double() - w).abs()
        assert (err <= bound).all(), (
            f"grad {v}: max error {err.max().item():.3g}, worst ratio "
            f"{(err / bound).max().item():.3g}")


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------

CASES = [
    # T, V, B, K
    (2, 2, 3, 37),      # 2 global crops (SwAV, DINO), K tail of 37
    (2, 5, 5, 2500),    # multi-crop, 3 float / 5 double column chunks, last one short
    (1, 3, 4, 1024),    # exactly one float chunk
    (3, 2, 3, 700),     # T > V: targets without a student view of their own
    (MAX_TARGETS, 9, 2, 300),  # the largest T
    (2, 3, 2, 5),       # K < 32: most threads idle
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T, V, B, K", CASES)
def test_forward_backward(dtype, T, V, B, K):
    scale = 10.0  # 1 / student temperature 0.1
    targets, logits = make_inputs(T, V, B, K, dtype, seed=T * 100 + V * 10 + K,
                                  normalized=(K != 700))
    loss, lse, mass, contribution, n_partial = forward_emulated(targets, logits, scale)
    if K == 2500:
        assert n_partial >= (3 * V + T) * B * 3  # several column chunks per row

    x64 = [x.double().requires_grad_() for x in logits]
    y64 = [y.double() for y in targets]
    want_loss = reference_loss(y64, x64, scale)
    tol = tols(dtype)
    assert lse.dtype == torch.float64 and contribution.dtype == torch.float64
    torch.testing.assert_close(lse, torch.stack([torch.logsumexp(scale * x.detach(), -1)
                                                 for x in x64]), **tol["lse"])
    torch.testing.assert_close(mass.double(), torch.stack([y.sum(-1) for y in y64]),
                               rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=1e-12)
    with torch.no_grad():
        want_contribution = reference_contribution(y64, x64, scale)
    torch.testing.assert_close(contribution, want_contribution, **tol["contribution"])
    torch.testing.assert_close(loss.double(), want_loss.detach(), **tol["loss"])

    # the CPU op on the same inputs agrees (the established oracle of the CPU kernels)
    cpu_loss, cpu_lse, cpu_mass = torch.ops.jem_fast.multiview_cross_entropy(
        targets, logits, scale, True)
    torch.testing.assert_close(lse, cpu_lse.double(), **tol["lse"])
    torch.testing.assert_close(loss.double(), cpu_loss.double(), **tol["loss"])

    grad_loss = 0.75
    grads = backward_emulated(grad_loss, targets, logits, lse, mass, scale)
    want_grads = torch.autograd.grad(want_loss * grad_loss, x64, allow_unused=True)
    want_grads = [torch.zeros_like(x) if w is None else w for x, w in zip(x64, want_grads)]
    check_grads(grads, want_grads, grad_bound(grad_loss, y64, [x.detach() for x in x64], scale,
                                              dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_neg_inf_logits(dtype):
    """Rows whose first logits are -inf (every thread of a 256-thread block starts on -inf, the
    first chunk of a row is entirely -inf) followed by finite values. Targets are 0 there (a
    positive target on a -inf logit is an infinite loss) and contribute 0. lse, mass, the
    per-row contributions, the loss and the gradients stay finite and exact."""
    T, V, B, K = 2, 3, 4, 2500
    scale = 10.0
    targets, logits = make_inputs(T, V, B, K, dtype, seed=99)
    lead = 1100 if dtype != torch.float64 else 600  # past the first chunk (1024 / 512 columns)
    bad = [(0, 1, lead), (2, 0, 300), (1, 3, 257), (2, 2, K - 1)]  # (view, row, -inf prefix)
    for v, b, n in bad:
        logits[v][b, :n] = float("-inf")
        for t in range(T):
            targets[t][b, :n] = 0
    # a row with a scattered -inf too
    logits[1][2, 700] = float("-inf")
    for t in range(T):
        targets[t][2, 700] = 0
    targets = [y / y.sum(-1, keepdim=True) for y in targets]

    loss, lse, mass, contribution, _ = forward_emulated(targets, logits, scale)
    x64 = [x.double() for x in logits]
    y64 = [y.double() for y in targets]
    tol = tols(dtype)
    assert torch.isfinite(lse).all(), f"lse not finite: {lse}"
    torch.testing.assert_close(lse, torch.stack([torch.logsumexp(scale * x, -1) for x in x64]),
                               **tol["lse"])
    torch.testing.assert_close(mass.double(), torch.stack([y.sum(-1) for y in y64]),
                               rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=1e-12)
    assert torch.isfinite(contribution).all(), f"contribution not finite: {contribution}"
    torch.testing.assert_close(contribution, reference_contribution(y64, x64, scale),
                               **tol["contribution"])
    torch.testing.assert_close(loss.double(), reference_loss(y64, x64, scale), **tol["loss"])
    # the CPU op agrees
    cpu_loss, cpu_lse, _ = torch.ops.jem_fast.multiview_cross_entropy(targets, logits, scale,
                                                                      False)
    torch.testing.assert_close(lse, cpu_lse.double(), **tol["lse"])
    torch.testing.assert_close(loss.double(), cpu_loss.double(), **tol["loss"])

    grads = backward_emulated(0.5, targets, logits, lse, mass, scale)
    want = reference_grads_formula(0.5, y64, x64, scale)
    check_grads(grads, want, grad_bound(0.5, y64, x64, scale, dtype), dtype)
    for v, b, n in bad:
        assert (grads[v][b, :n] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_logits(dtype):
    """Student logits of magnitude ~100 with scale 25: exponents up to 2500, far beyond exp's
    range; the online maximum shift keeps everything finite."""
    T, V, B, K = 2, 2, 3, 1500
    scale = 25.0
    targets, logits = make_inputs(T, V, B, K, dtype, seed=5, scale_x=40.0)
    loss, lse, mass, _, _ = forward_emulated(targets, logits, scale)
    x64 = [x.double().requires_grad_() for x in logits]
    y64 = [y.double() for y in targets]
    want = reference_loss(y64, x64, scale)
    tol = tols(dtype)
    torch.testing.assert_close(lse, torch.stack([torch.logsumexp(scale * x.detach(), -1)
                                                 for x in x64]), **tol["lse"])
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), want.detach(), **tol["loss"])
    grads = backward_emulated(1.0, targets, logits, lse, mass, scale)
    check_grads(grads, torch.autograd.grad(want, x64),
                grad_bound(1.0, y64, [x.detach() for x in x64], scale, dtype), dtype)


# ------------------------------------------------------------------------------------------------
# Precision (issue 11): the rule of tests/test_precision_clustering.py on the CUDA branch, float32:
# value and gradients within 4x the plain float32 formula's error against float64 truth (floor:
# a few ulps of the quantity's own scale), and exactly 0 for rows of one logit.
# ------------------------------------------------------------------------------------------------

from test_precision_clustering import check as check_precision  # noqa: E402


def _emulated_value_and_grads(targets, logits, scale):
    loss, lse, mass, _, _ = forward_emulated(targets, logits, scale)
    grads = backward_emulated(1.0, targets, logits, lse, mass, scale)
    return loss.double(), [g.double() for g in grads]


def _formula_value_and_grads(targets, logits, scale):
    xs = [x.detach().clone().requires_grad_() for x in logits]
    loss = reference_loss(targets, xs, scale)
    grads = torch.autograd.grad(loss, xs, allow_unused=True, materialize_grads=True)
    return loss.detach().double(), [g.double() for g in grads]


@pytest.mark.parametrize("T, V, B, K, scale, sigma", [
    (2, 3, 1, 65536, 10.0, 5.0),     # DINO's defaults (K = 65536, temperature 0.1)
    (2, 4, 2, 2500, 100.0, 3.0),     # temperature 0.01, several column chunks
    (2, 3, 2, 700, 0.1, 1.0),        # temperature 10
    (3, 2, 2, 1500, 100.0, 100.0),   # |x / T| ~ 1e4
])
def test_precision_float32(T, V, B, K, scale, sigma):
    g = torch.Generator().manual_seed(K + T)
    logits = [(sigma * torch.randn(B, K, generator=g, dtype=torch.float64)).float()
              for _ in range(V)]
    # confident targets close to the students' own softmax: W p - Y nearly cancels
    targets = [torch.softmax(scale * (logits[t % V].double() + 0.1 * sigma * torch.randn(
        B, K, generator=g, dtype=torch.float64)), -1).float() for t in range(T)]
    truth = _formula_value_and_grads([y.double() for y in targets],
                                     [x.double() for x in logits], scale)
    mine = _emulated_value_and_grads(targets, logits, scale)
    baseline = _formula_value_and_grads(targets, logits, scale)
    check_precision(mine, baseline, truth, f"CUDA multiview_cross_entropy K={K} scale={scale}")


def test_single_logit_is_exactly_zero():
    """K = 1: softmax is exactly 1, the loss and every gradient exactly 0."""
    g = torch.Generator().manual_seed(3)
    for scale, sigma in ((10.0, 1.0), (33.3, 30.0), (0.1, 1e3)):
        logits = [(sigma * torch.randn(16, 1, generator=g, dtype=torch.float64)).float()
                  for _ in range(5)]
        targets = [torch.ones(16, 1) for _ in range(2)]
        value, grads = _emulated_value_and_grads(targets, logits, scale)
        assert value.item() == 0.0
        for grad in grads:
            assert (grad == 0).all(), f"K=1 gradient noise {grad.abs().max().item():.3g}"
