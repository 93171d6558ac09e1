"""The `jem-fast` command (also `python -m jem_fast`).

    jem-fast info  [--device cpu|cuda|all] [--no-selftest]
    jem-fast bench [--device cpu|cuda] [--ops OP[,OP...]] [--quick|--full] [--scaling]
                   [--out DIR] [--baselines reference,compile,lightly,kornia,torchvision,inf_cl]
                   [--threads N] [--dtype float32|bfloat16|float16] [--wide] [--no-plots]

`info` says what this installation is (versions, devices, compiled kernels, threads, optional
peers) and runs the self-test (jem_fast.selftest: every op once against its float64 reference);
it exits 1 when a check fails. `bench` runs the benchmark families of jem_fast.bench (the same
modules as `python -m benchmarks.bench_<family>`), prints each family's table and one summary
table (one line per case, at most 160 characters wide; --wide: every figure), and writes JSON +
CSV into --out, with summary.png (speedups and peak memory per case) and, for --scaling,
scaling_<device>.png (time and memory against N or D) when matplotlib is importable.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from .bench.common import cpu_model, default_threads
from .bench.report import op_name, shape_text

# Families in run order: (name, module, the module's sub-op option, op names). The op names are
# what --ops accepts besides the family names; they are the values of the module's own option.
FAMILIES = [
    ("covariance", "jem_fast.bench.bench_covariance", "--losses", ("vicreg", "barlow_twins")),
    ("info_nce", "jem_fast.bench.bench_info_nce", "--losses", ("simclr", "clip", "moco")),
    ("clustering", "jem_fast.bench.bench_clustering", "--ops", ("sinkhorn", "dino", "swav")),
    ("deepcluster", "jem_fast.bench.bench_deepcluster", None, ("assign",)),
    ("local", "jem_fast.bench.bench_local", "--parts", ("cosine", "ema")),
    ("augment", "jem_fast.bench.bench_augment", None, ("augment",)),
]
# Other spellings --ops accepts.
OP_ALIASES = {"barlow": "barlow_twins", "barlowtwins": "barlow_twins", "ntxent": "simclr",
              "infonce": "clip", "info_nce": "info_nce", "deepcluster_v2": "assign",
              "negative_cosine": "cosine", "byol": "cosine", "simsiam": "cosine",
              "sinkhorn_knopp": "sinkhorn", "kmeans": "assign"}
BASELINES = ("reference", "compile", "lightly", "kornia", "torchvision", "inf_cl")
# The ops the scaling view sweeps, per family (its --losses values).
SCALING_OPS = {"covariance": ("vicreg", "barlow_twins"), "info_nce": ("simclr",)}
OPTIONAL_PEERS = ("lightly", "kornia", "torchvision", "inf_cl", "matplotlib", "nvidia-dali-cuda130",
                  "pillow-simd")


def _available_families():
    """FAMILIES whose module exists in this version (augmentation arrived later than the rest)."""
    return [f for f in FAMILIES if importlib.util.find_spec(f[1]) is not None]


# ------------------------------------------------------------------------------------------------
# Argument parsing
# ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jem-fast", description="jem_fast: build information, self-test and benchmarks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  jem-fast info\n  jem-fast bench --quick\n"
               "  jem-fast bench --device cuda --ops vicreg,clip --baselines reference,compile\n"
               "  jem-fast bench --scaling --out results/")
    sub = parser.add_subparsers(dest="command", metavar="{info,bench}")
    sub.required = True

    info = sub.add_parser("info", help="versions, devices, compiled kernels, self-test",
                          description="Versions, devices, compiled kernels and thread count, "
                                      "then the self-test: every op once on tiny inputs against "
                                      "its float64 reference (exit code 1 if any check fails).")
    info.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                      help="where the self-test runs (default: all = CPU, and CUDA when this "
                           "build has CUDA kernels and a GPU is visible)")
    info.add_argument("--no-selftest", action="store_true", help="only print the information")
    info.add_argument("--threads", type=_positive_int, default=None,
                      help="torch.set_num_threads before the self-test (default: torch's)")

    fams = _available_families()
    names = [f[0] for f in fams] + [op for f in fams for op in f[3] if op != f[0]]
    bench = sub.add_parser(
        "bench", help="benchmarks: jem_fast against the references and peers",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Runs the benchmark families (jem_fast.bench) in this process: for every "
                    "shape, jem_fast and each available baseline in the same run; forward and "
                    "forward+backward, median and spread, ratio, peak extra memory. Prints each "
                    "family's table and a summary; writes JSON and CSV into --out, and the "
                    "figures summary.png and (--scaling) scaling_<device>.png when matplotlib "
                    "is importable.",
        epilog="ops: " + ", ".join(names) + "\nbaselines: " + ", ".join(BASELINES) +
               " (reference = the eager oracle the tests use; compile = torch.compile of it)")
    bench.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="small grid, few repeats (default)")
    size.add_argument("--full", action="store_true",
                      help="every case of each family, more repeats, and the scaling view")
    bench.add_argument("--scaling", action="store_true",
                       help="the scaling view: VICReg/Barlow Twins with N growing and D "
                            "growing, InfoNCE with N growing, up to where the reference runs "
                            "out of memory (on its own unless --ops is given; part of --full)")
    bench.add_argument("--ops", nargs="+", default=None, metavar="OP",
                       help="families or ops, comma- or space-separated (default: all)")
    bench.add_argument("--out", default="jem_fast_bench",
                       help="output folder for JSON, CSV and PNG (default %(default)s)")
    bench.add_argument("--baselines", default=None, metavar="LIST",
                       help="comma-separated subset of " + ",".join(BASELINES) +
                            " (default: all that apply and are importable)")
    bench.add_argument("--threads", type=_positive_int, default=default_threads(),
                       help="torch.set_num_threads (default: the CPUs this process may use, "
                            "%(default)s here)")
    bench.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                       help="default: float32 on CPU, bfloat16 and float32 on CUDA")
    bench.add_argument("--wide", action="store_true",
                       help="tables with one line per implementation and every figure "
                            "(spread, forward alone, full notes); lines get long")
    bench.add_argument("--no-plots", action="store_true", help="do not write the PNG figures")
    parser.bench_parser = bench
    return parser


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def resolve_ops(items, families):
    """--ops items -> {family: None (all of it) or [op, ...]}, in family order. Raises
    ValueError naming the unknown items and the valid ones."""
    wanted = [x.strip().lower() for item in items for x in item.split(",") if x.strip()]
    if not wanted:
        raise ValueError("--ops needs at least one name")
    selection, unknown = {}, []
    for name in wanted:
        name = OP_ALIASES.get(name, name)
        fam = next((f for f in families if f[0] == name), None)
        if fam is not None:
            selection[fam[0]] = None
            continue
        fam = next((f for f in families if name in f[3]), None)
        if fam is None:
            unknown.append(name)
        elif fam[0] not in selection or selection[fam[0]] is not None:
            selection.setdefault(fam[0], [])
            if name not in selection[fam[0]]:
                selection[fam[0]].append(name)
    if unknown:
        valid = [f[0] for f in families] + [op for f in families for op in f[3] if op != f[0]]
        raise ValueError(f"unknown op(s) {unknown}; choose from {', '.join(valid)}")
    return {f[0]: selection[f[0]] for f in families if f[0] in selection}


def parse_baselines(text):
    names = [x.strip().lower() for x in text.split(",") if x.strip()]
    names = ["reference" if n in ("eager", "ref") else n for n in names]
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {','.join(BASELINES)}")
    return names


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return cmd_info(args)
    try:
        families = _available_families()
        args.selection = (resolve_ops(args.ops, families) if args.ops
                          else {f[0]: None for f in families})
        args.baseline_list = (None if args.baselines is None
                              else parse_baselines(args.baselines))
    except ValueError as exc:
        parser.bench_parser.error(str(exc))  # usage + message, exit code 2, as argparse does
    return cmd_bench(args)


# ------------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------------

def _dist_version(name):
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    for dist in (name, name.replace("_", "-")):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def _wrap(items, indent, width=100):
    lines, line = [], indent
    for item in items:
        piece = item + ", "
        if len(line) + len(piece) > width and line.strip():
            lines.append(line.rstrip(", "))
            line = indent
        line += piece
    lines.append(line.rstrip(", "))
    return "\n".join(lines)


def cmd_info(args) -> int:
    import torch

    import jem_fast

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"jem_fast {jem_fast.__version__}  ({os.path.dirname(jem_fast.__file__)})")
    print(f"torch {torch.__version__}  (CUDA runtime {torch.version.cuda or 'none: CPU build'})")
    print(f"python {platform.python_version()}  {platform.platform()}")
    try:
        info = jem_fast.build_info()
    except Exception as exc:  # noqa: BLE001 - a broken build is exactly what info must report
        print(f"\nbuild: the compiled extension did not load: {type(exc).__name__}: {exc}")
        return 1

    print("\ndevices")
    print(f"  cpu   {cpu_model()}, {os.cpu_count()} logical CPUs")
    cuda_ok = torch.cuda.is_available()
    if cuda_ok:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i} {p.name}, sm_{p.major}{p.minor}, "
                  f"{p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
    else:
        print("  cuda  not available" + ("" if torch.version.cuda else " (CPU build of torch)"))

    print("\nthreads")
    print(f"  torch.get_num_threads() = {torch.get_num_threads()}, "
          f"interop = {torch.get_num_interop_threads()}, "
          f"OMP_NUM_THREADS = {os.environ.get('OMP_NUM_THREADS', 'unset')}")

    print("\nbuild")
    print(f"  built against torch {info.get('torch_version')}, "
          f"CUDA kernels: {'yes' if info.get('with_cuda') else 'no'}"
          + (f" (CUDA {info.get('cuda_version')}, archs {info.get('cuda_archs') or '?'})"
             if info.get("with_cuda") else ""))
    print(f"  why: {info.get('cuda_reason', 'unknown')}; {info.get('build_type', 'unknown')} build")
    cpu_k, cuda_k = list(info.get("cpu_kernels", [])), list(info.get("cuda_kernels", []))
    print(f"  CPU kernels ({len(cpu_k)}):\n" + _wrap(cpu_k, "    "))
    if info.get("with_cuda"):
        print(f"  CUDA kernels ({len(cuda_k)}):\n" + _wrap(cuda_k, "    "))
        missing = [k for k in cpu_k if k not in cuda_k]
        if missing:
            print("  CPU-only ops (no CUDA kernel): " + ", ".join(missing))
    if str(info.get("torch_version", "")).split("+")[0] != torch.__version__.split("+")[0]:
        print(f"  WARNING: built for torch {info.get('torch_version')}, running on "
              f"{torch.__version__}: rebuild (pip install --no-build-isolation .)")

    print("\noptional peers (benchmark baselines, plots)")
    for name in OPTIONAL_PEERS:
        print(f"  {name:<12} {_dist_version(name) or 'not installed'}")

    if args.no_selftest:
        return 0
    devices = ["cpu"] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all"):
        if cuda_ok and info.get("with_cuda"):
            devices.append("cuda")
        elif args.device == "cuda":
            print("\nself-test on cuda: " + ("this build has no CUDA kernels" if cuda_ok
                                             else "no CUDA device is available"))
            return 1
    from .selftest import RTOL, run_selftest

    failed = 0
    for device in devices:
        print(f"\nself-test on {device} (float32 against the float64 reference, "
              f"tolerance {RTOL:.0e} relative to the largest reference value)")
        width = 62

        def show(r):
            print(f"  {r.status.upper():<4}  {r.name:<{width}} {r.detail}", flush=True)
        results = run_selftest(device, on_result=show)
        n_fail = sum(r.status == "FAIL" for r in results)
        n_pass = sum(r.status == "pass" for r in results)
        n_skip = sum(r.status == "skip" for r in results)
        print(f"  {n_pass} passed, {n_fail} failed, {n_skip} skipped on {device}")
        failed += n_fail
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------------

class Progress:
    """One line per step on stderr: a bar over the families, elapsed time, and the measurement
    in progress (the benchmark modules' own log lines say which shape and implementation)."""

    def __init__(self, total):
        self.total, self.done, self.started = total, 0, time.perf_counter()
        self.measurements = 0

    def _bar(self):
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        return "[" + "#" * filled + "." * (width - filled) + f"] {self.done}/{self.total}"

    def elapsed(self):
        s = int(time.perf_counter() - self.started)
        return f"{s // 60}m{s % 60:02d}s"

    def start(self, name):
        print(f"\n=== jem-fast bench {self._bar()} families, {self.elapsed()}: {name}",
              file=sys.stderr, flush=True)

    def row(self, row):
        self.measurements += 1
        shape = shape_text(row)
        print(f"    ... {self.elapsed()} measurement {self.measurements}: "
              f"{op_name(row, '')} {shape} {row.get('dtype', '')} {row['impl']}",
              file=sys.stderr, flush=True)

    def finish(self, name):
        self.done += 1
        print(f"=== jem-fast bench {self._bar()} families, {self.elapsed()}: {name} done",
              file=sys.stderr, flush=True)


def _family_argv(args, family_name, option, ops, mode_flag):
    argv = ["--device", args.device, mode_flag, "--out", args.out,
            "--threads", str(args.threads)]
    if args.dtype:
        argv += ["--dtype", args.dtype]
    if args.baseline_list is not None:
        argv += ["--baselines", ",".join(args.baseline_list)]
    if getattr(args, "wide", False):
        argv.append("--wide")
    if ops is not None and option is not None:
        argv += [option, ",".join(ops)]
    return argv


def scaling_losses(selection):
    """The scaling view's losses that --ops selected (every one without --ops); [] when --ops
    names none of them (then the view does not run)."""
    if selection is None:
        return [op for ops in SCALING_OPS.values() for op in ops]
    chosen = []
    for family, ops in SCALING_OPS.items():
        if family in selection:
            chosen += [op for op in ops if selection[family] is None or op in selection[family]]
    return chosen


def cmd_bench(args) -> int:
    import torch

    import jem_fast

    from .bench import common

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("jem-fast bench: error: --device cuda, but torch.cuda.is_available() is "
                  "False", file=sys.stderr)
            return 2
        if not jem_fast.build_info()["with_cuda"]:
            print("jem-fast bench: error: --device cuda, but this jem_fast build has no CUDA "
                  "kernels (see `jem-fast info`); rebuild with FORCE_CUDA=1", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mode_flag = "--full" if args.full else "--quick"
    # --scaling alone runs only the scaling view; --full runs it after the families.
    run_families = not (args.scaling and args.ops is None)
    losses = scaling_losses(None if args.ops is None else args.selection)
    run_scaling = (args.scaling or args.full) and bool(losses)
    if (args.scaling or args.full) and not losses:
        print("jem-fast bench: no scaling view: it sweeps " + ", ".join(
            op for ops in SCALING_OPS.values() for op in ops) + ", none of which --ops names",
            file=sys.stderr)
    families = [f for f in _available_families() if f[0] in args.selection] if run_families else []
    steps = len(families) + (1 if run_scaling else 0)
    progress = Progress(steps)
    common.PROGRESS_HOOK = progress.row
    started = time.perf_counter()
    payloads, failures = {}, []
    try:
        for name, module_name, option, _ops in families:
            progress.start(name)
            argv = _family_argv(args, name, option, args.selection[name], mode_flag)
            try:
                module = importlib.import_module(module_name)
                payload = module.main(argv)
            except SystemExit as exc:  # a module's own argument or device error
                if exc.code not in (0, None):
                    failures.append((name, str(exc.code)))
                payload = None
            except Exception as exc:  # noqa: BLE001 - report, go on with the other families
                failures.append((name, f"{type(exc).__name__}: {exc}"))
                traceback.print_exc()
                print(f"jem-fast bench: {name} failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                payload = None
            if payload is not None:
                payloads[name] = payload
            progress.finish(name)
        if run_scaling:
            from .bench import scaling
            progress.start("scaling")
            argv = _family_argv(args, "scaling", "--losses", losses, mode_flag)
            try:
                payload = scaling.main(argv)
                if payload is not None:
                    payloads["scaling"] = payload
            except Exception as exc:  # noqa: BLE001 - as for the families
                failures.append(("scaling", f"{type(exc).__name__}: {exc}"))
                traceback.print_exc()
                print(f"jem-fast bench: scaling failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
            progress.finish("scaling")
    finally:
        common.PROGRESS_HOOK = None
    total_s = time.perf_counter() - started

    from .bench import report
    rows = report.summary_rows(payloads)
    grid_rows = [r for r in rows if r["family"] != "scaling"]
    machine = next(iter(payloads.values()), {}).get("machine") or {}
    print("\n" + common.wrap("=== " + common.run_header(
        "bench summary", args.device, "full" if args.full else "quick", args.threads, machine)
        + f", jem_fast {jem_fast.__version__}"))
    if grid_rows:
        print(report.summary_table(grid_rows))
    if "scaling" in payloads:
        print("the scaling view's points are in its table above"
              + ("" if args.no_plots else " and in scaling_<device>.png"))
    stem = f"summary_{args.device}_{datetime.datetime.now():%Y%m%d-%H%M%S}"
    paths = report.write_summary(out, stem, rows, payloads, total_s)
    print(f"\nwrote {paths[0]}\nwrote {paths[1]}")
    if not args.no_plots:
        written, why = report.plot_all(payloads, out, summary=rows)
        for path in written:
            print(f"figure {path}")
        if not written:
            print(f"figures: none ({why})")
    print(f"total wall time {total_s:.0f} s")
    for name, why in failures:
        print(f"FAILED: {name}: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
