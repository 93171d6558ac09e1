"""The float32 precision rule of issue 11 (tests/precision_utils.py) for the CUDA kernels, run on
the CPU under HIP-CPU (tests/cuda_emu): the losses composed from the emulated launchers exactly as
the host ops do (the compositions of tests/test_cuda_emulated_info_nce.py and
tests/test_cuda_emulated_covariance.py), against float64 truth, at most 4x the error of lightly
(or of the plain float32 formula) on the same input.

Regimes: NT-Xent and CLIP at temperatures down to 0.01 with confident positives (the positive left
out of the log-sum-exps, symmetric tiles, chunked rows and column LSEs), VICReg with columns
scaled over 1e-3..1e3 and two dominant columns on both routes, Barlow Twins on ordinary and
shifted data.
"""
import pytest
import torch
import torch.nn.functional as F

from cuda_emu.emu import emu_lib  # noqa: F401  (session fixture: builds the library once)
from jem_fast.reference import (barlow_twins_loss_reference, info_nce_loss_reference,
                                ntxent_loss_reference, vicreg_loss_reference)
from precision_utils import check, embeddings, lightly_loss, value_and_grads, views
from test_cuda_emulated_covariance import (barlow_backward, barlow_forward, vicreg_backward,
                                           vicreg_forward)
from test_cuda_emulated_info_nce import EmuLse, EmuSelfLse

pytestmark = [pytest.mark.cuda_emu, pytest.mark.usefixtures("emu_lib")]


# ---------------------------------------------------------------------------- contrastive
def _ntxent_emulated(temperature, tile, form):
    """NTXentLoss's single-process path (symmetric tiles, pair_offset = n) or its distributed
    path with one rank (self_column + positive_column, chunked rows)."""
    scale = 1.0 / temperature

    def loss(out0, out1):
        o0, o1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
        n = o0.shape[0]
        positive = scale * (o0 * o1).sum(1)
        z = torch.cat([o0, o1])
        if form == "tiles":
            lse_neg = EmuSelfLse.apply(z, scale, tile, n)
        else:
            own = torch.arange(n)
            lse_neg, _ = EmuLse.apply(z, z, scale, torch.cat([own, own + n]), False, tile,
                                      torch.cat([own + n, own]))
        return F.softplus(lse_neg - positive.repeat(2)).mean()
    return loss


@pytest.mark.parametrize("form", ["tiles", "chunks"])
@pytest.mark.parametrize("temperature", [0.01, 0.05, 0.1, 1.0])
def test_ntxent(temperature, form):
    a, b = views(16, 32, 0.05, seed=int(temperature * 100))
    mine = value_and_grads(_ntxent_emulated(temperature, 6, form), a, b)
    truth = value_and_grads(lambda x, y: ntxent_loss_reference(x, y, temperature, stable=True),
                            a.double(), b.double())
    if lightly_loss is not None:
        baseline = value_and_grads(lightly_loss.NTXentLoss(temperature), a, b)
    else:
        baseline = value_and_grads(lambda x, y: ntxent_loss_reference(x, y, temperature), a, b)
    check(mine, baseline, truth, f"emulated NT-Xent ({form}, T={temperature})")


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
def test_clip_symmetric(temperature):
    """Row and column LSEs of the negatives from the same chunks (with_columns +
    positive_column); no lightly counterpart, the baseline is the plain float32 formula."""
    scale = 1.0 / temperature

    def loss(query, key):
        q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
        positive = scale * (q * k).sum(1)
        rows, cols = EmuLse.apply(q, k, scale, None, True, 5, torch.arange(q.shape[0]))
        return 0.5 * (F.softplus(rows - positive).mean() + F.softplus(cols - positive).mean())

    a, b = views(12, 24, 0.05, seed=int(temperature * 100) + 1)
    mine = value_and_grads(loss, a, b)
    truth = value_and_grads(lambda q, k: info_nce_loss_reference(
        q, k, temperature, symmetric=True, stable=True), a.double(), b.double())
    baseline = value_and_grads(lambda q, k: info_nce_loss_reference(q, k, temperature,
                                                                    symmetric=True), a, b)
    check(mine, baseline, truth, f"emulated CLIP (T={temperature})")


# ---------------------------------------------------------------------------- covariance
VICREG_WEIGHTS = torch.tensor([25.0, 25.0, 1.0], dtype=torch.float64)
BARLOW_WEIGHTS = torch.tensor([1.0, 5e-3], dtype=torch.float64)


def _vicreg_emulated(a, b, gram_route):
    terms, centered, gram, colstats, _ = vicreg_forward(a, b, 1e-4, gram_route)
    ga, gb = vicreg_backward(VICREG_WEIGHTS, centered, gram, colstats, gram_route)
    return (terms.double() * VICREG_WEIGHTS).sum(), ga.double(), gb.double()


def _barlow_emulated(a, b, gram_route):
    terms, normalized, gram, colstats, _ = barlow_forward(a, b, gram_route)
    ga, gb = barlow_backward(BARLOW_WEIGHTS, normalized, gram, colstats, gram_route)
    return (terms.double() * BARLOW_WEIGHTS).sum(), ga.double(), gb.double()


@pytest.mark.parametrize("gram_route", [False, True], ids=["cov", "gram"])
@pytest.mark.parametrize("kind", ["random", "scaled", "two_heavy"])
def test_vicreg(kind, gram_route):
    a, b = embeddings(40, 72, kind, seed=5)
    mine = _vicreg_emulated(a, b, gram_route)
    truth = value_and_grads(vicreg_loss_reference, a.double(), b.double())
    baseline_fn = lightly_loss.VICRegLoss() if lightly_loss is not None else vicreg_loss_reference
    check(mine, value_and_grads(baseline_fn, a, b), truth,
          f"emulated VICReg ({kind}, gram_route={gram_route})")


@pytest.mark.parametrize("gram_route", [False, True], ids=["cov", "gram"])
@pytest.mark.parametrize("kind", ["random", "shifted", "scaled"])
def test_barlow_twins(kind, gram_route):
    a, b = embeddings(72, 40, kind, seed=6)
    mine = _barlow_emulated(a, b, gram_route)
    truth = value_and_grads(barlow_twins_loss_reference, a.double(), b.double())
    baseline_fn = (lightly_loss.BarlowTwinsLoss() if lightly_loss is not None
                   else barlow_twins_loss_reference)
    check(mine, value_and_grads(baseline_fn, a, b), truth,
          f"emulated Barlow Twins ({kind}, gram_route={gram_route})")
