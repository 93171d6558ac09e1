"""The centered-softmax CUDA launcher (csrc/losses/centered_softmax_cuda.cu: DINO's teacher
distribution softmax(scale (x - center))) run on the CPU under HIP-CPU emulation (tests/cuda_emu),
replaying the CUDA branch of the host op (centered_softmax.cpp: center converted to the
accumulation type), against the float64 formula (jem_fast.reference.clustering.dino_loss_reference
computes the same softmax) and the CPU op.

Covered: the four input dtypes, with and without a center, K = 1, K below a warp, K not a
multiple of the 512-thread block, K > 512 (threads stride a row), teacher temperature 0.04
(scale 25), and rows whose FIRST entries are -inf followed by finite values (online log-sum-exp:
exp(-inf - -inf) must not poison the row).

Tolerance: x is read in its dtype (the reference uses the same rounded values), z = scale (x - c)
is formed in float32 (float64), so p = exp(z - lse) carries a relative error of ~(|z| + |lse|)
ulps: rtol = 2e-5 (|z| <= ~150 here), atol = 1e-9 (float64: rtol = 1e-12).
"""
import pytest
import torch

from cuda_emu import emu

pytestmark = pytest.mark.cuda_emu

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module", autouse=True)
def _lib():
    return emu.load()


def centered_softmax_emulated(x, center, scale):
    """The CUDA branch of jem_fast::centered_softmax."""
    B, K = x.shape
    acc = emu.acc_dtype(x.dtype)
    c = None if center is None else center.reshape(K).to(acc).contiguous()
    out = torch.full((B, K), float("nan"), dtype=acc)
    emu.call("centered_softmax_forward_cuda", emu.dtype_code(x.dtype), x.contiguous(), c, B, K,
             float(scale), out)
    return out


def reference(x, center, scale):
    z = scale * (x.double() - (0.0 if center is None else center.double().reshape(1, -1)))
    return torch.softmax(z, dim=-1)


def tol(dtype):
    return dict(rtol=1e-12, atol=1e-15) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-9)


def make(B, K, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(B, K, generator=g, dtype=torch.float64)).to(dtype)
    center = (0.5 * torch.randn(K, generator=g, dtype=torch.float64)).to(emu.acc_dtype(dtype))
    return x, center


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, K", [(3, 1), (4, 19), (5, 700), (2, 1537), (7, 512)])
@pytest.mark.parametrize("centered", [True, False])
def test_centered_softmax(dtype, B, K, centered):
    x, center = make(B, K, dtype, seed=B * 10000 + K)
    center = center if centered else None
    scale = 25.0
    got = centered_softmax_emulated(x, center, scale)
    assert got.dtype == emu.acc_dtype(dtype)
    want = reference(x, center, scale)
    torch.testing.assert_close(got.double(), want, **tol(dtype))
    cpu = torch.ops.jem_fast.centered_softmax(x, center, scale)
    torch.testing.assert_close(got, cpu, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_neg_inf(dtype):
    B, K = 4, 1537
    x, center = make(B, K, dtype, seed=3)
    x[0, :1100] = float("-inf")   # each of the 512 threads starts on -inf (twice for most)
    x[1, :513] = float("-inf")    # thread 0 sees -inf twice, then finite
    x[2, 5] = float("-inf")       # scattered
    x[3, K - 1] = float("-inf")
    for c in (center, None):
        got = centered_softmax_emulated(x, c, 25.0)
        assert torch.isfinite(got).all(), "centered softmax not finite"
        want = reference(x, c, 25.0)
        torch.testing.assert_close(got.double(), want, **tol(dtype))
        assert (got[torch.isinf(x)] == 0).all()
        torch.testing.assert_close(got.double().sum(-1), torch.ones(B, dtype=torch.float64),
                                   rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)
