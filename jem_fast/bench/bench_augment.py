"""Fused augmentation benchmark: SimCLR-like two views per image.

N uint8 images of about 500 x 375 (sizes vary; a list, as a JPEG decoder returns them) -> 2 views
of 224 x 224 with per-sample parameters drawn with plain torch (RandomResizedCrop-like rectangle,
flip 0.5, jitter 0.8 with (0.8, 0.8, 0.8, 0.2) in a random order, grayscale 0.2, blur 0.5 with
sigma ~ U(0.1, 2) and k = 23 (reflect), bicubic). Implementations, same inputs, same run:
  jem_fast     jem_fast.augment.functional.augment on the 2N-view list (one call)
  torchvision  torchvision.transforms.v2.functional applied per view in float32 (when importable)
  eager        jem_fast.reference.augment in float32 (plain torch ops per view)
Reported: time per call (all 2N views), views/s, ratios; on CUDA the fraction of the HBM floor
(bytes of the source images read once per view + bytes of the views written, at 4.3 TB/s).

    python -m jem_fast.bench.bench_augment --quick            # CPU: N = 16
    python -m jem_fast.bench.bench_augment --device cuda      # N = 256
"""
from __future__ import annotations

import math

import torch

from jem_fast.augment import functional as AF
from jem_fast.reference.augment import augment_reference

from .common import (MEMORY_METHODOLOGY, TIMING, TIMING_COLUMNS, benchmark_mode,
                     benchmark_parser, dtype_name, format_table, log, measure_row, rss_probe,
                     run_benchmark_main, timing_cells)

MODULE = "jem_fast.bench.bench_augment"
HBM_CEILING_BYTES_PER_S = 4.3e12
SIZE = 224
BLUR_K = 23
IMPLS = ("jem_fast", "torchvision", "eager")
# CPU quick: 16 images (32 views), so that every family's quick grid together stays under 3
# minutes on 2 cores (the float32 reference is a per-view loop); full: 64.
NUM_IMAGES = {("cpu", "quick"): 16, ("cpu", "full"): 64, ("cuda", "quick"): 256,
              ("cuda", "full"): 256}

METHODOLOGY = {
    "inputs": "N uint8 images (3, H, W), H ~ U{333..400}, W ~ U{450..500}, smooth random "
              "content, seeded; a list of separate tensors; each image appears twice in the "
              "2N-view list (two views)",
    "params": "per view, plain torch: crop area ~ U(0.08, 1) x H W, log-ratio ~ U(log 3/4, "
              "log 4/3), one attempt then the whole image if it does not fit; flip p 0.5; "
              "jitter p 0.8 with brightness/contrast/saturation ~ U(0.2, 1.8), hue ~ "
              "U(-0.2, 0.2), order = randperm(4); grayscale p 0.2; blur p 0.5 with sigma ~ "
              "U(0.1, 2), k = 23 reflect; no solarize; bicubic; ImageNet normalize",
    "impls": "jem_fast: one functional.augment call for all views; torchvision: v2 functional "
             "per view on float32 (to_dtype, resized_crop antialias, horizontal_flip, adjust_* "
             "in order, rgb_to_grayscale, gaussian_blur, normalize) then torch.stack; eager: "
             "jem_fast.reference.augment.augment_reference(compute_dtype=float32)",
    "time": "one call = all 2N views; the 'fwd+bwd ms' column is that call (no backward "
            "exists); views/s = 2N / median",
    "bandwidth": "bytes = sum over views of its source image bytes + 2N * 3 * 224^2 * itemsize; "
                 "hbm_fraction = bytes / median / 4.3e12 (CUDA)",
    "peak_extra_memory_cpu": "fresh child process: warm-up call on 2 small images, then the "
                             "inputs, malloc_trim, peak-RSS reset, one call; includes the output",
    **MEMORY_METHODOLOGY,
}


def make_inputs(n, device, seed=0):
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


def memory_probe(spec):
    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    fn = impl_fn(spec["impl"], dtype)
    small_v, small_p = make_inputs(1, "cpu", seed=5)
    return rss_probe(lambda: make_inputs(spec["n"], "cpu"), fn, warmup=lambda: fn(small_v, small_p))


def run(args):
    mode = benchmark_mode(args)
    timing = TIMING[(args.device, mode)]
    n = NUM_IMAGES[(args.device, mode)]
    dtype = torch.float32 if args.dtype is None and args.device == "cpu" else (
        getattr(torch, args.dtype) if args.dtype else torch.bfloat16)
    log(f"[augment N={n} images, {2 * n} views, {dtype_name(dtype)}] correctness check")
    checks = [check_correctness(dtype, args.device)]
    rows = []
    for impl in IMPLS:
        row = {"case": "simclr_2x224", "images": n, "views": 2 * n, "dtype": dtype_name(dtype),
               "impl": impl, "status": "ok", "note": ""}
        if impl == "torchvision" and not torchvision_available():
            rows.append(dict(row, status="n/a", note="torchvision not importable",
                             peak_extra_mb="n/a"))
            continue

        def build(impl=impl):
            views, params = make_inputs(n, args.device)
            fn = impl_fn(impl, dtype)
            return (lambda: fn(views, params)), None

        log(f"[augment N={n}] {impl}")
        spec = {"impl": impl, "n": n, "dtype": dtype_name(dtype), "threads": args.threads}
        rows.append(measure_row(row, build, device=args.device, timing=timing,
                                probe_module=MODULE, probe_spec=spec))
    views, _ = make_inputs(n, "cpu")
    moved = traffic_bytes(views, torch.finfo(dtype).bits // 8)
    jf = rows[0]
    for row in rows:
        if row["status"] != "ok":
            continue
        med = row["fwd_bwd"]["median_ms"]
        row["fwd_bwd_vs_jem_fast"] = round(med / jf["fwd_bwd"]["median_ms"], 2)
        row["views_per_s"] = round(2 * n / (med / 1e3), 1)
        row["gb_per_s"] = round(moved / (med / 1e3) / 1e9, 2)
        row["hbm_fraction"] = round(moved / (med / 1e3) / HBM_CEILING_BYTES_PER_S, 4)
    return rows, checks


def evaluate_targets(rows, args):
    ok = {r["impl"]: r for r in rows if r["status"] == "ok"}
    items = []
    if "torchvision" in ok:
        ratio = ok["torchvision"]["fwd_bwd_vs_jem_fast"]
        want = 3 if args.device == "cpu" else 20
        items.append({"target": f">= {want}x torchvision v2 per sample ({args.device})",
                      "measured": f"{ratio:.2f}x", "met": ratio >= want})
    if args.device == "cuda" and "jem_fast" in ok:
        frac = ok["jem_fast"]["hbm_fraction"]
        items.append({"target": "within 4x of the HBM floor (>= 25%)",
                      "measured": f"{100 * frac:.1f}%", "met": frac >= 0.25})
    if not items:
        return None
    note = None if args.threads == 2 or args.device == "cuda" else (
        f"measured with {args.threads} threads, not 2")
    return {"shape": f"{rows[0]['views']} views of 224 from ~500x375", "note": note,
            "items": items}


def table(rows, device):
    out = []
    for r in rows:
        t = dict(timing_cells(r), case=r["case"], views=r["views"], dtype=r["dtype"],
                 impl=r["impl"])
        if r["status"] == "ok":
            t.update(vps=f"{r['views_per_s']:.0f}", gbs=f"{r['gb_per_s']:.2f}",
                     hbm=f"{100 * r['hbm_fraction']:.1f}%")
        out.append(t)
    columns = [("case", "case"), ("views", "views"), ("dtype", "dtype"), ("impl", "impl")] + [
        c for c in TIMING_COLUMNS if c[0] not in ("fwd", "xf")] + [("vps", "views/s")]
    if device == "cuda":
        columns += [("gbs", "GB/s"), ("hbm", "HBM %")]
    return format_table(out, columns + [("note", "note")])


def main(argv=None):
    args = benchmark_parser(MODULE, __doc__).parse_args(argv)
    return run_benchmark_main(
        args, name="augment", title="fused augmentation (SimCLR two views)",
        legend="'fwd+bwd ms' = one call producing all views (no backward); '/jf' = time / "
               "jem_fast time (>1: jem_fast faster); views/s = views / median time",
        run=run, evaluate_targets=evaluate_targets, table=table, memory_probe=memory_probe,
        methodology=METHODOLOGY)


if __name__ == "__main__":
    main()
