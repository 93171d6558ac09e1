"""float32 precision of the losses against float64 truth, relative to the library they replace
(the rule of issue 11, see tests/precision_utils.py): at most 4x lightly's float32 error on the
same input (the plain float32 formula where lightly is not importable or has no such loss), with a
floor of a few float32 ulps; value, worst gradient column and median gradient element.

The truth is the float64 reference, for the contrastive losses with the cross-entropy as
softplus(LSE of the negatives - positive) (reference(stable=True)): F.cross_entropy reads a loss of
1e-30 as 0 even in float64 (temperature 0.01, confident positives).

Regimes: temperatures 0.01-10 with confident positives (the symmetric tiles, the chunked op and the
memory bank), columns scaled over 1e-3..1e3 and a few dominant columns (both covariance routes),
ordinary random and shifted data.
"""
import pytest
import torch

from jem_fast.losses import BarlowTwinsLoss, InfoNCELoss, NTXentLoss, VICRegLoss
from jem_fast.reference import (barlow_twins_loss_reference, info_nce_loss_reference,
                                ntxent_loss_reference, vicreg_loss_reference)
from precision_utils import check as _check
from precision_utils import embeddings as _embeddings
from precision_utils import lightly_loss
from precision_utils import value_and_grads as _value_and_grads
from precision_utils import views as _views


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small problems: one intra-op thread is faster (and immune to a loaded machine); the
    errors do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- contrastive
TEMPERATURES = [0.01, 0.05, 0.1, 0.5, 1.0, 10.0]


@pytest.mark.parametrize("tile", [0, 8], ids=["one-tile", "tiles-of-8"])
@pytest.mark.parametrize("sigma", [0.01, 0.3])
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_ntxent(temperature, sigma, tile):
    a, b = _views(32, 64, sigma, seed=int(temperature * 100) + int(sigma * 10) + tile)
    mine = _value_and_grads(NTXentLoss(temperature, chunk_rows=tile), a, b)
    truth = _value_and_grads(
        lambda x, y: ntxent_loss_reference(x, y, temperature, stable=True), a.double(), b.double())
    if lightly_loss is not None:
        baseline = _value_and_grads(lightly_loss.NTXentLoss(temperature), a, b)
    else:
        baseline = _value_and_grads(lambda x, y: ntxent_loss_reference(x, y, temperature), a, b)
    errors = _check(mine, baseline, truth, f"NTXentLoss(T={temperature}), sigma={sigma}")
    # and in absolute terms: at T = 0.01 the logits' own float32 rounding is ~1e-5 of a nat
    assert max(errors) < 1e-4, errors


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
def test_ntxent_memory_bank(temperature):
    """MoCo mode: each row against its positive and the bank (the plain formula as baseline:
    lightly's bank starts from random vectors)."""
    a, b = _views(16, 32, 0.05, seed=3)
    bank = torch.nn.functional.normalize(torch.randn(40, 32, generator=torch.Generator()
                                                     .manual_seed(4)), dim=1)

    def mine_fn(x, y):
        loss = NTXentLoss(temperature, memory_bank_size=(40, 32))
        loss.memory_bank.bank = bank.clone()  # a known bank instead of random keys
        return loss(x, y)

    mine = _value_and_grads(mine_fn, a, b)
    truth = _value_and_grads(lambda x, y: ntxent_loss_reference(
        x, y, temperature, negatives=bank.double(), stable=True), a.double(), b.double())
    baseline = _value_and_grads(
        lambda x, y: ntxent_loss_reference(x, y, temperature, negatives=bank), a, b)
    _check(mine, baseline, truth, f"NTXentLoss(T={temperature}, memory bank)")


@pytest.mark.parametrize("chunk", [0, 8])
@pytest.mark.parametrize("form", ["moco_v3", "clip", "moco_v2", "in_batch_and_queue"])
@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
def test_info_nce(temperature, form, chunk):
    """InfoNCELoss has no lightly counterpart: the baseline is the plain float32 formula."""
    a, b = _views(24, 32, 0.05, seed=11)
    queue = torch.randn(30, 32, generator=torch.Generator().manual_seed(12))
    kwargs = {"moco_v3": {}, "clip": {"symmetric": True},
              "moco_v2": {"in_batch_negatives": False}, "in_batch_and_queue": {}}[form]
    negatives = queue if form in ("moco_v2", "in_batch_and_queue") else None
    loss = InfoNCELoss(temperature, chunk_rows=chunk, **kwargs)
    mine = _value_and_grads(lambda q, k: loss(q, k, negatives), a, b)

    def reference(q, k, stable):
        neg = None if negatives is None else torch.nn.functional.normalize(
            negatives.to(q.dtype), dim=1)
        return info_nce_loss_reference(q, k, temperature, negatives=neg, stable=stable, **kwargs)

    truth = _value_and_grads(lambda q, k: reference(q, k, True), a.double(), b.double())
    baseline = _value_and_grads(lambda q, k: reference(q, k, False), a, b)
    _check(mine, baseline, truth, f"InfoNCELoss({form}, T={temperature})")


# ---------------------------------------------------------------------------- covariance
KINDS = ["random", "scaled", "two_heavy", "shifted"]
SHAPES = [(64, 128), (256, 64)]


@pytest.mark.parametrize("route", ["auto", "gram", "covariance"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,d", SHAPES)
def test_vicreg(n, d, kind, route):
    a, b = _embeddings(n, d, kind, seed=n + d + KINDS.index(kind))
    mine = _value_and_grads(VICRegLoss(route=route), a, b)
    truth = _value_and_grads(vicreg_loss_reference, a.double(), b.double())
    baseline_fn = lightly_loss.VICRegLoss() if lightly_loss is not None else vicreg_loss_reference
    baseline = _value_and_grads(baseline_fn, a, b)
    _check(mine, baseline, truth, f"VICRegLoss(route={route}) on {n}x{d} {kind}")


@pytest.mark.parametrize("route", ["auto", "gram", "covariance"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,d", SHAPES)
def test_barlow_twins(n, d, kind, route):
    a, b = _embeddings(n, d, kind, seed=n + d + KINDS.index(kind))
    mine = _value_and_grads(BarlowTwinsLoss(route=route), a, b)
    truth = _value_and_grads(barlow_twins_loss_reference, a.double(), b.double())
    baseline_fn = (lightly_loss.BarlowTwinsLoss() if lightly_loss is not None
                   else barlow_twins_loss_reference)
    baseline = _value_and_grads(baseline_fn, a, b)
    _check(mine, baseline, truth, f"BarlowTwinsLoss(route={route}) on {n}x{d} {kind}")


# ---------------------------------------------------------------------------- the ops' masks
def _masked_logits(q, k, scale, *columns):
    s = scale * q @ k.T
    mask = torch.zeros_like(s, dtype=torch.bool)
    rows = torch.arange(q.shape[0])
    for c in columns:
        valid = c >= 0
        mask[rows[valid], c[valid]] = True
    return s.masked_fill(mask, float("-inf"))


@pytest.mark.parametrize("chunk", [0, 2])
def test_logsumexp_logits_positive_column(chunk):
    """positive_column leaves a second column per row out of the row LSEs and, with
    with_columns, the same entries out of the column LSEs (duplicates and -1 allowed)."""
    from jem_fast.ops import logsumexp_logits
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    self_column = torch.tensor([0, 1, -1, 3, 2])
    positive = torch.tensor([0, 2, -1, 1, 1])
    rows, _ = logsumexp_logits(q, k, 2.0, self_column, chunk_rows=chunk, positive_column=positive)
    want = torch.logsumexp(_masked_logits(q, k, 2.0, self_column, positive), 1)
    torch.testing.assert_close(rows, want, rtol=1e-12, atol=1e-12)
    rows, cols = logsumexp_logits(q, k, 2.0, None, True, chunk, positive_column=positive)
    s = _masked_logits(q, k, 2.0, positive)
    torch.testing.assert_close(rows, torch.logsumexp(s, 1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cols, torch.logsumexp(s, 0), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda a, b: logsumexp_logits(a, b, 2.0, self_column, chunk_rows=chunk,
                                      positive_column=positive)[0], (q, k))
    assert torch.autograd.gradcheck(
        lambda a, b: logsumexp_logits(a, b, 2.0, None, True, chunk, positive_column=positive),
        (q, k))
    with pytest.raises(RuntimeError, match="positive_column"):
        logsumexp_logits(q, k, 2.0, positive_column=torch.tensor([0, 1, 4, 0, 0]))


@pytest.mark.parametrize("tile", [0, 3, 4])
def test_logsumexp_self_logits_pair_offset(tile):
    """pair_offset = N / 2: rows i and i + N/2 leave each other out (across tiles too)."""
    from jem_fast.ops import logsumexp_self_logits
    z = torch.randn(10, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                    requires_grad=True)
    lse = logsumexp_self_logits(z, 1.5, tile, pair_offset=5)
    rows = torch.arange(10)
    want = torch.logsumexp(_masked_logits(z, z, 1.5, rows, (rows + 5) % 10), 1)
    torch.testing.assert_close(lse, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: logsumexp_self_logits(x, 1.5, tile, pair_offset=5),
                                    (z,))
    with pytest.raises(RuntimeError, match="pair_offset"):
        logsumexp_self_logits(z, 1.5, tile, pair_offset=3)  # not a symmetric pairing
