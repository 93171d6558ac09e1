"""Augmentation benchmark: jem_fast's per-image and batched calls against the pipelines people use.

Inputs: N ImageNet-like images of about 500 x 375 (sizes vary; smooth random content plus
grain), as decoded uint8 tensors and as JPEG files made with torchvision.io.encode_jpeg
(quality 90). Two recipes, SimCLR (2 views of 224) and DINO (2 x 224 + 8 x 96), each

  per-image   jem_fast.augment.ViewTransform on one image per call (Dataset.__getitem__)
  batched     jem_fast.augment.MultiViewCollate on the list of N images (collate_fn)

and, with decode included ('+decode'), the same calls from the JPEG bytes (jem_fast and
torchvision: torchvision.io.decode_jpeg; lightly: PIL.Image.open; DALI: fn.decoders.image).
Peers, same images, same run, timings interleaved (one call of each implementation per round):

  lightly       lightly.transforms.SimCLRTransform / DINOTransform (n_local_views=8) on PIL images,
                one call per image, their defaults = jem_fast's presets (PIL: bicubic crops,
                PIL's approximate Gaussian blur). With pillow-simd installed the row is
                'lightly_simd' (see below).
  torchvision   torchvision.transforms.v2 per view on the uint8 tensor (the preset's slots as
                Compose of RandomResizedCrop(antialias), flip, ColorJitter, grayscale, blur,
                solarize, ToDtype, Normalize), one call per image
  kornia        kornia.augmentation per image on a batch of that image's views (float [0, 1])
  dali          NVIDIA DALI's CPU pipeline (device_id=None), batch = the N images, one thread
                (its own conditional execution for the probabilities; fixed jitter order,
                DALI's contrast pivot: cheaper, not torchvision's semantics)

Also: the per-stage split of the kernel on 224 views (crop+resize, + jitter without hue,
+ jitter with hue, + blur k = 23) next to the same ops on PIL (what lightly runs); the per-image
call overhead (the call minus its kernel launches, paired per image); a batched call at 1 and
at --threads threads (information).

Threads: every comparison runs with torch.set_num_threads(1) (per core: one thread on each side,
PIL and DALI single-threaded too); views/s are per core.

pillow-simd replaces Pillow, so it can only be measured in its own environment. One that reuses
the project's venv for everything else (its site-packages after pillow-simd's on sys.path;
pillow-simd builds from source: needs a C compiler and the libjpeg and zlib headers):
    python3.11 -m venv /tmp/simdvenv
    echo "$PWD/.venv/lib/python3.11/site-packages" \
        > /tmp/simdvenv/lib/python3.11/site-packages/zz_project_venv.pth
    /tmp/simdvenv/bin/pip install -U "setuptools>=77" wheel
    CC="cc -mavx2" /tmp/simdvenv/bin/pip install --no-deps --no-build-isolation \
        pillow-simd==12.1.1.post0
    PYTHONPATH=$PWD /tmp/simdvenv/bin/python -m jem_fast.bench.bench_augment --quick
There the lightly rows become 'lightly_simd' (lightly on pillow-simd); in the default
environment they are reported as skipped with that reason.

    python -m jem_fast.bench.bench_augment --quick      # N = 8 (SimCLR), 4 (DINO); ~1 min
    python -m jem_fast.bench.bench_augment --full       # N = 32 / 16, more rounds
    python -m jem_fast.bench.bench_augment --device cuda   # batched, CUDA kernel, vs the CPU peers
"""
from __future__ import annotations

import gc
import importlib
import io
import statistics
import time

import torch

from jem_fast.augment import functional as AF
from jem_fast.augment.data import MultiViewCollate, ViewTransform, decode_jpegs
from jem_fast.augment.presets import DINOAugment, SimCLRAugment
from jem_fast.augment.sampling import ViewConfig

from .common import (CONTENDED_FRACTION, MEMORY_METHODOLOGY, TIMING_COLUMNS, benchmark_mode,
                     benchmark_parser, cpu_times, format_table, log, other_cpu_fraction,
                     summarize, targets_result, timing_cells)

MODULE = "jem_fast.bench.bench_augment"
RECIPES = ("simclr", "dino")
DINO_LOCAL = 8
NUM_IMAGES = {"quick": {"simclr": 8, "dino": 4}, "full": {"simclr": 32, "dino": 16}}
ROUNDS = {"quick": 4, "full": 12}          # interleaved rounds (one call of each impl per round)
STAGE_VIEWS = {"quick": 8, "full": 32}
PEERS = ("lightly", "torchvision", "kornia", "dali")
# kornia takes ~0.5 s per DINO image on one thread: --full only for DINO
KORNIA_FULL_ONLY = ("dino",)

METHODOLOGY = {
    "inputs": "N images (3, H, W), H ~ U{333..400}, W ~ U{450..500}: bicubic upsampling of "
              "random 12 x 16 colour fields plus Gaussian grain (sigma 6 / 255), seeded; "
              "decoded: uint8 tensors (PIL images for lightly, HWC numpy for DALI); '+decode': "
              "JPEG bytes from torchvision.io.encode_jpeg(quality=90)",
    "recipes": "SimCLR: 2 x RandomResizedCrop(224, (0.08, 1), bicubic), flip 0.5, ColorJitter("
               "0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5 sigma U(0.1, 2) (jem_fast, "
               "torchvision, kornia, DALI: 23 taps; lightly: PIL GaussianBlur(radius=sigma)), "
               "ImageNet normalize. DINO: 2 x 224 (0.4, 1) + 8 x 96 (0.05, 0.4), bicubic, "
               "ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, blur 1.0 / 0.1 / 0.5, "
               "solarize 0 / 0.2 / 0. lightly: SimCLRTransform() and DINOTransform("
               "n_local_views=8) defaults, which are these",
    "jem_fast": "per-image: ViewTransform(preset)(image) per image (list of views, as "
                "__getitem__ returns); batched: MultiViewCollate(preset)(images) (list of "
                "(N, 3, h, w) views); '+decode': decode_jpeg per image / MultiViewCollate("
                "decode=True); parameters drawn inside every call (counter-based sampler)",
    "peers": "lightly, torchvision, kornia: one call per image, all its views, as in a "
             "Dataset; no collate stacking for anyone in the per-image case. DALI: one "
             "pipeline run on the N images (DALI has no per-image mode), outputs copied to "
             "numpy; its ratios are given against both jem_fast paths",
    "time": "interleaved: each round calls every implementation once (order rotated per "
            "round) after one warm-up call each; median over rounds of the wall time of one "
            "call on the N images; ratio = peer median / jem_fast median of the same case; "
            "views/s = views / median (one thread: per core)",
    "overhead": "per-image call overhead: for each image, the ViewTransform call and its "
                "kernel launches alone (the same merged inputs, precomputed) timed back to "
                "back with the thread's CPU clock; median of the per-image differences",
    "stages": "functional.augment on 224 views of the N images with: crop+resize+normalize "
              "only; + brightness/contrast/saturation (factors U(0.2, 1.8)); + hue too "
              "(U(-0.2, 0.2)); crop+resize + blur (sigma U(0.1, 2), k = 23, reflect). PIL: "
              "the same crops with PIL resize (bicubic, reducing_gap=None), ImageEnhance "
              "brightness/contrast/saturation and torchvision's PIL hue, "
              "ImageFilter.GaussianBlur(sigma), then to_tensor + normalize. Stage cost = "
              "time with the stage - crop-only time",
    "differences": "lightly/PIL: uint8 rounding after every op, approximate blur (3 box "
                   "passes), PIL's antialiased resampling; torchvision v2 on uint8: rounds "
                   "to uint8 after each op; kornia: no antialiasing in RandomResizedCrop; "
                   "DALI: fixed jitter order, contrast around a fixed pivot, no per-op "
                   "clamping (so less work than exact torchvision semantics)",
    "memory": "not measured in this family (the output views dominate: views x 3 x h x w x 4 "
              "bytes)",
    **MEMORY_METHODOLOGY,
}


# ------------------------------------------------------------------------------ inputs

def make_images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(n):
        h = int(torch.randint(333, 401, (1,), generator=g))
        w = int(torch.randint(450, 501, (1,), generator=g))
        field = torch.rand(1, 3, 12, 16, generator=g)
        smooth = torch.nn.functional.interpolate(field, size=(h, w), mode="bicubic",
                                                 align_corners=False)[0]
        img = 255 * smooth + 6 * torch.randn(3, h, w, generator=g)
        images.append(img.clamp(0, 255).round().to(torch.uint8))
    return images


def encode_jpegs(images):
    from torchvision.io import encode_jpeg
    return [bytes(encode_jpeg(im, quality=90).numpy()) for im in images]


def make_preset(recipe):
    if recipe == "simclr":
        return SimCLRAugment()
    return DINOAugment(num_local_crops=DINO_LOCAL)


def views_per_image(recipe):
    return 2 if recipe == "simclr" else 2 + DINO_LOCAL


# ------------------------------------------------------------------------------ peers

def pillow_is_simd():
    try:
        import PIL
        return ".post" in PIL.__version__ or "simd" in getattr(PIL, "__file__", "")
    except ImportError:
        return False


def lightly_transform(recipe):
    from lightly.transforms import DINOTransform, SimCLRTransform
    if recipe == "simclr":
        return SimCLRTransform(input_size=224)
    return DINOTransform(n_local_views=DINO_LOCAL)


def torchvision_transform(cfg):
    """The torchvision v2 per-sample pipeline of one preset slot."""
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
    if cfg.blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(cfg.blur_kernel_size,
                                                     sigma=cfg.blur_sigma)], p=cfg.blur_p))
    if cfg.solarize_p > 0:  # on uint8: x >= 255 * t is x / 255 >= t
        steps.append(v2.RandomSolarize(threshold=255 * cfg.solarize_threshold, p=cfg.solarize_p))
    steps += [v2.ToDtype(torch.float32, scale=True),
              v2.Normalize(mean=list(cfg.mean), std=list(cfg.std))]
    return v2.Compose(steps)


def slot_groups(configs):
    groups = {}
    for i, c in enumerate(configs):
        groups.setdefault(c, []).append(i)
    return list(groups.items())


def kornia_sequential(cfg):
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
    if cfg.solarize_p > 0:
        steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=cfg.solarize_p))
    steps.append(K.Normalize(mean=torch.tensor(cfg.mean), std=torch.tensor(cfg.std)))
    return K.AugmentationSequential(*steps)


def dali_pipeline(recipe, batch, decode):
    """DALI's CPU pipeline of the recipe: one output per view slot."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    configs = make_preset(recipe).views
    mean = [255 * m for m in configs[0].mean]
    std = [255 * s for s in configs[0].std]

    def view(images, cfg):
        x = fn.random_resized_crop(images, size=(cfg.size, cfg.size), random_area=cfg.scale,
                                   random_aspect_ratio=cfg.ratio, interp_type=types.INTERP_CUBIC,
                                   antialias=True)
        if fn.random.coin_flip(probability=cfg.jitter_p):
            b, c, s, h = cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue
            x = fn.brightness_contrast(x, brightness=fn.random.uniform(range=(1 - b, 1 + b)),
                                       contrast=fn.random.uniform(range=(1 - c, 1 + c)))
            x = fn.hsv(x, hue=fn.random.uniform(range=(-360 * h, 360 * h)),
                       saturation=fn.random.uniform(range=(1 - s, 1 + s)))
        if fn.random.coin_flip(probability=cfg.grayscale_p):
            x = fn.hsv(x, saturation=0.0)
        if cfg.blur_p > 0 and fn.random.coin_flip(probability=cfg.blur_p):
            x = fn.gaussian_blur(x, window_size=cfg.blur_kernel_size,
                                 sigma=fn.random.uniform(range=cfg.blur_sigma))
        if cfg.solarize_p > 0 and fn.random.coin_flip(probability=cfg.solarize_p):
            x = fn.cast(x, dtype=types.INT16)
            x = fn.cast(x + (255 - 2 * x) * (x >= 128), dtype=types.UINT8)
        return fn.crop_mirror_normalize(x, mirror=fn.random.coin_flip(probability=cfg.flip_p),
                                        dtype=types.FLOAT, output_layout="CHW", mean=mean,
                                        std=std)

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, enable_conditionals=True,
                  prefetch_queue_depth=1, seed=1)
    def pipe():
        if decode:
            data = fn.external_source(name="data", batch=True, dtype=types.UINT8)
            images = fn.decoders.image(data, device="cpu", output_type=types.RGB)
        else:
            images = fn.external_source(name="data", batch=True, layout="HWC")
        return tuple(view(images, cfg) for cfg in configs)

    p = pipe()
    p.build()
    return p


def dali_available():
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.fn  # noqa: F401
        return True, nvidia.dali.__version__
    except Exception as exc:  # noqa: BLE001 - any import problem means "not available"
        return False, f"nvidia-dali not importable ({type(exc).__name__}: {str(exc)[:80]})"


def peer_status(impl, recipe, mode):
    """(available, version or the skip note)."""
    if impl == "lightly":
        if pillow_is_simd():
            return False, ("pillow-simd is installed here: see the lightly_simd row")
        try:
            import lightly  # noqa: F401
            from lightly.transforms import DINOTransform, SimCLRTransform  # noqa: F401
            import PIL
            return True, f"lightly {lightly.__version__}, Pillow {PIL.__version__}"
        except Exception as exc:  # noqa: BLE001
            return False, f"lightly not importable ({type(exc).__name__}: {str(exc)[:80]})"
    if impl == "lightly_simd":
        if not pillow_is_simd():
            return False, ("pillow-simd not installed (it replaces Pillow: measure it from its "
                           "own venv, see the module docstring)")
        import PIL
        return True, f"pillow-simd {PIL.__version__}"
    if impl == "torchvision":
        try:
            import torchvision
            from torchvision.transforms import v2  # noqa: F401
            return True, f"torchvision {torchvision.__version__}"
        except Exception as exc:  # noqa: BLE001
            return False, f"torchvision not importable ({type(exc).__name__}: {str(exc)[:80]})"
    if impl == "kornia":
        try:
            import kornia
            import kornia.augmentation  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return False, f"kornia not importable ({type(exc).__name__}: {str(exc)[:80]})"
        if mode == "quick" and recipe in KORNIA_FULL_ONLY:
            return False, "skipped in --quick (about 0.5 s per DINO image); run --full"
        return True, f"kornia {kornia.__version__}"
    if impl == "dali":
        ok, what = dali_available()
        return ok, (f"nvidia-dali {what}" if ok else what)
    raise ValueError(impl)


def peer_fn(impl, recipe, data, decode):
    """A zero-argument callable: the peer on all N images (data: dict of the input forms)."""
    configs = make_preset(recipe).views
    if impl in ("lightly", "lightly_simd"):
        from PIL import Image
        transform = lightly_transform(recipe)
        if decode:
            return lambda: [transform(Image.open(io.BytesIO(b)).convert("RGB"))
                            for b in data["jpeg"]]
        return lambda: [transform(im) for im in data["pil"]]
    if impl == "torchvision":
        slots = [torchvision_transform(cfg) for cfg in configs]
        if decode:
            return lambda: [[t(im) for t in slots] for im in decode_jpegs(data["jpeg"])]
        return lambda: [[t(im) for t in slots] for im in data["tensor"]]
    if impl == "kornia":
        groups = [(kornia_sequential(cfg), idx) for cfg, idx in slot_groups(configs)]

        def one(img):
            x = img.unsqueeze(0).float().div_(255)
            out = [None] * len(configs)
            for seq, idx in groups:
                y = seq(x.expand(len(idx), -1, -1, -1))
                for j, s in enumerate(idx):
                    out[s] = y[j]
            return out
        if decode:
            return lambda: [one(im) for im in decode_jpegs(data["jpeg"])]
        return lambda: [one(im) for im in data["tensor"]]
    if impl == "dali":
        import numpy as np
        pipe = dali_pipeline(recipe, len(data["tensor"]), decode)
        feed = data["jpeg_np"] if decode else data["hwc"]

        def run():
            pipe.feed_input("data", feed)
            return [np.asarray(out.as_tensor()) for out in pipe.run()]
        return run
    raise ValueError(impl)


def jem_fast_fn(path, recipe, data, decode):
    if path == "per_image":
        transform = ViewTransform(make_preset(recipe))
        if decode:
            return lambda: [transform(im) for im in decode_jpegs(data["jpeg"])]
        return lambda: [transform(im) for im in data["tensor"]]
    collate = MultiViewCollate(make_preset(recipe), decode=decode)
    return lambda: collate(data["jpeg"] if decode else data["tensor"])


# ------------------------------------------------------------------------------ timing

def interleaved(fns, rounds):
    """{name: [seconds per call]}: one warm-up call each, then `rounds` rounds calling every fn
    once, the order rotated each round so that no impl always follows the same one."""
    names = list(fns)
    for name in names:
        fns[name]()
    gc.collect()
    samples = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


def per_image_overhead(recipe, images, repeats):
    """Median over images and repeats of (ViewTransform call - its kernel launches alone), in
    thread CPU seconds (see METHODOLOGY['overhead'])."""
    preset = make_preset(recipe)
    transform = ViewTransform(preset)
    launches = []

    class Recorder:
        @staticmethod
        def augment_sampled(imgs, params, size, **options):
            launches.append((imgs, params, size, options))
            return AF.augment_sampled(imgs, params, size, **options)

    def kernel_only(calls):
        for imgs, params, size, o in calls:
            AF._launch(imgs, params, size, size, o["input_layout"] == "HWC", o["interpolation"],
                       o["blur_kernel_size"], o["blur_padding"], o["solarize_threshold"],
                       list(o["mean"]), list(o["std"]), o["dtype"], o["channels_last"])

    diffs, calls_per_image = [], 0
    for img in images:
        # the parameters the transform draws right after set_epoch(0), and their launches
        transform.set_epoch(0)
        key, offset = transform._stream.take(1)
        launches.clear()
        preset._apply(Recorder, [img], [tuple(img.shape[1:])], None, img.device, key, offset,
                      False, "CHW")
        calls = list(launches)
        calls_per_image = len(calls)
        for _ in range(repeats + 1):  # the first pair warms up
            transform.set_epoch(0)
            t0 = time.thread_time()
            transform(img)
            t1 = time.thread_time()
            kernel_only(calls)
            t2 = time.thread_time()
            diffs.append((t1 - t0) - (t2 - t1))
        diffs.pop(-repeats - 1)
    return statistics.median(diffs), calls_per_image


# ------------------------------------------------------------------------------ stages

STAGES = ("crop", "jitter_no_hue", "jitter_hue", "blur")


def stage_params(images, stage, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [tuple(im.shape[1:]) for im in images]
    cfg = ViewConfig(scale=(0.08, 1.0))
    from jem_fast.augment.sampling import sample_view_params
    p = sample_view_params(sizes, seed, 0, cfg)
    n = len(images)
    u = lambda lo, hi: (lo + (hi - lo) * torch.rand(n, generator=g)).float()  # noqa: E731
    out = {"crop": p["crop"], "flip": torch.zeros(n, dtype=torch.bool)}
    if stage in ("jitter_no_hue", "jitter_hue"):
        out.update(jitter=torch.ones(n, dtype=torch.bool), brightness=u(0.2, 1.8),
                   contrast=u(0.2, 1.8), saturation=u(0.2, 1.8), order=p["order"])
        if stage == "jitter_hue":
            out["hue"] = u(-0.2, 0.2)
    if stage == "blur":
        out["blur_sigma"] = u(0.1, 2.0)
    return out


def pil_stage_fn(images_pil, params, stage):
    from PIL import ImageEnhance, ImageFilter
    from torchvision.transforms import functional as TF
    from PIL import Image
    cpu = {k: v.tolist() for k, v in params.items()}
    mean, std = list(AF.IMAGENET_MEAN), list(AF.IMAGENET_STD)

    def run():
        out = []
        for i, im in enumerate(images_pil):
            top, left, h, w = cpu["crop"][i]
            x = im.resize((224, 224), Image.BICUBIC, box=(left, top, left + w, top + h))
            if stage in ("jitter_no_hue", "jitter_hue"):
                x = ImageEnhance.Brightness(x).enhance(cpu["brightness"][i])
                x = ImageEnhance.Contrast(x).enhance(cpu["contrast"][i])
                x = ImageEnhance.Color(x).enhance(cpu["saturation"][i])
                if stage == "jitter_hue":
                    x = TF.adjust_hue(x, cpu["hue"][i])
            if stage == "blur":
                x = x.filter(ImageFilter.GaussianBlur(radius=cpu["blur_sigma"][i]))
            out.append(TF.normalize(TF.to_tensor(x), mean, std))
        return out
    return run


# ------------------------------------------------------------------------------ the run

def base_row(recipe, case, impl, n, views, label):
    return {"op": recipe, "case": case, "label": label, "images": n, "views": views,
            "dtype": "float32", "impl": impl, "status": "ok", "note": "",
            "peak_extra_mb": "n/a"}


def finish(rows, samples, jf_names):
    """Fill timing fields; ratios against each row's jem_fast reference (jf_names[row id])."""
    for row in rows:
        if row["status"] != "ok":
            continue
        row["fwd_bwd"] = summarize(samples[row["_key"]])
        med_s = row["fwd_bwd"]["median_ms"] / 1e3
        row["views_per_s"] = round(row["views"] / med_s, 1)
    by_key = {r["_key"]: r for r in rows if r["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            continue
        jf = by_key.get(jf_names[id(row)])
        row["fwd_bwd_vs_jem_fast"] = (round(row["fwd_bwd"]["median_ms"]
                                            / jf["fwd_bwd"]["median_ms"], 2) if jf else None)


def run_recipe(recipe, args, mode, data):
    n = len(data["tensor"])
    views = n * views_per_image(recipe)
    rows, fns, refs = [], {}, {}
    for decode in (False, True):
        tag = "+decode" if decode else ""
        for path in ("per_image", "batched"):
            key = f"jem_fast {path}{tag}"
            fns[key] = jem_fast_fn(path, recipe, data, decode)
        for impl in ("lightly", "lightly_simd") + PEERS[1:]:
            ok, what = peer_status(impl, recipe, mode)
            key = f"{impl}{tag}"
            if ok:
                try:
                    fns[key] = peer_fn(impl, recipe, data, decode)
                except Exception as exc:  # noqa: BLE001 - a peer's API mismatch is a result
                    ok, what = False, f"{impl} failed to build: {type(exc).__name__}: {exc}"[:160]
            for path in ("per_image", "batched"):
                label = f"{recipe} {path.replace('_', '-')}{tag} N={n}"
                row = base_row(recipe, f"{path}{tag}", impl, n, views, label)
                row["_key"] = key
                if ok:
                    row["version"] = what
                else:
                    row.update(status="skipped", note=what)
                rows.append(row)
                refs[id(row)] = f"jem_fast {path}{tag}"
        for path in ("per_image", "batched"):
            label = f"{recipe} {path.replace('_', '-')}{tag} N={n}"
            row = base_row(recipe, f"{path}{tag}", "jem_fast", n, views, label)
            row["_key"] = f"jem_fast {path}{tag}"
            refs[id(row)] = row["_key"]
            rows.insert(0, row)
    log(f"[augment {recipe}: N={n} images, {views} views per call] {len(fns)} implementations "
        f"x {ROUNDS[mode]} interleaved rounds")
    before = cpu_times()
    failed = {}
    safe = {}
    for key, fn in fns.items():
        def guarded(fn=fn, key=key):
            if key in failed:
                return None
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - a peer failing mid-run is a result
                if key.startswith("jem_fast"):
                    raise
                failed[key] = f"{type(exc).__name__}: {exc}"[:160]
        safe[key] = guarded
    samples = interleaved(safe, ROUNDS[mode])
    contended = other_cpu_fraction(before, cpu_times())
    for row in rows:
        if row["status"] == "ok" and row["_key"] in failed:
            row.update(status="n/a", note=f"failed: {failed[row['_key']]}")
    finish(rows, samples, refs)
    for row in rows:
        row["other_cpu_fraction"] = contended
        if (contended or 0.0) > CONTENDED_FRACTION and row["status"] == "ok":
            row["note"] = (f"CONTENDED: other processes used {100 * contended:.0f}% of the CPUs "
                           "while timing " + row["note"]).strip()
    # one order for the tables: cases, jem_fast first in each
    order = {c: i for i, c in enumerate(["per_image", "batched", "per_image+decode",
                                         "batched+decode"])}
    rows.sort(key=lambda r: (order[r["case"]], r["impl"] != "jem_fast"))
    for row in rows:
        row.pop("_key", None)
    return rows


def run_stages(args, mode, images, pil_images):
    n = len(images)
    fns, rows, refs = {}, [], {}
    for stage in STAGES:
        params = stage_params(images, stage)
        fns[f"jem_fast {stage}"] = (lambda p=params: AF.augment(images, p, 224,
                                                                blur_kernel_size=23))
        fns[f"pillow {stage}"] = pil_stage_fn(pil_images, params, stage)
        label = f"stage {stage.replace('_', ' ')} 224 N={n}"
        for impl in ("jem_fast", "pillow"):
            row = base_row("stages", f"stage_{stage}", impl, n, n, label)
            row["_key"] = f"{impl} {stage}"
            refs[id(row)] = f"jem_fast {stage}"
            rows.append(row)
    log(f"[augment stages: {n} views of 224] {len(fns)} timings x {ROUNDS[mode] * 2} rounds")
    before = cpu_times()
    samples = interleaved(fns, ROUNDS[mode] * 2)
    contended = other_cpu_fraction(before, cpu_times())
    finish(rows, samples, refs)
    for row in rows:
        row["other_cpu_fraction"] = contended
        row.pop("_key", None)
    return rows


def stage_costs(rows):
    """{impl: {stage: ms per view}}: stage time minus the crop-only time of the same impl."""
    out = {}
    for impl in ("jem_fast", "pillow"):
        t = {r["case"][len("stage_"):]: r["fwd_bwd"]["median_ms"] / r["views"]
             for r in rows if r["impl"] == impl and r["status"] == "ok"}
        if "crop" not in t:
            continue
        out[impl] = {"crop_resize_normalize": round(t["crop"], 4)}
        for stage in STAGES[1:]:
            if stage in t:
                out[impl][stage] = round(t[stage] - t["crop"], 4)
        if "jitter_hue" in t and "jitter_no_hue" in t:
            out[impl]["hue"] = round(t["jitter_hue"] - t["jitter_no_hue"], 4)
    return out


def check_correctness(images):
    """The presets' views equal functional.augment under their own parameters, the per-image
    transform equals the batched collate, and the float64 reference agrees."""
    from jem_fast.reference.augment import augment_reference
    checks = []
    for recipe in RECIPES:
        preset = make_preset(recipe)
        views, params = preset(images[:2], seed=7, return_params=True)
        err = 0.0
        for v, cfg, p in zip(views, preset.views, params):
            ref = augment_reference(images[:2], p, cfg.size, interpolation=cfg.interpolation,
                                    blur_kernel_size=cfg.blur_kernel_size,
                                    blur_padding=cfg.blur_padding,
                                    solarize_threshold=cfg.solarize_threshold)
            err = max(err, (v.double() - ref.double()).abs().max().item())
        if not err <= 1e-4 / 0.225:
            raise SystemExit(f"ABORT: {recipe}: jem_fast differs from the float64 reference by "
                             f"{err:.3g}")
        transform = ViewTransform(make_preset(recipe), seed=3)
        per_image = [transform(im) for im in images[:2]]
        batched = MultiViewCollate(make_preset(recipe), seed=3)(images[:2])
        same = all(torch.equal(p[s], batched[s][i]) for i, p in enumerate(per_image)
                   for s in range(len(batched)))
        if not same:
            raise SystemExit(f"ABORT: {recipe}: the per-image transform differs from the "
                             "batched collate")
        checks.append({"recipe": recipe, "views": len(views),
                       "max_abs_err_vs_float64_reference": float(f"{err:.3g}"),
                       "per_image_equals_batched": same})
    return checks


def thread_scaling(recipe, images, threads, rounds):
    """Batched call at 1 thread and at `threads` threads, interleaved (information)."""
    collate = MultiViewCollate(make_preset(recipe))

    def at(k):
        def fn():
            torch.set_num_threads(k)
            try:
                collate(images)
            finally:
                torch.set_num_threads(1)
        return fn
    samples = interleaved({1: at(1), threads: at(threads)}, rounds)
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    return {"recipe": recipe, "images": len(images), "threads": threads,
            "ms_1_thread": round(med[1], 2), f"ms_{threads}_threads": round(med[threads], 2),
            "speedup": round(med[1] / med[threads], 2)}


CUDA_IMAGES = {"simclr": 256, "dino": 64}


def run_on_device(args, mode, device):
    """--device cuda: the batched call on images already on the GPU (after the transfer) against
    torchvision v2 and kornia per image on the same GPU tensors; CUDA-synchronized timings."""
    rows = []
    images_all = [im.to(device) for im in make_images(max(CUDA_IMAGES.values()), seed=0)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for recipe in RECIPES:
        n = CUDA_IMAGES[recipe] if device == "cuda" else 2
        images = images_all[:n]
        views = n * views_per_image(recipe)
        preset = make_preset(recipe)
        configs = preset.views
        fns, case_rows = {}, []

        def timed(fn):
            def call():
                fn()
                sync()
            return call
        fns["jem_fast"] = timed(lambda: preset(images))
        label = f"{recipe} batched {device} N={n}"
        for impl in ("jem_fast", "torchvision", "kornia"):
            row = base_row(recipe, f"batched_{device}", impl, n, views, label)
            row["_key"] = impl
            if impl != "jem_fast":
                ok, what = peer_status(impl, recipe, "full")
                if ok:
                    if impl == "torchvision":
                        slots = [torchvision_transform(cfg) for cfg in configs]
                        fns[impl] = timed(lambda slots=slots: [[t(im) for t in slots]
                                                              for im in images])
                    else:
                        groups = [(kornia_sequential(cfg).to(device), idx)
                                  for cfg, idx in slot_groups(configs)]

                        def kornia_all(groups=groups):
                            for img in images:
                                x = img.unsqueeze(0).float().div_(255)
                                for seq, idx in groups:
                                    seq(x.expand(len(idx), -1, -1, -1))
                        fns[impl] = timed(kornia_all)
                    row["version"] = what
                else:
                    row.update(status="skipped", note=what)
            case_rows.append(row)
        log(f"[augment {recipe} on {device}: N={n} images, {views} views] {len(fns)} "
            f"implementations x {ROUNDS[mode]} interleaved rounds")
        samples = interleaved(fns, ROUNDS[mode])
        finish(case_rows, samples, {id(r): "jem_fast" for r in case_rows})
        for row in case_rows:
            row.pop("_key", None)
        rows += case_rows
    return rows, []


def run(args):
    mode = benchmark_mode(args)
    if args.device != "cpu":
        return run_on_device(args, mode, args.device)
    missing = [name for name, module in (("torchvision", "torchvision.io"), ("Pillow", "PIL"))
               if not _importable(module)]
    if missing:  # the inputs themselves (JPEG bytes, PIL images) need them, not only the peers
        print(f"augment benchmark not run: it needs {' and '.join(missing)} to make its JPEG and "
              "PIL inputs (pip install -r requirements-peers.txt)")
        raise SystemExit(0)
    torch.set_num_threads(1)
    all_rows, checks = [], []
    images_all = make_images(max(NUM_IMAGES[mode].values()), seed=0)
    log("[augment] correctness checks (float64 reference, per-image = batched)")
    checks += check_correctness(images_all[:2])
    overhead = {}
    for recipe in RECIPES:
        n = NUM_IMAGES[mode][recipe]
        images = images_all[:n]
        data = make_inputs(images)
        all_rows += run_recipe(recipe, args, mode, data)
        ms, launches = per_image_overhead(recipe, images, 5 if mode == "quick" else 20)
        overhead[recipe] = {"ms_per_image": round(ms * 1e3, 4), "kernel_launches": launches}
        log(f"[augment {recipe}] per-image overhead {ms * 1e3:.3f} ms ({launches} launches)")
    stage_images = images_all[:STAGE_VIEWS[mode]] if len(images_all) >= STAGE_VIEWS[mode] \
        else (images_all * STAGE_VIEWS[mode])[:STAGE_VIEWS[mode]]
    stage_rows = run_stages(args, mode, stage_images, make_inputs(stage_images)["pil"])
    all_rows += stage_rows
    extra = {"per_image_overhead": overhead, "stage_ms_per_view": stage_costs(stage_rows)}
    if args.threads > 1:
        extra["thread_scaling"] = thread_scaling("simclr", images_all[:NUM_IMAGES[mode]["simclr"]],
                                                 args.threads, ROUNDS[mode])
        torch.set_num_threads(1)
    checks.append({"derived": extra})
    return all_rows, checks


def _importable(module):
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - e.g. a torchvision wheel built for another torch
        return False


def make_inputs(images):
    import numpy as np
    from PIL import Image
    hwc = [np.ascontiguousarray(im.permute(1, 2, 0).numpy()) for im in images]
    jpeg = encode_jpegs(images)
    return {"tensor": images, "hwc": hwc, "pil": [Image.fromarray(a) for a in hwc],
            "jpeg": jpeg, "jpeg_np": [np.frombuffer(b, dtype=np.uint8) for b in jpeg]}


# ------------------------------------------------------------------------------ targets

def find_ok(rows, case, impl, op):
    return next((r for r in rows if r["case"] == case and r["impl"] == impl and r["op"] == op
                 and r["status"] == "ok"), None)


def evaluate_targets(rows, args):
    items = []
    derived = next((c["derived"] for c in getattr(args, "_checks", []) if "derived" in c), None)
    wants = {("per_image", "lightly_simd"): 2.5, ("per_image", "dali"): 2.5,
             ("batched", "lightly_simd"): 4.0, ("batched", "dali"): 3.5}
    for recipe in RECIPES:
        for case in ("per_image", "batched", "per_image+decode", "batched+decode"):
            base = case.split("+")[0]
            for impl in ("lightly", "lightly_simd", "dali", "torchvision", "kornia"):
                r = find_ok(rows, case, impl, recipe)
                jf = find_ok(rows, case, "jem_fast", recipe)
                if r is None or jf is None:
                    continue
                want = wants.get((base, impl))
                ratio = r["fwd_bwd_vs_jem_fast"]
                items.append({
                    "target": (f"{recipe} {case}: {impl} / jem_fast time >= {want:g}" if want
                               else f"(info, no target) {recipe} {case}: {impl} / jem_fast"),
                    "measured": f"{ratio:.2f}x (jem_fast {jf['views_per_s']:.0f} views/s, "
                                f"{impl} {r['views_per_s']:.0f} views/s, 1 thread each)",
                    "met": (ratio >= want) if want else None})
    if derived:
        for recipe, o in derived["per_image_overhead"].items():
            items.append({"target": f"{recipe}: per-image call overhead < 0.3 ms per image",
                          "measured": f"{o['ms_per_image']:.3f} ms ({o['kernel_launches']} "
                                      "kernel launches per image)",
                          "met": o["ms_per_image"] < 0.3})
        st = derived["stage_ms_per_view"]
        jf = st.get("jem_fast", {})
        if "hue" in jf:
            items.append({"target": "hue <= 0.3 ms per 224 view",
                          "measured": f"{jf['hue']:.3f} ms", "met": jf["hue"] <= 0.3})
        if "blur" in jf and "blur" in st.get("pillow", {}):
            pil = st["pillow"]["blur"]
            name = "pillow-simd" if pillow_is_simd() else "Pillow (not -simd)"
            items.append({"target": f"exact blur <= {name}'s blur time per 224 view",
                          "measured": f"jem_fast {jf['blur']:.3f} ms, {name} {pil:.3f} ms",
                          "met": jf["blur"] <= pil if pillow_is_simd() else None})
        ts = derived.get("thread_scaling")
        if ts:
            many = ts[f"ms_{ts['threads']}_threads"]
            items.append({"target": f"(info) batched SimCLR call, 1 vs {ts['threads']} threads",
                          "measured": f"{ts['speedup']:.2f}x ({ts['ms_1_thread']:.1f} ms -> "
                                      f"{many:.1f} ms)",
                          "met": None})
    return targets_result("ImageNet-like ~500x375 images; SimCLR 2 x 224, DINO 2 x 224 + 8 x 96",
                          items, 1, target_threads=1)


def table(rows, device):
    out = []
    for r in rows:
        t = dict(timing_cells(r), case=r["label"], impl=r["impl"])
        if r["status"] == "ok":
            t["vps"] = f"{r['views_per_s']:.0f}"
        out.append(t)
    columns = [("case", "case"), ("impl", "impl")] + [
        c for c in TIMING_COLUMNS if c[0] not in ("fwd", "xf")] + [("vps", "views/s"),
                                                                    ("note", "note")]
    return format_table(out, columns)


def memory_probe(spec):
    return {"error": "memory is not measured in the augment family"}


def main(argv=None):
    from .common import run_benchmark_main
    args = benchmark_parser(MODULE, __doc__).parse_args(argv)
    original_run = run

    def run_and_keep(a):
        rows, checks = original_run(a)
        a._checks = checks
        return rows, checks
    return run_benchmark_main(
        args, name="augment",
        title="augmentation (per-image and batched, SimCLR and DINO, vs lightly, torchvision, "
              "kornia, DALI; 1 thread per side)",
        legend="'time ms' = one call producing all views of the N images (per-image: N calls); "
               "vs X = X's time / jem_fast's in the same interleaved run (>1: jem_fast faster); "
               "DALI runs its batched pipeline in both cases; stage rows: 224 views, PIL = "
               "lightly's ops",
        run=run_and_keep, evaluate_targets=evaluate_targets, table=table,
        memory_probe=memory_probe, methodology=METHODOLOGY, step="call")


if __name__ == "__main__":
    main()
