"""The vectorized code paths of the CPU augmentation kernel (csrc/augment/augment_views_cpu.cpp)
against the float64 reference, on the shapes where such paths break: widths that are not a
multiple of the vector blocks (8 source columns, 8 source rows, 32 outputs), views narrower than
the blur radius, every hue sector and its boundaries, and the two input layouts (the contiguous
CHW rows take the vector uint8 -> float conversion, HWC rows the lookup table).

Outputs are compared on the [0, 1] scale (mean 0, std 1) with the tolerance of
tests/test_augment_kernel.py (TOL01 = 2e-5); the blur-only checks use a 10x tighter bound, so
that dropping a tap that matters (the kernel skips taps under 1e-12) could not pass unseen.
"""
import time

import pytest
import torch

from jem_fast.augment import functional as AF
from jem_fast.reference.augment import augment_reference

TOL01 = 2e-5
UNIT = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def noisy_image(h, w, seed, layout="CHW"):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = 0.5 + 0.4 * torch.sin(7 * xx + 3 * yy + torch.rand(3, 1, 1, generator=g) * 6.28)
    img = (255 * (base + 0.2 * torch.randn(3, h, w, generator=g))).clamp(0, 255).round()
    img = img.to(torch.uint8)
    return img.permute(1, 2, 0).contiguous() if layout == "HWC" else img


def params_for(crops, **overrides):
    n = len(crops)
    p = {
        "crop": torch.tensor(crops, dtype=torch.int64),
        "flip": torch.tensor([i % 2 == 1 for i in range(n)]),
        "jitter": torch.zeros(n, dtype=torch.bool),
        "brightness": torch.ones(n), "contrast": torch.ones(n), "saturation": torch.ones(n),
        "hue": torch.zeros(n),
        "order": torch.arange(4).repeat(n, 1),
        "grayscale": torch.zeros(n, dtype=torch.bool),
        "blur_sigma": torch.zeros(n),
        "solarize": torch.zeros(n, dtype=torch.bool),
    }
    p.update(overrides)
    return p


def max_error(images, params, size, **kw):
    """Max abs difference between the kernel and the float64 reference (CHW images)."""
    out = AF.augment(images, params, size, **UNIT, **kw)
    ref = augment_reference(images, params, size, **UNIT, **kw)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    return (out.double() - ref).abs().max().item()


# ------------------------------------------------------------------------------------ resampling

# Crop widths/heights around multiples of 8 (the tile and the 8-column conversion blocks) and
# output widths around multiples of 32 (the register-blocked vertical pass and its scalar tail).
RESAMPLE_CASES = [
    # (image H, W), crop (top, left, height, width), output (h, w)
    ((61, 83), (0, 0, 61, 83), (31, 33)),      # upscale-free shrink, odd everything
    ((61, 83), (3, 5, 7, 9), (40, 70)),        # 7 rows (one partial tile), 9 columns, upscale
    ((200, 300), (10, 20, 64, 128), (64, 96)),  # exact multiples
    ((200, 300), (1, 2, 65, 129), (65, 97)),   # one past the multiples
    ((375, 500), (0, 0, 375, 500), (224, 224)),
    ((375, 500), (50, 7, 301, 433), (96, 96)),  # strong downscale: many taps (generic tap count)
    ((40, 9), (0, 0, 40, 9), (5, 3)),
    ((9, 40), (0, 0, 9, 40), (224, 35)),
]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("case", range(len(RESAMPLE_CASES)))
def test_resample_block_edges_match_reference(case, interpolation):
    (h, w), crop, size = RESAMPLE_CASES[case]
    images = [noisy_image(h, w, case), noisy_image(h, w, case + 100)]
    params = params_for([list(crop), list(crop)])  # the second one flipped
    err = max_error(images, params, size, interpolation=interpolation)
    assert err <= TOL01, f"max abs error {err:.3g} on [0, 1]"


@pytest.mark.parametrize("case", range(len(RESAMPLE_CASES)))
def test_chw_vector_load_equals_hwc_table_load(case):
    """CHW rows are converted with vector code, HWC rows through the LUT: same floats, same taps,
    so the outputs must be identical bit for bit."""
    (h, w), crop, size = RESAMPLE_CASES[case]
    chw = noisy_image(h, w, 7 + case)
    hwc = chw.permute(1, 2, 0).contiguous()
    params = params_for([list(crop)])
    out_chw = AF.augment([chw], params, size, **UNIT)
    out_hwc = AF.augment([hwc], params, size, **UNIT, input_layout="HWC")
    assert torch.equal(out_chw, out_hwc)


def test_strided_chw_view_matches_contiguous():
    """A CHW view whose rows are contiguous but whose planes are not (a crop of a larger image)
    takes the vector load path with the real strides."""
    big = noisy_image(120, 150, 3)
    view = big[:, 10:110, 17:140]
    assert not view.is_contiguous() and view.stride(2) == 1
    params = params_for([[2, 3, 91, 117]])
    out_view = AF.augment([view], params, (50, 61), **UNIT)
    out_copy = AF.augment([view.contiguous()], params, (50, 61), **UNIT)
    assert torch.equal(out_view, out_copy)


# ------------------------------------------------------------------------------------------ hue

def sector_image():
    """Every hue sector, its boundaries (two equal largest channels), gray, black and white
    pixels, and pixels one step away from gray, as a uint8 (3, 32, 34) image."""
    values = []
    levels = [0, 1, 37, 128, 200, 254, 255]
    for r in levels:
        for g in levels:
            for b in levels:
                values.append((r, g, b))
    for k in range(6 * 32):  # the hue circle at full saturation, in 192 steps
        h = k / 192 * 6
        x = 255 * (1 - abs(h % 2 - 1))
        rgb = [(255, x, 0), (x, 255, 0), (0, 255, x), (0, x, 255), (x, 0, 255), (255, 0, x)]
        values.append(tuple(round(c) for c in rgb[int(h) % 6]))
    values += [(128, 128, 129), (129, 128, 128), (128, 129, 128), (255, 255, 0), (0, 255, 255)]
    n = 32 * 34
    values = (values * (n // len(values) + 1))[:n]
    return torch.tensor(values, dtype=torch.uint8).T.reshape(3, 32, 34).contiguous()


@pytest.mark.parametrize("shift", [-0.5, -0.3, -1e-4, 1e-4, 1 / 6, 0.2, 0.5])
def test_hue_every_sector_matches_reference(shift):
    img = sector_image()
    # crop = whole image, output = same size: the resample is exact identity-like, and the
    # 32 x 34 = 1088 pixels leave a vector tail in the 1024-pixel chunks.
    params = params_for([[0, 0, 32, 34]], jitter=torch.tensor([True]),
                        hue=torch.tensor([shift]), flip=torch.tensor([False]))
    err = max_error([img], params, (32, 34), interpolation="bilinear")
    assert err <= TOL01, f"max abs error {err:.3g} on [0, 1]"


def test_hue_after_other_ops_and_bicubic_overshoot():
    img = noisy_image(90, 70, 11)
    n = 6
    g = torch.Generator().manual_seed(5)
    params = params_for([[0, 0, 90, 70]] * n, jitter=torch.ones(n, dtype=torch.bool),
                        brightness=0.2 + 1.6 * torch.rand(n, generator=g),
                        contrast=0.2 + 1.6 * torch.rand(n, generator=g),
                        saturation=0.2 + 1.6 * torch.rand(n, generator=g),
                        hue=torch.rand(n, generator=g) - 0.5,
                        order=torch.stack([torch.randperm(4, generator=g) for _ in range(n)]))
    err = max_error([img] * n, params, (45, 53), interpolation="bicubic")
    assert err <= TOL01, f"max abs error {err:.3g} on [0, 1]"


# ----------------------------------------------------------------------------------------- blur

BLUR_SIZES = [(13, 7), (33, 31), (45, 37), (64, 96), (23, 101)]


@pytest.mark.parametrize("padding", ["reflect", "zeros"])
@pytest.mark.parametrize("k", [3, 9, 23])
def test_blur_odd_sizes_and_edges_match_reference(padding, k):
    sizes = [s for s in BLUR_SIZES if padding == "zeros" or k // 2 < min(s)]
    for i, size in enumerate(sizes):
        img = noisy_image(80, 110, 30 + i)
        sigmas = torch.tensor([0.1, 0.35, 1.0, 1.7, 2.0, 6.0])
        params = params_for([[3, 4, 70, 100]] * len(sigmas), blur_sigma=sigmas)
        err = max_error([img] * len(sigmas), params, size, blur_kernel_size=k,
                        blur_padding=padding)
        assert err <= TOL01 / 10, f"view {size}: max abs error {err:.3g} on [0, 1]"


def test_zero_padded_blur_wider_than_the_view():
    """A 63-tap blur on a 5 x 4 view: the radius (31) exceeds both sides; zero padding is
    defined there (the padded row and the zero rows cover the whole radius)."""
    img = noisy_image(30, 30, 2)
    params = params_for([[0, 0, 30, 30], [5, 5, 20, 20]], blur_sigma=torch.tensor([9.0, 1.3]))
    err = max_error([img, img], params, (5, 4), blur_kernel_size=63, blur_padding="zeros")
    assert err <= TOL01 / 10, f"max abs error {err:.3g} on [0, 1]"


def test_results_do_not_depend_on_thread_count():
    images = [noisy_image(120 + 3 * i, 160 - 5 * i, i) for i in range(5)]
    g = torch.Generator().manual_seed(1)
    n = len(images)
    params = params_for([[i, 2 * i, 100, 120] for i in range(n)],
                        jitter=torch.ones(n, dtype=torch.bool), hue=torch.rand(n, generator=g) - .5,
                        blur_sigma=0.1 + 1.9 * torch.rand(n, generator=g))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = AF.augment(images, params, 64)
        torch.set_num_threads(2)
        two = AF.augment(images, params, 64)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def _cpu_over_wall(images, params):
    """(process CPU time) / (wall time) of one kernel call: above 1 only if it ran on more than
    one thread."""
    AF.augment(images, params, 96)  # warm-up (lazy init, scratch)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(3):
        AF.augment(images, params, 96)
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def _eight_views():
    images = [noisy_image(300, 400, i) for i in range(8)]
    params = params_for([[0, 0, 300, 400]] * 8, blur_sigma=torch.full((8,), 1.5))
    return images, params


def test_one_torch_thread_means_one_kernel_thread():
    """The kernel parallelizes with at::parallel_for on torch's OpenMP pool, so it follows
    torch.set_num_threads: with 1 it must not spread a batch over more cores.

    Measured in a fresh process: in this one, OpenMP threads left spinning by earlier tests'
    parallel regions would add CPU time that is not the kernel's."""
    import os
    import subprocess
    import sys
    script = (
        "import sys, torch\n"
        "torch.set_num_threads(1)\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "import test_augment_kernel_speedpaths as t\n"
        "images, params = t._eight_views()\n"
        "print(t._cpu_over_wall(images, params))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    ratio = float(out.stdout.strip().splitlines()[-1])
    assert ratio < 1.15, f"CPU time / wall time = {ratio:.2f} with torch.set_num_threads(1)"


class _KernelLoadDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        images, params = _eight_views()
        return torch.tensor([torch.get_num_threads(), _cpu_over_wall(images, params)])


def test_dataloader_worker_runs_the_kernel_on_one_thread():
    """DataLoader workers set torch's threads to 1; the kernel inside one must then use one core,
    whatever the main process uses."""
    loader = torch.utils.data.DataLoader(_KernelLoadDataset(), batch_size=None, num_workers=1)
    threads, ratio = next(iter(loader)).tolist()
    assert threads == 1
    assert ratio < 1.15, f"CPU time / wall time = {ratio:.2f} inside a DataLoader worker"
