"""The counter-based per-sample parameter sampler (jem_fast.augment.sampling): Philox known
answers, uniform laws, RandomResizedCrop against its analytic law and torchvision's fallback,
Bernoulli frequencies, permutations, factor ranges, determinism and purity, CPU/CUDA identity,
bad arguments."""
import math

import pytest
import torch

from jem_fast.augment import sampling as S
from jem_fast.augment.sampling import ViewConfig, sample_view_params, sample_views_params

N = 20000
L43 = math.log(4 / 3)


def binomial_ok(count, n, p, sigmas=4.0):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1e-9


def ks_distance(samples, cdf):
    """sup |F_n - F| of 1-D samples against a vectorized CDF."""
    x, _ = torch.sort(samples.double().flatten())
    n = x.numel()
    f = cdf(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return torch.maximum(i / n - f, f - (i - 1) / n).abs().max().item()


def ks_bound(n, slack=0.0):
    # 1.95 / sqrt(n): Kolmogorov tail about 1e-3; the slack absorbs integer rounding of w, h.
    return 1.95 / math.sqrt(n) + slack


def tv_fallback(H, W, ratio):
    """torchvision's centre-crop fallback, scalar Python, as in RandomResizedCrop.get_params."""
    in_ratio = float(W) / float(H)
    if in_ratio < min(ratio):
        w = W
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = H
        w = int(round(h * max(ratio)))
    else:
        w, h = W, H
    return [(H - h) // 2, (W - w) // 2, h, w]


# ------------------------------------------------------------------------------ generator

KAT = [  # Random123 kat_vectors, philox4x32 10: counter, key, expected
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_philox_known_answers():
    ctr = torch.tensor([c for c, _, _ in KAT], dtype=torch.int64)
    for i, (_, key, want) in enumerate(KAT):
        assert S.philox4x32(ctr[i:i + 1], key)[0].tolist() == list(want)


def test_philox_rejects_bad_counter():
    with pytest.raises(TypeError, match="counter"):
        S.philox4x32(torch.zeros(3, 4, dtype=torch.int32), (0, 0))


def test_uniforms_in_unit_interval_and_uniform():
    u64 = S.counter_uniforms(7, N)
    u32 = S.counter_uniforms(7, N, dtype=torch.float32)
    assert u64.dtype == torch.float64 and u64.shape == (N, 2)
    assert u32.dtype == torch.float32 and u32.shape == (N, 4)
    for u in (u64, u32):
        assert u.min() >= 0 and u.max() < 1
        assert ks_distance(u[:, 0], lambda x: x) < ks_bound(N)
    # the float32 uniforms are the leading bits of the same words as the float64 ones
    assert torch.equal(u32[:, 0].double(), torch.floor(u64[:, 0] * 2 ** 24) / 2 ** 24)


def test_sampler_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    sample_view_params((64, 64), 3, 0, ViewConfig(), batch_size=16)
    assert torch.equal(state, torch.random.get_rng_state())


def test_exp_matches_math_exp():
    x = torch.cat([torch.linspace(-3, 3, 20001, dtype=torch.float64),
                   torch.tensor([0.0, L43, -L43, 700.0, -700.0], dtype=torch.float64)])
    got = S._exp(x)
    want = torch.tensor([math.exp(v) for v in x.tolist()], dtype=torch.float64)
    assert ((got - want).abs() <= 2 * torch.finfo(torch.float64).eps * want).all()
    assert S._exp(torch.zeros(1, dtype=torch.float64)).item() == 1.0


def test_derive_seed():
    keys = {S.derive_seed(s, t) for s in range(20) for t in range(20)}
    assert len(keys) == 400 and all(0 <= k < 2 ** 64 for k in keys)
    assert S.derive_seed(5, 3) == S.derive_seed(5, 3)
    with pytest.raises(ValueError, match="step"):
        S.derive_seed(0, -1)


# ------------------------------------------------------------------------------ RandomResizedCrop

def accepted_area_cdf(t, lo=0.08, hi=1.0, log_r=L43):
    """CDF of s = area fraction of the first valid attempt on a square image with symmetric
    ratio bounds (exp(-log_r), exp(log_r)): attempts are (s, x) uniform and valid iff
    s <= exp(-|x|), so the accepted pair is uniform on that region (the fallback, probability
    (1 - q)^10 ~ 3e-9 here, is ignored)."""
    t = t.clamp(lo, 1.0)
    y0 = -torch.log(t)
    inner = (t - lo) * log_r  # t <= exp(-log_r): valid for every x
    outer = y0 * (t - lo) + (t - math.exp(-log_r)) - lo * (log_r - y0)
    g = torch.where(t <= math.exp(-log_r), inner, outer)
    q = (1.0 - math.exp(-log_r)) - lo * log_r
    return g / q


def test_crop_area_follows_the_scale_law_on_a_square_image():
    p = sample_view_params((4096, 4096), 11, 0, ViewConfig(), batch_size=N)
    top, left, h, w = p["crop"].unbind(1)
    frac = (h * w).double() / 4096 ** 2
    assert frac.min() >= 0.08 * 0.99 and frac.max() <= 1.0
    assert ks_distance(frac, accepted_area_cdf) < ks_bound(N, 0.003)
    # below 3/4 every aspect ratio fits, so the area fraction is exactly U(0.08, .) there
    small = frac[frac < 0.7]
    assert ks_distance(small, lambda x: (x - 0.08) / (0.7 - 0.08)) < ks_bound(small.numel(),
                                                                               0.003)


def test_log_ratio_uniform_in_range():
    p = sample_view_params((4096, 4096), 12, 0, ViewConfig(), batch_size=N)
    _, _, h, w = p["crop"].unbind(1)
    log_ar = torch.log(w.double() / h.double())
    assert log_ar.abs().max() <= L43 + 2e-3  # 1/1000 px of rounding
    frac = (h * w).double() / 4096 ** 2
    sub = log_ar[frac < 0.7]  # the region where validity does not depend on the ratio
    assert ks_distance(sub, lambda x: (x + L43) / (2 * L43)) < ks_bound(sub.numel(), 0.004)


def test_custom_scale_and_ratio_law():
    cfg = ViewConfig(scale=(0.05, 0.2), ratio=(0.5, 2.0))
    p = sample_view_params((3000, 3000), 5, 0, cfg, batch_size=N)
    _, _, h, w = p["crop"].unbind(1)
    # every attempt fits (s * max ratio <= 0.4 < 1): both laws are exact
    frac = (h * w).double() / 3000 ** 2
    assert ks_distance(frac, lambda x: (x - 0.05) / 0.15) < ks_bound(N, 0.004)
    ln2 = math.log(2)
    assert ks_distance(torch.log(w.double() / h.double()),
                       lambda x: (x + ln2) / (2 * ln2)) < ks_bound(N, 0.004)


def test_placement_uniform():
    # scale and ratio pinned: every crop is 100 x 100 in a 200 x 200 image, top/left in [0, 100]
    cfg = ViewConfig(scale=(0.25, 0.25), ratio=(1.0, 1.0))
    p = sample_view_params((200, 200), 13, 0, cfg, batch_size=N)
    top, left, h, w = p["crop"].unbind(1)
    assert (h == 100).all() and (w == 100).all()
    for x in (top, left):
        counts = torch.bincount(x, minlength=101).double()
        assert counts.numel() == 101 and (counts > 0).all()
        e = N / 101
        chi2 = ((counts - e) ** 2 / e).sum().item()
        assert chi2 < 100 + 6 * math.sqrt(200)


@pytest.mark.parametrize("cfg", [ViewConfig(), ViewConfig(scale=(0.5, 1.0), ratio=(0.2, 5.0)),
                                 ViewConfig(scale=(0.9, 1.0))])
def test_every_rectangle_inside_its_image(cfg):
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 700, (4000, 2), generator=g)
    sizes[:10] = torch.tensor([[1, 1], [1, 2], [2, 1], [1, 600], [600, 1], [3, 3], [1000, 10],
                               [10, 1000], [5, 7], [7, 5]])
    p = sample_view_params(sizes, 21, 3, cfg)
    top, left, h, w = p["crop"].unbind(1)
    H, W = sizes.unbind(1)
    assert p["crop"].dtype == torch.int64
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= H).all() and (left + w <= W).all()


@pytest.mark.parametrize("hw,ratio", [((1000, 10), (3 / 4, 4 / 3)), ((10, 1000), (3 / 4, 4 / 3)),
                                      ((10000, 3), (1.2, 1.5)), ((3, 10000), (0.1, 0.4)),
                                      ((1000, 1000), (0.5, 2.0)), ((101, 1001), (3 / 4, 4 / 3))])
def test_centre_crop_fallback_equals_torchvision_formula(hw, ratio):
    H, W = hw
    # scale (1, 1) or an aspect far outside the ratio range: no attempt can fit
    cfg = ViewConfig(ratio=ratio, scale=(1.0, 1.0) if (H, W) == (1000, 1000) else (0.08, 1.0))
    p = sample_view_params((H, W), 1, 0, cfg, batch_size=500)
    want = torch.tensor(tv_fallback(H, W, ratio)).expand(500, 4)
    if (H, W) == (101, 1001):  # in_ratio 9.9: some attempts do fit, the rest fall back
        fb = (p["crop"] == want).all(dim=1)
        assert 0 < fb.sum() < 500
    else:
        assert torch.equal(p["crop"], want)
    assert torch.equal(S.fallback_crop(torch.tensor([H]), torch.tensor([W]), ratio)[0],
                       want[0])


def test_fallback_matches_torchvision_get_params():
    T = pytest.importorskip("torchvision.transforms")
    for (H, W), ratio in [((1000, 10), (3 / 4, 4 / 3)), ((10, 1000), (3 / 4, 4 / 3)),
                          ((10000, 3), (1.2, 1.5))]:
        want = T.RandomResizedCrop.get_params(torch.empty(3, H, W), [0.08, 1.0], list(ratio))
        p = sample_view_params((H, W), 0, 0, ViewConfig(ratio=ratio), batch_size=4)
        assert p["crop"].tolist() == [list(want)] * 4


def test_area_law_matches_torchvision_two_sample():
    T = pytest.importorskip("torchvision.transforms")
    n = 4000
    torch.manual_seed(0)
    tv = torch.tensor([T.RandomResizedCrop.get_params(torch.empty(3, 300, 500), [0.08, 1.0],
                                                      [3 / 4, 4 / 3]) for _ in range(n)])
    mine = sample_view_params((300, 500), 3, 0, ViewConfig(), batch_size=n)["crop"]
    for col in (lambda c: (c[:, 2] * c[:, 3]).double(), lambda c: c[:, 3].double() / c[:, 2]):
        a, b = torch.sort(col(tv))[0], torch.sort(col(mine))[0]
        grid = torch.cat([a, b])
        fa = torch.searchsorted(a, grid, right=True).double() / n
        fb = torch.searchsorted(b, grid, right=True).double() / n
        assert (fa - fb).abs().max() < 1.95 * math.sqrt(2 / n)


# ------------------------------------------------------------------------------ other params

def test_param_names_shapes_dtypes():
    p = sample_view_params([(50, 60), (70, 30), (224, 224)], 0, 0, ViewConfig())
    assert tuple(p) == S.PARAM_NAMES
    assert set(p) == {"crop", "flip", "jitter", "brightness", "contrast", "saturation", "hue",
                      "order", "grayscale", "blur_sigma", "solarize"}
    want = {"crop": ((3, 4), torch.int64), "order": ((3, 4), torch.int64)}
    for k in ("flip", "jitter", "grayscale", "solarize"):
        want[k] = ((3,), torch.bool)
    for k in ("brightness", "contrast", "saturation", "hue", "blur_sigma"):
        want[k] = ((3,), torch.float32)
    for k, (shape, dtype) in want.items():
        assert p[k].shape == shape and p[k].dtype == dtype, k


def test_bernoulli_frequencies_and_independence():
    cfg = ViewConfig(flip_p=0.5, jitter_p=0.8, grayscale_p=0.2, blur_p=0.3, solarize_p=0.1)
    p = sample_view_params((32, 32), 4, 0, cfg, batch_size=N)
    coins = {"flip": (p["flip"], 0.5), "jitter": (p["jitter"], 0.8),
             "grayscale": (p["grayscale"], 0.2), "blur": (p["blur_sigma"] > 0, 0.3),
             "solarize": (p["solarize"], 0.1)}
    for name, (x, q) in coins.items():
        assert binomial_ok(x.sum().item(), N, q), name
    names = list(coins)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (x, qa), (y, qb) = coins[a], coins[b]
            assert binomial_ok((x & y).sum().item(), N, qa * qb), (a, b)


@pytest.mark.parametrize("q", [0.0, 1.0])
def test_probability_extremes_are_exact(q):
    cfg = ViewConfig(flip_p=q, jitter_p=q, grayscale_p=q, blur_p=q, solarize_p=q)
    p = sample_view_params((32, 32), 4, 0, cfg, batch_size=2000)
    for x in (p["flip"], p["jitter"], p["grayscale"], p["blur_sigma"] > 0, p["solarize"]):
        assert bool(x.all()) if q == 1.0 else not bool(x.any())


def test_order_is_a_uniform_permutation():
    p = sample_view_params((32, 32), 5, 0, ViewConfig(), batch_size=N)
    order = p["order"]
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(N, 4))
    code = order[:, 0] * 64 + order[:, 1] * 16 + order[:, 2] * 4 + order[:, 3]
    counts = torch.bincount(code, minlength=256).double()
    counts = counts[counts > 0]
    assert counts.numel() == 24
    e = N / 24
    chi2 = ((counts - e) ** 2 / e).sum().item()
    assert chi2 < 23 + 6 * math.sqrt(46)


@pytest.mark.parametrize("b,c,s,h", [(0.4, 0.4, 0.2, 0.1), (0.8, 0.8, 0.8, 0.2),
                                     (1.5, 0.0, 1.0, 0.5)])
def test_factor_ranges(b, c, s, h):
    cfg = ViewConfig(brightness=b, contrast=c, saturation=s, hue=h, jitter_p=0.8)
    p = sample_view_params((32, 32), 6, 1, cfg, batch_size=N)
    on = p["jitter"]
    for name, v in (("brightness", b), ("contrast", c), ("saturation", s)):
        f = p[name]
        assert (f[~on] == 1).all(), name
        lo, hi = max(0.0, 1 - v), 1 + v
        x = f[on].double()
        assert x.min() >= lo - 1e-6 and x.max() <= hi + 1e-6, name
        if v > 0:
            assert ks_distance(x, lambda t: (t - lo) / (hi - lo)) < ks_bound(x.numel()), name
    hue = p["hue"]
    assert (hue[~on] == 0).all()
    assert hue[on].abs().max() <= h + 1e-7
    if h > 0:
        assert ks_distance(hue[on], lambda t: (t + h) / (2 * h)) < ks_bound(int(on.sum()))


def test_factors_are_independent():
    p = sample_view_params((32, 32), 6, 1, ViewConfig(jitter_p=1.0), batch_size=N)
    x = torch.stack([p[k].double() for k in ("brightness", "contrast", "saturation", "hue")])
    corr = torch.corrcoef(x)
    off = corr - torch.eye(4, dtype=torch.float64)
    assert off.abs().max() < 4 / math.sqrt(N)


def test_blur_sigma_law():
    cfg = ViewConfig(blur_p=0.5, blur_sigma=(0.1, 2.0))
    p = sample_view_params((32, 32), 8, 0, cfg, batch_size=N)
    sig = p["blur_sigma"]
    on = sig > 0
    assert binomial_ok(on.sum().item(), N, 0.5)
    x = sig[on].double()
    assert x.min() >= 0.1 - 1e-6 and x.max() <= 2.0 + 1e-6
    assert ks_distance(x, lambda t: (t - 0.1) / 1.9) < ks_bound(x.numel())


# ------------------------------------------------------------------------------ determinism

def test_same_seed_same_params_different_view_or_seed_differ():
    sizes = [(100 + i, 200 - i) for i in range(64)]
    a = sample_view_params(sizes, 42, 0, ViewConfig())
    b = sample_view_params(sizes, 42, 0, ViewConfig())
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for other in (sample_view_params(sizes, 42, 1, ViewConfig()),
                  sample_view_params(sizes, 43, 0, ViewConfig())):
        assert (other["crop"] != a["crop"]).any(dim=1).float().mean() > 0.9
        assert not torch.equal(other["order"], a["order"])


def test_params_are_a_pure_function_of_the_sample_index():
    g = torch.Generator().manual_seed(1)
    sizes = torch.randint(20, 400, (300, 2), generator=g)
    full = sample_view_params(sizes, 9, 2, ViewConfig(blur_p=0.5, solarize_p=0.5))
    part = sample_view_params(sizes[100:160], 9, 2, ViewConfig(blur_p=0.5, solarize_p=0.5),
                              index_offset=100)
    for k in full:
        assert torch.equal(full[k][100:160], part[k]), k
    # a sample's parameters do not depend on the other images' sizes
    alone = sample_view_params(sizes[7:8], 9, 2, ViewConfig(blur_p=0.5, solarize_p=0.5),
                               index_offset=7)
    for k in full:
        assert torch.equal(full[k][7:8], alone[k]), k


def test_batched_views_equal_single_view_calls():
    cfg_a = ViewConfig(size=224, scale=(0.4, 1.0), blur_p=1.0)
    cfg_b = ViewConfig(size=96, scale=(0.05, 0.4), blur_p=0.5)
    configs = [cfg_a, cfg_b, cfg_a, cfg_b, cfg_b]
    sizes = [(300, 400), (500, 250), (64, 64)]
    for view_indices in (None, [5, 2, 9, 0, 7]):
        many = sample_views_params(sizes, 77, configs, view_indices=view_indices)
        idx = view_indices or range(len(configs))
        for v, cfg, got in zip(idx, configs, many):
            one = sample_view_params(sizes, 77, v, cfg)
            for k in one:
                assert torch.equal(one[k], got[k]), (v, k)


def test_uniform_sizes_equal_per_sample_sizes():
    a = sample_view_params((120, 90), 3, 0, ViewConfig(), batch_size=50)
    b = sample_view_params([(120, 90)] * 50, 3, 0, ViewConfig())
    c = sample_view_params(torch.tensor([[120, 90]] * 50), 3, 0, ViewConfig())
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), k


def test_empty_batch():
    p = sample_view_params((10, 10), 0, 0, ViewConfig(), batch_size=0)
    assert p["crop"].shape == (0, 4) and p["flip"].shape == (0,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_bit_identical():
    g = torch.Generator().manual_seed(2)
    sizes = torch.randint(1, 2000, (4096, 2), generator=g)
    sizes[:4] = torch.tensor([[1000, 10], [10, 1000], [1, 1], [4096, 4096]])
    configs = [ViewConfig(blur_p=0.5, solarize_p=0.3), ViewConfig(scale=(0.05, 0.4)),
               ViewConfig(ratio=(0.3, 3.0), hue=0.5, brightness=1.3)]
    cpu = sample_views_params(sizes, 2 ** 63 + 5, configs, "cpu", index_offset=2 ** 33)
    gpu = sample_views_params(sizes.cuda(), 2 ** 63 + 5, configs, "cuda", index_offset=2 ** 33)
    for a, b in zip(cpu, gpu):
        for k in a:
            assert b[k].device.type == "cuda"
            assert torch.equal(a[k], b[k].cpu()), k
    for dtype in (torch.float64, torch.float32):
        assert torch.equal(S.counter_uniforms(9, 1000, 3, 7, dtype=dtype),
                           S.counter_uniforms(9, 1000, 3, 7, dtype=dtype, device="cuda").cpu())
    x = torch.linspace(-3, 3, 100001, dtype=torch.float64)
    assert torch.equal(S._exp(x), S._exp(x.cuda()).cpu())


# ------------------------------------------------------------------------------ bad arguments

@pytest.mark.parametrize("kwargs,name", [
    (dict(size=0), "size"), (dict(size=22.5), "size"), (dict(size=True), "size"),
    (dict(scale=(0.0, 1.0)), "scale"), (dict(scale=(0.5, 0.2)), "scale"),
    (dict(scale=(0.1, 1.5)), "scale"), (dict(scale=0.5), "scale"),
    (dict(scale=(0.1, float("nan"))), "scale"),
    (dict(ratio=(0.0, 1.0)), "ratio"), (dict(ratio=(2.0, 1.0)), "ratio"),
    (dict(ratio=(1e-310, 1.0)), "ratio"),
    (dict(interpolation="nearest"), "interpolation"),
    (dict(flip_p=1.5), "flip_p"), (dict(jitter_p=-0.1), "jitter_p"),
    (dict(grayscale_p=2), "grayscale_p"), (dict(blur_p=float("nan")), "blur_p"),
    (dict(solarize_p=-1e-9), "solarize_p"),
    (dict(brightness=-0.1), "brightness"), (dict(contrast=float("inf")), "contrast"),
    (dict(saturation=-1), "saturation"), (dict(hue=0.6), "hue"), (dict(hue=-0.1), "hue"),
    (dict(blur_sigma=(0.0, 2.0)), "blur_sigma"), (dict(blur_sigma=(2.0, 1.0)), "blur_sigma"),
    (dict(blur_kernel_size=4), "blur_kernel_size"), (dict(blur_kernel_size=0),
                                                     "blur_kernel_size"),
    (dict(blur_padding="constant"), "blur_padding"),
    (dict(solarize_threshold=128), "solarize_threshold"),
    (dict(mean=(0.5, 0.5)), "mean"), (dict(std=(0.2, 0.0, 0.2)), "std"),
])
def test_view_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ViewConfig(**kwargs)


def test_view_config_normalizes_and_hashes():
    a = ViewConfig(scale=[0.1, 1], mean=[0.5, 0.5, 0.5], flip_p=1)
    b = ViewConfig(scale=(0.1, 1.0), mean=(0.5, 0.5, 0.5), flip_p=1.0)
    assert a == b and hash(a) == hash(b) and isinstance(a.scale, tuple)


def test_sampler_rejects_bad_arguments():
    cfg = ViewConfig()
    with pytest.raises(ValueError, match="seed"):
        sample_view_params((8, 8), -1, 0, cfg, batch_size=2)
    with pytest.raises(ValueError, match="seed"):
        sample_view_params((8, 8), 2 ** 64, 0, cfg, batch_size=2)
    with pytest.raises(TypeError, match="seed"):
        sample_view_params((8, 8), 1.5, 0, cfg, batch_size=2)
    with pytest.raises(ValueError, match="image_sizes"):
        sample_view_params([(8, 0)], 0, 0, cfg)
    with pytest.raises(ValueError, match="image_sizes"):
        sample_view_params(torch.ones(3, 3, dtype=torch.int64), 0, 0, cfg)
    with pytest.raises(ValueError, match="image_sizes"):
        sample_view_params(torch.ones(3, 2), 0, 0, cfg)
    with pytest.raises(ValueError, match="image_sizes"):
        sample_view_params(torch.tensor([[4, 4], [0, 3]]), 0, 0, cfg)
    with pytest.raises(ValueError, match="image_sizes"):
        sample_view_params([(8, 8), (8, 8)], 0, 0, cfg, batch_size=2)
    with pytest.raises(ValueError, match="image_sizes"):
        sample_view_params("abc", 0, 0, cfg)
    with pytest.raises(ValueError, match="batch_size"):
        sample_view_params((8, 8), 0, 0, cfg, batch_size=-1)
    with pytest.raises(ValueError, match="index_offset"):
        sample_view_params((8, 8), 0, 0, cfg, batch_size=2, index_offset=-1)
    with pytest.raises(ValueError, match="view_indices"):
        sample_view_params((8, 8), 0, -1, cfg, batch_size=2)
    with pytest.raises(ValueError, match="view_indices"):
        sample_views_params((8, 8), 0, [cfg, cfg], batch_size=2, view_indices=[0])
    with pytest.raises(TypeError, match="configs"):
        sample_views_params((8, 8), 0, [cfg, {"size": 3}], batch_size=2)
