"""Fused augmentation benchmark: the functional kernel and the SimCLR and DINO presets end to end.

Inputs: N uint8 images of about 500 x 375 (sizes vary; a list, as a JPEG decoder returns them).
Three cases, each against the per-sample pipelines users write today, same inputs, same run:

  simclr_2x224   the functional kernel: 2 views of 224 per image with given per-sample
                 parameters drawn with plain torch (RandomResizedCrop-like rectangle, flip 0.5,
                 jitter 0.8 with (0.8, 0.8, 0.8, 0.2) in a random order, grayscale 0.2, blur 0.5
                 with sigma ~ U(0.1, 2) and k = 23 (reflect), bicubic)
      jem_fast     jem_fast.augment.functional.augment on the 2N-view list (one call)
      torchvision  torchvision.transforms.v2.functional applied per view in float32
      eager        jem_fast.reference.augment in float32 (plain torch ops per view)
  simclr_preset  the SimCLR recipe as a user runs it: 2 views of 224 per image
      jem_fast     jem_fast.augment.SimCLRAugment(size=224)(images): Philox parameter sampling
                   (jem_fast/augment/sampling.py) + the fused kernel, one call
      torchvision  a torchvision.transforms.v2.Compose (RandomResizedCrop bicubic antialias, flip,
                   RandomApply(ColorJitter), RandomGrayscale, RandomApply(GaussianBlur), ToDtype,
                   Normalize) applied per image and view on the uint8 image, as in a Dataset, then
                   stacked per view
      kornia       kornia.augmentation.AugmentationSequential, once per image on a batch of its
                   views (when kornia is importable; otherwise a 'skipped' row)
  dino_preset    the DINO recipe: 2 global views of 224 + 10 local views of 96 per image
      jem_fast     jem_fast.augment.DINOAugment(num_local_crops=10)(images)
      torchvision  DINO's per-sample pipeline in v2 transforms (global 1 / global 2 / local)
      kornia       as above, one AugmentationSequential per slot group
Reported: time per call (all views of the N images), views/s, the ratio to jem_fast of the same
case ('/jf'); on CUDA the fraction of the HBM floor (bytes in METHODOLOGY). Targets (the issue's):
CPU, 2 threads: SimCLR preset >= 3x torchvision v2 per sample; CUDA: SimCLR preset >= 20x
torchvision per sample, >= 10x kornia, within 4x of the HBM floor.

    python -m jem_fast.bench.bench_augment --quick            # CPU: N = 16 (DINO: 4)
    python -m jem_fast.bench.bench_augment --device cuda      # N = 256
"""
from __future__ import annotations

import math

import torch

from jem_fast.augment import functional as AF
from jem_fast.augment.presets import DINOAugment, SimCLRAugment
from jem_fast.reference.augment import augment_reference

from .common import (MEMORY_METHODOLOGY, TIMING, TIMING_COLUMNS, benchmark_mode, benchmark_parser,
                     dtype_name, format_table, log, measure_row, rss_probe, run_benchmark_main,
                     targets_result, timing_cells)

MODULE = "jem_fast.bench.bench_augment"
HBM_CEILING_BYTES_PER_S = 4.3e12
SIZE = 224
BLUR_K = 23
DINO_LOCAL_CROPS = 10
CASES = ("simclr_2x224", "simclr_preset", "dino_preset")
CASE_IMPLS = {"simclr_2x224": ("jem_fast", "torchvision", "eager"),
              "simclr_preset": ("jem_fast", "torchvision", "kornia"),
              "dino_preset": ("jem_fast", "torchvision", "kornia")}
# Images per call; the DINO case makes 12 views per image and torchvision's per-sample DINO
# pipeline takes about 1 s per image on 2 threads, so CPU --quick uses 4 images there (and 16
# for SimCLR) to keep the main job short; --full uses 64.
NUM_IMAGES = {
    "simclr_2x224": {("cpu", "quick"): 16, ("cpu", "full"): 64, ("cuda", "quick"): 256,
                     ("cuda", "full"): 256},
    "simclr_preset": {("cpu", "quick"): 16, ("cpu", "full"): 64, ("cuda", "quick"): 256,
                      ("cuda", "full"): 256},
    "dino_preset": {("cpu", "quick"): 4, ("cpu", "full"): 64, ("cuda", "quick"): 256,
                    ("cuda", "full"): 256},
}
# The per-sample baselines take seconds per call (CPU) and run every code path once per image:
# they are warmed up by one call on a single image when built, then get fewer warm-up calls and
# minimum repeats than jem_fast (none and 3 on CPU --quick, at most 2 and 3 elsewhere).
BASELINE_TIMING = {("cpu", "quick"): {"warmup": 0, "min_repeats": 3},
                   "default": {"warmup": 2, "min_repeats": 3}}
# kornia on CPU: about 0.4 s per image for DINO's 10 local crops on 2 threads, so --quick on CPU
# runs it for the SimCLR preset only.
KORNIA_SKIP_QUICK_CPU = ("dino_preset",)
# The float32 eager reference is as slow as torchvision per sample (seconds per call on CPU) and
# is the correctness oracle rather than a baseline users run: --full only on CPU.
EAGER_SKIP_QUICK_CPU = ("simclr_2x224",)

METHODOLOGY = {
    "inputs": "N uint8 images (3, H, W), H ~ U{333..400}, W ~ U{450..500}, smooth random "
              "content, seeded; a list of separate tensors on the benchmark device; "
              "simclr_2x224: each image appears twice in the 2N-view list (two views)",
    "params": "simclr_2x224: per view, plain torch: crop area ~ U(0.08, 1) x H W, log-ratio ~ "
              "U(log 3/4, log 4/3), one attempt then the whole image if it does not fit; flip p "
              "0.5; jitter p 0.8 with brightness/contrast/saturation ~ U(0.2, 1.8), hue ~ "
              "U(-0.2, 0.2), order = randperm(4); grayscale p 0.2; blur p 0.5 with sigma ~ "
              "U(0.1, 2), k = 23 reflect; no solarize; bicubic; ImageNet normalize. Presets: "
              "each implementation draws its own parameters inside the timed call (jem_fast: "
              "Philox counter-based sampler, a fresh step each call; torchvision and kornia: "
              "their own transforms' sampling from torch's global RNG), same distributions",
    "impls": "simclr_2x224: jem_fast: one functional.augment call for all views; torchvision: "
             "v2 functional per view on float32 (to_dtype, resized_crop antialias, "
             "horizontal_flip, adjust_* in order, rgb_to_grayscale, gaussian_blur, normalize) "
             "then torch.stack; eager: jem_fast.reference.augment.augment_reference("
             "compute_dtype=float32)",
    "simclr_preset": "jem_fast: SimCLRAugment(size=224, dtype=dtype)(images) -> 2 views (B, 3, "
                     "224, 224); defaults: RandomResizedCrop scale (0.08, 1), ratio (3/4, 4/3), "
                     "10 attempts + centre-crop fallback, bicubic; flip 0.5; ColorJitter(0.8, "
                     "0.8, 0.8, 0.2) p 0.8 in random order; grayscale 0.2; blur p 0.5, sigma "
                     "U(0.1, 2), k = simclr_blur_kernel_size(224) = 23, reflect padding; "
                     "ImageNet normalize. torchvision: v2.Compose([RandomResizedCrop(224, (0.08, "
                     "1), BICUBIC, antialias=True), RandomHorizontalFlip(0.5), RandomApply("
                     "[ColorJitter(0.8, 0.8, 0.8, 0.2)], 0.8), RandomGrayscale(0.2), RandomApply("
                     "[GaussianBlur(23, (0.1, 2))], 0.5), ToDtype(float32, scale=True), "
                     "Normalize(ImageNet)]) built from the preset's ViewConfig, called once per "
                     "image and view on the uint8 image, then torch.stack per view (and .to(dtype)"
                     " where dtype is not float32)",
    "dino_preset": "jem_fast: DINOAugment(num_local_crops=10, dtype=dtype)(images) -> 2 views "
                   "(B, 3, 224, 224) + 10 views (B, 3, 96, 96); global: scale (0.4, 1), local: "
                   "(0.05, 0.4), bicubic; flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, "
                   "grayscale 0.2 on every crop; blur (k = 23, sigma U(0.1, 2), reflect) p 1.0 "
                   "/ 0.1 / 0.5 (global 1 / global 2 / locals); solarize (threshold 0.5) p 0 / "
                   "0.2 / 0. torchvision: DINO's DataAugmentationDINO in v2 transforms from the "
                   "preset's ViewConfigs: per slot Compose([RandomResizedCrop(size, scale, "
                   "BICUBIC, antialias=True), RandomHorizontalFlip, RandomApply([ColorJitter], "
                   "0.8), RandomGrayscale(0.2), RandomApply([GaussianBlur(23, (0.1, 2))], p), "
                   "RandomSolarize(threshold 0.5 * 255 on uint8, p), ToDtype(float32, scale="
                   "True), Normalize]) per image and slot, stacked per slot",
    "kornia": "kornia.augmentation.AugmentationSequential(RandomResizedCrop((s, s), scale, "
              "ratio, resample='BICUBIC'), RandomHorizontalFlip, ColorJitter (torchvision's "
              "formulas, random order), RandomGrayscale, RandomGaussianBlur((k, k), (0.1, 2), "
              "'reflect'), RandomSolarize(thresholds=0, additions=0) where p > 0, Normalize) per "
              "slot group. kornia batches need one input size and the images differ in size, "
              "so it runs once per image on a batch of that image's views (the float [0, 1] "
              "image expanded to 2 for SimCLR; for DINO global 1, global 2 and the 10 locals are "
              "three calls since their parameters differ), then torch.stack per slot. Skipped "
              "when kornia is not importable; on CPU --quick only the SimCLR preset runs it",
    "differences_vs_torchvision": "same transforms, distributions, order (crop, flip, jitter, "
                                  "grayscale, blur, solarize, normalize), kernel size and "
                                  "padding; torchvision works on the uint8 image and rounds to "
                                  "uint8 after the crop, each jitter step, the blur and "
                                  "solarize (jem_fast computes in float and rounds nothing), "
                                  "and torchvision's solarize compares the uint8 value with "
                                  "127.5 (= 0.5 on [0, 1], as jem_fast) before ToDtype; "
                                  "kornia's RandomResizedCrop has no antialiasing, so its "
                                  "bicubic downscales of large crops alias (less work than "
                                  "jem_fast and torchvision, which antialias)",
    "time": "one call = all views of the N images (the presets: parameter sampling included); "
            "the 'fwd+bwd ms' column is that call (no backward exists); views/s = views / "
            "median; '/jf' = median / jem_fast median of the same case. Per-sample baselines "
            "(torchvision, kornia, eager): one untimed call on a single image, then at most 2 "
            "warm-up calls (none on CPU --quick) and at least 3 timed calls",
    "bandwidth": "bytes = sum over output views of its source image's uint8 bytes (read once "
                 "per view) + the bytes of every output view (3 * size^2 * itemsize; DINO: 2 x "
                 "224^2 + 10 x 96^2 per image); hbm_fraction = bytes / median / 4.3e12 (CUDA); "
                 "'within 4x of the floor' = hbm_fraction >= 25%",
    "peak_extra_memory_cpu": "fresh child process: warm-up call on 1 small image set, then the "
                             "inputs, malloc_trim, peak-RSS reset, one call; includes the output",
    **MEMORY_METHODOLOGY,
}


def make_images(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = []
    for i in range(n):
        h = int(torch.randint(333, 401, (1,), generator=g))
        w = int(torch.randint(450, 501, (1,), generator=g))
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        phase = torch.rand(3, 1, 1, generator=g) * 6.28
        base = 0.5 + 0.4 * torch.sin(7 * xx + 3 * yy + phase) * torch.cos(5 * yy - 2 * xx + i)
        img = (255 * (base + 0.05 * torch.randn(3, h, w, generator=g))).clamp(0, 255)
        images.append(img.to(torch.uint8).to(device))
    return images, g


def make_inputs(n, device, seed=0):
    images, g = make_images(n, device, seed)
    views = images + images
    return views, draw_params([tuple(im.shape[1:]) for im in views], g, device)


def draw_params(sizes, g, device):
    n = len(sizes)
    crops = []
    for h, w in sizes:
        area = h * w * (0.08 + 0.92 * float(torch.rand(1, generator=g)))
        log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * float(torch.rand(1, generator=g))
        cw, ch = round(math.sqrt(area * math.exp(log_r))), round(math.sqrt(area / math.exp(log_r)))
        if not (0 < cw <= w and 0 < ch <= h):
            ch, cw = h, w
        top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
        crops.append([top, left, ch, cw])
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    blur = torch.rand(n, generator=g) < 0.5
    params = {
        "crop": torch.tensor(crops, dtype=torch.int64),
        "flip": torch.rand(n, generator=g) < 0.5,
        "jitter": torch.rand(n, generator=g) < 0.8,
        "brightness": u(0.2, 1.8), "contrast": u(0.2, 1.8), "saturation": u(0.2, 1.8),
        "hue": u(-0.2, 0.2),
        "order": torch.stack([torch.randperm(4, generator=g) for _ in range(n)]),
        "grayscale": torch.rand(n, generator=g) < 0.2,
        "blur_sigma": torch.where(blur, u(0.1, 2.0), torch.zeros(n)),
        "solarize": torch.zeros(n, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in params.items()}


def torchvision_available():
    try:
        import torchvision  # noqa: F401
        from torchvision.transforms.v2 import functional  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return False


def torchvision_views(views, params, dtype):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF
    cpu = {k: v.cpu().tolist() for k, v in params.items()}
    outs = []
    for i, img in enumerate(views):
        x = TF.to_dtype(img, torch.float32, scale=True)
        x = TF.resized_crop(x, *cpu["crop"][i], [SIZE, SIZE],
                            interpolation=InterpolationMode.BICUBIC, antialias=True)
        if cpu["flip"][i]:
            x = TF.horizontal_flip(x)
        if cpu["jitter"][i]:
            for op in cpu["order"][i]:
                if op == 0:
                    x = TF.adjust_brightness(x, cpu["brightness"][i])
                elif op == 1:
                    x = TF.adjust_contrast(x, cpu["contrast"][i])
                elif op == 2:
                    x = TF.adjust_saturation(x, cpu["saturation"][i])
                else:
                    x = TF.adjust_hue(x, cpu["hue"][i])
        if cpu["grayscale"][i]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if cpu["blur_sigma"][i] > 0:
            s = cpu["blur_sigma"][i]
            x = TF.gaussian_blur(x, [BLUR_K, BLUR_K], [s, s])
        outs.append(TF.normalize(x, list(AF.IMAGENET_MEAN), list(AF.IMAGENET_STD)))
    return torch.stack(outs).to(dtype)


def impl_fn(impl, dtype):
    if impl == "jem_fast":
        return lambda v, p: AF.augment(v, p, SIZE, interpolation="bicubic", dtype=dtype,
                                       blur_kernel_size=BLUR_K, blur_padding="reflect")
    if impl == "torchvision":
        return lambda v, p: torchvision_views(v, p, dtype)
    return lambda v, p: augment_reference(v, p, SIZE, interpolation="bicubic", dtype=dtype,
                                          blur_kernel_size=BLUR_K, blur_padding="reflect",
                                          compute_dtype=torch.float32)


def check_correctness(dtype, device):
    """jem_fast against the float64 reference and (when importable) torchvision, 8 views."""
    views, params = make_inputs(4, device, seed=1)
    got = impl_fn("jem_fast", torch.float32)(views, params).double().cpu()
    ref = augment_reference(views, params, SIZE, blur_kernel_size=BLUR_K).double()
    out = {"max_abs_err_vs_float64_reference": float(f"{(got - ref).abs().max().item():.3g}")}
    if torchvision_available():
        tv = torchvision_views(views, params, torch.float32).double().cpu()
        out["max_abs_err_vs_torchvision_float32"] = float(f"{(got - tv).abs().max().item():.3g}")
    # normalized outputs: 1e-4 on the [0, 1] scale is 1e-4 / 0.225 here
    if not out["max_abs_err_vs_float64_reference"] <= 1e-4 / 0.225:
        raise SystemExit(f"ABORT: jem_fast augment does not match the reference: {out}")
    return out


def traffic_bytes(views, itemsize):
    return sum(v.numel() for v in views) + len(views) * 3 * SIZE * SIZE * itemsize




# --------------------------------------------------------------------------------------------
# The presets (simclr_preset, dino_preset)
# --------------------------------------------------------------------------------------------

def make_preset(case, dtype):
    if case == "simclr_preset":
        return SimCLRAugment(size=SIZE, dtype=dtype)
    return DINOAugment(num_local_crops=DINO_LOCAL_CROPS, dtype=dtype)


def slot_groups(configs):
    """[(config, [slot indices])] in order of first appearance (slots with equal configs)."""
    groups = {}
    for i, c in enumerate(configs):
        groups.setdefault(c, []).append(i)
    return list(groups.items())


def torchvision_transform(cfg):
    """The torchvision v2 per-sample pipeline of one preset slot (see METHODOLOGY)."""
    from torchvision.transforms import InterpolationMode, v2
    interp = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
    steps = [v2.RandomResizedCrop(cfg.size, scale=cfg.scale, ratio=cfg.ratio,
                                  interpolation=interp[cfg.interpolation], antialias=True),
             v2.RandomHorizontalFlip(p=cfg.flip_p)]
    if cfg.jitter_p > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast,
                                                    cfg.saturation, cfg.hue)], p=cfg.jitter_p))
    if cfg.grayscale_p > 0:
        steps.append(v2.RandomGrayscale(p=cfg.grayscale_p))
    if cfg.blur_p > 0:  # torchvision's GaussianBlur pads with 'reflect' (the presets' default)
        steps.append(v2.RandomApply([v2.GaussianBlur(cfg.blur_kernel_size,
                                                     sigma=cfg.blur_sigma)], p=cfg.blur_p))
    if cfg.solarize_p > 0:  # on uint8: x >= 255 * t is x / 255 >= t
        steps.append(v2.RandomSolarize(threshold=255 * cfg.solarize_threshold, p=cfg.solarize_p))
    steps += [v2.ToDtype(torch.float32, scale=True),
              v2.Normalize(mean=list(cfg.mean), std=list(cfg.std))]
    return v2.Compose(steps)


def torchvision_preset_fn(case, dtype):
    configs = make_preset(case, dtype).views
    transforms = {cfg: torchvision_transform(cfg) for cfg, _ in slot_groups(configs)}
    slots = [transforms[cfg] for cfg in configs]

    def fn(images):
        outs = [[] for _ in slots]
        for img in images:  # a Dataset's __getitem__: every view of one sample
            for out, transform in zip(outs, slots):
                out.append(transform(img))
        return [torch.stack(o).to(dtype) for o in outs]  # the DataLoader's collate
    return fn


def kornia_available():
    """(True, version) or (False, why)."""
    try:
        import kornia
        import kornia.augmentation  # noqa: F401
        return True, kornia.__version__
    except Exception as exc:  # noqa: BLE001 - any import problem means "not available"
        return False, f"kornia not importable ({type(exc).__name__}: {str(exc)[:80]})"


def kornia_sequential(cfg, device):
    import kornia.augmentation as K
    steps = [K.RandomResizedCrop((cfg.size, cfg.size), scale=cfg.scale, ratio=cfg.ratio,
                                 resample=cfg.interpolation.upper()),
             K.RandomHorizontalFlip(p=cfg.flip_p)]
    if cfg.jitter_p > 0:
        steps.append(K.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue,
                                   p=cfg.jitter_p))
    if cfg.grayscale_p > 0:
        steps.append(K.RandomGrayscale(p=cfg.grayscale_p))
    if cfg.blur_p > 0:
        k = cfg.blur_kernel_size
        steps.append(K.RandomGaussianBlur((k, k), cfg.blur_sigma, border_type=cfg.blur_padding
                                          .replace("zeros", "constant"), p=cfg.blur_p))
    if cfg.solarize_p > 0:  # kornia's threshold is 0.5 + U(-thresholds, thresholds)
        steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=cfg.solarize_p))
    steps.append(K.Normalize(mean=torch.tensor(cfg.mean, device=device),
                             std=torch.tensor(cfg.std, device=device)))
    return K.AugmentationSequential(*steps).to(device)


def kornia_preset_fn(case, dtype, device):
    configs = make_preset(case, dtype).views
    groups = [(kornia_sequential(cfg, device), slots) for cfg, slots in slot_groups(configs)]

    def fn(images):
        try:
            outs = [[] for _ in configs]
            for img in images:  # kornia needs one size per batch: one image's views per call
                x = img.unsqueeze(0).float().div_(255)
                for seq, slots in groups:
                    y = seq(x.expand(len(slots), -1, -1, -1))
                    for j, s in enumerate(slots):
                        outs[s].append(y[j])
            return [torch.stack(o).to(dtype) for o in outs]
        except RuntimeError:
            raise
        except Exception as exc:  # noqa: BLE001 - an API mismatch of another kornia version
            raise RuntimeError(f"kornia failed: {type(exc).__name__}: {exc}") from exc
    return fn


def case_inputs(case, n, device, seed=0):
    """The positional arguments of one call of the case's implementations."""
    if case == "simclr_2x224":
        return make_inputs(n, device, seed)
    return (make_images(n, device, seed)[0],)


def case_fn(case, impl, dtype, device):
    if case == "simclr_2x224":
        return impl_fn(impl, dtype)
    if impl == "jem_fast":
        return make_preset(case, dtype)
    if impl == "torchvision":
        return torchvision_preset_fn(case, dtype)
    return kornia_preset_fn(case, dtype, device)


def check_preset(case, dtype, device):
    """The preset on 2 images: the views' shapes, dtype and finiteness, and that they equal
    functional.augment under the parameters the preset sampled (the sampling + kernel path)."""
    aug = make_preset(case, dtype)
    images = make_images(2, device, seed=3)[0]
    views, params = aug(images, seed=7, return_params=True)
    err = 0.0
    for v, cfg, p in zip(views, aug.views, params):
        want = (2, 3, cfg.size, cfg.size)
        if tuple(v.shape) != want or v.dtype != dtype or not bool(v.isfinite().all()):
            raise SystemExit(f"ABORT: {case}: a view has shape {tuple(v.shape)} {v.dtype}, "
                             f"expected {want} {dtype}, or is not finite")
        ref = AF.augment(images, p, cfg.size, interpolation=cfg.interpolation, dtype=dtype,
                         blur_kernel_size=cfg.blur_kernel_size, blur_padding=cfg.blur_padding,
                         solarize_threshold=cfg.solarize_threshold)
        err = max(err, (v.double() - ref.double()).abs().max().item())
    if err != 0.0:
        raise SystemExit(f"ABORT: {case}: the preset differs from functional.augment under its "
                         f"own parameters by {err:.3g}")
    return {"case": case, "views": len(views), "max_abs_diff_vs_functional_augment": err}


def preset_traffic_bytes(case, images, itemsize):
    configs = make_preset(case, torch.float32).views
    src = sum(im.numel() for im in images)
    return len(configs) * src + len(images) * sum(3 * c.size ** 2 for c in configs) * itemsize


def memory_probe(spec):
    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    case = spec.get("case", "simclr_2x224")
    fn = case_fn(case, spec["impl"], dtype, "cpu")
    small = case_inputs(case, 1, "cpu", seed=5)
    return rss_probe(lambda: case_inputs(case, spec["n"], "cpu"), fn, warmup=lambda: fn(*small))


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

def run(args):
    mode = benchmark_mode(args)
    timing = TIMING[(args.device, mode)]
    fewer = BASELINE_TIMING.get((args.device, mode), BASELINE_TIMING["default"])
    baseline_timing = dict(timing, warmup=min(timing["warmup"], fewer["warmup"]),
                           min_repeats=min(timing["min_repeats"], fewer["min_repeats"]))
    dtype = torch.float32 if args.dtype is None and args.device == "cpu" else (
        getattr(torch, args.dtype) if args.dtype else torch.bfloat16)
    itemsize = torch.finfo(dtype).bits // 8
    tv_ok = torchvision_available()
    kornia_ok, kornia_why = kornia_available()
    n0 = NUM_IMAGES["simclr_2x224"][(args.device, mode)]
    log(f"[augment N={n0} images, {2 * n0} views, {dtype_name(dtype)}] correctness check")
    checks = [check_correctness(dtype, args.device)]
    for case in ("simclr_preset", "dino_preset"):
        log(f"[{case}] check")
        checks.append(check_preset(case, dtype, args.device))
    rows = []
    for case in CASES:
        n = NUM_IMAGES[case][(args.device, mode)]
        per_image = 2 if case != "dino_preset" else 2 + DINO_LOCAL_CROPS
        case_rows = []
        for impl in CASE_IMPLS[case]:
            row = {"case": case, "images": n, "views": per_image * n, "dtype": dtype_name(dtype),
                   "impl": impl, "status": "ok", "note": ""}
            skip = None
            if impl == "torchvision" and not tv_ok:
                skip = "torchvision not importable"
            elif impl == "kornia" and not kornia_ok:
                skip = kornia_why
            elif impl == "kornia" and args.device == "cpu" and mode == "quick" \
                    and case in KORNIA_SKIP_QUICK_CPU:
                skip = "skipped in --quick on CPU (seconds per call); run --full"
            elif impl == "eager" and args.device == "cpu" and mode == "quick" \
                    and case in EAGER_SKIP_QUICK_CPU:
                skip = "skipped in --quick on CPU (seconds per call; the oracle, not a user " \
                       "baseline); run --full"
            if skip is not None:
                case_rows.append(dict(row, status="skipped", note=skip, peak_extra_mb="n/a"))
                continue
            if impl == "kornia":
                row["kornia_version"] = kornia_why

            def build(case=case, impl=impl, n=n):
                inputs = case_inputs(case, n, args.device)
                fn = case_fn(case, impl, dtype, args.device)
                if impl != "jem_fast":  # see BASELINE_TIMING
                    fn(*case_inputs(case, 1, args.device, seed=5))
                return (lambda: fn(*inputs)), None

            log(f"[{case} N={n}, {row['views']} views] {impl}")
            spec = {"case": case, "impl": impl, "n": n, "dtype": dtype_name(dtype),
                    "threads": args.threads}
            case_rows.append(measure_row(row, build, device=args.device,
                                         timing=timing if impl == "jem_fast" else baseline_timing,
                                         probe_module=MODULE, probe_spec=spec))
        if case == "simclr_2x224":
            moved = traffic_bytes(make_inputs(n, "cpu")[0], itemsize)
        else:
            moved = preset_traffic_bytes(case, make_images(n, "cpu")[0], itemsize)
        jf = case_rows[0]
        for row in case_rows:
            if row["status"] != "ok":
                continue
            med_s = row["fwd_bwd"]["median_ms"] / 1e3
            row["fwd_bwd_vs_jem_fast"] = round(row["fwd_bwd"]["median_ms"]
                                               / jf["fwd_bwd"]["median_ms"], 2)
            row["views_per_s"] = round(row["views"] / med_s, 1)
            row["nominal_bytes"] = moved
            row["gb_per_s"] = round(moved / med_s / 1e9, 2)
            row["hbm_fraction"] = round(moved / med_s / HBM_CEILING_BYTES_PER_S, 4)
        rows += case_rows
    return rows, checks


def find_ok(rows, case, impl):
    return next((r for r in rows if r["case"] == case and r["impl"] == impl
                 and r["status"] == "ok"), None)


def _ratio_item(rows, case, impl, want, label):
    jf, other = find_ok(rows, case, "jem_fast"), find_ok(rows, case, impl)
    if jf is None or other is None:
        return []
    ratio = other["fwd_bwd_vs_jem_fast"]
    return [{"target": (f"{label}: {impl} / jem_fast time >= {want:g}" if want else
                        f"(info, no target) {label}: {impl} / jem_fast time"),
             "measured": f"{ratio:.2f}x (jem_fast {jf['views_per_s']:.0f} views/s, {impl} "
                         f"{other['views_per_s']:.0f} views/s)",
             "met": ratio >= want if want else None}]


def evaluate_targets(rows, args):
    """The issue's targets on the SimCLR preset (CPU: 2 threads; CUDA); the other cases as
    information."""
    items = []
    cpu = args.device == "cpu"
    items += _ratio_item(rows, "simclr_preset", "torchvision", 3 if cpu else 20,
                         "SimCLR preset vs torchvision v2 per sample")
    items += _ratio_item(rows, "simclr_preset", "kornia", None if cpu else 10,
                         "SimCLR preset vs kornia per image")
    jf = find_ok(rows, "simclr_preset", "jem_fast")
    if not cpu and jf is not None:
        frac = jf["hbm_fraction"]
        items.append({"target": "SimCLR preset within 4x of the HBM floor (>= 25% of 4.3 TB/s)",
                      "measured": f"{100 * frac:.1f}% ({jf['gb_per_s']:.0f} GB/s, floor "
                                  f"{jf['nominal_bytes'] / HBM_CEILING_BYTES_PER_S * 1e3:.3g} "
                                  f"ms vs {jf['fwd_bwd']['median_ms']:.3g} ms)",
                      "met": frac >= 0.25})
    items += _ratio_item(rows, "dino_preset", "torchvision", None,
                         "DINO preset vs torchvision v2 per sample")
    items += _ratio_item(rows, "dino_preset", "kornia", None, "DINO preset vs kornia per image")
    items += _ratio_item(rows, "simclr_2x224", "torchvision", None,
                         "functional augment vs torchvision v2 functional")
    jf_rows = [r for r in rows if r["impl"] == "jem_fast" and r["status"] == "ok"]
    if not cpu:
        for r in jf_rows:
            if r["case"] != "simclr_preset":
                items.append({"target": f"(info, no target) {r['case']}: jem_fast fraction of "
                                        "the HBM floor",
                              "measured": f"{100 * r['hbm_fraction']:.1f}%", "met": None})
    sp = find_ok(rows, "simclr_preset", "jem_fast")
    shape = (f"SimCLR preset: {sp['images']} images ~500x375 -> {sp['views']} views of 224, "
             f"{sp['dtype']}" if sp else "SimCLR preset")
    return targets_result(shape, items, args.threads,
                          target_threads=2 if cpu else args.threads)


def table(rows, device):
    out = []
    for r in rows:
        t = dict(timing_cells(r), case=r["case"], images=r["images"], views=r["views"],
                 dtype=r["dtype"], impl=r["impl"])
        if r["status"] == "ok":
            t.update(vps=f"{r['views_per_s']:.0f}", gbs=f"{r['gb_per_s']:.2f}",
                     hbm=f"{100 * r['hbm_fraction']:.1f}%")
        out.append(t)
    columns = [("case", "case"), ("images", "N"), ("views", "views"), ("dtype", "dtype"),
               ("impl", "impl")] + [c for c in TIMING_COLUMNS if c[0] not in ("fwd", "xf")] + [
        ("vps", "views/s")]
    if device == "cuda":
        columns += [("gbs", "GB/s"), ("hbm", "HBM %")]
    return format_table(out, columns + [("note", "note")])


def main(argv=None):
    args = benchmark_parser(MODULE, __doc__).parse_args(argv)
    return run_benchmark_main(
        args, name="augment", title="augmentation (functional SimCLR, SimCLR and DINO presets)",
        legend="'fwd+bwd ms' = one call producing all views of the N images (no backward; "
               "presets: parameter sampling included); 'f+b /jf' = time / jem_fast time of the "
               "same case (>1: jem_fast faster); views/s = views / median time",
        run=run, evaluate_targets=evaluate_targets, table=table, memory_probe=memory_probe,
        methodology=METHODOLOGY)


if __name__ == "__main__":
    main()
