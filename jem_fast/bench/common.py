"""Reusable pieces of the jem_fast benchmarks: timing, peak memory, machine info, output.

Timing
    time_cpu(fn, warmup, repeats)   time.perf_counter around whole calls of fn()
    time_cuda(fn, warmup, repeats)  CUDA events around whole calls of fn(), synchronized
    summarize(samples)              median, p25/p75 (IQR), min/max, in milliseconds
Memory
    peak_rss_delta_mb(module, spec) CPU: runs `python -m <module> --memory-probe <spec>` in a
                                    FRESH process (torch's CPU allocations are invisible to
                                    tracemalloc) and returns the peak-RSS delta it reports
    rss_probe(make_inputs, step)    the child's side of it
    cuda_peak_extra_mb(fn)          CUDA: torch.cuda.max_memory_allocated delta around fn()
One implementation on one shape
    measure_row(row, build, ...)    times fwd+bwd (and fwd), checks for contention, measures
                                    peak extra memory; failures of the baselines become rows
Output
    machine_info(device, threads), format_table(rows, columns), write_results(...)
The driver shared by the bench_* modules
    benchmark_parser(module, doc)   the common command line (--device, --quick/--full, --out,
                                    --threads, --dtype, and the internal --memory-probe)
    run_benchmark_main(args, ...)   memory-probe dispatch, checks, machine info, the run, the
                                    printed table and Targets, warnings, the JSON and CSV;
                                    returns the JSON payload (for `jem-fast bench`)
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

# The folder that holds the jem_fast package: the repository root in a checkout, site-packages
# when installed. Memory-probe children start there so that `python -m jem_fast.bench.<x>` imports
# this same jem_fast even from a checkout that was never installed.
REPO_ROOT = Path(__file__).resolve().parent.parent.parent

# --baselines names (the `jem-fast bench` vocabulary) -> the impl names the benchmark modules use
# in their rows. "reference" is the eager oracle shared with the tests.
BASELINE_IMPLS = {
    "reference": ("eager",),
    "compile": ("compile",),
    "lightly": ("lightly",),
    "inf_cl": ("inf_cl",),
    "kornia": ("kornia",),
    "torchvision": ("torchvision",),
}
# Rows of these impls are always measured: jem_fast itself, and in-module variants that are not
# third-party baselines (the EMA loop / foreach comparisons of bench_local).
ALWAYS_RUN_IMPLS = ("jem_fast", "loop", "foreach_lerp")

# Set by `jem-fast bench` to report progress; called as hook(row) before each measurement.
PROGRESS_HOOK = None

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Repeats per measurement: `repeats` at most, `min_repeats` at least, and stop adding repeats
# once the timed calls of one measurement used `budget_s` seconds.
TIMING = {
    ("cpu", "quick"): dict(warmup=1, repeats=15, min_repeats=3, budget_s=1.5),
    ("cpu", "full"): dict(warmup=1, repeats=50, min_repeats=3, budget_s=10.0),
    ("cuda", "quick"): dict(warmup=5, repeats=50, min_repeats=10, budget_s=2.0),
    ("cuda", "full"): dict(warmup=10, repeats=200, min_repeats=20, budget_s=10.0),
}

# In --quick on CPU, torch.compile(reference) is only run where the eager reference's
# forward+backward takes at most this long, to keep --quick (every family together, as
# `jem-fast bench --quick` runs them) under 3 minutes on 2 cores; --full compiles everywhere.
QUICK_COMPILE_MAX_EAGER_S = 0.5

# A timing is flagged CONTENDED when other processes used more than this fraction of all CPUs
# while it ran (from /proc/stat; on a 2-core machine one busy neighbour is 0.5).
CONTENDED_FRACTION = 0.1


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def benchmark_mode(args) -> str:
    return "full" if args.full else "quick"


def benchmark_dtypes(args) -> list:
    """--dtype, or by default float32 on CPU, bfloat16 and float32 on CUDA."""
    if args.dtype:
        return [DTYPES[args.dtype]]
    return [torch.bfloat16, torch.float32] if args.device == "cuda" else [torch.float32]


def log(msg):
    """Progress and warnings go to stderr, so that stdout holds only the results."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

def time_cpu(fn, warmup=1, repeats=10, min_repeats=3, budget_s=None):
    """Seconds per call of fn(), measured with time.perf_counter around each whole call.

    `warmup` untimed calls first. Then up to `repeats` timed calls; with `budget_s`, stop early
    once at least `min_repeats` calls ran and the timed calls used more than budget_s seconds
    (so a 5-second reference does not take a minute while a 5 ms kernel gets all its repeats).
    """
    for _ in range(warmup):
        fn()
    gc.collect()
    samples = []
    started = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        spent = time.perf_counter() - started
        if budget_s is not None and len(samples) >= min_repeats and spent > budget_s:
            break
    return samples


def time_cuda(fn, warmup=3, repeats=20, min_repeats=5, budget_s=None):
    """Seconds per call of fn() on the current CUDA device, measured with a pair of CUDA events
    around each whole call (the host waits for the end event before the next call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    gc.collect()
    samples = []
    started = time.perf_counter()
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
        spent = time.perf_counter() - started
        if budget_s is not None and len(samples) >= min_repeats and spent > budget_s:
            break
    return samples


def summarize(samples):
    """Median, quartiles (p25, p75), min and max of samples given in seconds, in milliseconds."""
    ms = np.asarray(samples, dtype=np.float64) * 1e3
    p25, median, p75 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": float(median), "p25_ms": float(p25), "p75_ms": float(p75),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()), "repeats": int(ms.size),
            "samples_ms": [round(float(x), 4) for x in ms]}


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------

def _proc_status_mb(field: str) -> float | None:
    """A kB field of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb() -> float | None:
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: VmHWM of /proc/self/status. Not ru_maxrss there: a child started by fork+exec
    inherits its parent's peak in ru_maxrss (the kernel folds the pre-exec memory map's
    high-water mark into it), so a child of a benchmark that already touched gigabytes would
    report that as its own baseline. Elsewhere: ru_maxrss (bytes on macOS, KiB otherwise).
    """
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def reset_peak_rss() -> bool:
    """Reset the peak-RSS high-water mark (VmHWM) to the current RSS, Linux >= 4.0.
    Returns False where that is not possible; the peak then keeps its earlier maximum."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> bool:
    """Hand memory that glibc's malloc holds free back to the OS (malloc_trim(0)), so that the
    step measured next cannot reuse pages that are already resident and look smaller than it is.
    Returns False where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def rss_probe(make_inputs, step, warmup=None):
    """The child side of peak_rss_delta_mb: peak extra RSS of one step(*inputs).

    warmup(): called first (e.g. one step at a tiny shape) so that library code pages, the
    thread pool and lazily-initialized state are resident before the baseline and are not
    counted as memory of the step. Then inputs = make_inputs(); free heap memory is returned to
    the OS (malloc_trim); baseline = peak RSS (after resetting the high-water mark to the
    current RSS where Linux allows it); step(*inputs);
    delta = peak - baseline (peaks from peak_rss_mb: VmHWM on Linux, ru_maxrss elsewhere).
    Everything step allocates counts, including its outputs (e.g. the gradient tensors).
    """
    if warmup is not None:
        warmup()
    inputs = make_inputs()
    gc.collect()
    trimmed = release_free_memory()
    hwm_reset = reset_peak_rss()
    baseline, current = peak_rss_mb(), current_rss_mb()
    step(*inputs)
    peak = peak_rss_mb()
    return {"baseline_mb": round(baseline, 2), "peak_mb": round(peak, 2),
            "delta_mb": round(peak - baseline, 2), "rss_at_baseline_mb": current,
            "hwm_reset": hwm_reset, "malloc_trim": trimmed,
            "ru_maxrss_mb": round(ru_maxrss_mb(), 2)}


def peak_rss_delta_mb(module: str, spec: dict, timeout_s: float = 600):
    """Runs `python -m <module> --memory-probe '<spec json>'` in a fresh process and returns the
    dict it prints as the last line of its stdout (see rss_probe), or {"error": ...}."""
    cmd = [sys.executable, "-m", module, "--memory-probe", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout_s:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"memory probe failed (rc {proc.returncode}): {tail[0][:300]}"}
    return json.loads(lines[-1])


def cuda_peak_extra_mb(fn) -> float:
    """Peak CUDA memory allocated by fn() above what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - baseline) / 2**20


# --------------------------------------------------------------------------------------------
# One implementation on one shape
# --------------------------------------------------------------------------------------------

def _first_line(exc) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"


def measure_row(row, build, *, device, timing, probe_module, probe_spec):
    """Times one implementation on one shape and measures its peak extra memory, into `row`
    (a dict with "impl", "status" and "note"), and returns it.

    build() -> (fwd_bwd, fwd): zero-argument callables, one forward+backward and one forward
    (None: the forward is not timed), over inputs that build() creates. They are the only
    references to those inputs, so dropping them frees the inputs before the next measurement.
    impl "compile": the first fwd_bwd call compiles; its time is compile_s, a failure an "n/a"
    row. A RuntimeError or MemoryError while timing (e.g. out of memory) is an "n/a" row for
    the baselines, and raised for jem_fast. CPU memory: peak_rss_delta_mb(probe_module,
    probe_spec) in a fresh process; CUDA: cuda_peak_extra_mb of one fwd_bwd.
    """
    skip = baseline_skip_note(row["impl"], _SELECTED_BASELINES)
    if skip is not None:
        row.update(status="skipped", note=skip, peak_extra_mb="n/a")
        return row
    if PROGRESS_HOOK is not None:
        PROGRESS_HOOK(row)
    step, forward = build()
    timer = time_cuda if device == "cuda" else time_cpu
    if row["impl"] == "compile":
        t0 = time.perf_counter()
        try:
            step()  # compiles forward and backward graphs
            if device == "cuda":
                torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - any compile failure is a result, "n/a"
            row.update(status="n/a", peak_extra_mb="n/a",
                       note=f"compile failed: {_first_line(exc)}")
            return row
        row["compile_s"] = round(time.perf_counter() - t0, 2)
    before = cpu_times()
    try:
        row["fwd_bwd"] = summarize(timer(step, **timing))
        if forward is not None:
            row["fwd"] = summarize(timer(forward, **timing))
        row["other_cpu_fraction"] = other_cpu_fraction(before, cpu_times())
        if (row["other_cpu_fraction"] or 0.0) > CONTENDED_FRACTION:
            row["note"] = (f"CONTENDED: other processes used {100 * row['other_cpu_fraction']:.0f}"
                           "% of the CPUs while timing")
        if device == "cuda":
            row["peak_extra_mb"] = round(cuda_peak_extra_mb(step), 2)
    except (RuntimeError, MemoryError) as exc:  # e.g. out of memory: a result for the baselines
        if row["impl"] == "jem_fast":
            raise
        row.update(status="n/a", note=_first_line(exc), peak_extra_mb="n/a")
        row.pop("fwd_bwd", None)
        row.pop("fwd", None)
        if device == "cuda":
            torch.cuda.empty_cache()
        return row
    del step, forward  # frees the inputs and the implementation (see above)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        return row
    if row["impl"] == "compile" and timing == TIMING[("cpu", "quick")]:
        # The probe child recompiles the graph (seconds per row): in --quick on CPU the
        # compile rows are timed only, which keeps every family together under 3 minutes.
        row["peak_extra_mb"] = "n/a"
        row["note"] = (row["note"] + " memory of compile rows: --full only").strip()
        return row
    probe = peak_rss_delta_mb(probe_module, probe_spec)
    row["memory_probe"] = probe
    if "error" in probe:
        row["peak_extra_mb"] = "n/a"
        row["note"] = (row["note"] + " " + probe["error"]).strip()
    else:
        row["peak_extra_mb"] = probe["delta_mb"]
    return row


# METHODOLOGY entries (stored in each benchmark's JSON) for the parts of measure_row's memory
# measurement that are the same in every benchmark; each describes its own CPU probe.
MEMORY_METHODOLOGY = {
    "peak_extra_memory_cpu_compile": "compile needs its first call at the full shape, so the "
                                     "probe compiles and runs once, resets the peak RSS, and "
                                     "measures the second call (memory the allocator kept from "
                                     "the first call can make this an underestimate)",
    "peak_extra_memory_cuda": "torch.cuda.max_memory_allocated() - memory_allocated() before "
                              "one forward+backward (after reset_peak_memory_stats)",
    "memory_unit": "MB in this benchmark = MiB = 2**20 bytes",
}


# The --baselines selection of the current run (None: all); set by run_benchmark_main.
_SELECTED_BASELINES = None


def parse_baselines(text):
    """--baselines "reference,compile" -> ("reference", "compile"); raises ValueError on an
    unknown name, with the known ones in the message."""
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = sorted(set(names) - set(BASELINE_IMPLS))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from "
                         f"{','.join(BASELINE_IMPLS)}")
    return names


def baseline_skip_note(impl, selected):
    """The note of a row that --baselines leaves out, or None when it runs. An impl that maps to
    no --baselines name is not a baseline and always runs."""
    if selected is None or impl in ALWAYS_RUN_IMPLS:
        return None
    wanted = {i for name in selected for i in BASELINE_IMPLS[name]}
    known = {i for impls in BASELINE_IMPLS.values() for i in impls}
    if impl in known and impl not in wanted:
        return "not in --baselines"
    return None


def quick_compile_skip(rows, mode, device) -> str | None:
    """The note of a compile row that --quick on CPU skips because the eager row (already in
    `rows`) was slower than QUICK_COMPILE_MAX_EAGER_S; None: run it."""
    if mode != "quick" or device != "cpu":
        return None
    eager = next((r for r in rows if r["impl"] == "eager"), {})
    eager_s = eager["fwd_bwd"]["median_ms"] / 1e3 if "fwd_bwd" in eager else 0.0
    if eager_s <= QUICK_COMPILE_MAX_EAGER_S:
        return None
    return (f"skipped in --quick (eager fwd+bwd {eager_s:.1f} s "
            f"> {QUICK_COMPILE_MAX_EAGER_S} s); run --full")


def find_ok_row(rows, loss, impl, n, d, dtype):
    """The result row of (loss, impl, n, d, dtype) if it ran ("ok"), else None."""
    return next((r for r in rows if (r["loss"], r["impl"], r["n"], r["d"], r["dtype"])
                 == (loss, impl, n, d, dtype) and r["status"] == "ok"), None)


def targets_result(shape, items, threads, target_threads=2):
    """What a benchmark's evaluate_targets returns (see run_benchmark_main): None without
    items; the note says when the run did not use the threads the targets are set for."""
    if not items:
        return None
    note = (None if threads == target_threads
            else f"measured with {threads} threads, not {target_threads}")
    return {"shape": shape, "note": note, "items": items}


# --------------------------------------------------------------------------------------------
# Machine info and output
# --------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_modified_files() -> list[str] | None:
    """Tracked files that differ from HEAD."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
        return [line[3:] for line in out.splitlines()]
    except (OSError, subprocess.SubprocessError):
        return None


def git_revision() -> str | None:
    """Short HEAD commit, with "-dirty" when tracked files differ from it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("-dirty" if git_modified_files() else "")) or None


def cpu_times():
    """(busy s of all CPUs, total s of all CPUs, CPU s of this process) from /proc/stat and
    getrusage, or None where there is no /proc/stat. Two samples give other_cpu_fraction."""
    try:
        with open("/proc/stat") as f:
            values = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle, total = values[3] + values[4], sum(values[:8])  # idle + iowait; up to steal
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (total - idle) / tick, total / tick, usage.ru_utime + usage.ru_stime


def other_cpu_fraction(before, after) -> float | None:
    """Fraction of all CPUs' time that other processes (or the hypervisor) used between two
    cpu_times() samples: a contention check for timings on a shared machine."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    busy, total, own = (a - b for a, b in zip(after, before))
    return round(min(max((busy - own) / total, 0.0), 1.0), 3)


def cpu_busy_fraction(interval_s: float = 0.5) -> float | None:
    """Fraction of all CPUs' time that other processes use over the next interval_s."""
    before = cpu_times()
    time.sleep(interval_s)
    return other_cpu_fraction(before, cpu_times())


def machine_info(device: str, threads: int) -> dict:
    import jem_fast

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "threads_requested": threads,
        "load_average_at_start": list(os.getloadavg()),
        "cpu_busy_fraction_at_start": cpu_busy_fraction(),
        "jem_fast_version": jem_fast.__version__,
        "jem_fast_build_info": jem_fast.build_info(),
        "git_revision": git_revision(),
        "git_modified_files": git_modified_files(),
        "jem_fast_extension": _extension_file_info(jem_fast),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu_name": props.name,
                     "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "cuda_runtime": torch.version.cuda})
    return info


def _extension_file_info(jem_fast) -> dict | None:
    """Path and modification time of the loaded compiled extension (it is rebuilt in place)."""
    c_module = getattr(jem_fast._extension, "_C", None)
    path = getattr(c_module, "__file__", None)
    if not path:
        return None
    mtime = datetime.datetime.fromtimestamp(os.path.getmtime(path))
    return {"path": path, "mtime": mtime.isoformat(timespec="seconds")}


def format_table(rows, columns) -> str:
    """rows: list of dicts; columns: list of (key, header). Values are printed as given."""
    cells = [[str(row.get(key, "")) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(cell, widths))
            for cell in cells]
    return "\n".join(out)


def _numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] == "-" and text[1:2].isdigit())


def write_results(out_dir, stem: str, payload: dict, rows: list[dict]):
    """Writes <out_dir>/<stem>.json (the whole payload) and <stem>.csv (one line per row,
    scalar fields only). Returns the two paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    fields = []
    for row in rows:
        fields += [k for k, v in row.items() if k not in fields and not isinstance(v, (list, dict))]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


# Table columns of the timings, after each benchmark's own shape columns (cells: timing_cells).
TIMING_COLUMNS = [("fb", "fwd+bwd ms"), ("iqr", "IQR ms"), ("minmax", "min-max ms"),
                  ("reps", "n"), ("fwd", "fwd ms"), ("xfb", "f+b /jf"), ("xf", "fwd /jf"),
                  ("peak", "peak extra MB")]


def timing_cells(r) -> dict:
    """The TIMING_COLUMNS cells of one result row (and its note, with compile_s in front).
    A row that did not run shows its status in the time columns."""
    cells = {"peak": r["peak_extra_mb"], "note": r["note"]}
    if r["status"] != "ok":
        return dict(cells, fb=r["status"], fwd=r["status"])
    fb = r["fwd_bwd"]
    cells.update(fb=f"{fb['median_ms']:.2f}", iqr=f"{fb['p25_ms']:.2f}-{fb['p75_ms']:.2f}",
                 minmax=f"{fb['min_ms']:.2f}-{fb['max_ms']:.2f}", reps=fb["repeats"],
                 xfb=f"{r['fwd_bwd_vs_jem_fast']:.2f}x", fwd="-")
    if "fwd" in r:
        cells["fwd"] = f"{r['fwd']['median_ms']:.2f}"
        if "fwd_vs_jem_fast" in r:
            cells["xf"] = f"{r['fwd_vs_jem_fast']:.2f}x"
    if "compile_s" in r:
        cells["note"] = (f"compile {r['compile_s']} s " + cells["note"]).strip()
    return cells


def flatten(row):
    """One CSV line: timing summaries spread into <measure>_<stat> columns."""
    flat = {}
    for key, value in row.items():
        if key in ("fwd_bwd", "fwd"):
            flat.update({f"{key}_{k}": v for k, v in value.items() if k != "samples_ms"})
        elif key != "memory_probe":
            flat[key] = value
    return flat


# --------------------------------------------------------------------------------------------
# The driver shared by the bench_* modules
# --------------------------------------------------------------------------------------------

def benchmark_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The command line every benchmark takes; a benchmark adds its own options to it."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0],
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
    p.add_argument("--baselines", default=None, metavar="LIST",
                   help="comma-separated subset of " + ",".join(BASELINE_IMPLS) +
                        " (default: every baseline the benchmark knows)")
    p.add_argument("--memory-probe", metavar="SPEC_JSON", default=None,
                   help=argparse.SUPPRESS)  # internal: the child process of the memory probe
    return p


def run_benchmark_main(args, *, name, title, legend, run, evaluate_targets, table,
                       memory_probe, methodology, extra_payload=None):
    """Runs one benchmark from its parsed command line (see benchmark_parser).

    name: "covariance", ... -- the JSON's "benchmark" and the output files'
        <name>_<device>_<date>.json/.csv; title: in the printed header; legend: the line
        under it that explains the table.
    run(args) -> (rows, correctness checks); evaluate_targets(rows, args) -> None or
        {"shape", "note", "items": [{"target", "measured", "met": True/False/None}]}
        (met None: information, printed INFO); table(rows, device) -> the printed table;
    memory_probe(spec) -> dict: the child side of --memory-probe.
    extra_payload: more top-level JSON fields, placed after "threads".
    """
    import jem_fast

    global _SELECTED_BASELINES
    if args.memory_probe is not None:
        print(json.dumps(memory_probe(json.loads(args.memory_probe))))
        return None
    try:
        _SELECTED_BASELINES = (None if getattr(args, "baselines", None) is None
                               else parse_baselines(args.baselines))
    except ValueError as exc:
        sys.exit(f"--baselines: {exc}")
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

    mode = benchmark_mode(args)
    print(f"\njem_fast {title} benchmark -- {args.device}, {mode}, "
          f"torch.set_num_threads({args.threads}), torch {torch.__version__}")
    print(legend)
    print(table(rows, args.device))
    if targets:
        print(f"\nTargets ({targets['shape']})" + (f" -- {targets['note']}"
                                                     if targets["note"] else ""))
        for t in targets["items"]:
            flag = "INFO  " if t["met"] is None else "MET   " if t["met"] else "MISSED"
            print(f"  {flag} {t['target']}: {t['measured']}")
    contended = [r for r in rows if (r.get("other_cpu_fraction") or 0.0) > CONTENDED_FRACTION]
    if contended:
        print(f"\nWARNING: {len(contended)} timing(s) ran while other processes used more than "
              f"{100 * CONTENDED_FRACTION:.0f}% of the CPUs (CONTENDED in the notes); rerun "
              "on a quiet machine before comparing them.")
    # The extension is rebuilt in place; the CPU memory probes load it afresh in each child.
    ext_end = _extension_file_info(jem_fast)
    if ext_end != machine["jem_fast_extension"]:
        print(f"\nWARNING: the jem_fast extension file changed during the run "
              f"({machine['jem_fast_extension']} -> {ext_end}); memory probes (fresh processes) "
              "may have loaded another build than the timings. Rerun.")
    print(f"\ntotal wall time {total_s:.0f} s")

    now = datetime.datetime.now()
    payload = {
        "benchmark": name, "date": now.isoformat(timespec="seconds"),
        "argv": sys.argv, "device": args.device, "mode": mode, "threads": args.threads,
        **(extra_payload or {}),
        "dtypes": sorted({r["dtype"] for r in rows}), "timing": TIMING[(args.device, mode)],
        "machine": machine, "methodology": methodology, "correctness_checks": checks,
        "targets": targets, "total_wall_s": round(total_s, 1), "results": rows,
    }
    payload["machine"]["jem_fast_extension_at_end"] = ext_end
    payload["machine"]["load_average_at_end"] = list(os.getloadavg())
    payload["machine"]["cpu_busy_fraction_at_end"] = cpu_busy_fraction()
    stem = f"{name}_{args.device}_{now:%Y%m%d-%H%M%S}"
    json_path, csv_path = write_results(args.out, stem, payload, [flatten(r) for r in rows])
    print(f"wrote {json_path} and {csv_path}")
    payload["files"] = {"json": str(json_path), "csv": str(csv_path)}
    return payload
