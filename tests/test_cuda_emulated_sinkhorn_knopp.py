"""The Sinkhorn-Knopp CUDA launchers (csrc/cluster/sinkhorn_knopp_cuda.cu) run on the CPU under
HIP-CPU emulation (tests/cuda_emu), against float64 references.

Each launcher (column stats, row potential, plan, fused row step + plan) is checked on its own
against the float64 formula of its header (sinkhorn_knopp_kernels.h), and the whole CUDA branch
of the host op (sinkhorn_knopp.cpp: column step, column potential in torch, row steps, the last
one fused with the plan; potentials passed as float32 (hi, lo) pairs for non-float64 scores) is
replayed and compared with jem_fast.reference.clustering.sinkhorn_knopp_log_reference and with
the CPU op.

Shapes: K not a multiple of the 256-thread column block or of the row block, several row slices
of the column step (the last one short), K > 256 (threads stride the row step), B = K = 1, and
|S / eps| ~ 1e4 (float-float exponents). -inf scores, in particular a column whose FIRST rows
and a row whose FIRST columns are -inf followed by finite values: the online log-sum-exp must
skip exp(-inf - -inf) (NaN) as the CPU kernels do.

Tolerances: the kernels read the scores in their own dtype (the references get the same rounded
values in float64). Potentials and statistics are float64; for other score dtypes the exponents
are formed in float-float (~48 bits) and exponentiated in float32. So column maxima are exact to
~1e-13 (atol 1e-11), LSEs and potentials to a few float32 ulps of a sum of exps (atol 1e-6,
measured 2e-7), and Q = exp(z) to the float32 rounding of its exponent: relative
(|log Q| + 4) 2^-22 elementwise (check_q). float64: 1e-11 to 1e-12.
"""
import math

import pytest
import torch

from cuda_emu import emu
from jem_fast.reference.clustering import sinkhorn_knopp_log_reference

pytestmark = pytest.mark.cuda_emu

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (B, K): one column block and slice; K tail over 2 blocks; many slices, last one short; row step
# with K > blockDim; 1 x 1.
SHAPES = [(37, 300), (333, 257), (300, 70), (5, 1000), (1, 1)]


@pytest.fixture(scope="module", autouse=True)
def _lib():
    return emu.load()


def acc_of(dtype):
    return emu.acc_dtype(dtype)


def log_tol(dtype):
    """Log-domain values: LSEs, potentials (float64 outputs, float32 sums of exps)."""
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-7, atol=1e-6)


def max_tol(dtype):
    """Column maxima: scale S + f formed in float-float (~48 bits) for non-float64 scores."""
    return dict(rtol=1e-13, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-12, atol=1e-11)


def check_q(Q, want, dtype):
    """Q = exp(z) with z exact to ~48 bits, rounded to float32 before a float32 exp: relative
    error ~(|z| + 1) 2^-24 (|z| <= |log Q| + small); plus a few ulps from the potentials. float64:
    1e-11 relative."""
    got = Q.double()
    if dtype == torch.float64:
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-300)
        return
    tiny = 2.0 ** -149  # float32 subnormal spacing
    pos = want > 0
    bound = torch.where(pos, want * (want.clamp_min(1e-300).log().abs() + 4) * 2.0 ** -22,
                        torch.zeros_like(want)) + tiny
    err = (got - want).abs()
    bad = ~(err <= bound)
    if bad.any():
        i = tuple(int(j) for j in bad.nonzero()[0])
        raise AssertionError(f"{int(bad.sum())} of {want.numel()} plan entries off; first at {i}: "
                             f"got {got[i].item():.9g}, want {want[i].item():.9g}, "
                             f"bound {bound[i].item():.3g}; worst ratio "
                             f"{(err / bound).max().item():.3g}")


def cpu_tol(dtype):
    """Emulated CUDA vs the CPU op: both carry their own float32 rounding (the float64 reference
    is the precise oracle; this only catches a gross disagreement between the two kernels)."""
    return dict(rtol=1e-10, atol=1e-300) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-30)


def make_scores(B, K, dtype, seed, lo=-1.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(B, K, generator=g, dtype=torch.float64)).to(dtype)


# ------------------------------------------------------------------------------------------------
# The launchers, called as the host op calls them (fresh outputs filled with NaN so that an
# element a kernel forgets to write cannot pass).
# ------------------------------------------------------------------------------------------------

def potential_pair(p, dtype):
    """A float64 potential as the CUDA launchers take it (sinkhorn_knopp.cpp, cuda_potential):
    itself for float64 scores, else float32 (hi, lo) with hi + lo == p."""
    if p is None:
        return None, None
    p = p.to(torch.float64).contiguous()
    if dtype == torch.float64:
        return p, None
    hi = p.float()
    lo = torch.nan_to_num(p - hi.double(), 0.0, 0.0, 0.0).float()
    return hi, lo


def column_stats(S, scale, f=None):
    B, K = S.shape
    n = torch.zeros(1, dtype=torch.int64)
    emu.call("sinkhorn_column_stats_partials_cuda", B, K, n)
    slices = int(n)
    assert slices >= 1
    partial = torch.full((slices, 2, K), float("nan"), dtype=torch.float64)
    stats = torch.full((2, K), float("nan"), dtype=torch.float64)
    f_hi, f_lo = potential_pair(f, S.dtype)
    emu.call("sinkhorn_column_stats_cuda", emu.dtype_code(S.dtype), S, B, K, float(scale), f_hi,
             f_lo, partial, stats[0], stats[1])
    return stats, slices


def row_potential(S, scale, g, log_rows):
    B, K = S.shape
    f = torch.full((B,), float("nan"), dtype=torch.float64)
    g_hi, g_lo = potential_pair(g, S.dtype)
    emu.call("sinkhorn_row_potential_cuda", emu.dtype_code(S.dtype), S, B, K, float(scale), g_hi,
             g_lo, float(log_rows), f)
    return f


def plan(S, scale, f, g, rows):
    B, K = S.shape
    Q = torch.full((B, K), float("nan"), dtype=acc_of(S.dtype))
    g_hi, g_lo = potential_pair(g, S.dtype)
    emu.call("sinkhorn_plan_cuda", emu.dtype_code(S.dtype), S, B, K, float(scale),
             f.to(torch.float64).contiguous(), g_hi, g_lo, float(rows), Q)
    return Q


def row_plan(S, scale, g, log_rows):
    B, K = S.shape
    Q = torch.full((B, K), float("nan"), dtype=acc_of(S.dtype))
    f = torch.full((B,), float("nan"), dtype=torch.float64)
    g_hi, g_lo = potential_pair(g, S.dtype)
    emu.call("sinkhorn_row_plan_cuda", emu.dtype_code(S.dtype), S, B, K, float(scale), g_hi, g_lo,
             float(log_rows), f, Q)
    return Q, f


def sinkhorn_emulated(scores, epsilon, iterations):
    """The CUDA branch of jem_fast::sinkhorn_knopp (csrc/cluster/sinkhorn_knopp.cpp)."""
    S = scores.contiguous()
    B, K = S.shape
    scale = 1.0 / epsilon
    log_rows = math.log(B)
    if iterations == 0:
        stats, _ = column_stats(S, scale, None)
        total_lse = torch.logsumexp(stats[1].log() + stats[0], 0)
        f = (-total_lse).expand(B).contiguous()
        g = torch.zeros(K, dtype=torch.float64)
        return plan(S, scale, f, g, float(B))
    f = None
    for it in range(iterations):
        stats, _ = column_stats(S, scale, f)
        g = -(stats[1].log() + stats[0]) - math.log(K)
        if it + 1 < iterations:
            f = row_potential(S, scale, g, log_rows)
        else:
            Q, f = row_plan(S, scale, g, log_rows)  # last row step + plan
    return Q


# ------------------------------------------------------------------------------------------------
# Launcher by launcher
# ------------------------------------------------------------------------------------------------

def check_column_stats(S, scale, f):
    stats, slices = column_stats(S, scale, f)
    x = scale * S.double() + (0.0 if f is None else f.double()[:, None])
    want_max = x.amax(0)
    want_lse = torch.logsumexp(x, 0)
    got_lse = stats[0].double() + stats[1].double().log()
    assert torch.isfinite(stats).all(), "column stats not finite"
    torch.testing.assert_close(stats[0].double(), want_max, **max_tol(S.dtype))
    torch.testing.assert_close(got_lse, want_lse, **log_tol(S.dtype))
    return slices


SCALE = 1.0 / 0.03  # not a float32 number: the float-float scale has a low part


def random_potential(n, seed, lo, hi):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, K", SHAPES)
def test_column_stats(dtype, B, K):
    S = make_scores(B, K, dtype, seed=B * 1000 + K)
    f = random_potential(B, 7, -3, 3)
    slices = check_column_stats(S, SCALE, None)
    check_column_stats(S, SCALE, f)
    if (B, K) in ((333, 257), (300, 70)):
        # coverage of these shapes (with the kernel's current slicing constants): several row
        # slices, the last one shorter than the others
        assert slices > 1 and B % slices != 0, f"{slices} row slices for B = {B}, K = {K}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, K", SHAPES)
def test_row_potential(dtype, B, K):
    S = make_scores(B, K, dtype, seed=B * 1000 + K + 1)
    g = random_potential(K, 3, -3, 3)
    log_rows = math.log(B + 3)
    f = row_potential(S, SCALE, g, log_rows)
    assert f.dtype == torch.float64
    want = -log_rows - torch.logsumexp(SCALE * S.double() + g, 1)
    torch.testing.assert_close(f, want, **log_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, K", SHAPES)
def test_plan(dtype, B, K):
    S = make_scores(B, K, dtype, seed=B * 1000 + K + 2)
    f = random_potential(B, 5, -37, -33)
    g = random_potential(K, 6, -2, 2)
    Q = plan(S, SCALE, f, g, float(B))
    assert Q.dtype == acc_of(dtype)
    want = B * torch.exp(SCALE * S.double() + f[:, None] + g)
    check_q(Q, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, K", SHAPES)
def test_row_plan(dtype, B, K):
    """The last row step fused with the plan: f as row_potential, Q = softmax_k(scale S + g)."""
    S = make_scores(B, K, dtype, seed=B * 1000 + K + 3)
    g = random_potential(K, 8, -3, 3)
    log_rows = math.log(B)
    Q, f = row_plan(S, SCALE, g, log_rows)
    z = SCALE * S.double() + g
    torch.testing.assert_close(f, -log_rows - torch.logsumexp(z, 1), **log_tol(dtype))
    check_q(Q, torch.softmax(z, 1), dtype)
    torch.testing.assert_close(Q.double().sum(1), torch.ones(B, dtype=torch.float64), rtol=0,
                               atol=1e-12 if dtype == torch.float64 else K * 2e-7)


# ------------------------------------------------------------------------------------------------
# The whole op (CUDA branch of the host loop) against the float64 reference and the CPU op
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, K, epsilon, iterations", [
    (37, 300, 0.05, 3), (333, 257, 0.05, 3), (300, 70, 0.5, 2), (5, 1000, 0.02, 1),
    (64, 40, 0.05, 0), (1, 1, 0.05, 3)])
def test_sinkhorn_op(dtype, B, K, epsilon, iterations):
    scores = make_scores(B, K, dtype, seed=11 + B + K)
    Q = sinkhorn_emulated(scores, epsilon, iterations)
    assert Q.dtype == acc_of(dtype) and Q.shape == (B, K)
    want = sinkhorn_knopp_log_reference(scores.double(), epsilon, iterations)
    check_q(Q, want, dtype)
    cpu = torch.ops.jem_fast.sinkhorn_knopp(scores, epsilon, iterations, True)
    torch.testing.assert_close(Q.double(), cpu.double(), **cpu_tol(dtype))
    if iterations > 0:  # every row of Q sums to 1 (to the rounding of Q's dtype)
        torch.testing.assert_close(Q.double().sum(1), torch.ones(B, dtype=torch.float64),
                                   rtol=0, atol=1e-12 if dtype == torch.float64 else K * 2e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sinkhorn_op_large_logits(dtype):
    """Scores up to 100 at epsilon 0.01: |S / eps| ~ 1e4 and potentials of that size, where
    float32 potentials would leave ~1e-3 of rounding in every exponent; the float-float exponents
    keep the plan at float32 accuracy (sinkhorn_knopp_kernels.h, Precision)."""
    B, K = 50, 300
    scores = make_scores(B, K, dtype, seed=1, lo=-100.0, hi=100.0)
    Q = sinkhorn_emulated(scores, 0.01, 3)
    want = sinkhorn_knopp_log_reference(scores.double(), 0.01, 3)
    check_q(Q, want, dtype)
    torch.testing.assert_close(Q.double().sum(1), torch.ones(B, dtype=torch.float64), rtol=0,
                               atol=1e-12 if dtype == torch.float64 else K * 2e-7)


# ------------------------------------------------------------------------------------------------
# -inf scores: leading -inf in a column (column step) and in a row (row step), then finite values
# ------------------------------------------------------------------------------------------------

def scores_with_leading_neg_inf(B, K, dtype, seed):
    S = make_scores(B, K, dtype, seed)
    # column 3: its first rows -inf (the first row slice entirely, the next one partly), then finite
    S[: min(B - 2, 20), 3] = float("-inf")
    # row 1: its first columns -inf (every thread of the 256-thread row block starts on -inf and
    # the first threads see a second -inf), then finite values
    S[1, : min(K - 2, 300)] = float("-inf")
    # scattered -inf elsewhere
    S[B // 2, K // 2] = float("-inf")
    S[B - 1, K - 1] = float("-inf")
    return S


@pytest.mark.parametrize("dtype", DTYPES)
def test_column_stats_leading_neg_inf(dtype):
    B, K = 37, 513
    S = scores_with_leading_neg_inf(B, K, dtype, seed=21)
    _, slices = column_stats(S, 20.0, None)
    assert slices >= 2  # column 3: one slice all -inf, the next starting with -inf
    check_column_stats(S, 20.0, None)
    f = torch.linspace(-2, 2, B, dtype=torch.float64).to(acc_of(dtype))
    check_column_stats(S, 20.0, f)


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_potential_leading_neg_inf(dtype):
    B, K = 37, 513
    S = scores_with_leading_neg_inf(B, K, dtype, seed=22)
    g = torch.linspace(-1, 1, K, dtype=torch.float64).to(acc_of(dtype))
    f = row_potential(S, 20.0, g, math.log(B))
    assert torch.isfinite(f).all(), f"row potential not finite: {f}"
    want = -math.log(B) - torch.logsumexp(20.0 * S.double() + g.double(), 1)
    torch.testing.assert_close(f.double(), want, **log_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sinkhorn_op_leading_neg_inf(dtype):
    B, K = 37, 513
    S = scores_with_leading_neg_inf(B, K, dtype, seed=23)
    Q = sinkhorn_emulated(S, 0.05, 3)
    assert torch.isfinite(Q).all(), "plan not finite"
    assert (Q[S == float("-inf")] == 0).all()
    want = sinkhorn_knopp_log_reference(S.double(), 0.05, 3)
    check_q(Q, want, dtype)
    cpu = torch.ops.jem_fast.sinkhorn_knopp(S, 0.05, 3, True)
    torch.testing.assert_close(Q.double(), cpu.double(), **cpu_tol(dtype))


# ------------------------------------------------------------------------------------------------
# Precision (issue 11): the rule of tests/test_precision_clustering.py on the CUDA branch (float-
# float exponents), float32 scores: codes, row sums and column sums within 4x the float32
# baseline's error against float64 truth, up to |S| / eps ~ 2e7; rows sum to 1 for any finite
# scores.
# ------------------------------------------------------------------------------------------------

from test_precision_clustering import check_sinkhorn, sinkhorn_scores  # noqa: E402


@pytest.mark.parametrize("kind, B, K, epsilon, magnitude, iterations", [
    ("cosine", 64, 300, 0.05, 1.0, 3),      # SwAV's defaults
    ("cosine", 64, 500, 1e-4, 1.0, 3),      # |S| / eps ~ 1e4
    ("normal", 96, 40, 0.05, 1e3, 3),       # 2e4 (rows were off by 1.2e-3)
    ("normal", 96, 40, 0.05, 1e6, 3),       # 2e7 (rows were off by O(1))
    ("normal", 96, 40, 5e-5, 1.0, 1),
])
def test_precision_float32(kind, B, K, epsilon, magnitude, iterations):
    S = sinkhorn_scores(kind, B, K, magnitude, seed=B + K)
    check_sinkhorn(sinkhorn_emulated(S, epsilon, iterations), S, epsilon, iterations)


@pytest.mark.parametrize("epsilon, magnitude", [(1e-9, 1.0), (1e-29, 1e8), (1.0, 3e38)])
def test_rows_sum_to_one_for_any_finite_scores(epsilon, magnitude):
    """|S| / eps up to ~3e38: the float-float exponents of the CUDA kernels hold float32's range
    (beyond it the op raises; float64 scores go to ~1e307)."""
    B, K = 64, 50
    S = sinkhorn_scores("normal", B, K, magnitude, seed=3).clamp(-3e38, 3e38)
    Q = sinkhorn_emulated(S, epsilon, 3)
    assert torch.isfinite(Q).all() and (Q >= 0).all()
    assert (Q.double().sum(1) - 1).abs().max().item() <= 4 * K * 2.0 ** -24
