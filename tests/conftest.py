import pytest
import torch

import jem_fast  # noqa: F401  (registers the ops)

CUDA = torch.cuda.is_available() and jem_fast.build_info()["with_cuda"]

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
