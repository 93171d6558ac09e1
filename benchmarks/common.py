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
Output
    machine_info(device, threads), format_table(rows, columns), write_results(...)
"""
from __future__ import annotations

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

REPO_ROOT = Path(__file__).resolve().parent.parent


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
