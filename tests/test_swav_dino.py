"""SwaVLoss, DINOLoss and the ops under them (multiview_cross_entropy, centered_softmax):
float64 references, lightly parity where importable, gradcheck, opcheck, compile, low precision,
odd shapes, DINOv2 Sinkhorn centering, bad input."""
import pytest
import torch
import torch.nn.functional as F

import jem_fast
from jem_fast.ops import centered_softmax, multiview_cross_entropy
from jem_fast.reference import dino_loss_reference, swav_loss_reference

from conftest import DEVICES


def crops(n, B, K, dtype=torch.float64, device="cpu", seed=0, scale=1.0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(B, K, generator=g, dtype=torch.float64))
            .to(device=device, dtype=dtype).requires_grad_(requires_grad) for _ in range(n)]


def prototype_scores(n, B, K, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(K, 16, generator=g, dtype=torch.float64), dim=1)
    out = []
    for _ in range(n):
        z = F.normalize(torch.randn(B, 16, generator=g, dtype=torch.float64), dim=1)
        out.append((z @ c.T).to(device=device, dtype=dtype).requires_grad_())
    return out


def grads(loss, xs):
    """Gradients w.r.t. xs, zeros for crops the loss does not use."""
    gs = torch.autograd.grad(loss, xs, allow_unused=True, materialize_grads=True)
    return gs


# ---------------------------------------------------------------- multiview_cross_entropy op

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T,V,B,K", [(1, 2, 3, 5), (2, 2, 1, 1), (2, 12, 4, 37), (3, 2, 5, 1100),
                                     (2, 5, 7, 2049)])
def test_multiview_ce_matches_pairwise_reference(device, T, V, B, K):
    g = torch.Generator().manual_seed(T * 100 + V)
    targets = [torch.softmax(torch.randn(B, K, generator=g, dtype=torch.float64), 1).to(device)
               for _ in range(T)]
    logits = crops(V, B, K, device=device, seed=V)
    loss = multiview_cross_entropy(targets, logits, 0.1)
    ref, pairs = 0.0, 0
    for t in range(T):
        for v in range(V):
            if v != t:
                ref = ref - (targets[t] * F.log_softmax(logits[v] / 0.1, 1)).sum(1).mean()
                pairs += 1
    ref = ref / pairs
    torch.testing.assert_close(loss, ref)
    for a, b in zip(grads(loss, logits), grads(ref, logits)):
        torch.testing.assert_close(a, b)


def test_multiview_ce_gradcheck_and_unnormalized_targets():
    targets = [torch.rand(3, 6, dtype=torch.float64) for _ in range(2)]  # rows do not sum to 1
    logits = crops(3, 3, 6, seed=2)
    assert torch.autograd.gradcheck(lambda *x: multiview_cross_entropy(targets, list(x), 0.3),
                                    logits)
    loss = multiview_cross_entropy(targets, logits, 0.3)
    ref = sum(-(targets[t] * F.log_softmax(logits[v] / 0.3, 1)).sum(1).mean()
              for t in range(2) for v in range(3) if v != t) / 4
    torch.testing.assert_close(loss, ref)


def test_multiview_ce_opcheck():
    targets = [torch.softmax(torch.randn(4, 9), 1) for _ in range(2)]
    logits = [torch.randn(4, 9, requires_grad=True) for _ in range(3)]
    torch.library.opcheck(torch.ops.jem_fast.multiview_cross_entropy.default,
                          (targets, logits, 10.0, True))
    torch.library.opcheck(torch.ops.jem_fast.centered_softmax.default,
                          (torch.randn(4, 9), torch.randn(9), 25.0))
    torch.library.opcheck(torch.ops.jem_fast.centered_softmax.default,
                          (torch.randn(4, 9), None, 25.0))


@pytest.mark.parametrize("device", DEVICES)
def test_centered_softmax(device):
    x = torch.randn(5, 301, dtype=torch.float64, device=device) * 3
    c = torch.randn(301, dtype=torch.float64, device=device)
    torch.testing.assert_close(centered_softmax(x, c, 0.04), torch.softmax((x - c) / 0.04, 1))
    torch.testing.assert_close(centered_softmax(x, None, 0.5), torch.softmax(x / 0.5, 1))
    # float16 teacher outputs: computed in float32 (the sharpened logits exceed float16's range)
    xh = (x * 300).half()
    got = centered_softmax(xh, c.float(), 0.04)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    exact = torch.softmax((xh.double() - c.float().double()) / 0.04, 1)
    # float32 logits of magnitude ~|x| / 0.04: the exp's relative error is that times 2^-24
    rel = 4 * ((xh.double() - c.double()).abs().max().item() / 0.04) * 2 ** -24
    torch.testing.assert_close(got.double(), exact, rtol=rel, atol=1e-30)


# ---------------------------------------------------------------- SwaVLoss

SWAV_CASES = [(2, 0, False), (2, 6, False), (2, 2, True), (1, 3, False), (3, 1, True)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_high,n_low,queue", SWAV_CASES)
def test_swav_matches_reference(device, n_high, n_low, queue):
    high = prototype_scores(n_high, 16, 30, device=device, seed=1)
    low = prototype_scores(n_low, 16, 30, device=device, seed=2)
    q = prototype_scores(n_high, 24, 30, device=device, seed=3) if queue else None
    loss = jem_fast.SwaVLoss()(high, low, q)
    ref = swav_loss_reference(high, low, q)
    assert loss.shape == (1,)  # as lightly
    torch.testing.assert_close(loss[0], ref)
    xs = high + low
    for a, b in zip(grads(loss.sum(), xs), grads(ref, xs)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_swav_low_precision(dtype):
    high = [x.detach().to(dtype).requires_grad_() for x in prototype_scores(2, 64, 100, seed=4)]
    low = [x.detach().to(dtype).requires_grad_() for x in prototype_scores(4, 64, 100, seed=5)]
    loss = jem_fast.SwaVLoss()(high, low)
    assert loss.dtype == torch.float32
    h64 = [x.detach().double().requires_grad_() for x in high]
    l64 = [x.detach().double().requires_grad_() for x in low]
    ref = swav_loss_reference(h64, l64)  # on the same rounded inputs
    torch.testing.assert_close(loss[0].double(), ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(loss.sum(), high + low), grads(ref, h64 + l64)):
        assert a.dtype == dtype
        # the gradient is rounded to its dtype: one unit of that dtype at the largest entry
        tol = 1e-5 * b.abs().max().item() if dtype == torch.float32 else \
            torch.finfo(dtype).eps * b.abs().max().item()
        torch.testing.assert_close(a.double(), b, rtol=0, atol=tol)


def test_swav_matches_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    high = prototype_scores(2, 32, 50, dtype=torch.float32, seed=6)
    low = prototype_scores(3, 32, 50, dtype=torch.float32, seed=7)
    queue = prototype_scores(2, 64, 50, dtype=torch.float32, seed=8)
    for q in (None, queue):
        mine = jem_fast.SwaVLoss()(high, low, q)
        theirs = lightly_loss.SwaVLoss()(high, low, q)
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads(mine.sum(), high + low), grads(theirs.sum(), high + low)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_swav_compile_fullgraph():
    high = prototype_scores(2, 8, 20, dtype=torch.float32, seed=9)
    low = prototype_scores(2, 8, 20, dtype=torch.float32, seed=10)
    fn = torch.compile(jem_fast.SwaVLoss(), fullgraph=True)
    out = fn(high, low)
    ref = swav_loss_reference([x.detach().double() for x in high],
                              [x.detach().double() for x in low])
    torch.testing.assert_close(out[0].double(), ref, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert all(x.grad is not None for x in high + low)


def test_swav_extreme_epsilon_is_finite():
    high = [x.detach().float() * 10 for x in prototype_scores(2, 32, 40, seed=11)]
    low = [x.detach().float() * 10 for x in prototype_scores(2, 32, 40, seed=12)]
    loss = jem_fast.SwaVLoss(sinkhorn_epsilon=0.01)(high, low)
    assert torch.isfinite(loss).all()


@pytest.mark.parametrize("bad,match", [
    (lambda: jem_fast.SwaVLoss()([], [torch.randn(4, 3)]), "at least one crop"),
    (lambda: jem_fast.SwaVLoss()([torch.randn(4, 3)], []), "at least two crops"),
    (lambda: jem_fast.SwaVLoss()([torch.randn(4, 3), torch.randn(5, 3)], []), "shape"),
    (lambda: jem_fast.SwaVLoss()([torch.randn(4, 3), torch.randn(4, 3)], [], [torch.randn(2, 3)]),
     "one tensor per high-resolution crop"),
    (lambda: jem_fast.SwaVLoss(temperature=0.0), "temperature"),
    (lambda: jem_fast.SwaVLoss(sinkhorn_epsilon=-1.0), "sinkhorn_epsilon"),
    (lambda: jem_fast.SwaVLoss()([torch.randn(4, 3, 2), torch.randn(4, 3, 2)], []), "2-D"),
])
def test_swav_bad_input(bad, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        bad()


def test_swav_nan_raises():
    high = [torch.randn(4, 6), torch.randn(4, 6)]
    low = [torch.randn(4, 6)]
    low[0][1, 2] = float("nan")
    with pytest.raises(RuntimeError, match="NaN"):
        jem_fast.SwaVLoss()(high, low)


# ---------------------------------------------------------------- DINOLoss

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_teacher,n_student,B,K", [(2, 2, 4, 10), (2, 12, 3, 65), (1, 3, 5, 7),
                                                     (2, 1, 2, 3), (2, 4, 1, 1)])
def test_dino_matches_reference_over_steps(device, n_teacher, n_student, B, K):
    loss_fn = jem_fast.DINOLoss(output_dim=K, center_momentum=0.7).to(device).double()
    center = torch.zeros(K, dtype=torch.float64, device=device)
    for step in range(3):  # the center carries over
        teacher = crops(n_teacher, B, K, device=device, seed=10 + step, scale=2.0,
                        requires_grad=False)
        student = crops(n_student, B, K, device=device, seed=20 + step, scale=2.0)
        loss = loss_fn(teacher, student, epoch=step)
        t_temp = float(torch.linspace(0.04, 0.04, 30)[step])
        ref, center = dino_loss_reference(teacher, student, center, t_temp, 0.1, 0.7)
        torch.testing.assert_close(loss, ref)
        for a, b in zip(grads(loss, student), grads(ref, student)):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(loss_fn.center.reshape(-1), center)


def test_dino_gradcheck():
    teacher = crops(2, 3, 6, requires_grad=False, seed=3)
    student = crops(4, 3, 6, seed=4)
    loss_fn = jem_fast.DINOLoss(output_dim=6).double()
    fn = lambda *s: jem_fast.ops.multiview_cross_entropy(  # noqa: E731
        loss_fn.teacher_probabilities(teacher, 0.04), list(s), 0.1)
    assert torch.autograd.gradcheck(fn, student)


def test_dino_teacher_temperature_schedule():
    loss_fn = jem_fast.DINOLoss(output_dim=4, warmup_teacher_temp=0.02, teacher_temp=0.07,
                                warmup_teacher_temp_epochs=5)
    assert loss_fn.teacher_temperature(epoch=0) == pytest.approx(0.02)
    assert loss_fn.teacher_temperature(epoch=4) == pytest.approx(0.07)
    assert loss_fn.teacher_temperature(epoch=50) == pytest.approx(0.07)
    assert loss_fn.teacher_temperature(0.05, epoch=0) == pytest.approx(0.05)
    assert loss_fn.teacher_temperature() == pytest.approx(0.07)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dino_low_precision(dtype):
    teacher = [x.to(dtype) for x in crops(2, 8, 512, requires_grad=False, seed=5, scale=3.0)]
    student = [x.detach().to(dtype).requires_grad_()
               for x in crops(6, 8, 512, seed=6, scale=3.0)]
    loss = jem_fast.DINOLoss(output_dim=512)(teacher, student)
    assert loss.dtype == torch.float32
    s64 = [x.detach().double().requires_grad_() for x in student]
    ref, _ = dino_loss_reference([t.double() for t in teacher], s64,
                                 torch.zeros(512, dtype=torch.float64), 0.04, 0.1)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(loss, student), grads(ref, s64)):
        assert a.dtype == dtype
        # float32 logits of magnitude ~|s| / 0.1 ~ 100: softmax relative error ~100 * 2^-24 * k
        tol = (1e-4 if dtype == torch.float32 else torch.finfo(dtype).eps) * b.abs().max().item()
        torch.testing.assert_close(a.double(), b, rtol=0, atol=tol)


def test_dino_matches_lightly():
    lightly_loss = pytest.importorskip("lightly.loss")
    K = 64
    mine, theirs = jem_fast.DINOLoss(output_dim=K), lightly_loss.DINOLoss(output_dim=K)
    for step in range(3):
        teacher = crops(2, 6, K, dtype=torch.float32, requires_grad=False, seed=30 + step,
                        scale=2.0)
        student = crops(8, 6, K, dtype=torch.float32, seed=40 + step, scale=2.0)
        a = mine(teacher, student, epoch=step)
        b = theirs(teacher, student, epoch=step)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        for ga, gb in zip(grads(a, student), grads(b, student)):
            # float32 softmax of logits ~|s| / 0.1 ~ 60 on both sides: ~1e-5 of the largest entry
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5 * gb.abs().max().item())
        torch.testing.assert_close(mine.center, theirs.center)
        assert mine.state_dict().keys() == theirs.state_dict().keys()


def test_dino_compile_fullgraph():
    loss_fn = jem_fast.DINOLoss(output_dim=20)
    teacher = crops(2, 4, 20, dtype=torch.float32, requires_grad=False, seed=7)
    student = crops(4, 4, 20, dtype=torch.float32, seed=8)
    out = torch.compile(loss_fn, fullgraph=True)(teacher, student, 0.05)
    ref, center = dino_loss_reference([t.double() for t in teacher],
                                      [s.detach().double() for s in student],
                                      torch.zeros(20, dtype=torch.float64), 0.05, 0.1)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    out.backward()
    torch.testing.assert_close(loss_fn.center.reshape(-1).double(), center, rtol=1e-5, atol=1e-7)


def test_dino_sinkhorn_centering_matches_dinov2():
    """DINOv2's sinkhorn_knopp_teacher on the concatenated global crops; no center update."""
    from jem_fast.reference import sinkhorn_knopp_reference
    K = 30
    loss_fn = jem_fast.DINOLoss(output_dim=K, teacher_centering="sinkhorn_knopp").double()
    teacher = crops(2, 6, K, requires_grad=False, seed=9, scale=0.2)
    student = crops(5, 6, K, seed=10)
    loss = loss_fn(teacher, student, teacher_temp=0.07)
    q = sinkhorn_knopp_reference(torch.cat(teacher), 0.07, 3).split(6)
    ref = sum(-(q[t] * F.log_softmax(student[v] / 0.1, 1)).sum(1).mean()
              for t in range(2) for v in range(5) if v != t) / 8
    torch.testing.assert_close(loss, ref)
    assert (loss_fn.center == 0).all()


@pytest.mark.parametrize("bad,match", [
    (lambda: jem_fast.DINOLoss(output_dim=4)([torch.randn(2, 4)], [torch.randn(2, 4)]),
     "at least two views"),
    (lambda: jem_fast.DINOLoss(output_dim=4)([torch.randn(2, 5)], [torch.randn(2, 5)] * 2),
     "output_dim|shape"),
    (lambda: jem_fast.DINOLoss(output_dim=4)([], [torch.randn(2, 4)]), "non-empty"),
    (lambda: jem_fast.DINOLoss(output_dim=4)([torch.randn(2, 4)], [torch.randn(3, 4)] * 2),
     "shape"),
    (lambda: jem_fast.DINOLoss(student_temp=0.0), "student_temp"),
    (lambda: jem_fast.DINOLoss(center_mode="median"), "mode"),
    (lambda: jem_fast.DINOLoss(teacher_centering="bogus"), "teacher_centering"),
    (lambda: jem_fast.DINOLoss(output_dim=4)([torch.randn(2, 4)], [torch.randn(2, 4)] * 2,
                                            teacher_temp=-1.0), "temperature"),
])
def test_dino_bad_input(bad, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        bad()


@pytest.mark.parametrize("bad,match", [
    (lambda: multiview_cross_entropy([torch.rand(2, 3)], [torch.randn(2, 3)], 0.1), "no .*pairs"),
    (lambda: multiview_cross_entropy([torch.rand(2, 3)] * 9, [torch.randn(2, 3)] * 10, 0.1),
     "at most 8"),
    (lambda: multiview_cross_entropy([torch.rand(2, 3)], [torch.randn(2, 3)] * 65, 0.1),
     "at most 64"),
    (lambda: multiview_cross_entropy([torch.rand(2, 3)], [torch.randn(2, 3)] * 2, 0.0),
     "temperature"),
    (lambda: multiview_cross_entropy([torch.rand(2, 3)], [torch.randn(2, 3), torch.randn(2, 3,
                                                          dtype=torch.float64)], 0.1), "dtype"),
    (lambda: multiview_cross_entropy([torch.rand(0, 3)], [torch.randn(0, 3)] * 2, 0.1), "empty"),
    (lambda: multiview_cross_entropy(torch.rand(2, 3), [torch.randn(2, 3)] * 2, 0.1), "list"),
])
def test_multiview_ce_bad_input(bad, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        bad()


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_crops(device):
    base = torch.randn(4, 2, 33, dtype=torch.float64, device=device)
    student = [base[:, 0].requires_grad_(), base[:, 1].clone().requires_grad_()]
    assert not student[0].is_contiguous()
    teacher = [torch.randn(4, 33, dtype=torch.float64, device=device).T.contiguous().T]
    loss = jem_fast.DINOLoss(output_dim=33).to(device).double()(teacher, student)
    ref, _ = dino_loss_reference(teacher, student, torch.zeros(33, dtype=torch.float64,
                                                               device=device), 0.04, 0.1)
    torch.testing.assert_close(loss, ref)
