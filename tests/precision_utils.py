"""The precision rule of issue 11, shared by tests/test_precision_losses.py (the ops) and
tests/test_cuda_emulated_precision.py (the CUDA kernels under emulation).

In float32, the loss value and each input gradient have an error against the float64 truth of at
most 4x the float32 error of the baseline on the same input (lightly where importable, otherwise
the plain float32 formula), with a floor of a few float32 ulps of the quantity's own scale. Errors
are relative: the value's |v - t| / |t|, and for a gradient the worst column's ||g - t|| / ||t||
(columns are embedding dimensions, so a column scaled by 1e-3 is judged on its own scale) and the
median elementwise |g - t| / |t|.
"""
import torch

try:  # CI's second stage installs lightly; without it the baseline is the plain formula
    import lightly.loss as lightly_loss
except ImportError:  # pragma: no cover - depends on the environment
    lightly_loss = None

U = 2.0 ** -24          # float32 unit roundoff
FLOOR = 4 * U           # "a few ulps" of the quantity's own scale (the errors are relative)
FACTOR = 4.0


def value_and_grads(fn, a, b):
    a = a.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    value = fn(a, b)
    ga, gb = torch.autograd.grad(value, (a, b))
    return value.detach().double(), ga.double(), gb.double()


def errors(result, truth):
    """(value, worst-column gradient, median elementwise gradient) relative errors."""
    value = ((result[0] - truth[0]).abs() / truth[0].abs()).item()
    column = max(((g - t).norm(dim=0) / t.norm(dim=0)).max().item()
                 for g, t in zip(result[1:], truth[1:]))
    median = max(((g - t).abs() / t.abs()).median().item()
                 for g, t in zip(result[1:], truth[1:]))
    return value, column, median


ERROR_NAMES = ("value", "gradient (worst column)", "gradient (median)")


def check(mine, baseline, truth, what, measure=None, names=ERROR_NAMES):
    """Asserts the rule: each error of `mine` against `truth` (as `measure` computes them,
    default `errors`) is at most FACTOR x the baseline's, or FLOOR."""
    measure = measure or errors
    got, ref = measure(mine, truth), measure(baseline, truth)
    for name, e, r in zip(names, got, ref):
        assert e <= max(FACTOR * r, FLOOR), (
            f"{what}: float32 {name} error {e:.3g} > {FACTOR:g} x the baseline's {r:.3g} "
            f"(floor {FLOOR:.2g}); all errors {got}, baseline {ref}")
    return got


def views(n, d, sigma, seed):
    """Two views whose positives are confident: view 1 = view 0 + sigma * noise."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = a + sigma * torch.randn(n, d, generator=g, dtype=torch.float64)
    return a.float(), b.float()


def embeddings(n, d, kind, seed):
    """Two correlated views: random, columns scaled over 1e-3..1e3, two dominant columns, or
    shifted by large column means."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "scaled":  # column scales over 1e-3..1e3, in random order
        s = torch.logspace(-3, 3, d, dtype=torch.float64)[torch.randperm(d, generator=g)]
    elif kind == "two_heavy":  # two columns dominate: the Gram route's worst case
        s = torch.full((d,), 1e-3, dtype=torch.float64)
        s[:2] = 1e3
    elif kind == "shifted":  # large column means
        a, b = a + 10.0, b - 5.0
        s = torch.ones(d, dtype=torch.float64)
    else:
        s = torch.ones(d, dtype=torch.float64)
    return (a * s).float(), (b * s).float()
