"""Covariance-type SSL losses (VICReg, Barlow Twins): jem_fast against the eager reference and
torch.compile(reference), in one run: time of forward+backward and of forward alone, and peak
extra memory of one forward+backward.

    python -m benchmarks.bench_covariance [--device cpu|cuda] [--quick|--full] [--out DIR]
                                          [--threads N] [--dtype float32|bfloat16|float16]

Prints a table and writes covariance_<device>_<date>.json and .csv into --out
(default benchmarks/out). See METHODOLOGY below (also stored in the JSON) for what is measured.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import time

import torch  # before jem_fast: its extension links against libtorch

import jem_fast
from jem_fast.ops.barlow_twins import barlow_twins_gram_if
from jem_fast.ops.vicreg import resolve_route
from jem_fast.reference import barlow_twins_loss_reference, vicreg_loss_reference

from .common import (cpu_busy_fraction, cpu_times, cuda_peak_extra_mb, format_table,
                     machine_info, other_cpu_fraction, peak_rss_delta_mb, rss_probe, summarize,
                     time_cpu, time_cuda, write_results)

# ---------------------------------------------------------------------------------------------
# What is run
# ---------------------------------------------------------------------------------------------

# (N, D) per device and mode. (256, 8192) is the official VICReg/Barlow per-GPU setting.
SHAPES = {
    ("cpu", "quick"): [(256, 8192), (1024, 2048), (4096, 256)],
    ("cpu", "full"): [(256, 8192), (1024, 2048), (4096, 256), (2048, 8192), (32768, 256),
                      (256, 32768)],  # the last: "does it fit", reference skipped (D x D)
    ("cuda", "quick"): [(256, 8192), (2048, 8192), (32768, 256)],
    ("cuda", "full"): [(256, 8192), (2048, 8192), (32768, 256), (256, 131072)],
}
LOSSES = ("vicreg", "barlow_twins")
IMPLS = ("jem_fast", "eager", "compile")

# Repeats per measurement: `repeats` at most, `min_repeats` at least, and stop adding repeats
# once the timed calls of one measurement used `budget_s` seconds.
TIMING = {
    ("cpu", "quick"): dict(warmup=1, repeats=15, min_repeats=3, budget_s=2.0),
    ("cpu", "full"): dict(warmup=1, repeats=50, min_repeats=3, budget_s=10.0),
    ("cuda", "quick"): dict(warmup=5, repeats=50, min_repeats=10, budget_s=2.0),
    ("cuda", "full"): dict(warmup=10, repeats=200, min_repeats=20, budget_s=10.0),
}
# In --quick on CPU, torch.compile(reference) is only run where the eager reference's
# forward+backward takes at most this long, to keep --quick under ~3 minutes on 2 cores.
QUICK_COMPILE_MAX_EAGER_S = 3.0

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

# A timing is flagged CONTENDED when other processes used more than this fraction of all CPUs
# while it ran (from /proc/stat; on a 2-core machine one busy neighbour is 0.5).
CONTENDED_FRACTION = 0.1

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
    "peak_extra_memory_cpu": "fresh child process (python -m benchmarks.bench_covariance "
                             "--memory-probe ...): one forward+backward at 1/32 of the shape "
                             "first (code pages, thread pool), then inputs are created, free "
                             "heap memory is returned to the OS (malloc_trim(0)), the peak "
                             "RSS is reset to the current RSS (/proc/self/clear_refs) and read "
                             "as baseline, one forward+backward runs, delta = peak RSS - "
                             "baseline. Peak RSS = VmHWM (/proc/self/status), not ru_maxrss: "
                             "on Linux a fork+exec child's ru_maxrss starts at its parent's "
                             "peak. Includes the two gradient tensors (2 N D itemsize) and "
                             "whatever the allocator keeps resident",
    "peak_extra_memory_cpu_compile": "compile needs its first call at the full shape, so the "
                                     "probe compiles and runs once, resets the peak RSS, and "
                                     "measures the second call (memory the allocator kept from "
                                     "the first call can make this an underestimate)",
    "peak_extra_memory_cuda": "torch.cuda.max_memory_allocated() - memory_allocated() before "
                              "one forward+backward (after reset_peak_memory_stats)",
    "memory_unit": "MB in this benchmark = MiB = 2**20 bytes",
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
              "same weights",
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    row = {"loss": loss, "n": n, "d": d, "dtype": str(dtype).replace("torch.", ""),
           "impl": impl, "status": "ok", "note": ""}
    device = args.device
    z_a, z_b = make_inputs(n, d, dtype, device)
    timer = time_cuda if device == "cuda" else time_cpu
    fn = make_impl(loss, impl)
    if impl == "compile":
        t0 = time.perf_counter()
        try:
            fwd_bwd(fn, z_a, z_b)  # compiles forward and backward graphs
            if device == "cuda":
                torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - any compile failure is a result, "n/a"
            row.update(status="n/a", note=f"compile failed: {type(exc).__name__}: "
                                          f"{str(exc).splitlines()[0][:120]}")
            return row
        row["compile_s"] = round(time.perf_counter() - t0, 2)
    before = cpu_times()
    try:
        row["fwd_bwd"] = summarize(timer(lambda: fwd_bwd(fn, z_a, z_b), **timing))
        row["fwd"] = summarize(timer(lambda: fn(z_a, z_b), **timing))
        row["other_cpu_fraction"] = other_cpu_fraction(before, cpu_times())
        if (row["other_cpu_fraction"] or 0.0) > CONTENDED_FRACTION:
            row["note"] = (f"CONTENDED: other processes used {100 * row['other_cpu_fraction']:.0f}"
                           "% of the CPUs while timing")
        if device == "cuda":
            row["peak_extra_mb"] = round(cuda_peak_extra_mb(lambda: fwd_bwd(fn, z_a, z_b)), 2)
    except (RuntimeError, MemoryError) as exc:  # e.g. out of memory: a result for the baselines
        if impl == "jem_fast":
            raise
        row.update(status="n/a", note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
                   peak_extra_mb="n/a")
        row.pop("fwd_bwd", None)
        return row
    if device == "cpu":
        del fn, z_a, z_b
        gc.collect()
        spec = {"loss": loss, "impl": impl, "n": n, "d": d, "dtype": row["dtype"],
                "threads": args.threads}
        probe = peak_rss_delta_mb("benchmarks.bench_covariance", spec)
        row["memory_probe"] = probe
        if "error" in probe:
            row["peak_extra_mb"] = "n/a"
            row["note"] = (row["note"] + " " + probe["error"]).strip()
        else:
            row["peak_extra_mb"] = probe["delta_mb"]
    return row


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
    mode = "full" if args.full else "quick"
    timing = TIMING[(args.device, mode)]
    dtypes = [DTYPES[args.dtype]] if args.dtype else (
        [torch.bfloat16, torch.float32] if args.device == "cuda" else [torch.float32])
    rows, checks = [], []
    for dtype in dtypes:
        for loss in LOSSES:
            for n, d in SHAPES[(args.device, mode)]:
                rows += bench_one(loss, n, d, dtype, args, timing, mode, checks)
    return rows, checks


def bench_one(loss, n, d, dtype, args, timing, mode, checks):
    shape = f"{loss} N={n} D={d} {str(dtype).replace('torch.', '')}"
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
    checks.append({"loss": loss, "n": n, "d": d, "dtype": str(dtype).replace("torch.", ""),
                   "errors": check})

    rows = []
    for impl in IMPLS:
        if impl != "jem_fast" and ref_skip:
            rows.append(skipped_row(loss, impl, n, d, dtype, ref_skip))
            continue
        if impl == "compile" and mode == "quick" and args.device == "cpu":
            eager = next(r for r in rows if r["impl"] == "eager")
            eager_s = eager["fwd_bwd"]["median_ms"] / 1e3 if "fwd_bwd" in eager else 0.0
            if eager_s > QUICK_COMPILE_MAX_EAGER_S:
                rows.append(skipped_row(loss, impl, n, d, dtype,
                                        f"skipped in --quick (eager fwd+bwd {eager_s:.1f} s "
                                        f"> {QUICK_COMPILE_MAX_EAGER_S} s); run --full"))
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
    return {"loss": loss, "n": n, "d": d, "dtype": str(dtype).replace("torch.", ""),
            "impl": impl, "status": "skipped", "note": note, "peak_extra_mb": "n/a"}


def evaluate_targets(rows, args):
    """Project targets at N=256, D=8192, CPU float32, 2 threads."""
    if args.device != "cpu":
        return None

    def find(loss, impl):
        return next((r for r in rows if (r["loss"], r["impl"], r["n"], r["d"], r["dtype"])
                     == (loss, impl, 256, 8192, "float32") and r["status"] == "ok"), None)

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
    if not targets:
        return None
    note = None if args.threads == 2 else f"measured with {args.threads} threads, not 2"
    return {"shape": "N=256, D=8192, float32, CPU, 2 threads", "note": note, "items": targets}


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def table_rows(rows, device):
    out = []
    for r in rows:
        t = {"loss": r["loss"], "n": r["n"], "d": r["d"], "dtype": r["dtype"],
             "impl": r["impl"] + (f" ({r['route']})" if "route" in r else ""),
             "peak": r["peak_extra_mb"], "note": r["note"]}
        if r["status"] == "ok":
            fb, f = r["fwd_bwd"], r["fwd"]
            t.update(fb=f"{fb['median_ms']:.2f}",
                     iqr=f"{fb['p25_ms']:.2f}-{fb['p75_ms']:.2f}",
                     minmax=f"{fb['min_ms']:.2f}-{fb['max_ms']:.2f}", reps=fb["repeats"],
                     fwd=f"{f['median_ms']:.2f}",
                     xfb=f"{r['fwd_bwd_vs_jem_fast']:.2f}x", xf=f"{r['fwd_vs_jem_fast']:.2f}x",
                     tflops=f"{r['tflops_fwd_bwd']:.2f}",
                     hbm=f"{100 * r['hbm_fraction_fwd_bwd']:.1f}%")
            if "compile_s" in r:
                t["note"] = (f"compile {r['compile_s']} s " + t["note"]).strip()
        else:
            t.update(fb=r["status"], fwd=r["status"])
        out.append(t)
    columns = [("loss", "loss"), ("n", "N"), ("d", "D"), ("dtype", "dtype"), ("impl", "impl"),
               ("fb", "fwd+bwd ms"), ("iqr", "IQR ms"), ("minmax", "min-max ms"),
               ("reps", "n"), ("fwd", "fwd ms"), ("xfb", "f+b /jf"), ("xf", "fwd /jf"),
               ("peak", "peak extra MB")]
    if device == "cuda":
        columns += [("tflops", "TFLOP/s"), ("hbm", "HBM %")]
    return format_table(out, columns + [("note", "note")])


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_covariance",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small grid, few repeats (default)")
    size.add_argument("--full", action="store_true", help="full grid, more repeats, compile "
                                                          "everywhere")
    p.add_argument("--out", default="benchmarks/out", help="output folder (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                   help="default: float32 on CPU, bfloat16 and float32 on CUDA")
    p.add_argument("--memory-probe", metavar="SPEC_JSON", default=None,
                   help=argparse.SUPPRESS)  # internal: the child process of the memory probe
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.memory_probe is not None:
        print(json.dumps(memory_probe(json.loads(args.memory_probe))))
        return
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch.cuda.is_available() is False")
        if not jem_fast.build_info()["with_cuda"]:
            sys.exit("--device cuda: this jem_fast build has no CUDA kernels (build_info)")

    started = time.perf_counter()
    machine = machine_info(args.device, args.threads)
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{machine.get('gpu_name', machine['cpu_model'])}")
    busy = machine["cpu_busy_fraction_at_start"]
    if busy is not None and busy > CONTENDED_FRACTION:
        log(f"WARNING: other processes keep {100 * busy:.0f}% of the CPUs busy at start; "
            "timings will be noisy.")
    rows, checks = run(args)
    total_s = time.perf_counter() - started
    targets = evaluate_targets(rows, args)

    mode = "full" if args.full else "quick"
    print(f"\njem_fast covariance benchmark -- {args.device}, {mode}, "
          f"torch.set_num_threads({args.threads}), torch {torch.__version__}")
    print("times: median over repeats after warm-up; IQR = p25-p75; '/jf' = time / jem_fast "
          "time in this run (>1: jem_fast faster)")
    print(table_rows(rows, args.device))
    if targets:
        print(f"\nTargets ({targets['shape']})" + (f" -- {targets['note']}"
                                                     if targets["note"] else ""))
        for t in targets["items"]:
            print(f"  {'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}")
    contended = [r for r in rows if (r.get("other_cpu_fraction") or 0.0) > CONTENDED_FRACTION]
    if contended:
        print(f"\nWARNING: {len(contended)} timing(s) ran while other processes used more than "
              f"{100 * CONTENDED_FRACTION:.0f}% of the CPUs (CONTENDED in the notes); rerun "
              "on a quiet machine before comparing them.")
    print(f"\ntotal wall time {total_s:.0f} s")

    now = datetime.datetime.now()
    payload = {
        "benchmark": "covariance", "date": now.isoformat(timespec="seconds"),
        "argv": sys.argv, "device": args.device, "mode": mode, "threads": args.threads,
        "dtypes": sorted({r["dtype"] for r in rows}), "timing": TIMING[(args.device, mode)],
        "machine": machine, "methodology": METHODOLOGY, "correctness_checks": checks,
        "targets": targets, "total_wall_s": round(total_s, 1), "results": rows,
    }
    payload["machine"]["load_average_at_end"] = list(os.getloadavg())
    payload["machine"]["cpu_busy_fraction_at_end"] = cpu_busy_fraction()
    stem = f"covariance_{args.device}_{now:%Y%m%d-%H%M%S}"
    json_path, csv_path = write_results(args.out, stem, payload, [flatten(r) for r in rows])
    print(f"wrote {json_path} and {csv_path}")


def flatten(row):
    """One CSV line: timing summaries spread into <measure>_<stat> columns."""
    flat = {}
    for key, value in row.items():
        if key in ("fwd_bwd", "fwd"):
            flat.update({f"{key}_{k}": v for k, v in value.items() if k != "samples_ms"})
        elif key != "memory_probe":
            flat[key] = value
    return flat


if __name__ == "__main__":
    main()
