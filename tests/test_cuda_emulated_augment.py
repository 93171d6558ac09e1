"""The fused augmentation CUDA launcher (csrc/augment/augment_views_cuda.cu: descriptor stores,
resample_color_kernel, finish_kernel) run on the CPU under HIP-CPU emulation (tests/cuda_emu),
replaying the CUDA branch of the host op (augment_views.cpp: image descriptors, parameter block,
scratch and per-tile partials), against the float64 reference jem_fast.reference.augment and the
CPU op.

Covered: several images of different sizes in one call (CHW and HWC batches, lists of strided
views), crops (incl. rectangles the op clamps), flip, every jitter op in several orders (contrast
first / middle / last, identity factors dropped), grayscale, Gaussian blur with small and large
kernels (3, 9, 23, 57, 63) and both paddings, solarize, normalize with custom mean / std,
bilinear and bicubic, strong downscales (several 48-row source chunks per tile in kernel 1),
outputs of several 32 x 16 tiles with tails, float32 / float16 / bfloat16 output in NCHW and
channels-last, more than 32 views (two descriptor-store launches), and in every batch both paths:
samples finished by kernel 1 (no contrast, no blur) and samples finished by kernel 2 (contrast
and/or blur; blur streams the tile + halo through shared memory in 8-row chunks).

Tolerance (tests/test_augment_kernel.py): float32 math with the reference's formulas, TOL01 = 2e-5
on the [0, 1] scale, i.e. TOL01 / min(std) on normalized outputs; float16 / bfloat16 outputs may
be off by one unit in the last place of the value plus that budget.
"""
import ctypes
import os
import subprocess
import sys

import pytest
import torch

from cuda_emu import emu
from jem_fast.reference.augment import IMAGENET_MEAN, IMAGENET_STD, augment_reference

from test_augment_kernel import make_image  # noqa: E402  (the same synthetic images)

pytestmark = pytest.mark.cuda_emu

TOL01 = 2e-5
OUT_FILL = float("nan")
TOL = TOL01 / min(IMAGENET_STD)
OUT_CODES = {torch.float32: emu.FLOAT32, torch.float16: emu.FLOAT16, torch.bfloat16: emu.BFLOAT16}


@pytest.fixture(scope="module", autouse=True)
def _lib():
    lib = emu.load()
    _canary()
    return lib


def _canary():
    """The augment kernels run 32 x 8 blocks whose block reduction uses warp shuffles; an
    emulator that numbers the threads of a 2-D block differently from CUDA (x fastest) breaks
    the warp rings and can crash the interpreter. Run one small call in a child process first so
    that a crash fails this module instead of killing the test session."""
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[1])\n"
        "import test_cuda_emulated_augment as m\n"
        "sizes = [(40, 56), (23, 31)]\n"
        "imgs = [m.make_image(h, w, i) for i, (h, w) in enumerate(sizes)]\n"
        "p = m.random_params(sizes, 0)\n"
        "p['jitter'][:] = True; p['contrast'][:] = 0.5; p['blur_sigma'][:] = 1.0\n"
        "outs = [m.augment_emulated(imgs, p, (20, 40), blur_kernel_size=5) for _ in range(3)]\n"
        "ok = all(torch.isfinite(o).all() and torch.equal(o, outs[0]) for o in outs)\n"
        "sys.exit(0 if ok else 3)\n")
    res = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__))],
                         capture_output=True, text=True, timeout=300)
    if res.returncode not in (0, 3):  # 3: wrong output, left to the tests to diagnose
        pytest.fail(
            "CUDA emulation: a probe call of the augment kernels (2-D thread blocks with warp "
            f"shuffles) {'crashed' if res.returncode < 0 else 'failed'} (return code "
            f"{res.returncode}); running the tests in this process could kill the session. "
            "Known cause: an emulator whose threadIdx is not numbered x-fastest as in CUDA (warp "
            "rings of the wrong fibers); a barrier not reached by every thread of a block does "
            f"the same.\n{res.stdout[-2000:]}{res.stderr[-3000:]}",
            pytrace=False)


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

def random_params(sizes, seed, crops=None):
    """Random parameters with every op on for some samples."""
    g = torch.Generator().manual_seed(seed)
    n = len(sizes)
    if crops is None:
        crops = []
        for h, w in sizes:
            ch = int(torch.randint(max(1, h // 3), h + 1, (1,), generator=g))
            cw = int(torch.randint(max(1, w // 3), w + 1, (1,), generator=g))
            crops.append([int(torch.randint(0, h - ch + 1, (1,), generator=g)),
                          int(torch.randint(0, w - cw + 1, (1,), generator=g)), ch, cw])
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    return {
        "crop": torch.tensor(crops, dtype=torch.int64),
        "flip": torch.rand(n, generator=g) < 0.5,
        "jitter": torch.rand(n, generator=g) < 0.8,
        "brightness": u(0.4, 1.6),
        "contrast": u(0.4, 1.6),
        "saturation": u(0.2, 1.8),
        "hue": u(-0.5, 0.5),
        "order": torch.stack([torch.randperm(4, generator=g) for _ in range(n)]),
        "grayscale": torch.rand(n, generator=g) < 0.3,
        "blur_sigma": torch.where(torch.rand(n, generator=g) < 0.6, u(0.1, 2.0), torch.zeros(n)),
        "solarize": torch.rand(n, generator=g) < 0.3,
    }


def set_paths(params):
    """Make the first four samples take the four routes: kernel 1 only (no contrast, no blur),
    kernel 2 without blur (contrast), kernel 2 with blur only, kernel 2 with contrast + blur."""
    n = params["crop"].shape[0]
    for i, (contrast, blur) in enumerate([(False, False), (True, False), (False, True),
                                          (True, True)][:n]):
        params["jitter"][i] = True
        params["contrast"][i] = 0.6 if contrast else 1.0
        params["blur_sigma"][i] = 1.3 if blur else 0.0
    return params


# ------------------------------------------------------------------------------------------------
# The CUDA branch of jem_fast::augment_views
# ------------------------------------------------------------------------------------------------

def describe_images(images, input_layout):
    """(data pointers, (B, 5) int64 geometry, max_h, max_w, keep-alive) as describe_images()."""
    if isinstance(images, torch.Tensor):
        assert images.dim() == 4
        imgs = list(images.unbind(0))
    else:
        imgs = list(images)
    c_axis, h_axis, w_axis = (2, 0, 1) if input_layout == "HWC" else (0, 1, 2)
    geom, ptrs = [], []
    for img in imgs:
        assert img.dtype == torch.uint8 and img.dim() == 3 and img.shape[c_axis] == 3
        geom.append([img.shape[h_axis], img.shape[w_axis], img.stride(c_axis), img.stride(h_axis),
                     img.stride(w_axis)])
        ptrs.append(img.data_ptr())  # strided views are read in place
    geom = torch.tensor(geom, dtype=torch.int64)
    arr = (ctypes.c_void_p * len(ptrs))(*ptrs)
    return arr, geom, int(geom[:, 0].max()), int(geom[:, 1].max()), imgs


def augment_emulated(images, params, size, *, interpolation="bicubic", mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, dtype=torch.float32, channels_last=False,
                     blur_kernel_size=23, blur_padding="reflect", solarize_threshold=0.5,
                     input_layout="CHW"):
    out_h, out_w = (size, size) if isinstance(size, int) else size
    data, geom, max_h, max_w, keep = describe_images(images, input_layout)
    B = geom.shape[0]
    n = torch.zeros(1, dtype=torch.int64)
    emu.call("augment_cuda_tiles", out_h, out_w, n)
    tiles = int(n)
    assert tiles == ((out_h + 15) // 16) * ((out_w + 31) // 32)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((B, 3, out_h, out_w), dtype=dtype, memory_format=fmt).fill_(OUT_FILL)
    scratch = torch.full((B, 3, out_h, out_w), float("nan"), dtype=torch.float32)
    partials = torch.full((B, tiles), float("nan"), dtype=torch.float32)
    p = {k: v.contiguous() for k, v in params.items()}
    assert p["crop"].dtype == torch.int64 and p["order"].dtype == torch.int64
    for k in ("flip", "jitter", "grayscale", "solarize"):
        assert p[k].dtype == torch.bool
    for k in ("brightness", "contrast", "saturation", "hue", "blur_sigma"):
        assert p[k].dtype == torch.float32
    mean3 = torch.tensor(mean, dtype=torch.float32)
    inv_std3 = torch.tensor([1.0 / s for s in std], dtype=torch.float32)
    emu.call("augment_views_cuda", B, data, geom, max_h, max_w,
             out_h, out_w, interpolation == "bicubic", ctypes.c_int(blur_kernel_size),
             blur_padding == "reflect", float(solarize_threshold), mean3, inv_std3,
             ctypes.c_int(OUT_CODES[dtype]), bool(channels_last),
             p["crop"], p["flip"], p["jitter"], p["brightness"], p["contrast"], p["saturation"],
             p["hue"], p["order"], p["grayscale"], p["blur_sigma"], p["solarize"],
             ctypes.c_void_p(out.data_ptr()), scratch, partials)
    del keep
    return out


def cpu_op(images, params, size, *, interpolation="bicubic", mean=IMAGENET_MEAN,
           std=IMAGENET_STD, dtype=torch.float32, channels_last=False, blur_kernel_size=23,
           blur_padding="reflect", solarize_threshold=0.5, input_layout="CHW"):
    out_h, out_w = (size, size) if isinstance(size, int) else size
    imgs = [images] if isinstance(images, torch.Tensor) else list(images)
    p = params
    return torch.ops.jem_fast.augment_views(
        imgs, p["crop"], p["flip"], p["jitter"], p["brightness"], p["contrast"], p["saturation"],
        p["hue"], p["order"], p["grayscale"], p["blur_sigma"], p["solarize"], out_h, out_w,
        input_layout == "HWC", interpolation, blur_kernel_size, blur_padding, solarize_threshold,
        list(mean), list(std), dtype, channels_last)


def check(images, params, size, tol=TOL, **kw):
    """Emulated CUDA vs the float64 reference (and vs the CPU op)."""
    out = augment_emulated(images, params, size, **kw)
    dtype = kw.get("dtype", torch.float32)
    assert out.dtype == dtype
    if kw.get("channels_last"):
        assert out.is_contiguous(memory_format=torch.channels_last)
    ref_kw = {k: v for k, v in kw.items() if k not in ("dtype", "channels_last")}
    ref = augment_reference(images, params, size, dtype=torch.float64, **ref_kw)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all(), "non-finite (or unwritten) output pixels"
    err = (out.double() - ref).abs()
    if dtype == torch.float32:
        bound = torch.full_like(ref, tol)
    else:  # one unit in the last place at the value's magnitude, plus the float32 budget
        eps = torch.finfo(dtype).eps
        bound = eps * torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(1e-3)))) + tol
    bad = err > bound
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        views = sorted({int(i) for i in bad.nonzero()[:, 0]})
        raise AssertionError(
            f"{int(bad.sum())} pixels off (views {views}); max error {err.max().item():.3g} "
            f"(bound {tol:.3g}); first at {idx}: got {out[idx].item():.6g}, "
            f"want {ref[idx].item():.6g}")
    cpu = cpu_op(images, params, size, **kw)
    torch.testing.assert_close(out.double(), cpu.double(), rtol=0,
                               atol=2 * tol if dtype == torch.float32 else (bound * 2).max().item())
    return out


SIZES = [(40, 56), (23, 31), (64, 48), (17, 19), (90, 70)]


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_sizes_every_op(interpolation, seed):
    imgs = [make_image(h, w, 10 * seed + i) for i, (h, w) in enumerate(SIZES)]
    params = set_paths(random_params(SIZES, seed))
    check(imgs, params, (24, 40), interpolation=interpolation, blur_kernel_size=9)


def test_jitter_orders():
    """Every op on with non-identity factors, in orders with contrast first, in the middle and
    last; identity factors (dropped ops) in some samples."""
    orders = [[1, 0, 2, 3], [0, 1, 2, 3], [0, 2, 1, 3], [3, 2, 0, 1], [2, 3, 1, 0], [3, 0, 2, 1],
              [0, 1, 2, 3], [1, 3, 0, 2]]
    n = len(orders)
    img = make_image(40, 56, 3)
    params = random_params([(40, 56)] * n, 7, crops=[[2, 3, 36, 50]] * n)
    params["jitter"][:] = True
    params["order"] = torch.tensor(orders, dtype=torch.int64)
    params["brightness"] = torch.tensor([1.5, 0.6, 1.2, 0.8, 1.4, 0.7, 1.0, 1.3])
    params["contrast"] = torch.tensor([0.5, 1.7, 0.3, 1.4, 0.8, 1.2, 0.6, 1.0])
    params["saturation"] = torch.tensor([1.6, 0.4, 1.0, 0.2, 1.9, 0.5, 1.3, 0.7])
    params["hue"] = torch.tensor([0.2, -0.3, 0.45, 0.0, -0.1, 0.33, -0.5, 0.05])
    params["blur_sigma"] = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.7, 0.0, 0.0, 1.5])
    params["grayscale"][:] = False
    params["solarize"][:] = False
    out = check([img] * n, params, (24, 40), interpolation="bilinear", blur_kernel_size=5)
    # the order matters (contrast against the current mean): sample 0 and 1 differ a lot
    assert (out[0] - out[1]).abs().max() > 0.05


@pytest.mark.parametrize("padding", ["reflect", "zeros"])
@pytest.mark.parametrize("k", [3, 23, 57, 63])
def test_blur_kernel_sizes(padding, k):
    """Small and large Gaussian kernels: the tile + halo streamed in 8-row chunks (halo 1 to 31,
    region of 18 to 78 rows: chunk tails), both paddings, with and without contrast before."""
    sizes = [(40, 56), (50, 44), (36, 36)]
    imgs = [make_image(h, w, 40 + i) for i, (h, w) in enumerate(sizes)]
    params = random_params(sizes, k)
    params["blur_sigma"] = torch.tensor([0.8, 3.0, 9.0])
    params["jitter"] = torch.tensor([False, True, True])
    params["contrast"] = torch.tensor([1.0, 0.5, 1.0])
    params["grayscale"] = torch.tensor([False, False, True])
    # the output (34 x 40: 3 x 2 tiles) exceeds the largest halo, where reflect is defined
    check(imgs, params, (34, 40), blur_kernel_size=k, blur_padding=padding,
          interpolation="bilinear")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_output_dtypes_and_layouts(dtype, channels_last):
    imgs = [make_image(h, w, 60 + i) for i, (h, w) in enumerate(SIZES[:4])]
    params = set_paths(random_params(SIZES[:4], 3))
    check(imgs, params, (20, 36), dtype=dtype, channels_last=channels_last, blur_kernel_size=7)


@pytest.mark.parametrize("layout", ["CHW-batch", "HWC-batch", "HWC-strided", "views"])
def test_input_layouts(layout):
    B, H, W = 4, 41, 37
    batch = torch.stack([make_image(H, W, 80 + i) for i in range(B)])  # (B, 3, H, W)
    sizes = [(H, W)] * B
    params = set_paths(random_params(sizes, 5))
    if layout == "CHW-batch":
        images, input_layout = batch, "CHW"
    elif layout == "HWC-batch":
        images, input_layout = batch.permute(0, 2, 3, 1).contiguous(), "HWC"
    elif layout == "HWC-strided":
        images, input_layout = batch.permute(0, 2, 3, 1), "HWC"  # a strided view
    else:
        big = make_image(120, 150, 9)
        images = [big[:, 10:60, 20:90], big[:, ::2, ::3], big.flip(0)[:, 50:90, :],
                  big[:, 30:71, 5:42]]
        sizes = [tuple(v.shape[1:]) for v in images]
        params = set_paths(random_params(sizes, 6))
        input_layout = "CHW"
    check(images, params, (24, 33), input_layout=input_layout, blur_kernel_size=9)


def test_strong_downscale_and_one_pixel_crops():
    """A 200 x 180 crop to 20 x 24 (10x vertical downscale: ~170 source rows per 16-row tile, 4
    chunks of 48 rows in kernel 1), a 1 x 1 crop (constant view), an upscale."""
    sizes = [(210, 190), (37, 53), (12, 9)]
    imgs = [make_image(h, w, 90 + i) for i, (h, w) in enumerate(sizes)]
    params = random_params(sizes, 8, crops=[[5, 4, 200, 180], [5, 7, 1, 1], [0, 0, 12, 9]])
    params = set_paths(params)
    for interpolation in ("bicubic", "bilinear"):
        out = check(imgs, params, (20, 24), interpolation=interpolation, blur_kernel_size=5)
        assert out[1].std(dim=(1, 2)).max() < 1e-4 or params["blur_sigma"][1] > 0


def test_clamped_crops():
    """Rectangles partly or wholly outside the image: the op clamps them (augment_kernels.h)."""
    img = make_image(30, 40, 12)
    crops = [[-5, 35, 100, 100], [29, -3, 7, 2], [10**12, -10**12, -4, 10**15], [3, 4, 20, 30]]
    params = set_paths(random_params([(30, 40)] * 4, 2, crops=crops))
    check([img] * 4, params, (16, 40), interpolation="bilinear", blur_kernel_size=3)


def test_grayscale_solarize_custom_normalize():
    imgs = [make_image(h, w, 20 + i) for i, (h, w) in enumerate(SIZES)]
    params = set_paths(random_params(SIZES, 11))
    params["solarize"][:] = True
    params["grayscale"] = torch.tensor([True, False, True, False, True])
    check(imgs, params, (24, 40), mean=(0.5, 0.25, 0.0), std=(0.5, 2.0, 1.0),
          solarize_threshold=0.3, tol=TOL01 / 0.5, blur_kernel_size=9)


def test_hue_on_black_white_saturated_pixels():
    colours = torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                            [255, 255, 0], [0, 255, 255], [255, 0, 255], [128, 128, 128],
                            [1, 0, 0], [255, 254, 255], [3, 2, 1]], dtype=torch.uint8)
    img = colours.t().reshape(3, 3, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)
    n = 5
    params = random_params([(12, 16)] * n, 0, crops=[[0, 0, 12, 16]] * n)
    params["jitter"][:] = True
    params["order"] = torch.tensor([[3, 0, 1, 2]] * n)
    params["brightness"][:] = 1.0
    params["saturation"][:] = 1.0
    params["contrast"] = torch.tensor([1.0, 1.0, 0.5, 1.0, 1.0])
    params["hue"] = torch.tensor([-0.5, -1e-4, 0.3, 0.5, 1e-4])
    params["blur_sigma"] = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])
    params["grayscale"][:] = False
    params["solarize"][:] = False
    check([img] * n, params, (12, 16), interpolation="bilinear", blur_kernel_size=3)


def test_many_views_two_descriptor_launches():
    """35 views: the descriptors are stored in launches of 32."""
    g = torch.Generator().manual_seed(1)
    sizes = [(int(torch.randint(6, 30, (1,), generator=g)),
              int(torch.randint(6, 30, (1,), generator=g))) for _ in range(35)]
    imgs = [make_image(h, w, 200 + i) for i, (h, w) in enumerate(sizes)]
    params = set_paths(random_params(sizes, 4))
    check(imgs, params, (8, 12), interpolation="bilinear", blur_kernel_size=3)
