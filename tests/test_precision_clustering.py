"""float32 precision of the clustering losses (DINOLoss, SwaVLoss, the multi-view cross-entropy op)
and of Sinkhorn-Knopp against float64 truth, relative to the library they replace (issue 11,
items 4 and 5b).

The rule: in float32, the loss value and each input gradient have an error against the float64
truth (jem_fast.reference in float64) of at most 4x the float32 error of lightly on the same input
(where lightly is importable; otherwise of the plain float32 formula, jem_fast.reference evaluated
in float32), with a floor of a few float32 ulps of the quantity's natural scale. Errors are
relative: the value's |v - t| / |t|; for a gradient the worst row's ||g - t|| / ||t|| (a row is one
sample's logits, judged on its own scale) and the median elementwise |g - t| / |t| over the
entries float32 can represent (|t| >= its smallest normal). A row of one logit (K = 1) has a true
loss and gradient of exactly 0 and must get exactly 0.

Sinkhorn-Knopp: the codes Q, their row sums (1 by definition) and their column sums (~B/K), each
against the float64 log-domain reference on the same float32 scores, relative to the better of
lightly's `sinkhorn` (where importable and finite: it overflows once |S| / eps > ~88) and the
float32 log-domain reference; natural scales 1, 1 and B/K. Up to |S| / eps ~ 2e7 (beyond, the
float64 truth itself carries ~|S| / eps * 2^-52 of rounding per exponent); for any finite larger
magnitude the rows still sum to 1 to float32 rounding.

Regimes: student temperatures 0.01-10, teacher temperatures 0.01-1, K up to 65536 (DINO's
default), confident teachers, logits of magnitude 100 at temperature 0.01, |S| / eps from 20 to
2e7.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from jem_fast.losses import DINOLoss, SwaVLoss
from jem_fast.ops import multiview_cross_entropy, sinkhorn_knopp
from jem_fast.reference import (dino_loss_reference, sinkhorn_knopp_log_reference,
                                swav_loss_reference)

try:  # CI's second stage installs lightly; without it the baseline is the plain formula
    import lightly.loss as lightly_loss
    from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn
except ImportError:  # pragma: no cover - depends on the environment
    lightly_loss = None
    lightly_sinkhorn = None

from precision_utils import FACTOR, FLOOR, U  # noqa: E402,F401  (one rule for every family)
from precision_utils import check as _check_rule  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    """Small problems: few intra-op threads are as fast (and immune to a loaded machine); the
    errors do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


def _randn(n, B, K, sigma, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(sigma * torch.randn(B, K, generator=g, dtype=torch.float64)).to(dtype)
            for _ in range(n)]


def value_and_grads(fn, xs):
    xs = [x.detach().clone().requires_grad_() for x in xs]
    value = fn(xs).reshape(())
    grads = torch.autograd.grad(value, xs, allow_unused=True, materialize_grads=True)
    return value.detach().double(), [g.double() for g in grads]


def errors(result, truth):
    """(value, worst-row gradient, median elementwise gradient) relative errors."""
    value = ((result[0] - truth[0]).abs() / truth[0].abs()).item()
    rows, median = 0.0, 0.0
    for g, t in zip(result[1], truth[1]):
        norm = t.norm(dim=1)
        live = norm > 0
        if live.any():
            rows = max(rows, ((g - t).norm(dim=1)[live] / norm[live]).max().item())
        # entries float32 cannot hold as normal numbers (a teacher probability of 1e-44 under
        # temperature 0.01) are not a question of float32 accuracy
        nz = t.abs() >= torch.finfo(torch.float32).tiny
        if nz.any():
            median = max(median, ((g - t).abs()[nz] / t.abs()[nz]).median().item())
    return value, rows, median


def check(mine, baseline, truth, what):
    """Asserts the rule for (value, gradients) results; shared with the emulated CUDA tests."""
    return _check_rule(mine, baseline, truth, what, measure=errors,
                       names=("value", "gradient (worst row)", "gradient (median)"))


# ---------------------------------------------------------------------------- DINO
def _dino_case(K, B, n_teacher, n_student, teacher_temp, student_temp, t_sigma, s_sigma, seed):
    teacher = _randn(n_teacher, B, K, t_sigma, seed)
    student = _randn(n_student, B, K, s_sigma, seed + 1)
    center64 = torch.zeros(K, dtype=torch.float64)
    t64 = [t.double() for t in teacher]
    truth = value_and_grads(
        lambda xs: dino_loss_reference(t64, xs, center64, teacher_temp, student_temp)[0],
        [s.double() for s in student])

    def jem(xs):
        loss = DINOLoss(output_dim=K, warmup_teacher_temp=teacher_temp, teacher_temp=teacher_temp,
                        student_temp=student_temp)
        return loss(teacher, xs)

    mine = value_and_grads(jem, student)
    if lightly_loss is not None:
        def baseline_fn(xs):
            loss = lightly_loss.DINOLoss(output_dim=K, warmup_teacher_temp=teacher_temp,
                                         teacher_temp=teacher_temp, student_temp=student_temp)
            return loss(teacher, xs)
    else:
        center32 = torch.zeros(K, dtype=torch.float32)

        def baseline_fn(xs):
            return dino_loss_reference(teacher, xs, center32, teacher_temp, student_temp)[0]
    baseline = value_and_grads(baseline_fn, student)
    return mine, baseline, truth


# (K, B, teacher crops, student crops, teacher temp, student temp, teacher sigma, student sigma)
DINO_CASES = [
    (65536, 2, 2, 3, 0.04, 0.1, 1.0, 5.0),     # lightly's defaults, the magnitude (~215)
    (65536, 2, 2, 2, 0.04, 0.1, 1.0, 1.0),
    (4096, 4, 2, 4, 0.04, 0.01, 1.0, 3.0),     # student temperature 0.01: logits ~ 1e3
    (4096, 4, 2, 4, 0.01, 0.1, 3.0, 3.0),      # one-hot teachers
    (4096, 4, 2, 4, 0.04, 1.0, 1.0, 3.0),
    (4096, 4, 2, 4, 1.0, 10.0, 1.0, 3.0),      # flat teachers, student temperature 10
    (1000, 8, 1, 3, 0.1, 0.05, 1.0, 1.0),      # a single teacher crop
]


@pytest.mark.parametrize("K, B, n_t, n_s, tt, st, t_sigma, s_sigma", DINO_CASES)
def test_dino_float32_error_within_the_baseline(K, B, n_t, n_s, tt, st, t_sigma, s_sigma):
    mine, baseline, truth = _dino_case(K, B, n_t, n_s, tt, st, t_sigma, s_sigma, seed=K + B)
    check(mine, baseline, truth, f"DINOLoss K={K} teacher_temp={tt} student_temp={st}")


def test_dino_single_logit_is_exactly_zero():
    """K = 1: every softmax is 1, the loss and every gradient are exactly 0 (as in lightly);
    the fused p . x - W LSE form returned ~3e-6 of gradient noise."""
    for tt, st, sigma in ((0.04, 0.1, 1.0), (0.07, 0.03, 30.0), (1.0, 10.0, 1e3)):
        teacher = _randn(2, 16, 1, sigma, seed=1)
        student = _randn(5, 16, 1, sigma, seed=2)
        value, grads = value_and_grads(
            lambda xs: DINOLoss(output_dim=1, warmup_teacher_temp=tt, teacher_temp=tt,
                                student_temp=st)(teacher, xs), student)
        assert value.item() == 0.0
        for g in grads:
            assert (g == 0).all(), f"K=1 gradient noise {g.abs().max().item():.3g}"


# ---------------------------------------------------------------------------- SwaV
def _prototype_scores(n, B, K, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(K, 32, generator=g, dtype=torch.float64), dim=1)
    return [(F.normalize(torch.randn(B, 32, generator=g, dtype=torch.float64), dim=1) @ c.T)
            .to(dtype) for _ in range(n)]


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("n_low, queue", [(2, False), (4, True)])
def test_swav_float32_error_within_the_baseline(temperature, n_low, queue):
    B, K = 32, 300
    crops = _prototype_scores(2 + n_low, B, K, seed=int(temperature * 100) + n_low)
    queue_outputs = _prototype_scores(2, 64, K, seed=7) if queue else None
    queue64 = [q.double() for q in queue_outputs] if queue else None

    def split(xs):
        return xs[:2], xs[2:]

    truth = value_and_grads(
        lambda xs: swav_loss_reference(*split(xs), queue64, temperature=temperature),
        [c.double() for c in crops])
    mine = value_and_grads(
        lambda xs: SwaVLoss(temperature=temperature)(*split(xs), queue_outputs), crops)
    if lightly_loss is not None:
        baseline_fn = lambda xs: lightly_loss.SwaVLoss(temperature=temperature)(  # noqa: E731
            *split(xs), queue_outputs)
    else:
        baseline_fn = lambda xs: swav_loss_reference(  # noqa: E731
            *split(xs), queue_outputs, temperature=temperature)
    baseline = value_and_grads(baseline_fn, crops)
    check(mine, baseline, truth, f"SwaVLoss temperature={temperature} queue={queue}")


# ---------------------------------------------------------------------------- the op
@pytest.mark.parametrize("temperature, sigma, K", [(0.01, 100.0, 2048), (0.01, 1.0, 65536),
                                                   (10.0, 1.0, 4096), (0.1, 30.0, 512)])
def test_multiview_ce_float32_error_within_the_plain_formula(temperature, sigma, K):
    """The op on its own with confident targets close to the students' own softmax (the
    gradient W p - Y nearly cancels) and logits up to |x / T| ~ 1e4."""
    B, T, V = 2, 2, 3
    logits = _randn(V, B, K, sigma, seed=K)
    g = torch.Generator().manual_seed(1)
    targets = [torch.softmax((logits[t].double() + 0.1 * sigma * torch.randn(
        B, K, generator=g, dtype=torch.float64)) / temperature, 1).float() for t in range(T)]

    def plain(ys, xs):
        total, pairs = 0.0, 0
        for t, y in enumerate(ys):
            for v, x in enumerate(xs):
                if v != t:
                    total = total - (y * F.log_softmax(x / temperature, 1)).sum(1).mean()
                    pairs += 1
        return total / pairs

    t64 = [y.double() for y in targets]
    truth = value_and_grads(lambda xs: plain(t64, xs), [x.double() for x in logits])
    mine = value_and_grads(lambda xs: multiview_cross_entropy(targets, xs, temperature), logits)
    baseline = value_and_grads(lambda xs: plain(targets, xs), logits)
    check(mine, baseline, truth, f"multiview_cross_entropy T={temperature} |x|~{sigma}")


# ---------------------------------------------------------------------------- Sinkhorn-Knopp
def sinkhorn_scores(kind, B, K, magnitude, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "cosine":
        z = F.normalize(torch.randn(B, 16, generator=g, dtype=torch.float64), dim=1)
        c = F.normalize(torch.randn(K, 16, generator=g, dtype=torch.float64), dim=1)
        return (magnitude * (z @ c.T)).float()
    return (magnitude * torch.randn(B, K, generator=g, dtype=torch.float64)).float()


def sinkhorn_errors(Q, truth):
    """(codes, row sums, column sums) errors on their natural scales 1, 1, B/K; inf when Q is
    not finite."""
    if not torch.isfinite(Q).all():
        return math.inf, math.inf, math.inf
    B, K = truth.shape
    Q = Q.double()
    return ((Q - truth).abs().max().item(), (Q.sum(1) - 1).abs().max().item(),
            (Q.sum(0) - truth.sum(0)).abs().max().item() / (B / K))


# (kind, B, K, epsilon, score magnitude, iterations): |S| / eps = 20 (SwAV's defaults) ... 2e7
SINKHORN_CASES = [
    ("cosine", 128, 300, 0.05, 1.0, 3),
    ("cosine", 64, 3000, 0.05, 1.0, 3),
    ("cosine", 128, 500, 0.05, 1.0, 1),
    ("cosine", 128, 500, 1e-4, 1.0, 3),      # 1e4
    ("normal", 96, 40, 0.05, 1e3, 3),        # 2e4: rows were off by 1.2e-3
    ("normal", 96, 40, 5e-5, 1.0, 1),        # 2e4 through epsilon
    ("cosine", 128, 500, 1e-6, 1.0, 3),      # 1e6
    ("normal", 96, 40, 0.05, 1e6, 3),        # 2e7: rows were off by O(1)
    ("normal", 96, 40, 0.05, 1e6, 1),
]


@pytest.mark.parametrize("kind, B, K, epsilon, magnitude, iterations", SINKHORN_CASES)
def test_sinkhorn_float32_error_within_the_baseline(kind, B, K, epsilon, magnitude, iterations):
    S = sinkhorn_scores(kind, B, K, magnitude, seed=B + K)
    check_sinkhorn(sinkhorn_knopp(S, epsilon, iterations), S, epsilon, iterations)


def check_sinkhorn(Q, S, epsilon, iterations):
    """Asserts the rule for float32 codes Q of the float32 scores S; shared with the emulated
    CUDA tests."""
    truth = sinkhorn_knopp_log_reference(S.double(), epsilon, iterations)
    got = sinkhorn_errors(Q, truth)
    ref = sinkhorn_errors(sinkhorn_knopp_log_reference(S, epsilon, iterations), truth)
    if lightly_sinkhorn is not None:
        theirs = sinkhorn_errors(lightly_sinkhorn(S, iterations=iterations, epsilon=epsilon),
                                 truth)
        ref = tuple(min(a, b) for a, b in zip(ref, theirs))
    for name, e, r in zip(("codes", "row sums", "column sums"), got, ref):
        assert e <= max(FACTOR * r, FLOOR), (
            f"sinkhorn |S|/eps ~ {S.abs().max().item() / epsilon:.0e}: float32 {name} error "
            f"{e:.3g} > {FACTOR:g} x the baseline's {r:.3g}; all errors {got}, baseline {ref}")


@pytest.mark.parametrize("epsilon, magnitude", [(0.05, 1e6), (1e-9, 1.0), (1e-30, 1e8),
                                                (1.0, 3e38)])
def test_sinkhorn_rows_sum_to_one_for_any_finite_scores(epsilon, magnitude):
    """The codes' marginal (every row sums to 1) holds to float32 rounding for any finite input,
    however far |S| / eps is beyond what even float64 potentials resolve."""
    B, K = 64, 50
    S = sinkhorn_scores("normal", B, K, magnitude, seed=3).clamp(-3e38, 3e38)
    Q = sinkhorn_knopp(S, epsilon, 3)
    assert torch.isfinite(Q).all()
    assert (Q >= 0).all()
    rows = Q.double().sum(1)
    assert (rows - 1).abs().max().item() <= 4 * K * U, rows
