"""Covariance-type SSL losses (VICReg, Barlow Twins): jem_fast against the eager reference and
torch.compile(reference), in one run: time of forward+backward and of forward alone, and peak
extra memory of one forward+backward.

    python -m jem_fast.bench.bench_covariance [--device cpu|cuda] [--quick|--full] [--out DIR]
                                          [--threads N] [--dtype float32|bfloat16|float16]

Prints a table and writes covariance_<device>_<date>.json and .csv into --out
(default benchmarks/out). See METHODOLOGY below (also stored in the JSON) for what is measured.
"""
from __future__ import annotations

import sys

import torch  # before jem_fast: its extension links against libtorch

import jem_fast
from jem_fast.ops.barlow_twins import barlow_twins_gram_if
from jem_fast.ops.vicreg import resolve_route
from jem_fast.reference import barlow_twins_loss_reference, vicreg_loss_reference

from .common import (CONTENDED_FRACTION, DTYPES, MEMORY_METHODOLOGY,
                     QUICK_COMPILE_MAX_EAGER_S, TIMING, benchmark_dtypes,
                     benchmark_mode, benchmark_parser, dtype_name, find_ok_row,
                     peer_available,
                     format_table, log, measure_row, quick_compile_skip, rss_probe,
                     run_benchmark_main, targets_result, timing_cells, timing_columns)

MODULE = "jem_fast.bench.bench_covariance"

# ---------------------------------------------------------------------------------------------
# What is run
# ---------------------------------------------------------------------------------------------

# (N, D) per device and mode. (256, 8192) is the official VICReg/Barlow per-GPU setting.
SHAPES = {
    # quick: the official per-GPU shape and a tall one; (1024, 2048) is in full only, so that
    # every family's quick grid together stays under 3 minutes on 2 cores.
    ("cpu", "quick"): [(256, 8192), (4096, 256)],
    ("cpu", "full"): [(256, 8192), (1024, 2048), (4096, 256), (2048, 8192), (32768, 256),
                      (256, 32768)],  # the last: "does it fit", reference skipped (D x D)
    ("cuda", "quick"): [(256, 8192), (2048, 8192), (32768, 256)],
    ("cuda", "full"): [(256, 8192), (2048, 8192), (32768, 256), (256, 131072)],
}
LOSSES = ("vicreg", "barlow_twins")
IMPLS = ("jem_fast", "eager", "compile", "lightly")

# The reference materializes D x D matrices; it is skipped (with a note) when this estimate of
# its extra memory exceeds the limit: CPU 4 GB, CUDA half of the GPU's memory. The factor is
# the peak number of live D x D matrices, calibrated with the memory probe at N=256, D=8192,
# float32 (measured: VICReg 1305 MB = 5.1 D^2 x 4 B, Barlow Twins 1049 MB = 4.1 D^2 x 4 B).
REF_DXD_MATRICES = {"vicreg": 6, "barlow_twins": 5}
CPU_REF_LIMIT_BYTES = 4e9

# Correctness gate, run before timing: relative error of the loss and norm-wise relative error
# of both gradients against the reference on float64 copies of the inputs.
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6, torch.bfloat16: 1e-2,
             torch.float16: 1e-2}

HBM_CEILING_BYTES_PER_S = 4.3e12  # measured H200 HBM3e read bandwidth

METHODOLOGY = {
    "timing": "wall clock of whole calls: time.perf_counter on CPU, CUDA events (host waits "
              "for the end event) on CUDA; warm-up calls untimed; median and spread (p25-p75 "
              "and min-max) over the repeats",
    "fwd_bwd": "torch.autograd.grad(loss(z_a, z_b), (z_a, z_b)) -- forward, then gradients "
               "of both inputs (no .grad accumulation)",
    "fwd": "loss(z_a, z_b) with grad mode on (the forward half of a training step, autograd "
           "graph built and discarded)",
    "ratio": "impl median time / jem_fast median time, same run (>1: jem_fast is faster)",
    "other_cpu_fraction": "share of all CPUs' time used by other processes while the row was "
                          "timed (/proc/stat busy minus this process's CPU time); rows above "
                          f"{CONTENDED_FRACTION} are marked CONTENDED",
    "peak_extra_memory_cpu": "fresh child process (python -m jem_fast.bench.bench_covariance "
                             "--memory-probe ...): one forward+backward at 1/32 of the shape "
                             "first (code pages, thread pool), then inputs are created, free "
                             "heap memory is returned to the OS (malloc_trim(0)), the peak "
                             "RSS is reset to the current RSS (/proc/self/clear_refs) and read "
                             "as baseline, one forward+backward runs, delta = peak RSS - "
                             "baseline. Peak RSS = VmHWM (/proc/self/status), not ru_maxrss: "
                             "on Linux a fork+exec child's ru_maxrss starts at its parent's "
                             "peak. Includes the two gradient tensors (2 N D itemsize) and "
                             "whatever the allocator keeps resident",
    **MEMORY_METHODOLOGY,
    "compile": "torch.compile(reference, dynamic=False) after torch._dynamo.reset(), per loss "
               "and shape; compile_s = the first (compiling) forward+backward call, shorter "
               "when inductor's on-disk cache already holds the graph; in --quick on CPU, "
               "skipped where the eager forward+backward takes more than "
               f"{QUICK_COMPILE_MAX_EAGER_S} s",
    "flops": "6 * N * D * min(N, D) per forward+backward of one view pair (nominal, same for "
             "all implementations)",
    "hbm_fraction": "(2 * N * D * itemsize) / fwd+bwd time / 4.3e12 B/s (input read only)",
    "inputs": "z_a = 0.8 * randn(N, D), z_b = z_a + 0.3 * randn(N, D) (seeded, float32, then "
              "cast to the benchmark dtype), requires_grad=True",
    "losses": "VICRegLoss() / BarlowTwinsLoss() with their defaults (route='auto', "
              "check_finite=True); reference = jem_fast.reference.*_loss_reference with the "
              "same weights; lightly (when importable) = lightly.loss.VICRegLoss(25, 25, 1, "
              "eps=1e-4) / lightly.loss.BarlowTwinsLoss(5e-3), skipped with the reference "
              "where the reference is (the same D x D matrices)",
}


def vicreg_reference(z_a, z_b):
    return vicreg_loss_reference(z_a, z_b, lambda_param=25.0, mu_param=25.0, nu_param=1.0,
                                 eps=1e-4)


def barlow_twins_reference(z_a, z_b):
    return barlow_twins_loss_reference(z_a, z_b, lambda_param=5e-3)


REFERENCES = {"vicreg": vicreg_reference, "barlow_twins": barlow_twins_reference}


def make_impl(loss: str, impl: str):
    """The callable (z_a, z_b) -> scalar loss of one implementation."""
    if impl == "jem_fast":
        return jem_fast.VICRegLoss() if loss == "vicreg" else jem_fast.BarlowTwinsLoss()
    if impl == "eager":
        return REFERENCES[loss]
    if impl == "compile":
        torch._dynamo.reset()  # a fresh, static-shape compilation per loss and shape
        return torch.compile(REFERENCES[loss], dynamic=False)
    if impl == "lightly":
        from lightly.loss import BarlowTwinsLoss, VICRegLoss

        if loss == "vicreg":
            return VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0, eps=1e-4)
        return BarlowTwinsLoss(lambda_param=5e-3)
    raise ValueError(impl)


def jem_fast_route(loss: str, n: int, d: int) -> str:
    gram_if = barlow_twins_gram_if if loss == "barlow_twins" else (lambda n, d: n < d)
    return "gram" if resolve_route("auto", n, d, gram_if) else "covariance"


def make_inputs(n, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_a = 0.8 * torch.randn(n, d, generator=g)
    z_b = z_a + 0.3 * torch.randn(n, d, generator=g)
    return tuple(z.to(device=device, dtype=dtype).requires_grad_() for z in (z_a, z_b))


def fwd_bwd(fn, z_a, z_b):
    return torch.autograd.grad(fn(z_a, z_b), (z_a, z_b))


def reference_extra_bytes(loss, n, d, dtype):
    return REF_DXD_MATRICES[loss] * d * d * torch.finfo(dtype).bits // 8


# ---------------------------------------------------------------------------------------------
# Correctness gate
# ---------------------------------------------------------------------------------------------

def check_against_reference(loss, z_a, z_b):
    """Loss and both gradients of jem_fast vs the reference on float64 copies of the inputs.
    Returns the errors; exits with a clear message when one exceeds the tolerance."""
    tol = TOLERANCE[z_a.dtype]
    value = make_impl(loss, "jem_fast")(z_a, z_b)
    grads = torch.autograd.grad(value, (z_a, z_b))
    a64, b64 = (z.detach().double().requires_grad_() for z in (z_a, z_b))
    value64 = REFERENCES[loss](a64, b64)
    grads64 = torch.autograd.grad(value64, (a64, b64))
    errors = {"loss": (abs(value.double() - value64) / value64.abs().clamp_min(1e-12)).item()}
    for name, g, g64 in zip(("grad_z_a", "grad_z_b"), grads, grads64):
        errors[name] = ((g.double() - g64).norm() / g64.norm().clamp_min(1e-30)).item()
    bad = {k: v for k, v in errors.items() if not v <= tol}  # also catches NaN
    if bad:
        n, d = z_a.shape
        sys.exit(f"ABORT: jem_fast {loss} (N={n}, D={d}, {z_a.dtype}, {z_a.device}) does not "
                 f"match the float64 reference: relative errors {bad} exceed {tol:g} "
                 f"(jem_fast loss {value.item():.8g}, reference {value64.item():.8g}). "
                 "Not benchmarking a wrong result.")
    return {k: float(f"{v:.3g}") for k, v in errors.items()}


# ---------------------------------------------------------------------------------------------
# One measurement
# ---------------------------------------------------------------------------------------------

def measure(loss, impl, n, d, dtype, args, timing):
    """Times one implementation on one shape and measures its peak extra memory."""
    row = {"loss": loss, "label": case_name(loss, n, d), "n": n, "d": d,
           "dtype": dtype_name(dtype), "impl": impl, "status": "ok", "note": ""}

    def build():
        z_a, z_b = make_inputs(n, d, dtype, args.device)
        fn = make_impl(loss, impl)
        return (lambda: fwd_bwd(fn, z_a, z_b)), (lambda: fn(z_a, z_b))

    spec = {"loss": loss, "impl": impl, "n": n, "d": d, "dtype": row["dtype"],
            "threads": args.threads}
    return measure_row(row, build, device=args.device, timing=timing, probe_module=MODULE,
                       probe_spec=spec)


def memory_probe(spec: dict) -> dict:
    """Child-process side of the CPU memory measurement (see METHODOLOGY)."""
    torch.set_num_threads(spec["threads"])
    loss, impl, n, d = spec["loss"], spec["impl"], spec["n"], spec["d"]
    dtype = DTYPES[spec["dtype"]]
    fn = make_impl(loss, impl)
    if impl == "compile":
        z_a, z_b = make_inputs(n, d, dtype, "cpu")
        fwd_bwd(fn, z_a, z_b)  # compile + first call; the probe measures the second call
        return rss_probe(lambda: (z_a, z_b), lambda a, b: fwd_bwd(fn, a, b))
    # 1/32 of the shape keeps N < D / 4N < 3D, hence the same jem_fast route.
    small = (max(n // 32, 4), max(d // 32, 4))
    return rss_probe(lambda: make_inputs(n, d, dtype, "cpu"),
                     lambda a, b: fwd_bwd(fn, a, b),
                     warmup=lambda: fwd_bwd(fn, *make_inputs(*small, dtype, "cpu")))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def run(args):
    mode = benchmark_mode(args)
    timing = TIMING[(args.device, mode)]
    rows, checks = [], []
    for dtype in benchmark_dtypes(args):
        for loss in args.losses:
            for n, d in SHAPES[(args.device, mode)]:
                rows += bench_one(loss, n, d, dtype, args, timing, mode, checks)
    return rows, checks


def bench_one(loss, n, d, dtype, args, timing, mode, checks):
    shape = f"{loss} N={n} D={d} {dtype_name(dtype)}"
    ref_bytes = reference_extra_bytes(loss, n, d, dtype)
    if args.device == "cuda":
        ref_limit = 0.5 * torch.cuda.get_device_properties(0).total_memory
    else:
        ref_limit = CPU_REF_LIMIT_BYTES
    ref_skip = None
    if ref_bytes > ref_limit:
        ref_skip = (f"reference skipped: estimated {ref_bytes / 1e9:.1f} GB of D x D matrices "
                    f"> {ref_limit / 1e9:.1f} GB")

    log(f"[{shape}] correctness check")
    check_bytes = reference_extra_bytes(loss, n, d, torch.float64)
    if check_bytes > ref_limit:
        check = {"skipped": f"float64 reference too large (estimated {check_bytes / 1e9:.1f} "
                            "GB of D x D matrices); jem_fast result not checked"}
    else:
        check = check_against_reference(loss, *make_inputs(n, d, dtype, args.device))
    checks.append({"loss": loss, "n": n, "d": d, "dtype": dtype_name(dtype),
                   "errors": check})

    lightly_ok, lightly_why = peer_available("lightly", "lightly.loss", "VICRegLoss",
                                             "BarlowTwinsLoss")
    rows = []
    for impl in IMPLS:
        if impl != "jem_fast" and ref_skip:
            rows.append(skipped_row(loss, impl, n, d, dtype, ref_skip))
            continue
        if impl == "lightly" and not lightly_ok:
            rows.append(skipped_row(loss, impl, n, d, dtype, lightly_why))
            continue
        compile_skip = quick_compile_skip(rows, mode, args.device) if impl == "compile" else None
        if compile_skip:
            rows.append(skipped_row(loss, impl, n, d, dtype, compile_skip))
            continue
        log(f"[{shape}] {impl}")
        rows.append(measure(loss, impl, n, d, dtype, args, timing))

    jf = rows[0]
    jf["route"] = jem_fast_route(loss, n, d)
    itemsize = torch.finfo(dtype).bits // 8
    for row in rows:
        if row["status"] != "ok":
            continue
        row["fwd_bwd_vs_jem_fast"] = round(row["fwd_bwd"]["median_ms"]
                                           / jf["fwd_bwd"]["median_ms"], 2)
        row["fwd_vs_jem_fast"] = round(row["fwd"]["median_ms"] / jf["fwd"]["median_ms"], 2)
        seconds = row["fwd_bwd"]["median_ms"] / 1e3
        row["tflops_fwd_bwd"] = round(6 * n * d * min(n, d) / seconds / 1e12, 4)
        row["hbm_fraction_fwd_bwd"] = round(2 * n * d * itemsize / seconds
                                            / HBM_CEILING_BYTES_PER_S, 5)
    return rows


def skipped_row(loss, impl, n, d, dtype, note):
    return {"loss": loss, "label": case_name(loss, n, d), "n": n, "d": d,
            "dtype": dtype_name(dtype), "impl": impl, "status": "skipped", "note": note,
            "peak_extra_mb": "n/a"}


def case_name(loss, n, d):
    return f"{loss} N={n} D={d}"


def evaluate_targets(rows, args):
    """Project targets at N=256, D=8192, CPU float32, 2 threads."""
    if args.device != "cpu":
        return None

    def find(loss, impl):
        return find_ok_row(rows, loss, impl, 256, 8192, "float32")

    targets = []
    for loss, min_speedup in (("vicreg", 20.0), ("barlow_twins", 10.0)):
        jf, eager = find(loss, "jem_fast"), find(loss, "eager")
        if jf is None or eager is None:
            continue
        speedup = eager["fwd_bwd_vs_jem_fast"]
        targets.append({"target": f"{loss} fwd+bwd speedup vs eager >= {min_speedup:g}x",
                        "measured": f"{speedup:.1f}x", "met": speedup >= min_speedup})
        mem = jf["peak_extra_mb"]
        targets.append({"target": f"{loss} jem_fast peak extra memory < 64 MB",
                        "measured": f"{mem} MB",
                        "met": isinstance(mem, (int, float)) and mem < 64})
    return targets_result("N=256, D=8192, float32, CPU, 2 threads", targets, args.threads)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def table_rows(rows, device):
    out = []
    for r in rows:
        t = dict(timing_cells(r), loss=r["loss"], n=r["n"], d=r["d"], dtype=r["dtype"],
                 impl=r["impl"] + (f" ({r['route']})" if "route" in r else ""))
        if r["status"] == "ok":
            t.update(tflops=f"{r['tflops_fwd_bwd']:.2f}",
                     hbm=f"{100 * r['hbm_fraction_fwd_bwd']:.1f}%")
        out.append(t)
    columns = [("loss", "loss"), ("n", "N"), ("d", "D"), ("dtype", "dtype"), ("impl", "impl")]
    columns += timing_columns("fwd+bwd")
    if device == "cuda":
        columns += [("tflops", "TFLOP/s"), ("hbm", "HBM %")]
    return format_table(out, columns + [("note", "note")])


def parse_args(argv=None):
    p = benchmark_parser(MODULE, __doc__)
    p.add_argument("--losses", default=",".join(LOSSES),
                   help="comma-separated subset of %(default)s")
    args = p.parse_args(argv)
    args.losses = tuple(x.strip() for x in args.losses.split(",") if x.strip())
    unknown = set(args.losses) - set(LOSSES)
    if unknown:
        p.error(f"--losses: unknown {sorted(unknown)}; choose from {LOSSES}")
    return args


def main(argv=None):
    args = parse_args(argv)
    return run_benchmark_main(
        args, name="covariance", title="covariance",
        legend="VICReg and Barlow Twins losses on two views of N rows x D dims; fwd+bwd = "
               "the loss and the gradients of both views; eager = the reference formula (the "
               "tests' oracle), compile = torch.compile of it, lightly = lightly.loss",
        step="fwd+bwd",
        run=run, evaluate_targets=evaluate_targets, table=table_rows,
        memory_probe=memory_probe, methodology=METHODOLOGY,
        extra_payload={"losses": list(args.losses)})


if __name__ == "__main__":
    main()
