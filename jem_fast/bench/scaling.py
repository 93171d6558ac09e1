"""Scaling view: how time and memory grow with the batch N and the embedding D, and where the
materializing reference stops fitting while jem_fast keeps going.

    python -m jem_fast.bench.scaling [--device cpu|cuda] [--quick|--full] [--out DIR]
                                     [--losses vicreg,barlow_twins,simclr]
    jem-fast bench --scaling          (also part of `jem-fast bench --full`)

Sweeps: VICReg and Barlow Twins with D fixed and N growing, and with N fixed and D growing (the
reference builds D x D matrices); InfoNCE (SimCLR NT-Xent, D = 128) with N growing (the
reference builds the 2N x 2N logits). Every point is measured by the family benchmark's own
bench_one (bench_covariance, bench_info_nce): the same correctness gate, timing, memory probe
and reference-size estimate. A reference whose estimated extra memory exceeds the limit (CPU
4 GB, CUDA half of the GPU) is skipped with that estimate as its note; one that raises out of
memory is an "n/a" row. By default only the eager reference is run next to jem_fast (compiling
every point would dominate the time); --baselines reference,compile adds torch.compile.
"""
from __future__ import annotations

from . import bench_covariance as cov
from . import bench_info_nce as nce
from .common import (TIMING, benchmark_dtypes, benchmark_mode, benchmark_parser, format_table,
                     run_benchmark_main, timing_cells, timing_columns)

MODULE = "jem_fast.bench.scaling"

# (sweep name, loss, [(n, d), ...]) per (device, mode).
def _sweeps(device, mode):
    if device == "cpu":
        n_grow = [256, 1024, 4096] + ([16384] if mode == "full" else [])
        d_grow = [1024, 4096, 16384] + ([32768, 65536] if mode == "full" else [])
        nce_n = [1024, 2048, 4096, 8192] + ([16384] if mode == "full" else [])
        d_fixed, n_fixed = 2048, 256
    else:
        n_grow = [1024, 4096, 16384, 65536] + ([262144] if mode == "full" else [])
        d_grow = [8192, 32768, 131072] + ([262144] if mode == "full" else [])
        nce_n = [4096, 16384, 65536, 131072] + ([262144] if mode == "full" else [])
        d_fixed, n_fixed = 8192, 256
    sweeps = []
    for loss in cov.LOSSES:
        sweeps.append((f"N growing, D={d_fixed}", "covariance", loss,
                       [(n, d_fixed) for n in n_grow]))
        sweeps.append((f"D growing, N={n_fixed}", "covariance", loss,
                       [(n_fixed, d) for d in d_grow]))
    sweeps.append(("N growing, D=128", "info_nce", "simclr", [(n, 128) for n in nce_n]))
    return sweeps


METHODOLOGY = {
    "points": "each (N, D) point is measured by bench_covariance.bench_one or "
              "bench_info_nce.bench_one: see those benchmarks' methodology (also in this JSON "
              "under 'family_methodology')",
    "reference_limit": "the reference is skipped where its estimated extra memory exceeds "
                       "4 GB (CPU) or half of the GPU memory (CUDA); an out-of-memory error "
                       "while it runs is an n/a row",
}


LOSSES = cov.LOSSES + ("simclr",)


def run(args):
    mode = benchmark_mode(args)
    timing = TIMING[(args.device, mode)]
    rows, checks = [], []
    for dtype in benchmark_dtypes(args):
        for sweep, family, loss, points in _sweeps(args.device, mode):
            if loss not in args.sweep_losses:
                continue
            for n, d in points:
                if family == "covariance":
                    got = cov.bench_one(loss, n, d, dtype, args, timing, mode, checks)
                else:
                    got = nce.bench_one(nce.case(loss, n, d), dtype, args, timing, mode, checks)
                for r in got:
                    r["sweep"] = sweep
                rows += got
    return rows, checks


def evaluate_targets(rows, args):
    """INFO lines: per sweep, the largest point where the reference ran and where jem_fast ran."""
    items = []
    sweeps = []
    for r in rows:
        key = (r.get("loss"), r["sweep"])
        if key not in sweeps:
            sweeps.append(key)
    for loss, sweep in sweeps:
        sub = [r for r in rows if (r.get("loss"), r["sweep"]) == (loss, sweep)]
        dim = "d" if sweep.startswith("D") else "n"

        def largest(impl):
            ok = [r[dim] for r in sub if r["impl"] == impl and r["status"] == "ok"]
            return max(ok) if ok else None
        ref, jf = largest("eager"), largest("jem_fast")
        stopped = [r for r in sub if r["impl"] == "eager" and r["status"] != "ok"]
        why = f"; reference not run beyond: {stopped[0]['note'][:90]}" if stopped else ""
        items.append({"target": f"{loss}, {sweep}",
                      "measured": f"reference up to {dim.upper()}={ref}, jem_fast up to "
                                  f"{dim.upper()}={jf}{why}", "met": None})
    return {"shape": "largest point that ran", "note": None, "items": items} if items else None


def table_rows(rows, device):
    out = []
    for r in rows:
        out.append(dict(timing_cells(r), loss=r.get("loss"), sweep=r["sweep"], n=r["n"],
                        d=r["d"], dtype=r["dtype"], impl=r["impl"]))
    columns = [("loss", "loss"), ("sweep", "sweep"), ("n", "N"), ("d", "D"), ("dtype", "dtype"),
               ("impl", "impl")]
    keep = ("fb", "iqr", "reps", "fwd", "xfb", "peak")
    columns += [c for c in timing_columns("fwd+bwd") if c[0] in keep]
    return format_table(out, columns + [("note", "note")])


def _no_probe(spec):
    # The points' memory probes run in bench_covariance / bench_info_nce (their MODULE).
    return {"error": "the scaling view has no memory probe of its own"}


def main(argv=None):
    p = benchmark_parser(MODULE, __doc__)
    p.add_argument("--losses", default=",".join(LOSSES),
                   help="comma-separated subset of %(default)s: the sweeps to run")
    args = p.parse_args(argv)
    args.sweep_losses = tuple(x.strip() for x in args.losses.split(",") if x.strip())
    unknown = set(args.sweep_losses) - set(LOSSES)
    if unknown or not args.sweep_losses:
        p.error(f"--losses: unknown {sorted(unknown)}; choose from {LOSSES}")
    if args.baselines is None:
        args.baselines = "reference"
    # bench_info_nce.bench_one reads the selected InfoNCE losses from args
    args.losses = ("simclr",)
    return run_benchmark_main(
        args, name="scaling", title="scaling (VICReg/Barlow Twins N and D, InfoNCE N)",
        legend="each point: fwd+bwd of the loss at that N or D, jem_fast and the eager "
               "reference side by side; where the reference would not fit it is not run "
               "('too big': its memory estimate) or runs out of memory ('OOM')",
        step="fwd+bwd",
        run=run, evaluate_targets=evaluate_targets, table=table_rows, memory_probe=_no_probe,
        methodology=METHODOLOGY,
        extra_payload={"family_methodology": {"covariance": cov.METHODOLOGY,
                                              "info_nce": nce.METHODOLOGY}})


if __name__ == "__main__":
    main()
