"""EMA teacher utilities: update_ema against the formula and a per-parameter loop, edge
momenta, buffers, errors; cosine_momentum_schedule against lightly's cosine_schedule."""
import copy
import math
import warnings

import pytest
import torch

from jem_fast.nn import MomentumSchedule, cosine_momentum_schedule, update_ema

from conftest import DEVICES


def _net(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    return net.to(dtype)


def _pair(device="cpu", dtype=torch.float32):
    student = _net(0, dtype).to(device)
    teacher = _net(1, dtype).to(device)
    student.train()(torch.randn(2, 3, 8, 8, device=device, dtype=dtype))  # BN running stats move
    return teacher, student


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m", [0.996, 0.5, 0.9999])
def test_update_equals_lerp_loop_exactly_and_formula_closely(m, device):
    teacher, student = _pair(device)
    loop = copy.deepcopy(teacher)
    before = [p.detach().clone().double() for p in teacher.parameters()]
    update_ema(teacher, student, m)
    with torch.no_grad():
        for t, s in zip(loop.parameters(), student.parameters()):
            t.lerp_(s, 1 - m)  # the per-parameter loop, same arithmetic
    for t, t_loop, t0, s in zip(teacher.parameters(), loop.parameters(), before, student.parameters()):
        assert torch.equal(t, t_loop)
        formula = m * t0 + (1 - m) * s.detach().double()
        torch.testing.assert_close(t.double(), formula, rtol=0, atol=4 * torch.finfo(torch.float32).eps)
    assert not teacher[1].running_mean.equal(student[1].running_mean)  # buffers untouched


def test_update_in_float64_is_the_formula():
    t = [torch.randn(5, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    s = [torch.randn(5, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    want = [0.99 * a + 0.01 * b for a, b in zip(t, s)]
    update_ema(t, s, 0.99)
    for a, b in zip(t, want):
        torch.testing.assert_close(a, b, rtol=1e-15, atol=1e-15)


def test_matches_lightly_update_momentum():
    utils = pytest.importorskip("lightly.models.utils")
    teacher, student = _pair()
    theirs = copy.deepcopy(teacher)
    update_ema(teacher, student, 0.99)
    utils.update_momentum(student, theirs, 0.99)  # lightly: (model, model_ema, m)
    for a, b in zip(teacher.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-7)


def test_momentum_edges_are_exact():
    teacher, student = _pair()
    before = [p.detach().clone() for p in teacher.parameters()]
    update_ema(teacher, student, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), before))
    update_ema(teacher, student, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters()))


def test_momentum_one_ignores_non_finite_student():
    t = [torch.ones(3)]
    update_ema(t, [torch.full((3,), float("nan"))], 1.0)
    assert torch.equal(t[0], torch.ones(3))


def test_mixed_dtypes_and_iterables_grouped():
    t = [torch.zeros(4), torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.bfloat16)]
    s = [torch.ones(4), torch.ones(3, dtype=torch.float64), torch.ones(2)]  # last: float32 -> bf16
    update_ema(iter(t), (x for x in s), 0.75)
    assert [x.dtype for x in t] == [torch.float32, torch.float64, torch.bfloat16]
    for x in t:
        assert torch.all(x.float() == 0.25)


def test_buffers_modes():
    teacher, student = _pair()
    update_ema(teacher, student, 0.9, buffers="copy")
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)
    assert torch.equal(teacher[1].num_batches_tracked, student[1].num_batches_tracked)
    teacher, student = _pair()
    rm0 = teacher[1].running_mean.clone()
    update_ema(teacher, student, 0.9, buffers="ema")
    torch.testing.assert_close(teacher[1].running_mean, rm0.lerp(student[1].running_mean, 0.1))
    assert torch.equal(teacher[1].num_batches_tracked, student[1].num_batches_tracked)


def test_update_does_not_record_autograd():
    teacher, student = _pair()
    update_ema(teacher, student, 0.9)
    for p in teacher.parameters():
        assert p.grad_fn is None and p.requires_grad


def test_errors():
    teacher, student = _pair()
    with pytest.raises(ValueError, match="same number of parameters, got 6 and 5"):
        update_ema(teacher, list(student.parameters())[:-1], 0.9)
    with pytest.raises(ValueError, match=r"teacher parameter \[0\] and student parameter \[0\] must have the same shape, got \(2,\) and \(3,\)"):
        update_ema([torch.zeros(2)], [torch.zeros(3)], 0.9)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="momentum must be in"):
            update_ema(teacher, student, bad)
    with pytest.raises(ValueError, match="buffers must be one of"):
        update_ema(teacher, student, 0.9, buffers="all")
    with pytest.raises(ValueError, match="needs nn.Module"):
        update_ema([torch.zeros(2)], [torch.zeros(2)], 0.9, buffers="copy")
    with pytest.raises(TypeError, match="single tensor"):
        update_ema(torch.zeros(2), torch.zeros(2), 0.9)
    with pytest.raises(TypeError, match=r"student\[1\] must be a torch.Tensor"):
        update_ema([torch.zeros(2), torch.zeros(2)], [torch.zeros(2), 3.0], 0.9)
    with pytest.raises(TypeError, match="must be floating-point"):
        update_ema([torch.zeros(2, dtype=torch.long)], [torch.zeros(2, dtype=torch.long)], 0.9)


SCHEDULE_CASES = [(0, 100), (1, 100), (50, 100), (98, 100), (99, 100), (100, 100), (0, 1),
                  (5, 1), (0, 0), (3, 2), (7, 10), (1, 3)]


@pytest.mark.parametrize("step,max_steps", SCHEDULE_CASES)
def test_schedule_values(step, max_steps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = cosine_momentum_schedule(step, max_steps, 0.996, 1.0)
    if max_steps <= 1 or step >= max_steps - 1:
        assert got == 1.0
    else:
        want = 1.0 - 0.004 * (math.cos(math.pi * step / (max_steps - 1)) + 1) / 2
        assert got == pytest.approx(want, abs=1e-15)
    assert isinstance(got, float)


@pytest.mark.parametrize("step,max_steps", SCHEDULE_CASES)
@pytest.mark.parametrize("period", [None, 7])
def test_schedule_matches_lightly(step, max_steps, period):
    scheduler = pytest.importorskip("lightly.utils.scheduler")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = scheduler.cosine_schedule(step, max_steps, 0.99, 1.0, period)
        got = cosine_momentum_schedule(step, max_steps, 0.99, 1.0, period)
    assert got == pytest.approx(want, rel=0, abs=1e-15)


def test_schedule_warnings_and_errors():
    with pytest.warns(RuntimeWarning, match="exceeds max_steps"):
        assert cosine_momentum_schedule(11, 10) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cosine_momentum_schedule(10, 10)  # step == max_steps: no warning (as lightly)
    with pytest.raises(ValueError, match="can't be negative"):
        cosine_momentum_schedule(-1, 10)
    with pytest.raises(ValueError, match="can't be negative"):
        cosine_momentum_schedule(0, -1)
    with pytest.raises(ValueError, match="Period"):
        cosine_momentum_schedule(0, 10, period=0)


def test_momentum_schedule_helper():
    sched = MomentumSchedule(max_steps=11, start=0.99)
    assert sched(0) == pytest.approx(0.99) and sched(10) == 1.0
    assert sched(5) == pytest.approx(0.995)
    values = [sched(k) for k in range(11)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="start momentum"):
        MomentumSchedule(10, start=1.5)
