"""DeepCluster-v2 nearest-centroid assignment: jem_fast.ops.assign_to_centroids (fused, no
B x K matrix) against the eager reference (normalize, matmul, max over K) and
torch.compile(reference), in one run: time of one assignment and its peak extra memory.

    python -m jem_fast.bench.bench_deepcluster [--device cpu|cuda] [--quick|--full] [--out DIR]
                                       [--threads N] [--dtype float32|bfloat16|float16]

Prints a table and writes deepcluster_<device>_<date>.json and .csv into --out (default
benchmarks/out). Assignment has no backward: the timed step is the forward (the JSON keeps it
under "fwd_bwd", like every family's timed step; the rows say "step": "fwd").
"""
from __future__ import annotations

import sys

import torch  # before jem_fast: its extension links against libtorch
import torch.nn.functional as F

import jem_fast  # noqa: F401
from jem_fast.ops import assign_to_centroids
from jem_fast.reference import assign_to_centroids_reference

from .common import (CONTENDED_FRACTION, DTYPES, MEMORY_METHODOLOGY, TIMING,
                     benchmark_dtypes, benchmark_mode, benchmark_parser, dtype_name,
                     find_ok_row, format_table, log, measure_row, quick_compile_skip, rss_probe,
                     run_benchmark_main, targets_result, timing_cells,
                     timing_columns)

MODULE = "jem_fast.bench.bench_deepcluster"
IMPLS = ("jem_fast", "eager", "compile")


QUICK_IMPLS = ("jem_fast", "eager")
QUICK_NO_COMPILE = "not run in --quick on CPU; run --full"


def case(n, d, k, impls=IMPLS, note=""):
    return {"loss": "assign", "n": n, "d": d, "k": k, "impls": impls, "note": note}


CASES = {
    # quick: no torch.compile (it costs more than the rest of this family); in full.
    ("cpu", "quick"): [case(2048, 128, 3000, impls=QUICK_IMPLS, note=QUICK_NO_COMPILE),
                       case(2048, 128, 30000, impls=QUICK_IMPLS, note=QUICK_NO_COMPILE)],
    ("cpu", "full"): [case(2048, 128, 3000), case(4096, 128, 3000), case(2048, 128, 30000),
                      case(4096, 128, 30000)],
    ("cuda", "quick"): [case(4096, 128, 3000), case(4096, 128, 30000)],
    ("cuda", "full"): [case(4096, 128, 3000), case(4096, 128, 30000), case(65536, 128, 3000),
                       case(262144, 128, 30000)],
}
# Where the near-tie check may accept a different index: float32 accumulation error of unit
# dot products at D = 128 (bfloat16/float16 inputs are checked on the same rounded values).
TIE_TOLERANCE = 1e-5
# Speed target on CPU, float32, 2 threads: jem_fast at least as fast as eager at (B, D, K).
TARGET_SPEED = (2048, 128, 3000, 1.0)
TARGET_MEMORY = (2048, 128, 30000, 64.0)  # jem_fast peak extra MB (the eager needs ~245 MB)

METHODOLOGY = {
    "timing": "wall clock of whole calls: time.perf_counter on CPU, CUDA events on CUDA; "
              "warm-up calls untimed; median and spread over the repeats",
    "step": "one assignment (index and score) of B feature rows to K centroids; no backward "
            "exists (the fwd_bwd fields hold the forward)",
    "impls": "jem_fast: jem_fast.ops.assign_to_centroids(x, c); eager: "
             "assign_to_centroids_reference(x, c) = max over K of normalize(x) @ normalize(c)^T "
             "(the B x K matrix materialized); compile: torch.compile(reference, dynamic=False)",
    "inputs": "x = randn(B, D), c = randn(K, D), seeded, created in float32 and cast",
    "flops": "2 B K D (the dot products); TFLOP/s = that / median time",
    "peak_extra_memory_cpu": "fresh child process: one call at 1/32 of the shape first, then "
                             "the inputs, malloc_trim, peak RSS reset, one call, delta = peak "
                             "RSS - baseline (includes the outputs)",
    **MEMORY_METHODOLOGY,
    "compile": "torch.compile(reference, dynamic=False) after torch._dynamo.reset(); in --quick "
               "on CPU not run (see the quick grid)",
}


def make_inputs(n, d, k, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    c = torch.randn(k, d, generator=g)
    return x.to(device=device, dtype=dtype), c.to(device=device, dtype=dtype)


def make_impl(impl):
    if impl == "jem_fast":
        return assign_to_centroids
    if impl == "eager":
        return assign_to_centroids_reference
    torch._dynamo.reset()
    return torch.compile(assign_to_centroids_reference, dynamic=False)


def check_against_reference(n, d, k, dtype, device):
    """The index of every row is the float64 reference's, or a centroid whose cosine is within
    TIE_TOLERANCE of the best; exits instead of benchmarking a wrong result."""
    x, c = make_inputs(n, d, k, dtype, device, seed=1)
    index, score = assign_to_centroids(x, c)
    x64, c64 = x.double().cpu(), c.double().cpu()
    ref_index, ref_score = assign_to_centroids_reference(x64, c64)
    cos = F.normalize(x64, dim=1) @ F.normalize(c64, dim=1).T
    chosen = cos.gather(1, index.cpu()[:, None])[:, 0]
    gap = (ref_score - chosen).max().item()
    score_err = (score.double().cpu() - chosen).abs().max().item()
    mismatches = int((index.cpu() != ref_index).sum())
    if not (gap <= TIE_TOLERANCE and score_err <= TIE_TOLERANCE):
        sys.exit(f"ABORT: jem_fast assign_to_centroids (B={n}, D={d}, K={k}, {dtype}) does not "
                 f"match the float64 reference: cosine gap {gap:.3g}, score error "
                 f"{score_err:.3g}. Not benchmarking a wrong result.")
    return {"max_cosine_gap": float(f"{gap:.3g}"), "max_score_error": float(f"{score_err:.3g}"),
            "index_mismatches_within_tie_tolerance": mismatches}


def base_row(spec, impl, dtype):
    return {"loss": spec["loss"], "label": f"assign B={spec['n']} D={spec['d']} K={spec['k']}",
            "n": spec["n"], "d": spec["d"], "k": spec["k"], "dtype": dtype_name(dtype),
            "impl": impl, "step": "fwd", "status": "ok", "note": ""}


def measure(spec, impl, dtype, args, timing):
    n, d, k = spec["n"], spec["d"], spec["k"]
    row = base_row(spec, impl, dtype)

    def build():
        x, c = make_inputs(n, d, k, dtype, args.device)
        fn = make_impl(impl)
        return (lambda: fn(x, c)), None

    probe_spec = {"impl": impl, "n": n, "d": d, "k": k, "dtype": row["dtype"],
                  "threads": args.threads}
    return measure_row(row, build, device=args.device, timing=timing, probe_module=MODULE,
                       probe_spec=probe_spec)


def memory_probe(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    impl, n, d, k = spec["impl"], spec["n"], spec["d"], spec["k"]
    dtype = DTYPES[spec["dtype"]]

    def build(n_, k_):
        return (make_impl(impl),) + make_inputs(n_, d, k_, dtype, "cpu")

    def step(fn, x, c):
        fn(x, c)

    if impl == "compile":
        built = build(n, k)
        step(*built)
        return rss_probe(lambda: built, step)
    return rss_probe(lambda: build(n, k), step,
                     warmup=lambda: step(*build(max(n // 32, 8), max(k // 32, 8))))


def run(args):
    mode = benchmark_mode(args)
    timing = TIMING[(args.device, mode)]
    rows, checks = [], []
    for dtype in benchmark_dtypes(args):
        for spec in CASES[(args.device, mode)]:
            n, d, k = spec["n"], spec["d"], spec["k"]
            shape = f"assign B={n} D={d} K={k} {dtype_name(dtype)}"
            log(f"[{shape}] correctness check at B={min(n, 1024)}")
            checks.append({"n": min(n, 1024), "d": d, "k": k, "dtype": dtype_name(dtype),
                           "errors": check_against_reference(min(n, 1024), d, k, dtype,
                                                             args.device)})
            spec_rows = []
            for impl in IMPLS:
                skip = quick_compile_skip(spec_rows, mode, args.device) if impl == "compile" \
                    else None
                if impl not in spec["impls"]:
                    skip = spec["note"]
                if skip:
                    spec_rows.append(dict(base_row(spec, impl, dtype), status="skipped",
                                          note=skip, peak_extra_mb="n/a"))
                    continue
                log(f"[{shape}] {impl}")
                spec_rows.append(measure(spec, impl, dtype, args, timing))
            jf = spec_rows[0]
            flops = 2.0 * n * k * d
            for row in spec_rows:
                if row["status"] != "ok":
                    continue
                row["fwd_bwd_vs_jem_fast"] = round(row["fwd_bwd"]["median_ms"]
                                                   / jf["fwd_bwd"]["median_ms"], 2)
                row["tflops_fwd_bwd"] = round(flops / (row["fwd_bwd"]["median_ms"] / 1e3)
                                              / 1e12, 4)
            rows += spec_rows
    return rows, checks


def evaluate_targets(rows, args):
    if args.device != "cpu":
        return None

    def find(n, d, k, impl):
        return next((r for r in rows if (r["n"], r["d"], r["k"], r["impl"], r["dtype"])
                     == (n, d, k, impl, "float32") and r["status"] == "ok"), None)

    items = []
    n, d, k, min_ratio = TARGET_SPEED
    jf, eager = find(n, d, k, "jem_fast"), find(n, d, k, "eager")
    if jf and eager:
        ratio = eager["fwd_bwd_vs_jem_fast"]
        items.append({"target": f"assign B={n} D={d} K={k}: eager / jem_fast time >= "
                                f"{min_ratio:g}",
                      "measured": f"{ratio:.2f}x (jem_fast {jf['fwd_bwd']['median_ms']:.1f} ms, "
                                  f"eager {eager['fwd_bwd']['median_ms']:.1f} ms)",
                      "met": ratio >= min_ratio})
        compiled = find(n, d, k, "compile")
        if compiled:
            items.append({"target": f"(info, no target) assign B={n} D={d} K={k}: compile / "
                                    "jem_fast time",
                          "measured": f"{compiled['fwd_bwd_vs_jem_fast']:.2f}x",
                          "met": None})
    n, d, k, max_mb = TARGET_MEMORY
    jf = find(n, d, k, "jem_fast")
    if jf:
        mem = jf["peak_extra_mb"]
        items.append({"target": f"assign B={n} D={d} K={k} jem_fast peak extra memory < "
                                f"{max_mb:g} MB", "measured": f"{mem} MB",
                      "met": isinstance(mem, (int, float)) and mem < max_mb})
    return targets_result("D=128, float32, CPU, 2 threads", items, args.threads)


def table_rows(rows, device):
    out = []
    for r in rows:
        t = dict(timing_cells(r), n=r["n"], d=r["d"], k=r["k"], dtype=r["dtype"], impl=r["impl"])
        if r["status"] == "ok":
            t["tflops"] = f"{r['tflops_fwd_bwd']:.3f}"
        out.append(t)
    columns = [("n", "B"), ("d", "D"), ("k", "K"), ("dtype", "dtype"), ("impl", "impl")]
    columns += [c for c in timing_columns("fwd") if c[0] not in ("fwd", "xf")]
    columns += [("tflops", "TFLOP/s")]
    return format_table(out, columns + [("note", "note")])


def main(argv=None):
    args = benchmark_parser(MODULE, __doc__).parse_args(argv)
    return run_benchmark_main(
        args, name="deepcluster", title="nearest-centroid assignment (DeepCluster-v2)",
        legend="assign: nearest of K centroids for B feature rows of D dims (index and "
               "score; no backward: the forward is timed), against the eager reference "
               "(normalize, B x K matmul, max) and torch.compile of it",
        step="fwd",
        run=run, evaluate_targets=evaluate_targets, table=table_rows,
        memory_probe=memory_probe, methodology=METHODOLOGY)


if __name__ == "__main__":
    main()
