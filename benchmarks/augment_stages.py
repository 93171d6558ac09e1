"""Per-stage timer of the CPU augmentation kernel (jem_fast::augment_views), per view (224 x 224
by default, --size 96 for DINO's local crops).

Each stage calls the op directly (no Python argument checks, no parameter sampling) on a batch of
views of ~500 x 375 uint8 RGB images, with per-sample parameters that switch on only that stage:

  crop_resize     RandomResizedCrop(size, scale (0.08, 1)) + bicubic + flip + normalize
  jitter_no_hue   + ColorJitter brightness/contrast/saturation (0.8 each), random order, hue 0
  hue_only        + hue shift U(-0.2, 0.2) only
  blur_reflect    + Gaussian blur (23 taps at 224, SimCLR's 10 % of the size), sigma
                  U(0.1, 2.0), reflect padding (torchvision)
  blur_zeros      + the same blur with zero padding (the SimCLR TF code)
  simclr          the full SimCLR recipe (jem_fast.augment.SimCLRAugment parameters)

Stages run interleaved (one repetition of each in turn) so that load on a shared machine hits
them alike; the time per view is the median over repetitions of (call time / views per call).
"stage only" subtracts the crop_resize median. `--threads 1 2` repeats the whole table per torch
intra-op thread count (a batched call scales with these threads). `--clock cpu` times one-thread
runs by the CPU time of the calling thread (where the kernel runs when torch has one thread):
on a shared, overloaded machine that leaves out the time the process waited for a core, which
wall time cannot.

Run from the repository root whose build you want to time:
    python benchmarks/augment_stages.py [--views 32] [--reps 15] [--threads 1 2] [--size 224]
                                        [--clock cpu]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # time the build of this checkout, not another installed copy

import torch  # noqa: E402

from jem_fast.augment import functional as F  # noqa: E402  (registers the op)
from jem_fast.augment.presets import SimCLRAugment, simclr_blur_kernel_size  # noqa: E402



def natural_like_images(count: int, height: int, width: int, generator: torch.Generator):
    """Smooth colour fields plus fine noise, uint8 CHW: photo-like statistics (gradients, edges,
    saturated and gray regions) so every colour branch of the kernel is exercised."""
    coarse = torch.rand(count, 3, height // 16 + 1, width // 16 + 1, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic",
                                             align_corners=False)
    noise = torch.rand(count, 3, height, width, generator=generator) * 0.15
    return [((smooth[i] + noise[i]).clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
            for i in range(count)]


def random_resized_crops(sizes, generator: torch.Generator) -> torch.Tensor:
    crops = []
    for h, w in sizes:
        for _ in range(10):
            area = h * w * float(torch.empty(1).uniform_(0.08, 1.0, generator=generator))
            log_ratio = float(torch.empty(1).uniform_(-0.2877, 0.2877, generator=generator))
            ratio = torch.tensor(log_ratio).exp().item()
            cw, ch = round((area * ratio) ** 0.5), round((area / ratio) ** 0.5)
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
                crops.append([top, left, ch, cw])
                break
        else:
            crops.append([0, 0, h, w])
    return torch.tensor(crops, dtype=torch.int64)


def stage_params(stage: str, n: int, sizes, generator: torch.Generator):
    def uniform(lo, hi):
        return torch.empty(n).uniform_(lo, hi, generator=generator)

    p = {
        "crop": random_resized_crops(sizes, generator),
        "flip": torch.rand(n, generator=generator) < 0.5,
        "jitter": torch.zeros(n, dtype=torch.bool),
        "brightness": torch.ones(n), "contrast": torch.ones(n), "saturation": torch.ones(n),
        "hue": torch.zeros(n),
        "order": torch.stack([torch.randperm(4, generator=generator) for _ in range(n)]),
        "grayscale": torch.zeros(n, dtype=torch.bool),
        "blur_sigma": torch.zeros(n),
        "solarize": torch.zeros(n, dtype=torch.bool),
    }
    padding = "reflect"
    if stage == "jitter_no_hue":
        p["jitter"][:] = True
        for name in ("brightness", "contrast", "saturation"):
            p[name] = uniform(0.2, 1.8)
    elif stage == "hue_only":
        p["jitter"][:] = True
        p["hue"] = uniform(-0.2, 0.2)
    elif stage in ("blur_reflect", "blur_zeros"):
        p["blur_sigma"] = uniform(0.1, 2.0)
        padding = "reflect" if stage == "blur_reflect" else "zeros"
    return p, padding


def simclr_params(images, seed: int, size: int):
    recipe = SimCLRAugment(size)
    first_view = recipe.sample_params(images, seed=seed)[0]
    cfg = recipe.views[0]
    return ({k: v.contiguous() for k, v in first_view.items()}, cfg.blur_padding,
            cfg.blur_kernel_size)


def make_call(images, params, padding, size, blur_kernel):
    p = {name: params[name] for name in F._NAMES}
    mean, std = list(F.IMAGENET_MEAN), list(F.IMAGENET_STD)
    op = torch.ops.jem_fast.augment_views

    def call():
        return op(images, p["crop"], p["flip"], p["jitter"], p["brightness"], p["contrast"],
                  p["saturation"], p["hue"], p["order"], p["grayscale"], p["blur_sigma"],
                  p["solarize"], size, size, False, "bicubic", blur_kernel, padding, 0.5, mean,
                  std, torch.float32, False)
    return call


STAGES = ("crop_resize", "jitter_no_hue", "hue_only", "blur_reflect", "blur_zeros", "simclr")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=32, help="views per call (one per image)")
    parser.add_argument("--size", type=int, default=224, help="view side (96: DINO local crops)")
    parser.add_argument("--reps", type=int, default=15, help="timed repetitions per stage")
    parser.add_argument("--threads", type=int, nargs="+", default=[1],
                        help="torch intra-op thread counts to time")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or the calling thread's CPU time (1 thread only)")
    args = parser.parse_args(argv)
    if args.views < 1 or args.reps < 1:
        parser.error("--views and --reps must be >= 1")
    if args.clock == "cpu" and any(t != 1 for t in args.threads):
        parser.error("--clock cpu measures one thread: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

    generator = torch.Generator().manual_seed(args.seed)
    heights = [int(torch.randint(330, 420, (1,), generator=generator)) for _ in range(args.views)]
    widths = [int(torch.randint(450, 550, (1,), generator=generator)) for _ in range(args.views)]
    images = [natural_like_images(1, h, w, generator)[0] for h, w in zip(heights, widths)]
    sizes = list(zip(heights, widths))
    calls = {}
    for stage in args.stages:
        if stage == "simclr":  # the recipe's own blur kernel: 10 % of the size, odd
            params, padding, blur_kernel = simclr_params(images, args.seed, args.size)
        else:
            params, padding = stage_params(stage, args.views, sizes, generator)
            blur_kernel = simclr_blur_kernel_size(args.size)
        calls[stage] = make_call(images, params, padding, args.size, blur_kernel)

    print(f"augment_views CPU, {args.views} views of {args.size} x {args.size} from ~500 x 375 "
          f"uint8 images per "
          f"call, median of {args.reps} repetitions, {args.clock} clock, torch "
          f"{torch.__version__}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for call in calls.values():  # warm-up: scratch buffers, page faults, lazy init
            call()
        times = {stage: [] for stage in calls}
        busy = {stage: [0.0, 0.0] for stage in calls}  # process CPU time, wall time
        for _ in range(args.reps):
            for stage, call in calls.items():
                start, cpu, wall = clock(), time.process_time(), time.perf_counter()
                call()
                times[stage].append((clock() - start) * 1e3 / args.views)
                busy[stage][0] += time.process_time() - cpu
                busy[stage][1] += time.perf_counter() - wall
        base = statistics.median(times["crop_resize"]) if "crop_resize" in times else None
        print(f"\nthreads = {threads}")
        # cores busy = process CPU time / wall time: how many threads did work (on a loaded
        # machine the wall time, not this, suffers)
        print(f"{'stage':<15}{'ms/view':>9}{'min':>8}{'max':>8}{'stage only':>12}"
              f"{'cores busy':>12}")
        for stage, values in times.items():
            med = statistics.median(values)
            only = (f"{med - base:>12.3f}" if base is not None and stage != "crop_resize"
                    else f"{'':>12}")
            cores = busy[stage][0] / busy[stage][1]
            print(f"{stage:<15}{med:>9.3f}{min(values):>8.3f}{max(values):>8.3f}{only}"
                  f"{cores:>12.2f}")


if __name__ == "__main__":
    main()
