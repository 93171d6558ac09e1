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
    machine_info(device, threads), write_results(...)
    compact_table(rows, step)       the default table: one line per case, "vs <impl>" ratios,
                                    peak memory, reasons instead of bare "skip"; <= 160 chars
    format_table(rows, columns)     any table (the --wide one: one line per implementation)
The driver shared by the bench_* modules
    benchmark_parser(module, doc)   the common command line (--device, --quick/--full, --out,
                                    --threads, --dtype, --wide, --baselines, and the internal
                                    --memory-probe)
    run_benchmark_main(args, ...)   memory-probe dispatch, checks, machine info, the run, the
                                    printed table, warnings, the JSON (targets included) and CSV;
                                    returns the JSON payload (for `jem-fast bench`)
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import gc
import importlib
import json
import os
import platform
import re
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
    "dali": ("dali",),
    "pillow_simd": ("lightly_simd",),
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

# The widest line the default output prints: it has to fit a terminal (--wide lifts it).
MAX_LINE_WIDTH = 160

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


def peer_available(package: str, module: str, *names: str):
    """(True, None) when `module` imports and has `names`; else (False, the note of the rows
    that skip it: "<package> not importable (...)", which the tables show as "not
    installed")."""
    try:
        imported = importlib.import_module(module)
        missing = [n for n in names if not hasattr(imported, n)]
        if missing:
            raise ImportError(f"{module} has no {', '.join(missing)}")
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken dependency of the peer
        return False, f"{package} not importable ({type(exc).__name__}: {str(exc)[:80]})"
    return True, None


def quick_compile_skip(rows, mode, device) -> str | None:
    """The note of a compile row that --quick on CPU skips because the eager row (already in
    `rows`) was slower than QUICK_COMPILE_MAX_EAGER_S; None: run it."""
    if mode != "quick" or device != "cpu":
        return None
    if baseline_skip_note("compile", _SELECTED_BASELINES) is not None:
        return None  # not selected at all: measure_row says so
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


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask: taskset and cgroup cpusets count),
    else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_header(title, device, mode, threads, machine, dtypes=None) -> str:
    """The line that opens a table: what ran where, with how many threads, on which torch."""
    where = machine.get("gpu_name") if device == "cuda" else machine.get("cpu_model")
    usable = machine.get("usable_cpus")
    return (f"jem_fast {title}: {device} ({where}), {mode} grid"
            + (f", {', '.join(dtypes)}" if dtypes else "")
            + f", {threads} thread{'s' if threads != 1 else ''}"
            + (f" (of {usable} usable CPUs)" if usable else "")
            + f", torch {str(machine.get('torch_version', torch.__version__)).split('+')[0]}")


def machine_info(device: str, threads: int) -> dict:
    import jem_fast

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": default_threads(),
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


def format_table(rows, columns, max_width=None) -> str:
    """rows: list of dicts; columns: list of (key, header). Values are printed as given.

    max_width: the widest line allowed; a last column keyed "note" is cut (ending in "...")
    to fit it. Other columns are never cut: they hold the numbers."""
    cells = [[str(row.get(key, "")) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    if max_width is not None and columns and columns[-1][0] == "note":
        room = max(max_width - sum(widths[:-1]) - 2 * (len(widths) - 1), len(headers[-1]))
        if widths[-1] > room:
            widths[-1] = room
            cells = [c[:-1] + [shorten(c[-1], room)] for c in cells]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w)
                      for c, w in zip(cell, widths)).rstrip() for cell in cells]
    return "\n".join(out)


def shorten(text: str, width: int) -> str:
    """text cut to `width` characters, the cut marked with '...'."""
    text = str(text)
    return text if len(text) <= width else text[:max(width - 3, 0)] + "..."


def wrap(text: str, width: int = None, indent: str = "") -> str:
    """A paragraph of legend text broken into lines of at most `width` characters."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width or MAX_LINE_WIDTH, initial_indent=indent,
                                    subsequent_indent=indent, break_on_hyphens=False))


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


# --------------------------------------------------------------------------------------------
# Tables: the compact one (default, one line per case) and the --wide one (one per impl)
# --------------------------------------------------------------------------------------------

def timing_columns(step: str = "fwd+bwd"):
    """Columns of the --wide table (one line per implementation; cells: timing_cells), after
    each benchmark's own shape columns. `step`: what one timed call does, for the header."""
    return [("fb", f"{step} ms"), ("iqr", "IQR ms"), ("minmax", "min-max ms"),
            ("reps", "n"), ("fwd", "fwd ms"), ("xfb", "time / jem_fast"),
            ("xf", "fwd / jem_fast"), ("peak", "peak extra MB")]


TIMING_COLUMNS = timing_columns()


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


# Shape fields, in the order a case's name lists them when its rows carry no "label".
SHAPE_KEYS = ("n", "d", "m", "b", "k", "crops", "images", "views")

# Columns of the comparisons, left to right: the eager reference (for the EMA update, the
# per-parameter Python loop plays that part), torch.compile of it, then the peer libraries;
# anything else (in-module variants such as foreach_lerp) after them.
IMPL_ORDER = ("eager", "loop", "compile", "lightly", "lightly_simd", "inf_cl", "kornia",
              "torchvision", "dali", "pillow")

# Why a row has no time, in the few words a table cell has room for, and what each means (the
# legend under a table lists the ones it uses).
REASONS = {
    "too big": "the reference's estimated memory exceeds the limit (CPU 4 GB, CUDA half the "
               "GPU), so it is not run",
    "OOM": "ran out of memory",
    "--full only": "left out of --quick to keep it short; --full runs it",
    "not installed": "that library is not importable here (pip install it)",
    "not selected": "left out by --baselines",
    "compile failed": "torch.compile raised an error",
    "failed": "raised an error (see --wide or the JSON)",
    "skipped": "not run (see --wide or the JSON)",
}
CONTENDED_MARK = "*"


def case_label(row) -> str:
    """A case (what every implementation's row of one measurement shares) in words: the row's
    "label" where the benchmark sets one (e.g. "vicreg N=256 D=8192"), else its op name and
    shape fields."""
    if row.get("label"):
        return str(row["label"])
    name = row.get("loss") or row.get("op") or row.get("part") or row.get("case") or ""
    parts = [str(name)] if name else []
    for key in SHAPE_KEYS:
        value = row.get(key)
        if value not in (None, "", "-"):
            parts.append(f"{key.upper() if len(key) == 1 else key}={value}")
    return " ".join(parts)


def reason_tag(row) -> str:
    """The REASONS key for a row (or summary entry) that has no time: status and note."""
    note = str(row.get("note") or "").lower()
    if "not in --baselines" in note:
        return "not selected"
    if "not importable" in note or "not installed" in note:
        return "not installed"
    if "compile failed" in note:
        return "compile failed"
    if any(word in note for word in ("out of memory", "can't allocate", "cannot allocate",
                                     "memoryerror", "oom")):
        return "OOM"
    if "estimated" in note and "gb" in note:
        return "too big"
    if "--quick" in note or "--full" in note:
        return "--full only"
    return "failed" if row.get("status") == "n/a" else "skipped"


def is_contended(row) -> bool:
    return (row.get("other_cpu_fraction") or 0.0) > CONTENDED_FRACTION


def format_ms(ms) -> str:
    """A time in ms with 3 significant digits (no 'e' notation)."""
    if ms is None:
        return ""
    for limit, digits in ((100, 0), (10, 1), (1, 2)):
        if ms >= limit:
            return f"{ms:.{digits}f}"
    return f"{ms:.3f}"


def format_ratio(ratio) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.1f}x" if ratio >= 10 \
        else f"{ratio:.2f}x"


def format_mb(value) -> str:
    if isinstance(value, (int, float)):
        return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"
    return str(value or "")


def ordered_impls(names):
    """Comparison impl names in IMPL_ORDER, the others after them in their first-seen order."""
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda x: (IMPL_ORDER.index(x) if x in IMPL_ORDER
                                        else len(IMPL_ORDER), names.index(x)))


def ratio_cell(row) -> str:
    """'3.00x' (row's time / jem_fast's), marked when contended; or why there is none."""
    if row is None:
        return ""
    if row.get("status") == "ok" and row.get("fwd_bwd_vs_jem_fast") is not None:
        return format_ratio(row["fwd_bwd_vs_jem_fast"]) + (
            CONTENDED_MARK if is_contended(row) else "")
    return reason_tag(row)


def table_legend(time_header, tags=(), contended=False, extra=None) -> str:
    """The lines under a compact table or the summary: what the columns mean, the reasons
    that appear in it, the contention mark."""
    lines = [wrap(f"{time_header}: jem_fast's median; vs X: X's median time / jem_fast's in "
                  "the same run (3.00x: jem_fast 3 times as fast; below 1x: slower)"),
             "MB: peak extra memory of one call (CPU: peak RSS of a fresh process; CUDA: "
             "max_memory_allocated)"]
    if extra:
        lines.append(wrap(extra))
    used = [t for t in REASONS if t in tags]
    if used:
        lines.append(wrap("no ratio: " + "; ".join(f"{t} = {REASONS[t]}" for t in used)))
    if contended:
        lines.append(wrap(f"{CONTENDED_MARK} timed while other processes used more than "
                          f"{100 * CONTENDED_FRACTION:.0f}% of the CPUs: rerun on a quiet "
                          "machine before quoting it"))
    return "\n".join(lines)


def compact_table(rows, step: str = "time", max_width: int = None) -> str:
    """One line per case: jem_fast's median time, every other implementation's time as a
    multiple of it ("vs eager"), the peak extra memory of jem_fast and of the eager reference,
    and a short note; the legend under it. The --wide table has every figure of every row.

    step: what one timed call does ("fwd+bwd", "fwd", "call"): the time column's header. Where
    rows carry their own "step" (clustering: Sinkhorn forward, losses fwd+bwd) and they differ,
    a "step" column says it per case."""
    max_width = max_width or MAX_LINE_WIDTH
    cases = {}
    for r in rows:
        cases.setdefault((case_label(r), r.get("dtype")), []).append(r)
    several_dtypes = len({r.get("dtype") for r in rows}) > 1
    impls = ordered_impls(r["impl"] for r in rows if r["impl"] != "jem_fast")
    # A comparison nobody asked for (--baselines), or whose library is missing everywhere,
    # gets a line under the table instead of a column.
    absent = {}
    for impl in impls:
        tags = {reason_tag(r) if r["status"] != "ok" else "ran" for r in rows
                if r["impl"] == impl}
        if "not selected" in tags:  # --baselines is one choice for the whole run
            absent[impl] = "not selected"
        elif tags == {"not installed"}:
            absent[impl] = "not installed"
    impls = [i for i in impls if i not in absent]
    steps = {r.get("step") for r in rows if r.get("step")}
    per_case_step = len(steps) > 1
    time_header = f"{(steps.pop() if len(steps) == 1 else step)} ms" if not per_case_step \
        else "jem_fast ms"
    cells, tags, contended = [], set(), False
    for (label, dtype), case_rows in cases.items():
        by_impl = {r["impl"]: r for r in case_rows}
        jf = by_impl.get("jem_fast")
        if jf is None:
            continue
        cell = {"case": label + (f" {dtype}" if several_dtypes else ""),
                "step": jf.get("step", step), "jf_mb": format_mb(jf.get("peak_extra_mb"))}
        if jf["status"] == "ok":
            cell["ms"] = format_ms(jf["fwd_bwd"]["median_ms"]) + (
                CONTENDED_MARK if is_contended(jf) else "")
        else:
            cell["ms"] = reason_tag(jf)
            tags.add(cell["ms"])
        for impl in impls:
            other = by_impl.get(impl)
            cell[impl] = ratio_cell(other)
            if other is not None and other.get("status") != "ok":
                tags.add(cell[impl])
            contended |= other is not None and is_contended(other)
        reference = by_impl.get("eager") or by_impl.get("loop")
        cell["ref_mb"] = format_mb(reference.get("peak_extra_mb")) if reference else ""
        # The contention note is the mark on the time; what else jem_fast's row says stays.
        notes = [re.sub(r"CONTENDED: [^;]*% of the CPUs while timing;?", "",
                        jf.get("note") or "").strip()]
        contended |= is_contended(jf)
        compiled = by_impl.get("compile", {})
        if "compile_s" in compiled:
            notes.append(f"compiling took {compiled['compile_s']:.0f} s")
        cell["note"] = "; ".join(n for n in notes if n)
        cells.append(cell)
    columns = [("case", "case")] + ([("step", "timed")] if per_case_step else [])
    columns += [("ms", time_header)] + [(i, f"vs {i}") for i in impls]
    columns += [("jf_mb", "jem_fast MB"), ("ref_mb", "eager MB")]
    if any(c["note"] for c in cells):
        columns.append(("note", "note"))
    table = format_table(cells, columns, max_width=max_width)
    text = table + "\n" + table_legend(time_header, tags, contended)
    if absent:
        text += "\n" + wrap("not compared: " + ", ".join(f"{impl} ({why})"
                                                         for impl, why in absent.items()))
    return text


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
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="torch.set_num_threads (default: the CPUs this process may use, "
                        "%(default)s here)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                   help="default: float32 on CPU, bfloat16 and float32 on CUDA")
    p.add_argument("--baselines", default=None, metavar="LIST",
                   help="comma-separated subset of " + ",".join(BASELINE_IMPLS) +
                        " (default: every baseline the benchmark knows)")
    p.add_argument("--wide", action="store_true",
                   help="one line per implementation with every figure (spread, forward "
                        "alone, full notes) instead of one line per case")
    p.add_argument("--memory-probe", metavar="SPEC_JSON", default=None,
                   help=argparse.SUPPRESS)  # internal: the child process of the memory probe
    return p


def run_benchmark_main(args, *, name, title, legend, run, evaluate_targets, table,
                       memory_probe, methodology, extra_payload=None, step=None):
    """Runs one benchmark from its parsed command line (see benchmark_parser).

    name: "covariance", ... -- the JSON's "benchmark" and the output files'
        <name>_<device>_<date>.json/.csv; title: in the printed header; legend: the line
        under it that explains the table.
    run(args) -> (rows, correctness checks); evaluate_targets(rows, args) -> None or
        {"shape", "note", "items": [{"target", "measured", "met": True/False/None}]}
        (met None: information, printed INFO); table(rows, device) -> the printed table;
    memory_probe(spec) -> dict: the child side of --memory-probe.
    extra_payload: more top-level JSON fields, placed after "threads".
    step: what one timed call does ("fwd+bwd", "fwd", "call", "update"), the header of the
        compact table's time column (rows with their own "step" field override it).
    The compact table (compact_table) is printed unless args.wide, then table(rows, device).
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
    wide = getattr(args, "wide", False)
    print("\n" + wrap(run_header(f"{title} benchmark", args.device, mode, args.threads,
                                 machine, sorted({r["dtype"] for r in rows if r.get("dtype")}))))
    if legend:
        print(wrap(legend, width=None if not wide else 10**6))
    # The targets of the project's issues stay in the JSON ("targets"): they are not the user's.
    print(table(rows, args.device) if wide else compact_table(rows, step=step or "time"))
    contended = [r for r in rows if is_contended(r)]
    if contended:
        print("\n" + wrap(f"WARNING: {len(contended)} timing(s) ran while other processes used "
                          f"more than {100 * CONTENDED_FRACTION:.0f}% of the CPUs ("
                          + ("CONTENDED in the notes" if wide else f"marked {CONTENDED_MARK}")
                          + "); rerun on a quiet machine before comparing them."))
    # The extension is rebuilt in place; the CPU memory probes load it afresh in each child.
    ext_end = _extension_file_info(jem_fast)
    if ext_end != machine["jem_fast_extension"]:
        print("\n" + wrap(f"WARNING: the jem_fast extension file changed during the run "
                          f"({machine['jem_fast_extension']} -> {ext_end}); memory probes "
                          "(fresh processes) may have loaded another build than the timings. "
                          "Rerun."))
    print(f"\ntotal wall time {total_s:.0f} s")

    now = datetime.datetime.now()
    payload = {
        "benchmark": name, "date": now.isoformat(timespec="seconds"),
        "argv": sys.argv, "device": args.device, "mode": mode, "threads": args.threads,
        "step": step,
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
    print(f"wrote {json_path}\nwrote {csv_path}")
    payload["files"] = {"json": str(json_path), "csv": str(csv_path)}
    return payload
