"""`jem-fast info`'s self-test: every op and loss once, on tiny inputs, against its float64
reference from jem_fast.reference (the oracle the tests use).

Each check runs jem_fast in float32 on the chosen device and the reference in float64 on the CPU,
on the same values, and compares the result and (for losses) the input gradient. The tolerances
are float32 ones, loose enough for any correct kernel and tight enough to catch a wrong one (a
broken kernel is off by O(1), not by 1e-4). This is a smoke test of the installed build, not a
replacement for the test suite, which covers odd shapes, dtypes, torch.compile and distributed.
"""
from __future__ import annotations

import time
from typing import Callable, List, NamedTuple, Optional

import torch
import torch.nn.functional as F

# Relative error allowed between a float32 jem_fast result and its float64 reference, measured
# against the largest reference magnitude (so tiny entries of a gradient do not dominate).
RTOL = 2e-3


class CheckResult(NamedTuple):
    name: str
    status: str  # "pass", "FAIL" or "skip"
    detail: str
    seconds: float


def _rel_err(got, want) -> float:
    got = got.detach().double().cpu()
    want = want.detach().double().cpu()
    if got.numel() == want.numel() == 1:  # SwaVLoss returns shape (1,), as lightly's does
        got, want = got.reshape(()), want.reshape(())
    if got.shape != want.shape:
        raise AssertionError(f"shape {tuple(got.shape)} != reference {tuple(want.shape)}")
    if not torch.isfinite(got).all():
        return float("inf")
    scale = want.abs().max().clamp_min(1e-12)
    return float((got - want).abs().max() / scale)


def _pairs(device, generator, *shapes, scale=1.0):
    """float32 leaf tensors on `device` and float64 CPU leaf copies of the same values."""
    f32, f64 = [], []
    for shape in shapes:
        x = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
        f32.append(x.float().to(device).requires_grad_())
        f64.append(x.clone().requires_grad_())
    return f32, f64


def _loss_check(fn, ref, f32, f64):
    """Largest relative error of the loss and of every input gradient."""
    out = fn(*f32)
    want = ref(*f64)
    grads = torch.autograd.grad(out, f32)
    want_grads = torch.autograd.grad(want, f64)
    errs = [_rel_err(out, want)] + [_rel_err(g, w) for g, w in zip(grads, want_grads)]
    return max(errs)


def _check_vicreg(device, g):
    from jem_fast.losses import VICRegLoss
    from jem_fast.reference import vicreg_loss_reference
    errs = []
    for n, d in ((12, 40), (40, 12)):  # both routes: Gram (N < D) and covariance (N >= D)
        f32, f64 = _pairs(device, g, (n, d), (n, d))
        errs.append(_loss_check(VICRegLoss(), vicreg_loss_reference, f32, f64))
    return max(errs)


def _check_barlow(device, g):
    from jem_fast.losses import BarlowTwinsLoss
    from jem_fast.reference import barlow_twins_loss_reference
    errs = []
    for n, d in ((12, 40), (40, 12)):
        f32, f64 = _pairs(device, g, (n, d), (n, d))
        errs.append(_loss_check(BarlowTwinsLoss(), barlow_twins_loss_reference, f32, f64))
    return max(errs)


def _check_ntxent(device, g):
    from jem_fast.losses import NTXentLoss
    from jem_fast.reference import ntxent_loss_reference
    f32, f64 = _pairs(device, g, (13, 24), (13, 24))
    return _loss_check(NTXentLoss(temperature=0.5), ntxent_loss_reference, f32, f64)


def _check_info_nce_clip(device, g):
    from jem_fast.losses import InfoNCELoss
    from jem_fast.reference import info_nce_loss_reference
    f32, f64 = _pairs(device, g, (11, 24), (11, 24))
    return _loss_check(InfoNCELoss(temperature=0.1, symmetric=True),
                       lambda q, k: info_nce_loss_reference(q, k, 0.1, symmetric=True), f32, f64)


def _check_info_nce_moco(device, g):
    from jem_fast.losses import InfoNCELoss
    from jem_fast.reference import info_nce_loss_reference
    f32, f64 = _pairs(device, g, (9, 16), (9, 16))
    # A queue of past keys is stored normalized (MemoryBank); the reference takes it as given.
    queue = F.normalize(torch.randn(50, 16, generator=g, dtype=torch.float64), dim=1)
    fn = InfoNCELoss(temperature=0.2)
    q32 = queue.float().to(device)
    return _loss_check(lambda q, k: fn(q, k, q32),
                       lambda q, k: info_nce_loss_reference(q, k, 0.2, negatives=queue),
                       f32, f64)


def _check_negative_cosine(device, g):
    from jem_fast.losses import NegativeCosineSimilarity
    from jem_fast.reference import negative_cosine_reference

    def ref(x0, x1):
        return negative_cosine_reference(x0, x1).mean()
    f32, f64 = _pairs(device, g, (10, 33), (10, 33))
    return _loss_check(NegativeCosineSimilarity(), ref, f32, f64)


def _check_sinkhorn(device, g):
    from jem_fast.ops import sinkhorn_knopp
    from jem_fast.reference import sinkhorn_knopp_reference
    scores = torch.randn(20, 30, generator=g, dtype=torch.float64)
    got = sinkhorn_knopp(scores.float().to(device), 0.05, 3)
    return _rel_err(got, sinkhorn_knopp_reference(scores, 0.05, 3))


def _check_swav(device, g):
    from jem_fast.losses import SwaVLoss
    from jem_fast.reference import swav_loss_reference
    f32, f64 = _pairs(device, g, (8, 20), (8, 20), (8, 20), scale=0.5)
    return _loss_check(lambda a, b, c: SwaVLoss()([a, b], [c]),
                       lambda a, b, c: swav_loss_reference([a, b], [c]), f32, f64)


def _check_dino(device, g):
    from jem_fast.losses import DINOLoss
    from jem_fast.reference import dino_loss_reference
    k = 32
    teacher = [torch.randn(6, k, generator=g, dtype=torch.float64) for _ in range(2)]
    f32, f64 = _pairs(device, g, (6, k), (6, k), (6, k), (6, k))
    loss_fn = DINOLoss(output_dim=k, warmup_teacher_temp=0.04, teacher_temp=0.04,
                       center_momentum=0.9).to(device)
    t32 = [t.float().to(device) for t in teacher]
    center = torch.zeros(k, dtype=torch.float64)
    return _loss_check(lambda *s: loss_fn(t32, list(s), epoch=0),
                       lambda *s: dino_loss_reference(teacher, list(s), center, 0.04, 0.1,
                                                      0.9)[0], f32, f64)


def _check_deepcluster(device, g):
    from jem_fast.losses import DeepClusterV2Loss
    from jem_fast.reference import deepcluster_v2_loss_reference
    f32, f64 = _pairs(device, g, (10, 15), (10, 7))
    targets = [torch.randint(0, 15, (10,), generator=g), torch.randint(0, 7, (10,), generator=g)]
    targets[0][3] = -1  # ignore_index rows are part of the contract
    t_dev = [t.to(device) for t in targets]
    return _loss_check(lambda a, b: DeepClusterV2Loss()([a, b], t_dev),
                       lambda a, b: deepcluster_v2_loss_reference([a, b], targets), f32, f64)


def _check_assign(device, g):
    from jem_fast.ops import assign_to_centroids
    from jem_fast.reference import assign_to_centroids_reference
    feats = torch.randn(25, 16, generator=g, dtype=torch.float64)
    cents = torch.randn(9, 16, generator=g, dtype=torch.float64)
    index, score = assign_to_centroids(feats.float().to(device), cents.float().to(device))
    ref_index, ref_score = assign_to_centroids_reference(feats, cents)
    if not torch.equal(index.cpu().long(), ref_index):
        raise AssertionError("assignments differ from the reference")
    return _rel_err(score, ref_score)


def _check_wmse(device, g):
    from jem_fast.losses import WMSELoss
    from jem_fast.reference import wmse_loss_reference
    loss_fn = WMSELoss(embedding_dim=4, w_size=8, num_samples=2).to(device)
    wh = loss_fn.whitening
    f32, f64 = _pairs(device, g, (16, 4))
    stats = dict(running_mean=wh.running_mean.detach().reshape(-1).double().cpu().clone(),
                 running_cov=wh.running_variance.detach().double().cpu().clone(),
                 momentum=wh.momentum)
    # Both sides draw their sub-batch permutations from the global generator: same seed.
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))

    def got(x):
        torch.manual_seed(seed)
        return loss_fn(x)

    def want(x):
        torch.manual_seed(seed)
        return wmse_loss_reference(x, loss_fn.w_size, loss_fn.num_samples, loss_fn.w_iter,
                                   wh.eps, **stats)[0]
    return _loss_check(got, want, f32, f64)


def _check_ema(device, g):
    from jem_fast.nn import update_ema
    shapes = [(7, 5), (33,), (2, 3, 4)]
    teacher = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    student = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    t_dev = [t.float().to(device) for t in teacher]
    update_ema(t_dev, [s.float().to(device) for s in student], 0.9)
    return max(_rel_err(t, 0.9 * tt + 0.1 * s) for t, tt, s in zip(t_dev, teacher, student))


class _Skip(Exception):
    """A check that does not apply to this build or version (reported as skip, not FAIL)."""


def _check_augment(device, g):
    """The fused augmentation kernel against its float64 reference (when this version has it)."""
    try:
        from jem_fast.augment import functional as AF
        from jem_fast.reference.augment import augment_reference
    except (ImportError, AttributeError) as exc:
        raise _Skip(f"not in this version ({type(exc).__name__})") from None
    from jem_fast.augment.sampling import ViewConfig, sample_view_params
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
              for h, w in ((40, 52), (37, 30), (33, 45))]
    config = ViewConfig(size=24, jitter_p=1.0, blur_p=0.5, solarize_p=0.3)
    params = sample_view_params([tuple(im.shape[-2:]) for im in images], 1234, 0, config)
    got = AF.augment([im.to(device) for im in images], {k: v.to(device) for k, v in
                                                        params.items()}, 24, blur_kernel_size=5)
    want = augment_reference(images, params, 24, blur_kernel_size=5)
    return _rel_err(got, want)


CHECKS: List[tuple] = [
    ("VICRegLoss (vicreg_forward/backward, both routes)", _check_vicreg),
    ("BarlowTwinsLoss (barlow_twins_forward/backward, both routes)", _check_barlow),
    ("NTXentLoss (info_nce_self_lse)", _check_ntxent),
    ("InfoNCELoss symmetric / CLIP (info_nce_lse)", _check_info_nce_clip),
    ("InfoNCELoss with a queue / MoCo (info_nce_lse)", _check_info_nce_moco),
    ("NegativeCosineSimilarity (cosine_similarity_rows)", _check_negative_cosine),
    ("sinkhorn_knopp", _check_sinkhorn),
    ("SwaVLoss (sinkhorn + multiview_cross_entropy)", _check_swav),
    ("DINOLoss (centered_softmax + multiview_cross_entropy)", _check_dino),
    ("DeepClusterV2Loss", _check_deepcluster),
    ("assign_to_centroids", _check_assign),
    ("WMSELoss", _check_wmse),
    ("update_ema", _check_ema),
    ("augment (fused augmentation kernel)", _check_augment),
]


def run_selftest(device: str = "cpu", seed: int = 0,
                 on_result: Optional[Callable[[CheckResult], None]] = None) -> List[CheckResult]:
    """Runs every check on `device`; a check that raises is a FAIL with the error as detail."""
    results = []
    for name, check in CHECKS:
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        try:
            err = check(device, g)
            ok = err <= RTOL
            res = CheckResult(name, "pass" if ok else "FAIL",
                              f"max rel err {err:.1e}" + ("" if ok else f" > {RTOL:.0e}"),
                              time.perf_counter() - t0)
        except _Skip as exc:
            res = CheckResult(name, "skip", str(exc), time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - any error of an op is a failed check
            msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            res = CheckResult(name, "FAIL", f"{type(exc).__name__}: {msg}",
                              time.perf_counter() - t0)
        results.append(res)
        if on_result is not None:
            on_result(res)
    return results


__all__ = ["CHECKS", "CheckResult", "RTOL", "run_selftest"]
