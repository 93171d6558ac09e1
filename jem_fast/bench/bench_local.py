"""BYOL / SimSiam ("local") pieces: NegativeCosineSimilarity forward+backward against the eager
reference (F.cosine_similarity, lightly's formula) and torch.compile of it, and the EMA teacher
update (update_ema) on a ResNet-50-sized parameter list against a per-parameter Python loop,
lightly's update_momentum formula (foreach mul_ + add_) and a bare torch._foreach_lerp_.

    python -m jem_fast.bench.bench_local [--device cpu|cuda] [--quick|--full] [--out DIR]
                                     [--threads N] [--dtype float32|bfloat16|float16]
                                     [--parts cosine,ema]

Prints a table and writes local_<device>_<date>.json and .csv into --out (default
benchmarks/out). See METHODOLOGY below (also stored in the JSON) for what is measured.
"""
from __future__ import annotations

import sys

import torch  # before jem_fast: its extension links against libtorch

import jem_fast
from jem_fast.nn import update_ema
from jem_fast.reference import negative_cosine_reference

from .common import (CONTENDED_FRACTION, DTYPES, MEMORY_METHODOLOGY, QUICK_COMPILE_MAX_EAGER_S,
                     TIMING, benchmark_dtypes, benchmark_mode, benchmark_parser,
                     dtype_name, format_table, log, measure_row, quick_compile_skip, rss_probe,
                     run_benchmark_main, timing_cells, timing_columns)

MODULE = "jem_fast.bench.bench_local"
PARTS = ("cosine", "ema")

# NegativeCosineSimilarity (N, D): BYOL/SimSiam predictor outputs are (batch, 256) (BYOL) or
# (batch, 2048) (SimSiam); (256, 4096) is the long-row case (one CUDA block per row).
COSINE_SHAPES = {
    ("cpu", "quick"): [(4096, 256)],  # (256, 4096) in full: keeps all quick grids < 3 min
    ("cpu", "full"): [(4096, 256), (256, 4096), (4096, 2048), (65536, 256)],
    ("cuda", "quick"): [(4096, 256), (256, 4096), (65536, 256)],
    ("cuda", "full"): [(4096, 256), (256, 4096), (65536, 256), (8192, 2048), (262144, 256)],
}
COSINE_IMPLS = ("jem_fast", "eager", "compile")
EMA_IMPLS = ("jem_fast", "loop", "lightly", "foreach_lerp")
MOMENTUM = 0.996

HBM_CEILING_BYTES_PER_S = 4.3e12  # measured H200 HBM3e bandwidth (a device-to-device copy)

# Correctness gate: relative error of the loss, norm-wise relative error of the gradients
# against float64 (low precision: at most max(this, 2 x the reference's own error in that dtype)).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}

METHODOLOGY = {
    "timing": "wall clock of whole calls: time.perf_counter on CPU, CUDA events (host waits "
              "for the end event) on CUDA; warm-up calls untimed; median and spread (p25-p75 "
              "and min-max) over the repeats",
    "cosine_fwd_bwd": "torch.autograd.grad(loss(x0, x1), (x0, x1)) with loss = "
                      "jem_fast.NegativeCosineSimilarity() or negative_cosine_reference "
                      "(-F.cosine_similarity(x0, x1).mean(), eager or torch.compile(dynamic="
                      "False)); both inputs get a gradient (the pessimistic case: BYOL/SimSiam "
                      "detach the target, which halves jem_fast's backward writes)",
    "cosine_fwd": "loss(x0, x1) with grad mode on",
    "cosine_inputs": "x0 = randn(N, D), x1 = x0 + 0.5 randn(N, D), seeded, float32, then cast",
    "ema_params": "the 161 parameter shapes of torchvision's ResNet-50 (25.56 M parameters: "
                  "convolutions, BatchNorm weights/biases, fc), built from plain tensors; "
                  "teacher and student lists, randn, in the benchmark dtype",
    "ema_impls": f"one update with momentum {MOMENTUM}. jem_fast: jem_fast.nn.update_ema(teacher,"
                 " student, m) on the lists (validation, grouping, one torch._foreach_lerp_ per "
                 "device/dtype group); loop: for t, s: t.mul_(m).add_(s, alpha=1 - m) in Python "
                 "(the per-parameter loop of many codebases); lightly: lightly.models.utils."
                 "update_momentum's body (torch._foreach_mul_ then torch._foreach_add_, two "
                 "passes over the teacher); foreach_lerp: a bare torch._foreach_lerp_ call (the "
                 "floor update_ema adds its checks to)",
    "bandwidth": "cosine fwd+bwd moves >= 6 N D itemsize bytes (forward reads x0, x1; backward "
                 "reads both and writes both gradients); ema moves 3 P itemsize (read teacher "
                 "and student, write teacher); GB/s = those bytes / median time, and on CUDA "
                 "the fraction of the HBM ceiling",
    "ratio": "impl median time / jem_fast median time, same run (>1: jem_fast is faster)",
    "other_cpu_fraction": "share of all CPUs' time used by other processes while the row was "
                          "timed; rows above "
                          f"{CONTENDED_FRACTION} are marked CONTENDED",
    "peak_extra_memory_cpu": "fresh child process (python -m jem_fast.bench.bench_local "
                             "--memory-probe ...): a warm-up call at a small shape, then inputs "
                             "are created, malloc_trim(0), peak RSS reset (/proc/self/"
                             "clear_refs) and read as baseline, one call, delta = peak RSS - "
                             "baseline (VmHWM). Includes the gradient tensors",
    "compile": "torch.compile(reference, dynamic=False) after torch._dynamo.reset(); compile_s "
               "= the first (compiling) forward+backward call; skipped in --quick on CPU "
               f"where the eager forward+backward takes more than {QUICK_COMPILE_MAX_EAGER_S} s",
    **MEMORY_METHODOLOGY,
}


# ---------------------------------------------------------------------------------------------
# Inputs and implementations
# ---------------------------------------------------------------------------------------------

def resnet50_shapes():
    """Parameter shapes of torchvision's resnet50(), in registration order (no torchvision)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, in_ch, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:
                shapes += [(4 * width, in_ch, 1, 1), (4 * width,), (4 * width,)]
            in_ch = 4 * width
    return shapes + [(1000, 2048), (1000,)]


def ema_inputs(dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = resnet50_shapes()
    teacher = [torch.randn(s, generator=g).to(device=device, dtype=dtype) for s in shapes]
    student = [torch.randn(s, generator=g).to(device=device, dtype=dtype) for s in shapes]
    return teacher, student


def ema_loop(teacher, student, m=MOMENTUM):
    with torch.no_grad():
        for t, s in zip(teacher, student):
            t.mul_(m).add_(s, alpha=1 - m)


def ema_lightly(teacher, student, m=MOMENTUM):
    with torch.no_grad():
        torch._foreach_mul_(teacher, m)
        torch._foreach_add_(teacher, student, alpha=1.0 - m)


def ema_foreach_lerp(teacher, student, m=MOMENTUM):
    with torch.no_grad():
        torch._foreach_lerp_(teacher, student, 1.0 - m)


EMA_FNS = {"jem_fast": lambda t, s: update_ema(t, s, MOMENTUM), "loop": ema_loop,
           "lightly": ema_lightly, "foreach_lerp": ema_foreach_lerp}


def cosine_inputs(n, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, generator=g)
    x1 = x0 + 0.5 * torch.randn(n, d, generator=g)
    return (x0.to(device=device, dtype=dtype).requires_grad_(),
            x1.to(device=device, dtype=dtype).requires_grad_())


def cosine_impl(impl):
    if impl == "jem_fast":
        return jem_fast.NegativeCosineSimilarity()
    if impl == "eager":
        return negative_cosine_reference
    torch._dynamo.reset()  # a fresh, static-shape compilation per shape
    return torch.compile(negative_cosine_reference, dynamic=False)


def cosine_fwd_bwd(fn, x0, x1):
    return torch.autograd.grad(fn(x0, x1), (x0, x1))


# ---------------------------------------------------------------------------------------------
# Correctness gates
# ---------------------------------------------------------------------------------------------

def _rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_cosine(n, d, dtype, device):
    x0, x1 = cosine_inputs(n, d, dtype, device)
    value = jem_fast.NegativeCosineSimilarity()(x0, x1)
    grads = torch.autograd.grad(value, (x0, x1))

    def reference(dt):
        a, b = (x.detach().to(dt).requires_grad_() for x in (x0, x1))
        v = negative_cosine_reference(a, b)
        return (v,) + torch.autograd.grad(v, (a, b))

    exact = reference(torch.float64)
    errors = {k: _rel(x, y) for k, x, y in zip(("loss", "grad_x0", "grad_x1"),
                                                (value,) + grads, exact)}
    tolerance = {k: TOLERANCE[dtype] for k in errors}
    if dtype != torch.float32:
        ref_errors = {k: _rel(x, y) for k, x, y in zip(errors, reference(dtype), exact)}
        tolerance = {k: max(tolerance[k], 2 * ref_errors[k]) for k in errors}
    bad = {k: v for k, v in errors.items() if not v <= tolerance[k]}
    if bad:
        sys.exit(f"ABORT: jem_fast NegativeCosineSimilarity (N={n}, D={d}, {dtype}) does not "
                 f"match the float64 reference: {bad} > {tolerance}. Not benchmarking a wrong "
                 "result.")
    return {k: float(f"{v:.3g}") for k, v in errors.items()}


def check_ema(dtype, device):
    teacher, student = ema_inputs(dtype, device)
    want = [MOMENTUM * t.double() + (1 - MOMENTUM) * s.double() for t, s in zip(teacher, student)]
    update_ema(teacher, student, MOMENTUM)
    err = max(((t.double() - w).abs().max() / w.abs().max()).item() for t, w in zip(teacher, want))
    limit = 4 * torch.finfo(dtype).eps
    if not err <= limit:
        sys.exit(f"ABORT: update_ema differs from the formula by {err:.3g} (> {limit:.3g})")
    return {"max_rel_error_vs_float64_formula": float(f"{err:.3g}")}


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

def base_row(part, n, d, dtype, impl):
    """n, d: rows and dim (cosine); tensors and parameters of the list (ema)."""
    label = (f"ema ResNet-50 params ({d / 1e6:.1f}M)" if part == "ema"
             else f"{part} N={n} D={d}")
    return {"part": part, "label": label, "n": n, "d": d, "dtype": dtype_name(dtype),
            "impl": impl, "step": "update" if part == "ema" else "fwd+bwd", "status": "ok",
            "note": ""}


def measure_cosine(n, d, dtype, impl, args, timing):
    def build():
        x0, x1 = cosine_inputs(n, d, dtype, args.device)
        fn = cosine_impl(impl)
        return (lambda: cosine_fwd_bwd(fn, x0, x1)), (lambda: fn(x0, x1))

    spec = {"part": "cosine", "impl": impl, "n": n, "d": d, "dtype": dtype_name(dtype),
            "threads": args.threads}
    return measure_row(base_row("cosine", n, d, dtype, impl), build, device=args.device,
                       timing=timing, probe_module=MODULE, probe_spec=spec)


def measure_ema(dtype, impl, args, timing):
    params = sum(torch.Size(s).numel() for s in resnet50_shapes())

    def build():
        teacher, student = ema_inputs(dtype, args.device)
        fn = EMA_FNS[impl]
        return (lambda: fn(teacher, student)), None

    spec = {"part": "ema", "impl": impl, "dtype": dtype_name(dtype), "threads": args.threads}
    row = base_row("ema", len(resnet50_shapes()), params, dtype, impl)
    return measure_row(row, build, device=args.device, timing=timing, probe_module=MODULE,
                       probe_spec=spec)


def memory_probe(spec: dict) -> dict:
    """Child-process side of the CPU memory measurement (see METHODOLOGY)."""
    torch.set_num_threads(spec["threads"])
    dtype = DTYPES[spec["dtype"]]
    if spec["part"] == "ema":
        fn = EMA_FNS[spec["impl"]]
        small_t, small_s = [torch.randn(8, dtype=dtype)], [torch.randn(8, dtype=dtype)]
        return rss_probe(lambda: ema_inputs(dtype, "cpu"), fn, warmup=lambda: fn(small_t, small_s))
    n, d = spec["n"], spec["d"]
    fn = cosine_impl(spec["impl"])
    if spec["impl"] == "compile":
        x0, x1 = cosine_inputs(n, d, dtype, "cpu")
        cosine_fwd_bwd(fn, x0, x1)  # compile + first call; the probe measures the second call
        return rss_probe(lambda: (x0, x1), lambda a, b: cosine_fwd_bwd(fn, a, b))
    return rss_probe(lambda: cosine_inputs(n, d, dtype, "cpu"),
                     lambda a, b: cosine_fwd_bwd(fn, a, b),
                     warmup=lambda: cosine_fwd_bwd(fn, *cosine_inputs(8, 8, dtype, "cpu")))


def finish(rows, bytes_moved):
    jf = rows[0]
    for row in rows:
        if row["status"] != "ok":
            continue
        seconds = row["fwd_bwd"]["median_ms"] / 1e3
        row["fwd_bwd_vs_jem_fast"] = round(row["fwd_bwd"]["median_ms"]
                                           / jf["fwd_bwd"]["median_ms"], 2)
        if "fwd" in row and "fwd" in jf:
            row["fwd_vs_jem_fast"] = round(row["fwd"]["median_ms"] / jf["fwd"]["median_ms"], 2)
        row["gb_per_s"] = round(bytes_moved / seconds / 1e9, 2)
        row["hbm_fraction"] = round(bytes_moved / seconds / HBM_CEILING_BYTES_PER_S, 4)
    return rows


def run(args):
    mode = benchmark_mode(args)
    timing = TIMING[(args.device, mode)]
    rows, checks = [], []
    for dtype in benchmark_dtypes(args):
        itemsize = torch.finfo(dtype).bits // 8
        if "cosine" in args.parts:
            for n, d in COSINE_SHAPES[(args.device, mode)]:
                log(f"[cosine N={n} D={d} {dtype_name(dtype)}] correctness check")
                checks.append({"part": "cosine", "n": n, "d": d, "dtype": dtype_name(dtype),
                               "errors": check_cosine(n, d, dtype, args.device)})
                part_rows = []
                for impl in COSINE_IMPLS:
                    skip = (quick_compile_skip(part_rows, mode, args.device)
                            if impl == "compile" else None)
                    if skip:
                        part_rows.append(dict(base_row("cosine", n, d, dtype, impl),
                                              status="skipped", note=skip, peak_extra_mb="n/a"))
                        continue
                    log(f"[cosine N={n} D={d} {dtype_name(dtype)}] {impl}")
                    part_rows.append(measure_cosine(n, d, dtype, impl, args, timing))
                rows += finish(part_rows, 6 * n * d * itemsize)
        if "ema" in args.parts:
            log(f"[ema ResNet-50 {dtype_name(dtype)}] correctness check")
            checks.append({"part": "ema", "dtype": dtype_name(dtype),
                           "errors": check_ema(dtype, args.device)})
            part_rows = []
            for impl in EMA_IMPLS:
                log(f"[ema ResNet-50 {dtype_name(dtype)}] {impl}")
                part_rows.append(measure_ema(dtype, impl, args, timing))
            params = sum(torch.Size(s).numel() for s in resnet50_shapes())
            rows += finish(part_rows, 3 * params * itemsize)
    return rows, checks


def evaluate_targets(rows, args):
    return None  # no project targets for these parts yet: the ratios are the result


def table_rows(rows, device):
    out = []
    for r in rows:
        t = dict(timing_cells(r), part=r["part"], n=r["n"], d=r["d"], dtype=r["dtype"],
                 impl=r["impl"])
        if r["status"] == "ok":
            t.update(gbs=f"{r['gb_per_s']:.1f}", hbm=f"{100 * r['hbm_fraction']:.1f}%")
        out.append(t)
    columns = [("part", "part"), ("n", "N | tensors"), ("d", "D | params"), ("dtype", "dtype"),
               ("impl", "impl")] + timing_columns("fwd+bwd or update") + [("gbs", "GB/s")]
    if device == "cuda":
        columns += [("hbm", "HBM %")]
    return format_table(out, columns + [("note", "note")])


def parse_args(argv=None):
    p = benchmark_parser(MODULE, __doc__)
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of %(default)s")
    args = p.parse_args(argv)
    args.parts = tuple(x.strip() for x in args.parts.split(",") if x.strip())
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"--parts: unknown {sorted(unknown)}; choose from {PARTS}")
    return args


def main(argv=None):
    args = parse_args(argv)
    return run_benchmark_main(
        args, name="local", title="BYOL/SimSiam (cosine loss, EMA teacher)",
        legend="cosine: NegativeCosineSimilarity on N rows x D dims, fwd+bwd (gradients of "
               "both inputs), against the eager formula and torch.compile of it; ema: one "
               "teacher update over ResNet-50's 161 parameter tensors, against a per-parameter "
               "Python loop, lightly's update_momentum formula and a bare "
               "torch._foreach_lerp_",
        run=run, evaluate_targets=evaluate_targets, table=table_rows,
        memory_probe=memory_probe, methodology=METHODOLOGY,
        extra_payload={"parts": list(args.parts)})


if __name__ == "__main__":
    main()
