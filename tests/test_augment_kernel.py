"""jem_fast::augment_views (jem_fast.augment.functional.augment) against the float64 reference
(jem_fast.reference.augment), torchvision v2 when importable, and CPU against CUDA.

Tolerance. The input is uint8 (exact in every dtype); the kernels compute in float32 with the
same formulas as the reference (resampling weights are evaluated in double and rounded once, so
the tap positions carry no float32 error: torch's own float32 path is off by ~1e-5 on noisy
500 px images for that reason), so the error is float32 rounding only: a resample pass sums at
most ~2 x support taps (<= ~25 here) of weights and values in [0, 1], two passes, then at most
four clamped colour ops (factors <= 2, contrast/saturation blend with a mean/gray value), a
23-tap separable blur and the normalization. Each step adds a few float32 ulps (6e-8) relative
to values <= ~1.2 (bicubic overshoot), so ~1e-6 is the expected size and observed errors are
below 2e-6 on [0, 1] values. We accept TOL01 = 2e-5 on the [0, 1] scale (10x margin, still 20x
smaller than half a uint8 step, 2e-3), i.e. TOL01 / min(std) on the normalized outputs.
Clamps, solarize and the hue sector choice are continuous functions of their input, so a float
rounding difference near a threshold cannot turn into a large output difference.
"""
import math

import pytest
import torch

from jem_fast.augment import functional as AF
from jem_fast.reference.augment import augment_reference

from conftest import CUDA, DEVICES

MEAN, STD = AF.IMAGENET_MEAN, AF.IMAGENET_STD
TOL01 = 2e-5
TOL = TOL01 / min(STD)


def make_image(h, w, seed, layout="CHW"):
    """Smooth structure plus noise: resampling, antialiasing and blur all change it visibly."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    phase = torch.rand(3, 1, 1, generator=g) * 6.28
    base = 0.5 + 0.35 * torch.sin(9 * xx + 5 * yy + phase) * torch.cos(4 * yy - 3 * xx)
    img = (255 * (base + 0.15 * torch.randn(3, h, w, generator=g))).clamp(0, 255).round()
    img = img.to(torch.uint8)
    return img.permute(1, 2, 0).contiguous() if layout == "HWC" else img


def random_crop(h, w, g, min_frac=0.1):
    ch = int(torch.randint(max(1, int(h * min_frac)), h + 1, (1,), generator=g))
    cw = int(torch.randint(max(1, int(w * min_frac)), w + 1, (1,), generator=g))
    top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
    return [top, left, ch, cw]


def make_params(sizes, seed, ops=("all",), crops=None):
    """Random valid parameters for images of `sizes` [(H, W)]; `ops` selects what is on."""
    g = torch.Generator().manual_seed(seed)
    n = len(sizes)
    on = lambda name: "all" in ops or name in ops  # noqa: E731

    def coin(name, p=0.5):
        return (torch.rand(n, generator=g) < p) if on(name) else torch.zeros(n, dtype=torch.bool)

    def factor(name, lo, hi, off):
        if not on(name):
            return torch.full((n,), off)
        return lo + (hi - lo) * torch.rand(n, generator=g)

    params = {
        "crop": torch.tensor(crops if crops is not None else
                             [random_crop(h, w, g) for h, w in sizes], dtype=torch.int64),
        "flip": coin("flip"),
        "jitter": torch.ones(n, dtype=torch.bool) if any(on(k) for k in (
            "brightness", "contrast", "saturation", "hue")) else torch.zeros(n, dtype=torch.bool),
        "brightness": factor("brightness", 0.2, 1.8, 1.0),
        "contrast": factor("contrast", 0.2, 1.8, 1.0),
        "saturation": factor("saturation", 0.2, 1.8, 1.0),
        "hue": factor("hue", -0.5, 0.5, 0.0),
        "order": torch.stack([torch.randperm(4, generator=g) for _ in range(n)]),
        "grayscale": coin("grayscale", 0.5),
        "blur_sigma": torch.where(torch.rand(n, generator=g) < 0.7,
                                  0.1 + 1.9 * torch.rand(n, generator=g), torch.zeros(n))
        if on("blur") else torch.zeros(n),
        "solarize": coin("solarize"),
    }
    if "all" in ops:
        params["jitter"] = torch.rand(n, generator=g) < 0.8
    return params


def to_device(params, device):
    return {k: v.to(device) for k, v in params.items()}


def check(images, params, size, device="cpu", tol=TOL, **kw):
    if isinstance(images, torch.Tensor):
        dev_images = images.to(device)
    else:
        dev_images = [im.to(device) for im in images]
    out = AF.augment(dev_images, to_device(params, device), size, **kw)
    kw.pop("dtype", None)
    kw.pop("channels_last", None)
    ref = augment_reference(images, params, size, **kw)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    err = (out.double().cpu() - ref).abs().max().item()
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"
    return out


SIZES_MIXED = [(37, 53), (500, 375), (17, 19), (64, 64), (120, 33)]


# ---------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("out", [24, 96, (40, 70), 224])
def test_resample_only(interpolation, out):
    imgs = [make_image(h, w, i) for i, (h, w) in enumerate(SIZES_MIXED)]
    params = make_params(SIZES_MIXED, 1, ops=())
    check(imgs, params, out, interpolation=interpolation)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_strong_downscale_antialias(interpolation):
    # A 96 px local crop of a 400 px region: the filter support is widened ~4x.
    img = make_image(450, 430, 3)
    params = make_params([(450, 430)], 0, ops=(), crops=[[20, 15, 400, 400]])
    out = check([img], params, 96, interpolation=interpolation)
    # Antialiasing matters: a plain (non-antialiased) resize is far from the result.
    x = img.double()[None, :, 20:420, 15:415] / 255
    plain = torch.nn.functional.interpolate(x, size=(96, 96), mode=interpolation,
                                            align_corners=False)
    m = torch.tensor(MEAN, dtype=torch.float64)[:, None, None]
    s = torch.tensor(STD, dtype=torch.float64)[:, None, None]
    assert ((out.double() - (plain[0] - m) / s).abs().max()) > 100 * TOL


def test_one_pixel_crop_and_full_image():
    sizes = [(37, 53), (37, 53), (1, 1)]
    imgs = [make_image(h, w, i) for i, (h, w) in enumerate(sizes)]
    params = make_params(sizes, 2, ops=(), crops=[[5, 7, 1, 1], [0, 0, 37, 53], [0, 0, 1, 1]])
    out = check(imgs, params, 16)
    # a 1 x 1 crop is a constant view
    assert (out[0] - out[0][:, :1, :1]).abs().max() < 1e-5


def test_bicubic_overshoot_is_not_clamped():
    # Black/white stripes upscaled with bicubic ring outside [0, 1]; torchvision does not clamp
    # float images after resize, nor do we (the reference checks the values themselves).
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    img[:, :, ::2] = 255
    params = make_params([(8, 8)], 0, ops=(), crops=[[0, 0, 8, 8]])
    out = check([img], params, 29, interpolation="bicubic", mean=(0, 0, 0), std=(1, 1, 1))
    assert out.min() < -1e-3 and out.max() > 1 + 1e-3


# ---------------------------------------------------------------------------------------------
# Colour ops, blur, solarize
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["flip", "brightness", "contrast", "saturation", "hue",
                                "grayscale", "solarize"])
def test_each_op_alone(op):
    imgs = [make_image(h, w, 10 + i) for i, (h, w) in enumerate(SIZES_MIXED)]
    params = make_params(SIZES_MIXED, 3, ops=(op,))
    check(imgs, params, 48)


@pytest.mark.parametrize("padding", ["reflect", "zeros"])
@pytest.mark.parametrize("k", [1, 9, 23])
def test_blur(padding, k):
    imgs = [make_image(h, w, 20 + i) for i, (h, w) in enumerate(SIZES_MIXED)]
    params = make_params(SIZES_MIXED, 4, ops=("blur",))
    params["blur_sigma"] = torch.tensor([0.1, 2.0, 0.0, 0.7, 5.0])
    check(imgs, params, 40, blur_kernel_size=k, blur_padding=padding)


def test_contrast_uses_current_mean():
    # brightness before contrast changes the mean contrast blends against; the result must
    # differ from contrast-first and match the reference in both orders.
    img = make_image(50, 60, 5)
    base = make_params([(50, 60)], 0, ops=(), crops=[[0, 0, 50, 60]])
    base.update(jitter=torch.tensor([True]), brightness=torch.tensor([1.6]),
                contrast=torch.tensor([0.3]))
    a = check([img], dict(base, order=torch.tensor([[0, 1, 2, 3]])), 32)
    b = check([img], dict(base, order=torch.tensor([[1, 0, 2, 3]])), 32)
    assert (a - b).abs().max() > 0.05


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_everything_random_orders(seed, interpolation):
    g = torch.Generator().manual_seed(100 + seed)
    sizes = [(int(torch.randint(5, 300, (1,), generator=g)),
              int(torch.randint(5, 300, (1,), generator=g))) for _ in range(10)]
    imgs = [make_image(h, w, 50 + i) for i, (h, w) in enumerate(sizes)]
    params = make_params(sizes, seed)
    check(imgs, params, (56, 48), interpolation=interpolation, blur_kernel_size=9)


def test_simclr_like_full_size():
    sizes = [(375, 500), (500, 375), (333, 500)]
    imgs = [make_image(h, w, 70 + i) for i, (h, w) in enumerate(sizes)]
    params = make_params(sizes, 9)
    params["jitter"][:] = True
    params["blur_sigma"] = torch.tensor([1.5, 0.0, 0.3])
    check(imgs, params, 224, blur_kernel_size=23, blur_padding="zeros")


def test_hue_on_black_white_saturated_pixels():
    colours = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                            [255, 255, 0], [0, 255, 255], [255, 0, 255], [128, 128, 128],
                            [1, 0, 0], [255, 254, 255], [3, 2, 1]], dtype=torch.uint8)
    img = colours.t().reshape(3, 3, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)
    n = 7
    params = make_params([(12, 16)] * n, 0, ops=("hue",), crops=[[0, 0, 12, 16]] * n)
    params["hue"] = torch.tensor([-0.5, -0.25, -1e-4, 0.0, 1e-4, 0.3, 0.5])
    out = check([img] * n, params, (12, 16), interpolation="bilinear")
    assert torch.isfinite(out).all()


def test_hue_after_bicubic_overshoot_is_finite():
    """Bicubic ringing next to a bright edge leaves black pixels with max == 0 and a negative
    channel; torchvision's rgb->hsv divides by that max (s = inf -> NaN). jem_fast keeps s = 0
    there (documented in augment_kernels.h) and matches torchvision wherever it is finite."""
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    img[0, :, 4:] = 255          # red half: ringing pushes blue/green below 0 on the black side
    img[1, 2:6, 4:] = 200
    n = 3
    params = make_params([(8, 8)] * n, 0, ops=("hue",), crops=[[0, 0, 8, 8]] * n)
    params["hue"] = torch.tensor([0.25, -0.4, 0.5])
    out = check([img] * n, params, (40, 40), interpolation="bicubic")
    assert torch.isfinite(out).all()
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = tvf.resize(img.float() / 255, [40, 40], interpolation=tvf.InterpolationMode.BICUBIC,
                   antialias=True)
    for i in range(n):
        ref = tvf.normalize(tvf.adjust_hue(x, float(params["hue"][i])), MEAN, STD)
        finite = torch.isfinite(ref)
        assert not finite.all()  # the case really is one where torchvision produces NaN
        torch.testing.assert_close(out[i][finite], ref[finite], rtol=0, atol=2 * TOL)


def test_factor_edge_values():
    # factor 0 (brightness -> black, contrast -> flat mean, saturation -> gray), factor 1
    # (identity) and a large factor (mostly clamped).
    sizes = [(40, 40)] * 3
    imgs = [make_image(40, 40, 80 + i) for i in range(3)]
    params = make_params(sizes, 0, ops=("brightness", "contrast", "saturation"),
                         crops=[[0, 0, 40, 40]] * 3)
    for name in ("brightness", "contrast", "saturation"):
        params[name] = torch.tensor([0.0, 1.0, 7.0])
    check(imgs, params, 24)


# ---------------------------------------------------------------------------------------------
# Layouts, dtypes, memory formats
# ---------------------------------------------------------------------------------------------

def test_input_layouts_agree():
    sizes = [(61, 47)] * 4
    batch = torch.stack([make_image(61, 47, 90 + i) for i in range(4)])  # (B, 3, H, W)
    params = make_params(sizes, 5)
    a = check(batch, params, 32)
    b = AF.augment(batch.permute(0, 2, 3, 1).contiguous(), params, 32, input_layout="HWC")
    c = AF.augment(list(batch.unbind(0)), params, 32)
    d = AF.augment(batch.permute(0, 2, 3, 1), params, 32, input_layout="HWC")  # strided view
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)


def test_non_contiguous_and_list_of_views():
    big = make_image(200, 300, 7)
    views = [big[:, 10:110, 20:170], big[:, ::2, ::3], big.flip(0)[:, 50:90, :]]
    hwc_views = [v.permute(1, 2, 0) for v in views]
    sizes = [tuple(v.shape[1:]) for v in views]
    params = make_params(sizes, 6)
    a = check(views, params, 40)
    b = AF.augment(hwc_views, params, 40, input_layout="HWC")
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_output_within_one_unit(dtype):
    sizes = SIZES_MIXED
    imgs = [make_image(h, w, 30 + i) for i, (h, w) in enumerate(sizes)]
    params = make_params(sizes, 7)
    out = AF.augment(imgs, params, 48, dtype=dtype, blur_kernel_size=9)
    assert out.dtype == dtype
    ref = augment_reference(imgs, params, 48, blur_kernel_size=9)
    # One unit in the last place of the dtype at the value's magnitude, plus the float32 budget.
    eps = torch.finfo(dtype).eps
    ulp = eps * torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(1e-3))))
    assert ((out.double() - ref).abs() <= ulp + TOL).all()


def test_channels_last_output():
    imgs = [make_image(h, w, 40 + i) for i, (h, w) in enumerate(SIZES_MIXED)]
    params = make_params(SIZES_MIXED, 8)
    a = AF.augment(imgs, params, (30, 44))
    b = AF.augment(imgs, params, (30, 44), channels_last=True)
    assert b.is_contiguous(memory_format=torch.channels_last) and b.shape == (5, 3, 30, 44)
    assert torch.equal(a, b)


def test_custom_mean_std_threshold():
    imgs = [make_image(h, w, 60 + i) for i, (h, w) in enumerate(SIZES_MIXED)]
    params = make_params(SIZES_MIXED, 11, ops=("solarize", "flip"))
    params["solarize"][:] = True
    check(imgs, params, 33, mean=(0.5, 0.25, 0.0), std=(0.5, 2.0, 1.0), solarize_threshold=0.3,
          tol=TOL01 / 0.5)


def test_op_clamps_out_of_image_crops():
    # The op itself never reads outside an image: rectangles are clamped into it (the functional
    # entry point rejects them instead, see test_bad_inputs).
    img = make_image(30, 40, 12)
    wild = torch.tensor([[-5, 35, 100, 100], [29, -3, 7, 2], [10**12, -10**12, -4, 10**15]])
    clamped = torch.tensor([[0, 35, 30, 5], [29, 0, 1, 2], [29, 0, 1, 40]])
    p = make_params([(30, 40)] * 3, 0, ops=())

    def op(crop):
        return torch.ops.jem_fast.augment_views(
            [img] * 3, crop, p["flip"], p["jitter"], p["brightness"], p["contrast"],
            p["saturation"], p["hue"], p["order"], p["grayscale"], p["blur_sigma"], p["solarize"],
            16, 16, False, "bilinear", 23, "reflect", 0.5, list(MEAN), list(STD), torch.float32,
            False)

    assert torch.equal(op(wild), op(clamped))
    ref = augment_reference([img] * 3, dict(p, crop=clamped), 16, interpolation="bilinear")
    assert (op(wild).double() - ref).abs().max() <= TOL


# ---------------------------------------------------------------------------------------------
# torchvision parity (float32 per image, v2 functional)
# ---------------------------------------------------------------------------------------------

def torchvision_views(images, params, size, interpolation, k, threshold=0.5):
    tv = pytest.importorskip("torchvision")
    from torchvision.transforms.v2 import functional as TF
    from torchvision.transforms import InterpolationMode
    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
    outs = []
    for i, img in enumerate(images):
        x = TF.to_dtype(img, torch.float32, scale=True)
        top, left, h, w = params["crop"][i].tolist()
        x = TF.resized_crop(x, top, left, h, w, [size, size], interpolation=mode[interpolation],
                            antialias=True)
        if params["flip"][i]:
            x = TF.horizontal_flip(x)
        if params["jitter"][i]:
            for op in params["order"][i].tolist():
                if op == 0:
                    x = TF.adjust_brightness(x, float(params["brightness"][i]))
                elif op == 1:
                    x = TF.adjust_contrast(x, float(params["contrast"][i]))
                elif op == 2:
                    x = TF.adjust_saturation(x, float(params["saturation"][i]))
                else:
                    x = TF.adjust_hue(x, float(params["hue"][i]))
        if params["grayscale"][i]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        sigma = float(params["blur_sigma"][i])
        if sigma > 0:
            x = TF.gaussian_blur(x, [k, k], [sigma, sigma])
        if params["solarize"][i]:
            x = TF.solarize(x, threshold)
        outs.append(TF.normalize(x, list(MEAN), list(STD)))
    del tv
    return torch.stack(outs)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("seed", range(3))
def test_torchvision_parity(interpolation, seed):
    g = torch.Generator().manual_seed(200 + seed)
    sizes = [(int(torch.randint(20, 400, (1,), generator=g)),
              int(torch.randint(20, 400, (1,), generator=g))) for _ in range(8)]
    imgs = [make_image(h, w, 300 + i) for i, (h, w) in enumerate(sizes)]
    params = make_params(sizes, 20 + seed)
    want = torchvision_views(imgs, params, 64, interpolation, 23)
    got = AF.augment(imgs, params, 64, interpolation=interpolation, blur_kernel_size=23)
    # torchvision itself computes in float32 (a 2-D blur conv, per-op rounding): the two float32
    # pipelines differ by both rounding errors, so the budget is twice ours.
    err = (got - want).abs().max().item()
    assert err <= 2 * TOL, err


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def _ok():
    imgs = [make_image(20, 30, 1), make_image(25, 25, 2)]
    return imgs, make_params([(20, 30), (25, 25)], 0)


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda i, p: ([], p, 8, {}), ValueError, "empty"),
    (lambda i, p: (torch.zeros(0, 3, 4, 4, dtype=torch.uint8), p, 8, {}), ValueError, "empty"),
    (lambda i, p: ([x.float() for x in i], p, 8, {}), TypeError, "uint8"),
    (lambda i, p: ([x[:2] for x in i], p, 8, {}), ValueError, "3 channels"),
    (lambda i, p: (i, p, 8, {"input_layout": "HWC"}), ValueError, "3 channels"),
    (lambda i, p: (i, p, 0, {}), ValueError, "size"),
    (lambda i, p: (i, p, 10**6, {}), ValueError, "size"),
    (lambda i, p: (i, p, 8, {"blur_kernel_size": 4}), ValueError, "odd"),
    (lambda i, p: (i, p, 8, {"blur_kernel_size": 0}), ValueError, "odd"),
    (lambda i, p: (i, p, 8, {"blur_kernel_size": 23}), ValueError, "reflect"),
    (lambda i, p: (i, p, 8, {"interpolation": "nearest"}), ValueError, "interpolation"),
    (lambda i, p: (i, p, 8, {"blur_padding": "edge"}), ValueError, "blur_padding"),
    (lambda i, p: (i, p, 8, {"dtype": torch.int32}), TypeError, "dtype"),
    (lambda i, p: (i, p, 8, {"std": (1.0, 0.0, 1.0)}), ValueError, "std"),
    (lambda i, p: (i, {k: v for k, v in p.items() if k != "crop"}, 8, {}), ValueError, "crop"),
    (lambda i, p: (i, dict(p, crop=p["crop"][:1]), 8, {}), ValueError, r"crop.*shape"),
    (lambda i, p: (i, dict(p, flip=p["flip"].float()), 8, {}), TypeError, "flip"),
    (lambda i, p: (i, dict(p, hue=p["hue"].long()), 8, {}), TypeError, "hue"),
    (lambda i, p: (i, dict(p, brightness=torch.tensor([-0.1, 1.0])), 8, {}), ValueError,
     "brightness"),
    (lambda i, p: (i, dict(p, contrast=torch.tensor([1.0, float("nan")])), 8, {}), ValueError,
     "contrast"),
    (lambda i, p: (i, dict(p, hue=torch.tensor([0.6, 0.0])), 8, {}), ValueError, "hue"),
    (lambda i, p: (i, dict(p, blur_sigma=torch.tensor([0.0, -1.0])), 8, {}), ValueError,
     "blur_sigma"),
    (lambda i, p: (i, dict(p, order=torch.tensor([[0, 1, 2, 3], [0, 0, 2, 3]])), 8, {}),
     ValueError, "permutation"),
    (lambda i, p: (i, dict(p, crop=torch.tensor([[0, 0, 21, 30], [0, 0, 25, 25]])), 8, {}),
     ValueError, "inside"),
    (lambda i, p: (i, dict(p, crop=torch.tensor([[0, -1, 5, 5], [0, 0, 25, 25]])), 8, {}),
     ValueError, "inside"),
    (lambda i, p: (i, dict(p, crop=torch.tensor([[0, 0, 0, 5], [0, 0, 25, 25]])), 8, {}),
     ValueError, "inside"),
    (lambda i, p: (i, dict(p, typo=p["flip"]), 8, {}), ValueError, "unknown"),
    (lambda i, p: ("not images", p, 8, {}), TypeError, "images"),
])
def test_bad_inputs(mutate, exc, match):
    imgs, params = _ok()
    images, params, size, kw = mutate(imgs, params)
    with pytest.raises(exc, match=match):
        AF.augment(images, params, size, **kw)


def test_op_rejects_bad_order_and_channels():
    img = make_image(10, 10, 0)
    p = make_params([(10, 10)], 0)

    def op(images, order):
        return torch.ops.jem_fast.augment_views(
            images, p["crop"], p["flip"], p["jitter"], p["brightness"], p["contrast"],
            p["saturation"], p["hue"], order, p["grayscale"], p["blur_sigma"], p["solarize"],
            8, 8, False, "bilinear", 3, "reflect", 0.5, list(MEAN), list(STD), torch.float32,
            False)

    with pytest.raises(RuntimeError, match="permutation"):
        op([img], torch.tensor([[0, 1, 1, 3]]))
    with pytest.raises(RuntimeError, match="3 channels"):
        op([img[:1]], p["order"])


# ---------------------------------------------------------------------------------------------
# CUDA, opcheck, torch.compile
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_device_matches_reference(device, dtype):
    sizes = SIZES_MIXED + [(375, 500), (96, 400)]
    imgs = [make_image(h, w, 400 + i) for i, (h, w) in enumerate(sizes)]
    params = make_params(sizes, 31)
    params["jitter"][:3] = True
    out = AF.augment([im.to(device) for im in imgs], to_device(params, device), 64,
                     dtype=dtype, blur_kernel_size=23)
    cpu = AF.augment(imgs, params, 64, dtype=dtype, blur_kernel_size=23)
    ref = augment_reference(imgs, params, 64, blur_kernel_size=23)
    tol = TOL if dtype == torch.float32 else 2 * torch.finfo(dtype).eps * ref.abs().max().item()
    assert (out.double().cpu() - ref).abs().max() <= tol
    assert (out.double().cpu() - cpu.double()).abs().max() <= tol


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device and a CUDA build of jem_fast")
def test_cuda_batch_layouts_and_channels_last():
    batch = torch.stack([make_image(100, 90, 500 + i) for i in range(6)])
    params = make_params([(100, 90)] * 6, 32)
    cpu = AF.augment(batch, params, 40, channels_last=True)
    gpu = AF.augment(batch.cuda().permute(0, 2, 3, 1), to_device(params, "cuda"), 40,
                     channels_last=True, input_layout="HWC")
    assert gpu.is_contiguous(memory_format=torch.channels_last)
    assert (gpu.cpu() - cpu).abs().max() <= TOL


def _op_args(device="cpu"):
    sizes = [(23, 31), (40, 12)]
    imgs = [make_image(h, w, 600 + i).to(device) for i, (h, w) in enumerate(sizes)]
    p = to_device(make_params(sizes, 33), device)
    return ([imgs, p["crop"], p["flip"], p["jitter"], p["brightness"], p["contrast"],
             p["saturation"], p["hue"], p["order"], p["grayscale"], p["blur_sigma"],
             p["solarize"], 16, 16, False, "bicubic", 5, "reflect", 0.5, list(MEAN), list(STD),
             torch.float32, False])


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    torch.library.opcheck(torch.ops.jem_fast.augment_views.default, _op_args(device),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


def test_torch_compile_fullgraph():
    sizes = [(50, 70), (64, 48), (33, 90)]
    imgs = [make_image(h, w, 700 + i) for i, (h, w) in enumerate(sizes)]
    params = make_params(sizes, 34)
    eager = AF.augment(imgs, params, 32, blur_kernel_size=9)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda ims, p: AF.augment(ims, p, 32, blur_kernel_size=9), fullgraph=True)
    assert torch.equal(compiled(imgs, params), eager)
