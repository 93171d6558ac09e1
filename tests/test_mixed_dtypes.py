"""Inputs of different floating dtypes are accepted by every loss, as lightly (torch promotion)
accepts them: the loss equals the same loss on the inputs cast to torch.promote_types (the wider
type), matches lightly's value (on the mixed inputs where lightly accepts them, else on the
promoted ones), and every input gets its gradient in its own dtype. Integer inputs still raise
an error naming the argument."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jem_fast import losses
from jem_fast.reference.info_nce import info_nce_loss_reference

try:  # the promotion checks run everywhere; the comparisons with lightly where it is installed
    import lightly.loss as lightly_loss
except ImportError:
    lightly_loss = None
needs_lightly = pytest.mark.skipif(lightly_loss is None, reason="lightly is not installed")

DTYPE_PAIRS = [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
               (torch.float32, torch.float64), (torch.float16, torch.bfloat16)]
PAIR_IDS = ["fp16-fp32", "bf16-fp32", "fp32-fp64", "fp16-bf16"]


def _promoted(dtypes):
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


def _run(fn, inputs):
    """(loss, grads) of fn(inputs) with fresh leaves (inputs may be nested in lists by fn)."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    loss = fn(leaves)
    loss.sum().backward()
    return loss.detach(), [x.grad for x in leaves]


def _tolerance(dtypes):
    """Relative tolerance against lightly: lightly computes parts of a mixed expression in the
    narrower dtype, so its value carries that dtype's rounding."""
    if torch.bfloat16 in dtypes:
        return 3e-2
    if torch.float16 in dtypes:
        return 5e-3
    return 1e-6


def _check_promotion(fn, values, dtypes, lightly_fn=None, lightly_must_accept=False,
                     constants=(), other_dtypes=()):
    """The mixed call equals the promoted call exactly (value and gradients), gradients have the
    inputs' dtypes, and the value matches lightly's.

    constants: indices of inputs the loss treats as constants (DINO's teacher, detached
    targets): they must get no gradient. other_dtypes: dtypes of inputs fn holds itself."""
    promoted = _promoted(list(dtypes) + list(other_dtypes))
    mixed_inputs = [v.to(d) for v, d in zip(values, dtypes)]
    loss, grads = _run(fn, mixed_inputs)
    ref_loss, ref_grads = _run(fn, [v.to(promoted) for v in mixed_inputs])
    expected_loss_dtype = torch.float64 if promoted == torch.float64 else torch.float32
    assert loss.dtype == expected_loss_dtype
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    for i, (g, ref_g, x) in enumerate(zip(grads, ref_grads, mixed_inputs)):
        if i in constants:
            assert g is None and ref_g is None
            continue
        assert g is not None and g.dtype == x.dtype
        torch.testing.assert_close(g, ref_g.to(x.dtype), rtol=0, atol=0)
    if lightly_fn is None or lightly_loss is None:
        return
    rtol = _tolerance(dtypes)
    try:
        theirs = lightly_fn([x.detach() for x in mixed_inputs])
        accepted = bool(torch.isfinite(theirs).all())
    except RuntimeError:
        accepted = False
    if lightly_must_accept:
        assert accepted, "lightly accepts these mixed dtypes"
    if not accepted:  # lightly raises (or overflows): compare with it on the promoted inputs
        theirs = lightly_fn([x.detach().to(promoted) for x in mixed_inputs])
        rtol = max(rtol, 1e-5) if promoted != torch.float64 else 1e-9
    torch.testing.assert_close(loss.double().reshape(-1), theirs.detach().double().reshape(-1),
                               rtol=rtol, atol=rtol)


def _embeddings(n, d, count, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(count)]


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_vicreg(dtypes):
    _check_promotion(lambda z: losses.VICRegLoss()(*z), _embeddings(16, 24, 2), dtypes,
                     lambda z: lightly_loss.VICRegLoss()(*z), lightly_must_accept=True)


@pytest.mark.parametrize("route", ["gram", "covariance"])
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_barlow_twins(dtypes, route):
    # lightly raises for every mix (its matmul needs one dtype): compared on promoted inputs.
    _check_promotion(lambda z: losses.BarlowTwinsLoss(route=route)(*z), _embeddings(16, 24, 2),
                     dtypes, lambda z: lightly_loss.BarlowTwinsLoss()(*z))


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_ntxent(dtypes):
    _check_promotion(lambda z: losses.NTXentLoss(0.3)(*z), _embeddings(12, 16, 2), dtypes,
                     lambda z: lightly_loss.NTXentLoss(0.3)(*z))


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_ntxent_memory_bank(dtypes):
    def ours(z):
        torch.manual_seed(1)  # the bank's random initial keys, the same for every call
        return losses.NTXentLoss(0.3, memory_bank_size=(20, 16))(*z)

    def theirs(z):
        torch.manual_seed(1)
        return lightly_loss.NTXentLoss(0.3, memory_bank_size=(20, 16))(*z)

    # lightly's float32 bank takes float32 inputs only; the float64 case is compared with our
    # promoted call alone (lightly has no float64 bank).
    _check_promotion(ours, _embeddings(12, 16, 2), dtypes,
                     theirs if torch.float64 not in dtypes else None)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_info_nce(dtypes, symmetric):
    # lightly has no InfoNCELoss: the float64 reference formula on the same (rounded) inputs.
    values = _embeddings(12, 16, 2)
    loss_fn = losses.InfoNCELoss(0.2, symmetric=symmetric)
    _check_promotion(lambda z: loss_fn(*z), values, dtypes)
    rounded = [v.to(d).double() for v, d in zip(values, dtypes)]
    expected = info_nce_loss_reference(*rounded, temperature=0.2, symmetric=symmetric)
    got = loss_fn(*(v.to(d) for v, d in zip(values, dtypes)))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_info_nce_with_negatives(dtypes):
    """query, key and negatives in three dtypes: all promoted; the negatives get no gradient."""
    q, k, neg = _embeddings(12, 16, 2) + _embeddings(30, 16, 1, seed=5)
    loss_fn = losses.InfoNCELoss(0.2, in_batch_negatives=False)
    promoted = _promoted(dtypes)
    _check_promotion(lambda z: loss_fn(z[0], z[1], negatives=neg.to(dtypes[1])), [q, k], dtypes)
    mixed = loss_fn(q.to(dtypes[0]), k.to(dtypes[0]), negatives=neg.to(dtypes[1]))
    same = loss_fn(q.to(promoted), k.to(promoted), negatives=neg.to(promoted))
    torch.testing.assert_close(mixed, same.to(mixed.dtype),
                               rtol=_tolerance(dtypes), atol=_tolerance(dtypes))
    assert mixed.dtype == (torch.float64 if promoted == torch.float64 else torch.float32)


def _prototype_scores(count, b, k, seed):
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(k, 8, generator=g, dtype=torch.float64), dim=1)
    return [F.normalize(torch.randn(b, 8, generator=g, dtype=torch.float64), dim=1) @ c.T
            for _ in range(count)]


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_swav(dtypes):
    values = _prototype_scores(4, 16, 12, seed=3)  # 2 high- and 2 low-resolution crops

    def split(z):
        return [z[0], z[1]], [z[2], z[3]]

    # Crop dtypes alternate, so every crop list mixes the two dtypes. lightly accepts the mix
    # but its Sinkhorn runs in float16 for a float16 crop and overflows (NaN codes): those two
    # cases are compared with lightly on the promoted inputs.
    _check_promotion(lambda z: losses.SwaVLoss()(*split(z)), values,
                     (dtypes[0], dtypes[1], dtypes[1], dtypes[0]),
                     lambda z: lightly_loss.SwaVLoss()(*split(z)),
                     lightly_must_accept=torch.float16 not in dtypes)


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_swav_with_queue(dtypes):
    values = _prototype_scores(4, 16, 12, seed=4)
    queue = [q.to(dtypes[1]) for q in _prototype_scores(2, 20, 12, seed=5)]
    _check_promotion(lambda z: losses.SwaVLoss()([z[0], z[1]], [z[2], z[3]], queue), values,
                     (dtypes[0],) * 4, other_dtypes=(dtypes[1],))


@pytest.mark.parametrize("centering", ["center", "sinkhorn_knopp"])
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_dino(dtypes, centering):
    values = _embeddings(8, 10, 6, seed=6)  # 2 teacher crops, 4 student crops
    a, b = dtypes

    def ours(z):  # a fresh module per call: the center moves after each forward
        return losses.DINOLoss(output_dim=10, teacher_centering=centering)(z[:2], z[2:], epoch=3)

    def theirs(z):
        return lightly_loss.DINOLoss(output_dim=10)(list(z[:2]), list(z[2:]), epoch=3)

    _check_promotion(ours, values, (a, b, b, a, a, b),
                     theirs if centering == "center" else None, constants=(0, 1),
                     lightly_must_accept=True)


@needs_lightly
def test_dino_center_follows_the_widest_teacher_crop():
    """As lightly (whose center update promotes), a float64 teacher crop makes the center
    float64, whichever crop it is."""
    teacher = [torch.randn(4, 6), torch.randn(4, 6, dtype=torch.float64)]
    ours = losses.DINOLoss(output_dim=6)
    theirs = lightly_loss.DINOLoss(output_dim=6)
    ours(teacher, [t.float() for t in teacher] + [torch.randn(4, 6)])
    theirs(teacher, [t.double() for t in teacher] + [torch.randn(4, 6, dtype=torch.float64)])
    assert ours.center.dtype == theirs.center.dtype == torch.float64
    torch.testing.assert_close(ours.center, theirs.center)


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_deepcluster_v2_heads_of_different_dtypes(dtypes):
    g = torch.Generator().manual_seed(7)
    values = [torch.randn(10, 5, generator=g, dtype=torch.float64),
              torch.randn(10, 7, generator=g, dtype=torch.float64)]
    targets = [torch.randint(0, 5, (10,), generator=g), torch.randint(0, 7, (10,), generator=g)]
    loss_fn = losses.DeepClusterV2Loss(temperature=0.1)
    _check_promotion(lambda z: loss_fn(z, targets), values, dtypes)
    # The promoted computation is the official formula in that dtype (at least float32).
    compute = torch.promote_types(_promoted(dtypes), torch.float32)
    expected = sum(F.cross_entropy(v.to(d).to(compute) / 0.1, t)
                   for v, d, t in zip(values, dtypes, targets)) / 2
    torch.testing.assert_close(loss_fn([v.to(d) for v, d in zip(values, dtypes)], targets),
                               expected)


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_negative_cosine_similarity(dtypes):
    _check_promotion(lambda z: losses.NegativeCosineSimilarity()(*z), _embeddings(12, 16, 2),
                     dtypes, lambda z: lightly_loss.NegativeCosineSimilarity()(*z),
                     lightly_must_accept=True)


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_symmetric_negative_cosine(dtypes):
    p0, z1, p1, z0 = _embeddings(12, 16, 4, seed=8)
    lightly_ncs = lightly_loss.NegativeCosineSimilarity() if lightly_loss else None
    _check_promotion(
        lambda z: losses.symmetric_negative_cosine([(z[0], z[1]), (z[2], z[3])]),
        [p0, z1, p1, z0], (dtypes[0], dtypes[1], dtypes[0], dtypes[1]),
        lambda z: 0.5 * (lightly_ncs(z[0], z[1].detach()) + lightly_ncs(z[2], z[3].detach())),
        constants=(1, 3))


@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=PAIR_IDS)
def test_wmse_norm_mse_loss(dtypes):
    """WMSELoss takes one tensor; its pairwise loss_fn, norm_mse_loss, mixes dtypes."""
    _check_promotion(lambda z: losses.norm_mse_loss(*z), _embeddings(12, 16, 2), dtypes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_wmse_gradient_in_input_dtype(dtype):
    x = torch.randn(16, 3, dtype=torch.float64).to(dtype).requires_grad_()
    loss = losses.WMSELoss(embedding_dim=3, w_size=8)(x)
    loss.backward()
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- integer inputs still raise

def _int(n=8, d=6):
    return torch.ones(n, d, dtype=torch.int64)


@pytest.mark.parametrize("call,match", [
    (lambda: losses.VICRegLoss()(torch.randn(8, 6), _int()), r"z_b must be a floating-point"),
    (lambda: losses.BarlowTwinsLoss()(_int(), torch.randn(8, 6)), r"z_a must be a floating-point"),
    (lambda: losses.NTXentLoss()(torch.randn(8, 6), _int()), r"out1 must be a floating-point"),
    (lambda: losses.NTXentLoss(memory_bank_size=(16, 6))(_int(), torch.randn(8, 6)),
     r"out0 must be a floating-point"),
    (lambda: losses.InfoNCELoss()(_int(), torch.randn(8, 6)), r"query must be a floating-point"),
    (lambda: losses.InfoNCELoss(in_batch_negatives=False)(
        torch.randn(8, 6), torch.randn(8, 6), negatives=_int(16)),
     r"negatives must be a floating-point"),
    (lambda: losses.SwaVLoss()([torch.randn(8, 6)], [_int()]),
     r"low_resolution_outputs\[0\] must be a floating-point"),
    (lambda: losses.DINOLoss(output_dim=6)([_int()], [torch.randn(8, 6)] * 2),
     r"teacher_out\[0\] must be a floating-point"),
    (lambda: losses.DeepClusterV2Loss()([torch.randn(8, 6), _int()],
                                        [torch.zeros(8, dtype=torch.long)] * 2),
     r"outputs\[1\] must be floating-point"),
    (lambda: losses.NegativeCosineSimilarity()(torch.randn(8, 6), _int()),
     r"x1 must be a floating-point"),
    (lambda: losses.symmetric_negative_cosine([(_int(), torch.randn(8, 6))]),
     r"x0 must be a floating-point"),
    (lambda: losses.WMSELoss(embedding_dim=3, w_size=6)(_int(12, 3)),
     r"input must be a floating-point"),
], ids=["vicreg", "barlow", "ntxent", "ntxent-bank", "infonce", "infonce-negatives", "swav",
        "dino", "deepcluster", "negcos", "symmetric-negcos", "wmse"])
def test_integer_inputs_raise_naming_the_argument(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()
