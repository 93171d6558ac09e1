import pytest
import torch

import jem_fast  # noqa: F401  (registers the ops)

CUDA = torch.cuda.is_available() and jem_fast.build_info()["with_cuda"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda_emu: a CUDA kernel run on the CPU under HIP-CPU (tests/cuda_emu); "
        "deselect with -m 'not cuda_emu'")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not CUDA, reason="needs a CUDA device and a CUDA build of jem_fast"))]


def make_pair(n, d, dtype=torch.float64, device="cpu", seed=0, offset=0.0, scale=1.0):
    """Two correlated views, like the two projections of a batch."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    z_a = offset + scale * (base + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64))
    z_b = offset + scale * (base + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64))
    return (z_a.to(device=device, dtype=dtype).requires_grad_(),
            z_b.to(device=device, dtype=dtype).requires_grad_())


def value_and_grads(fn, z_a, z_b, weights=None):
    out = fn(z_a, z_b)
    w = torch.ones_like(out) if weights is None else weights.to(out)
    ga, gb = torch.autograd.grad((out * w).sum(), (z_a, z_b))
    return out.detach(), ga, gb


def lowp_error_bound(ref_lowp, ref64):
    """Error budget for a low-precision run: twice the reference's own error in that dtype."""
    return 2 * (ref_lowp.double() - ref64).abs().max().item()


def assert_compiled_matches_reference(loss_fn, reference, device, grad_atol):
    """torch.compile(fullgraph=True) of a loss module: value and gradients against the float64
    reference."""
    z_a, z_b = make_pair(12, 20, dtype=torch.float32, device=device, seed=6)
    out, ga, gb = value_and_grads(torch.compile(loss_fn, fullgraph=True), z_a, z_b)
    ref, ra, rb = value_and_grads(reference, z_a.detach().double().requires_grad_(),
                                  z_b.detach().double().requires_grad_())
    torch.testing.assert_close(out.double(), ref.to(out.device), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga, ra.float().to(ga.device), rtol=1e-4, atol=grad_atol)
    torch.testing.assert_close(gb, rb.float().to(gb.device), rtol=1e-4, atol=grad_atol)


def assert_low_precision_within_budget(terms_fn, reference, n, d, dtype, device):
    """A low-precision run accumulates in float32: its error against the float64 oracle on the
    same rounded inputs is at most twice the reference's own error in that dtype (or a small
    floor relative to the magnitude)."""
    z_a64, z_b64 = make_pair(n, d, seed=7, scale=2.0)
    z_a = z_a64.detach().to(device=device, dtype=dtype).requires_grad_()
    z_b = z_b64.detach().to(device=device, dtype=dtype).requires_grad_()
    got = value_and_grads(terms_fn, z_a, z_b)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype
    exact = value_and_grads(reference, z_a.detach().double().cpu().requires_grad_(),
                            z_b.detach().double().cpu().requires_grad_())
    in_dtype = value_and_grads(reference, z_a.detach().cpu().requires_grad_(),
                               z_b.detach().cpu().requires_grad_())
    floor = 1e-5 if dtype == torch.float32 else 1e-3
    for mine, ref, ref_lp in zip(got, exact, in_dtype):
        err = (mine.double().cpu() - ref).abs().max()
        assert err <= max(lowp_error_bound(ref_lp, ref), floor * ref.abs().max())
