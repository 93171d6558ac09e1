"""The CUDA kernels of jem_fast::cosine_similarity_rows (csrc/losses/negative_cosine_cuda.cu),
run on CPU under HIP-CPU (tests/cuda_emu), against the float64 reference
(F.cosine_similarity, jem_fast/reference/negative_cosine.py) on the same rounded inputs.

Covers the forward's warp-per-row path (D <= 2048, rows per block not filled) and block-per-row
path (D > 2048), the backward, each with 16-byte packs (D a multiple of the pack and aligned
pointers) and scalar loads (odd D, or a pointer 1 element off), all four dtypes, zero and
sub-eps rows, and the backward with only one of the two gradients requested.
"""
import pytest
import torch
import torch.nn.functional as F

from cuda_emu import emu
from cuda_emu.emu import emu_lib  # noqa: F401  (session fixture: builds the library once)
from jem_fast.reference import negative_cosine_reference

pytestmark = [pytest.mark.cuda_emu, pytest.mark.usefixtures("emu_lib")]

DTYPES = emu.DTYPE_NAMES
# (N, D): tails of the 8-rows-per-block warp path, D below/above one warp pass, odd D (scalar
# loads for every dtype), D a multiple of 8 (16-byte packs for every dtype when aligned), the
# warp/block boundary (kWarpRowMax = 2048 in negative_cosine_cuda.cu) and the block-per-row path
# with and without packs.
SHAPES = [(2, 1), (13, 37), (9, 64), (3, 200), (2, 2048), (3, 2049), (2, 2056)]


def _tols(dtype):
    """(rtol, atol) of the accumulation-type outputs (cos, norms), and (rtol, atol factor) of
    the gradients stored in `dtype` (atol factor times the largest reference gradient)."""
    if dtype == torch.float64:
        return (1e-11, 1e-13), (1e-10, 1e-12)
    u = emu.unit_roundoff(dtype)
    acc = (3e-6, 3e-6)  # float32 accumulation over up to ~2000 terms
    return acc, (max(8 * u, 2e-5), max(8 * u, 2e-5))


def _inputs(n, d, dtype, seed, special_rows=True, eps=1e-8):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    x1 = 0.6 * x0 + torch.randn(n, d, generator=g, dtype=torch.float64)
    if special_rows and n >= 3:
        x0[1] = 0.0                 # a zero row: cos = 0, no gradient through its norm
        x1[2] *= 0.25 * eps / x1[2].norm()  # rows whose norm is below eps (clamped) ...
        x0[0] *= 0.5 * eps / x0[0].norm()   # ... in either input
    return x0.to(dtype), x1.to(dtype)


def _forward(x0, x1, eps):
    n, d = x0.shape
    acc = emu.acc_dtype(x0.dtype)
    cos = torch.full((n,), float("nan"), dtype=acc)
    norms = torch.full((2, n), float("nan"), dtype=acc)
    emu.call("cosine_rows_forward_cuda", emu.dtype_code(x0.dtype), x0, x1, n, d, float(eps), cos,
             norms)
    return cos, norms


def _backward(grad, x0, x1, cos, norms, eps, need0=True, need1=True, layout=None):
    n, d = x0.shape
    g0 = torch.full_like(x0, float("nan")) if need0 else None
    g1 = torch.full_like(x1, float("nan")) if need1 else None
    if layout is not None:
        g0 = layout(g0) if g0 is not None else None
        g1 = layout(g1) if g1 is not None else None
    emu.call("cosine_rows_backward_cuda", emu.dtype_code(x0.dtype), grad, x0, x1, cos, norms, n, d,
             float(eps), g0, g1)
    return g0, g1


def _reference(x0, x1, grad, eps):
    a = x0.double().requires_grad_()
    b = x1.double().requires_grad_()
    cos = F.cosine_similarity(a, b, dim=1, eps=eps)
    ga, gb = torch.autograd.grad(cos, (a, b), grad.double())
    norms = torch.stack([x0.double().norm(dim=1), x1.double().norm(dim=1)])
    return cos.detach(), norms, ga, gb


def _grad_scale(x0, x1, grad, eps):
    """Largest |alpha x1| + |beta0 x0| (and the same for x1) in float64: the size of the two terms
    whose difference the gradient is (it cancels to ~0 when x0 and x1 are parallel)."""
    a, b, g = x0.double(), x1.double(), grad.double().abs()
    n0, n1 = a.norm(dim=1), b.norm(dim=1)
    c0, c1 = n0.clamp_min(eps), n1.clamp_min(eps)
    alpha = g / (c0 * c1)
    beta0 = torch.where(n0 > 0, g / (c0 * c1), torch.zeros_like(g))  # |cos| / n0 <= 1 / c1
    beta1 = torch.where(n1 > 0, g / (c0 * c1), torch.zeros_like(g))
    m0 = alpha[:, None] * b.abs() + beta0[:, None] * a.abs()
    m1 = alpha[:, None] * a.abs() + beta1[:, None] * b.abs()
    return max(m0.max().item(), m1.max().item())


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "offset1"])
def test_forward_and_backward(n, d, dtype_name, aligned):
    dtype = emu.torch_dtype(dtype_name)
    eps = 1e-8 if dtype in (torch.float32, torch.float64) else 1e-3
    x0, x1 = _inputs(n, d, dtype, seed=7 * n + d, eps=eps)
    layout = emu.aligned_copy if aligned else emu.misaligned_copy
    x0, x1 = layout(x0), layout(x1)
    cos, norms = _forward(x0, x1, eps)
    grad = torch.randn(n, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(d)).to(cos.dtype)
    g0, g1 = _backward(grad, x0, x1, cos, norms, eps, layout=layout)

    ref_cos, ref_norms, ref0, ref1 = _reference(x0, x1, grad, eps)
    (rtol, atol), (grtol, gatol) = _tols(dtype)
    emu.assert_close(cos, ref_cos, rtol, atol, "cos")
    emu.assert_close(norms, ref_norms, rtol, atol * ref_norms.abs().max().item(), "norms")
    assert g0.dtype == dtype and g1.dtype == dtype
    scale = _grad_scale(x0, x1, grad, eps)
    emu.assert_close(g0, ref0, grtol, gatol * scale, "grad_x0")
    emu.assert_close(g1, ref1, grtol, gatol * scale, "grad_x1")


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("need0,need1", [(True, False), (False, True)])
@pytest.mark.parametrize("n,d", [(5, 24), (4, 2051)])
def test_backward_one_gradient(n, d, dtype_name, need0, need1):
    """A null gradient pointer is skipped (and does not make the other one scalar-loaded)."""
    dtype = emu.torch_dtype(dtype_name)
    x0, x1 = _inputs(n, d, dtype, seed=n + d, special_rows=False)
    cos, norms = _forward(x0, x1, 1e-8)
    grad = torch.linspace(-1.0, 2.0, n, dtype=cos.dtype)
    g0, g1 = _backward(grad, x0, x1, cos, norms, 1e-8, need0, need1)
    _, _, ref0, ref1 = _reference(x0, x1, grad, 1e-8)
    _, (grtol, gatol) = _tols(dtype)
    got, want = (g0, ref0) if need0 else (g1, ref1)
    assert (g1 if need0 else g0) is None
    emu.assert_close(got, want, grtol, gatol * _grad_scale(x0, x1, grad, 1e-8), "gradient")


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_negative_cosine_loss(dtype_name):
    """The loss -mean(cos) composed from the kernels, value and gradients vs the reference."""
    dtype = emu.torch_dtype(dtype_name)
    n, d = 11, 96
    x0, x1 = _inputs(n, d, dtype, seed=3, special_rows=False)
    cos, norms = _forward(x0, x1, 1e-8)
    loss = -cos.double().mean()
    grad = torch.full((n,), -1.0 / n, dtype=cos.dtype)
    g0, g1 = _backward(grad, x0, x1, cos, norms, 1e-8)
    a = x0.double().requires_grad_()
    b = x1.double().requires_grad_()
    ref = negative_cosine_reference(a, b)
    ra, rb = torch.autograd.grad(ref, (a, b))
    (rtol, atol), (grtol, gatol) = _tols(dtype)
    emu.assert_close(loss, ref.detach(), rtol, atol, "loss")
    scale = _grad_scale(x0, x1, grad, 1e-8)
    emu.assert_close(g0, ra, grtol, gatol * scale, "grad_x0")
    emu.assert_close(g1, rb, grtol, gatol * scale, "grad_x1")


def test_empty_batch_is_a_no_op():
    x = torch.ones(0, 4)
    cos = torch.empty(0)
    norms = torch.empty(2, 0)
    emu.call("cosine_rows_forward_cuda", emu.FLOAT32, x, x, 0, 4, 1e-8, cos, norms)
    emu.call("cosine_rows_backward_cuda", emu.FLOAT32, cos, x, x, cos, norms, 0, 4, 1e-8, x, x)
