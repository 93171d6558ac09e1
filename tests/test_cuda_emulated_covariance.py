"""The CUDA kernels of the covariance losses (csrc/losses/column_moments_cuda.cu, vicreg_cuda.cu,
barlow_twins_cuda.cu), run on CPU under HIP-CPU (tests/cuda_emu).

The forward and backward are composed exactly as the CUDA branches of csrc/losses/vicreg.cpp,
barlow_twins.cpp and covariance_host.h do (same launchers, buffers, dtypes and aliasing; the GEMMs
by torch on CPU, in float32 for half inputs as tensor cores accumulate), and the terms and
gradients are compared with the float64 references of jem_fast/reference/ on the same rounded
inputs. Every output buffer has a guard region after it (a write past the end fails the test) and
starts as NaN (an entry never written fails the test).
"""
import ctypes

import pytest
import torch

from cuda_emu import emu
from cuda_emu.emu import emu_lib  # noqa: F401  (session fixture: builds the library once)
from jem_fast.reference import barlow_twins_terms_reference, vicreg_terms_reference

pytestmark = [pytest.mark.cuda_emu, pytest.mark.usefixtures("emu_lib")]

DTYPES = emu.DTYPE_NAMES
# csrc/losses/covariance_kernels.h
K_NUM_MOMENTS = 8
SUM_A, SUM_B, SUM_AA, SUM_BB, SUM_AB, SUM_DIFFSQ, SHIFT_A, SHIFT_B = range(8)
MEAN_A, MEAN_B, STAT2_A, STAT2_B, STAT3_A, STAT3_B = range(6)
K_NUM_COLSTATS = 6
NONFINITE_A, NONFINITE_B = 1, 2

# (N, D): N = 2 with odd D; tails of the 32-column tiles and 8-row interleave; several row splits
# (N > 32: ceil(N / 32) splits, the last one short); D > 256 (two finalize blocks, and the
# Frobenius sum over > 1 block); N > D and N < D for both routes.
SHAPES = [(2, 5), (7, 33), (70, 41), (40, 300), (130, 3)]


def _tol(dtype):
    """(rtol, atol factor) for terms and gradients against float64 truth on rounded inputs.
    Half inputs: the centered/normalized copies are stored in the input dtype (as on the GPU),
    which costs about one rounding of that dtype per element."""
    return {torch.float64: (1e-11, 1e-12), torch.float32: (5e-5, 5e-6),
            torch.float16: (4e-3, 1.5e-3), torch.bfloat16: (3e-2, 1.2e-2)}[dtype]


def _pair(n, d, dtype, seed, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    z_a = offset + base + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    z_b = offset + base + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    # a few narrow columns so that the VICReg variance hinge (std < 1) is active for some
    z_a[:, ::3] *= 0.3
    return z_a.to(dtype).contiguous(), z_b.to(dtype).contiguous()


# ----------------------------------------------------------------------------- composition
def _moments(z_a, z_b):
    """covariance_host.h: paired_column_moments_cuda and the buffers it allocates."""
    n, d = z_a.shape
    splits = emu.query_i64("moments_num_row_splits_cuda", n, d)
    workspace_bytes = emu.query_i64("cuda_workspace_bytes", n, d)
    partials = emu.Guarded((splits, K_NUM_MOMENTS, d), torch.float64)  # double for every dtype
    emu.call("paired_column_moments_cuda", emu.dtype_code(z_a.dtype), z_a, z_b, n, d, partials.t)
    workspace = emu.Guarded((workspace_bytes,), torch.uint8)
    flags = emu.Guarded((1,), torch.int32, fill=0)
    return splits, partials, workspace, flags


def _center_scale(z, mean, scale):
    n, d = z.shape
    out = emu.Guarded((n, d), z.dtype)
    emu.call("center_scale_columns_cuda", emu.dtype_code(z.dtype), z, mean, scale, n, d, out.t)
    return out.check("center_scale_columns out")


def _frobenius(is_double, us, vs, r, skip_diagonal, scale, terms, index, workspace):
    u = emu.pointer_array(us)
    v = emu.pointer_array(vs)
    emu.call("add_frobenius_dots_cuda", is_double, ctypes.c_int(len(us)), u, v, r, r,
             bool(skip_diagonal), float(scale), terms, ctypes.c_int(index), workspace)


def _mm_matrix_times(m, x, m_on_right):
    """host_utils.h mm_matrix_times / mm_matrix_times_into: y = m @ x (or x @ m) in m's dtype;
    for half x, m is scaled into [-1, 1], cast to x's dtype, multiplied with float32
    accumulation and rescaled. Returns (y, aliases_grad)."""
    acc = m.dtype
    if x.dtype == acc:
        return (x @ m if m_on_right else m @ x), True
    scale = m.abs().amax().clamp_min(1e-30)
    m_low = (m / scale).to(x.dtype).to(acc)
    xf = x.to(acc)
    y = (xf @ m_low if m_on_right else m_low @ xf) * scale
    return y.contiguous(), False


def _gram_is_double_dtype(dtype):
    """vicreg.cpp gram_is_double_dtype: the exact (float64) Gram route, always taken on CUDA
    for float32/float64 inputs; half inputs keep the float32 Gram with the diagonal removed by
    the kernels (diagonal_in_y)."""
    return dtype in (torch.float32, torch.float64)


def vicreg_forward(z_a, z_b, eps, gram_route):
    n, d = z_a.shape
    dt, acc = z_a.dtype, emu.acc_dtype(z_a.dtype)
    is_double = emu.is_double(dt)
    r = n if gram_route else d
    gram_double = gram_route and _gram_is_double_dtype(dt)
    cov_scale = 1.0 / ((n - 1.0) * (n - 1.0) * d)
    splits, partials, workspace, flags = _moments(z_a, z_b)
    colstats = emu.Guarded((K_NUM_COLSTATS, d), acc)
    terms = emu.Guarded((3,), acc)
    # the exact Gram route adds its own (consistent) diagonal correction: no -sum m2^2 then
    emu.call("vicreg_finalize_cuda", is_double, partials.check("partials"), splits, n, d,
             float(eps), bool(gram_route and not gram_double), colstats.t, terms.t, flags.t,
             workspace.t)
    centered = torch.stack([_center_scale(z_a, colstats.t[MEAN_A], None),
                            _center_scale(z_b, colstats.t[MEAN_B], None)])
    if gram_double:  # add_exact_gram_covariance, in float64 (torch on the GPU too)
        gram = torch.empty(2, r, r, dtype=torch.float64)
        off = torch.zeros((), dtype=torch.float64)
        for v in range(2):
            x64 = centered[v].double()
            gram[v] = x64 @ x64.T
            off += gram[v].square().sum() - x64.square().sum(0).square().sum()
        terms.t[2] += (off * cov_scale).to(acc)
    else:
        gram = torch.empty(2, r, r, dtype=acc)
        for v in range(2):
            c = centered[v].to(acc)
            gram[v] = c @ c.T if gram_route else c.T @ c
        _frobenius(is_double, [gram[0], gram[1]], [gram[0], gram[1]], r, not gram_route,
                   cov_scale, terms.t, 2, workspace.t)
        if not gram_route:  # the backward's y = x (C - diag C)
            gram.diagonal(0, 1, 2).zero_()
    workspace.check("workspace")
    return (terms.check("terms"), centered, gram, colstats.check("colstats"),
            int(flags.check("flags")[0]))


def vicreg_backward(grad_terms, centered, gram, colstats, gram_route):
    _, n, d = centered.shape
    acc = colstats.dtype
    grad_terms = grad_terms.to(acc).contiguous()
    grad = torch.full_like(centered, float("nan"))
    exact = gram_route and _gram_is_double_dtype(centered.dtype)
    diagonal_in_y = gram_route and not exact
    for v in range(2):
        if exact:  # (x x^T) x - x diag(x^T x) in float64
            x64 = centered[v].double()
            y = (gram[v] @ x64 - x64 * x64.square().sum(0)).to(acc).contiguous()
        else:
            y, alias = _mm_matrix_times(gram[v].to(acc), centered[v], m_on_right=not gram_route)
            if alias:  # written into the gradient buffer and finished in place, as the host does
                grad[v].copy_(y)
                y = grad[v]
        emu.call("vicreg_backward_view_cuda", emu.dtype_code(centered.dtype), grad_terms, y,
                 centered[v], centered[1 - v], colstats, ctypes.c_int(v), n, d,
                 bool(diagonal_in_y), grad[v])
    return grad[0], grad[1]


def barlow_forward(z_a, z_b, gram_route):
    n, d = z_a.shape
    dt, acc = z_a.dtype, emu.acc_dtype(z_a.dtype)
    is_double = emu.is_double(dt)
    splits, partials, workspace, flags = _moments(z_a, z_b)
    colstats = emu.Guarded((K_NUM_COLSTATS, d), acc)
    terms = emu.Guarded((2,), acc)
    emu.call("barlow_twins_finalize_cuda", is_double, partials.check("partials"), splits, n, d,
             bool(gram_route), colstats.t, terms.t, flags.t, workspace.t)
    normalized = torch.stack([
        _center_scale(z_a, colstats.t[MEAN_A], colstats.t[STAT2_A]),
        _center_scale(z_b, colstats.t[MEAN_B], colstats.t[STAT2_B])])
    a, b = normalized[0].to(acc), normalized[1].to(acc)
    gram = torch.stack([a @ a.T, b @ b.T]) if gram_route else (a.T @ b)[None]
    r = gram.shape[1]
    _frobenius(is_double, [gram[0]], [gram[1] if gram_route else gram[0]], r, not gram_route,
               1.0 / (float(n) * n), terms.t, 1, workspace.t)
    workspace.check("workspace")
    return (terms.check("terms"), normalized, gram, colstats.check("colstats"),
            int(flags.check("flags")[0]))


def barlow_backward(grad_terms, normalized, gram, colstats, gram_route):
    _, n, d = normalized.shape
    grad_terms = grad_terms.to(colstats.dtype).contiguous()
    grad = torch.full_like(normalized, float("nan"))
    workspace = emu.Guarded((emu.query_i64("cuda_workspace_bytes", n, d),), torch.uint8)
    for v in range(2):
        if gram_route:
            y, alias = _mm_matrix_times(gram[1 - v], normalized[v], m_on_right=False)
        else:
            y, alias = _mm_matrix_times(gram[0].T if v == 0 else gram[0], normalized[1 - v],
                                        m_on_right=True)
        if alias:
            grad[v].copy_(y)
            y = grad[v]
        emu.call("barlow_twins_backward_view_cuda", emu.dtype_code(normalized.dtype), grad_terms,
                 y, normalized[v], normalized[1 - v], colstats, ctypes.c_int(v), n, d, grad[v],
                 workspace.t)
    workspace.check("workspace")
    return grad[0], grad[1]


def _reference(fn, z_a, z_b, weights):
    a = z_a.double().requires_grad_()
    b = z_b.double().requires_grad_()
    terms = fn(a, b)
    ga, gb = torch.autograd.grad((terms * weights).sum(), (a, b))
    return terms.detach(), ga, gb


def _check_terms_and_grads(terms, grads, ref_terms, ref_grads, dtype, term_scale):
    rtol, atol = _tol(dtype)
    emu.assert_close(terms, ref_terms, rtol, atol * term_scale, "terms")
    gscale = max(g.abs().max().item() for g in ref_grads)
    for name, got, want in zip(("grad_a", "grad_b"), grads, ref_grads):
        assert got.dtype == dtype
        emu.assert_close(got, want, rtol, atol * gscale, name)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("n,d", [(2, 5), (70, 41), (300, 3), (45, 290)])
def test_paired_column_moments(n, d, dtype_name):
    dtype = emu.torch_dtype(dtype_name)
    z_a, z_b = _pair(n, d, dtype, seed=n + d, offset=3.0)
    splits, partials, _, _ = _moments(z_a, z_b)
    assert 1 <= splits <= max(1, -(-n // 32))
    p = partials.check("partials").double()
    a, b = z_a.double(), z_b.double()
    da, db = a - a[0], b - b[0]
    want = torch.stack([da.sum(0), db.sum(0), (da * da).sum(0), (db * db).sum(0),
                        (da * db).sum(0), ((a - b) ** 2).sum(0)])
    got = p[:, :SHIFT_A].sum(0)
    # accumulated in double for every dtype (the rounded inputs are exact in double)
    emu.assert_close(got, want, 1e-12, 1e-12 * want.abs().max().item(), "moment sums")
    for k in range(splits):  # every split writes the shifts (the finalize reads split 0's)
        emu.assert_close(p[k, SHIFT_A], a[0], 0, 0, "shift_a")
        emu.assert_close(p[k, SHIFT_B], b[0], 0, 0, "shift_b")


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("n,d", [(2, 3), (9, 37)])
def test_center_scale_columns(n, d, dtype_name, with_scale):
    dtype = emu.torch_dtype(dtype_name)
    acc = emu.acc_dtype(dtype)
    z, _ = _pair(n, d, dtype, seed=d)
    mean = torch.linspace(-1, 1, d, dtype=acc)
    scale = torch.linspace(0.5, 2, d, dtype=acc) if with_scale else None
    out = _center_scale(z, mean, scale)
    want = (z.double() - mean.double()) * (scale.double() if with_scale else 1.0)
    u = emu.unit_roundoff(dtype)
    rtol = 2 * u if dtype != torch.float64 else 1e-15
    emu.assert_close(out, want, rtol, 1e-7 if dtype == torch.float32 else 0.0, "centered")


def test_center_scale_columns_grid_stride():
    """N * D above the 4096 blocks x 256 threads of one grid pass: every thread walks the
    grid-stride loop (cuda::GridStrideCursor) with a column step that wraps past D. The column
    vectors have guard entries after them, so a column index of D reads garbage."""
    n, d = 1031, 1021
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    mean = emu.Guarded((d,), torch.float32, fill=0.0)
    scale = emu.Guarded((d,), torch.float32, fill=0.0)
    mean.t.copy_(torch.linspace(-1, 1, d))
    scale.t.copy_(torch.linspace(0.5, 2, d))
    out = _center_scale(z, mean.t, scale.t)
    want = (z.double() - mean.t.double()) * scale.t.double()
    emu.assert_close(out, want, 2 * emu.unit_roundoff(torch.float32), 1e-7, "centered")


@pytest.mark.parametrize("is_double", [False, True])
@pytest.mark.parametrize("pairs", [1, 2])
@pytest.mark.parametrize("r,skip", [(1, False), (5, True), (45, True), (530, True), (530, False)])
def test_add_frobenius_dots(r, skip, pairs, is_double):
    """The Frobenius sums add into terms[index] (other entries untouched); r = 530 has more
    elements than 1024 blocks x 256 threads: grid-stride iterations with the diagonal skip."""
    acc = torch.float64 if is_double else torch.float32
    g = torch.Generator().manual_seed(r)
    us = [torch.randn(r, r, generator=g, dtype=torch.float64).to(acc) for _ in range(pairs)]
    vs = [torch.randn(r, r, generator=g, dtype=torch.float64).to(acc) for _ in range(pairs)]
    terms = emu.Guarded((3,), acc)
    terms.t.copy_(torch.tensor([1.5, -2.0, 0.25]))
    workspace = emu.Guarded((emu.query_i64("cuda_workspace_bytes", 2, 1),), torch.uint8)
    _frobenius(is_double, us, vs, r, skip, 0.75, terms.t, 1, workspace.t)
    workspace.check("workspace")
    mask = 1.0 - torch.eye(r, dtype=torch.float64) if skip else 1.0
    want = 0.75 * sum((u.double() * v.double() * mask).sum() for u, v in zip(us, vs))
    got = terms.check("terms")
    assert got[0].item() == 1.5 and got[2].item() == 0.25
    rtol = 1e-12 if is_double else 1e-5
    emu.assert_close(got[1], torch.tensor(-2.0 + want.item(), dtype=torch.float64), rtol,
                     rtol * sum(u.double().abs().sum().item() for u in us))


def test_add_frobenius_dots_rejects_three_pairs():
    x = torch.zeros(2, 2)
    terms = torch.zeros(3)
    ws = torch.zeros(emu.query_i64("cuda_workspace_bytes", 2, 1), dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="pairs"):
        _frobenius(False, [x, x, x], [x, x, x], 2, False, 1.0, terms, 0, ws)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("gram_route", [False, True], ids=["cov", "gram"])
@pytest.mark.parametrize("n,d", SHAPES)
def test_vicreg(n, d, gram_route, dtype_name):
    dtype = emu.torch_dtype(dtype_name)
    eps = 1e-4
    z_a, z_b = _pair(n, d, dtype, seed=11 * n + d, offset=2.0)
    terms, centered, gram, colstats, flags = vicreg_forward(z_a, z_b, eps, gram_route)
    assert flags == 0
    weights = torch.tensor([25.0, 25.0, 1.0], dtype=torch.float64)
    ga, gb = vicreg_backward(weights, centered, gram, colstats, gram_route)
    ref_terms, ra, rb = _reference(lambda a, b: vicreg_terms_reference(a, b, eps), z_a, z_b,
                                   weights)
    # column statistics against their definitions
    a, b = z_a.double(), z_b.double()
    rtol, atol = _tol(dtype)
    emu.assert_close(colstats[MEAN_A], a.mean(0), rtol, atol * a.abs().max().item(), "mean_a")
    emu.assert_close(colstats[STAT3_B], (b.var(0) + eps).sqrt(), rtol, atol, "std_b")
    emu.assert_close(colstats[STAT2_A], ((a - a.mean(0)) ** 2).sum(0), rtol,
                     atol * (a * a).sum(0).max().item(), "m2_a")
    _check_terms_and_grads(terms, (ga, gb), ref_terms, (ra, rb), dtype,
                           term_scale=ref_terms.abs().max().item())


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("gram_route", [False, True], ids=["cov", "gram"])
@pytest.mark.parametrize("n,d", SHAPES)
def test_barlow_twins(n, d, gram_route, dtype_name):
    dtype = emu.torch_dtype(dtype_name)
    z_a, z_b = _pair(n, d, dtype, seed=13 * n + d, offset=-1.0)
    terms, normalized, gram, colstats, flags = barlow_forward(z_a, z_b, gram_route)
    assert flags == 0
    weights = torch.tensor([1.0, 5e-3], dtype=torch.float64) * 3.0
    ga, gb = barlow_backward(weights, normalized, gram, colstats, gram_route)
    ref_terms, ra, rb = _reference(barlow_twins_terms_reference, z_a, z_b, weights)
    rtol, atol = _tol(dtype)
    a, b = z_a.double(), z_b.double()
    emu.assert_close(colstats[STAT2_A], 1.0 / (a.var(0, unbiased=False) + 1e-5).sqrt(), rtol,
                     atol, "inv_std_a")
    c = _cross_correlation_diagonal(a, b)
    emu.assert_close(colstats[STAT3_A], c, rtol, atol, "c_diag")
    emu.assert_close(colstats[STAT3_B], c - 1.0, rtol, atol, "c_diag - 1")
    # the on-diagonal term sums d terms of size <= ~1, the off-diagonal one d^2 of size ~1/n
    _check_terms_and_grads(terms, (ga, gb), ref_terms, (ra, rb), dtype,
                           term_scale=max(1.0, ref_terms.abs().max().item()))


def _cross_correlation_diagonal(a, b):
    """diag(C) of Barlow Twins, C = BN(a)^T BN(b) / n, in float64."""
    def bn(x):
        return (x - x.mean(0)) / (x.var(0, unbiased=False) + 1e-5).sqrt()
    return (bn(a) * bn(b)).sum(0) / a.shape[0]


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
@pytest.mark.parametrize("gram_route", [False, True], ids=["cov", "gram"])
def test_barlow_twins_highly_correlated_views(gram_route, dtype_name):
    """Views equal up to 1e-3 noise: C_ii = 1 - O(1e-6). The on-diagonal term and its gradient
    are proportional to C_ii - 1, which the finalize stores from double (colstats[STAT3_B])."""
    dtype = emu.torch_dtype(dtype_name)
    g = torch.Generator().manual_seed(21)
    base = torch.randn(37, 45, generator=g, dtype=torch.float64)
    z_a = (base + 1e-3 * torch.randn(37, 45, generator=g, dtype=torch.float64)).to(dtype)
    z_b = (base + 1e-3 * torch.randn(37, 45, generator=g, dtype=torch.float64)).to(dtype)
    terms, normalized, gram, colstats, flags = barlow_forward(z_a, z_b, gram_route)
    c = _cross_correlation_diagonal(z_a.double(), z_b.double())
    rtol = 1e-9 if dtype == torch.float64 else 2e-4
    # float64: c - 1 is formed from c ~ 1, one rounding of 1 (1e-16) absolute
    emu.assert_close(colstats[STAT3_B], c - 1.0, rtol, 1e-14 if dtype == torch.float64 else 0.0,
                     "c_diag - 1")
    weights = torch.tensor([1.0, 0.0], dtype=torch.float64)  # the on-diagonal term only
    ga, gb = barlow_backward(weights, normalized, gram, colstats, gram_route)
    ref_terms, ra, rb = _reference(barlow_twins_terms_reference, z_a, z_b, weights)
    emu.assert_close(terms[0], ref_terms[0], rtol, 0.0, "on-diagonal term")
    # float32: 3.5e-5 of the largest gradient measured; recomputing c - 1 from the rounded c
    # in the backward gives 5e-4
    gscale = max(ra.abs().max().item(), rb.abs().max().item())
    gatol = (1e-4 if dtype == torch.float32 else 1e-9) * gscale
    emu.assert_close(ga, ra, rtol, gatol, "grad_a")
    emu.assert_close(gb, rb, rtol, gatol, "grad_b")


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("where,expected", [("none", 0), ("a", NONFINITE_A), ("b", NONFINITE_B),
                                            ("ab", NONFINITE_A | NONFINITE_B)])
@pytest.mark.parametrize("loss", ["vicreg", "barlow"])
def test_non_finite_flags(loss, where, expected, dtype_name):
    """The finalize kernels flag which view holds NaN/Inf; the flags of a column in the second
    finalize block (D > 256) must reach the merged result."""
    dtype = emu.torch_dtype(dtype_name)
    z_a, z_b = _pair(40, 290, dtype, seed=5)
    if "a" in where:
        z_a[7, 280] = float("inf")
    if "b" in where:
        z_b[39, 3] = float("nan")
    if loss == "vicreg":
        flags = vicreg_forward(z_a, z_b, 1e-4, gram_route=True)[4]
    else:
        flags = barlow_forward(z_a, z_b, gram_route=False)[4]
    assert flags == expected


def test_launcher_exceptions_reach_python():
    """emu.call turns a launcher's C++ exception into RuntimeError with its message."""
    with pytest.raises(RuntimeError, match="emu_add_frobenius_dots_cuda"):
        _frobenius(False, [], [], 2, False, 1.0, torch.zeros(3), 0,
                   torch.zeros(8192, dtype=torch.uint8))
