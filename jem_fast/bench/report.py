"""`jem-fast bench`'s summary over the benchmark families: one table, its JSON and CSV, and the
PNG plots (when matplotlib is importable).

Input: {family: payload} where payload is what run_benchmark_main returns (the same dict it
writes as JSON), so the summary never re-measures anything.
"""
from __future__ import annotations

import datetime
from pathlib import Path

from .common import format_table, write_results

SHAPE_KEYS = ("n", "d", "m", "b", "k", "crops", "views", "case")
# Summary column label of each baseline impl (the --baselines names; 'reference' is the eager
# oracle). Impls not listed are shown under their own name.
IMPL_LABELS = {"eager": "reference", "compile": "compile"}
BASELINE_ORDER = ("reference", "compile", "lightly", "inf_cl", "kornia", "torchvision")


def op_name(row, family):
    return str(row.get("loss") or row.get("op") or row.get("part") or family)


def shape_text(row):
    parts = []
    for key in SHAPE_KEYS:
        value = row.get(key)
        if value in (None, "", "-"):
            continue
        parts.append(f"{key.upper() if len(key) == 1 else key}={value}")
    return " ".join(parts)


def _case_key(row, family):
    # What every implementation's row of one case shares; result fields (timings, per-impl
    # derived figures such as views/s or a route) differ between them and are left out.
    return (op_name(row, family), shape_text(row), row.get("dtype"), row.get("sweep"),
            row.get("step"))


def _time_ms(row):
    return row["fwd_bwd"]["median_ms"] if row.get("status") == "ok" and "fwd_bwd" in row else None


def summary_rows(payloads):
    """One dict per (family, op, shape, dtype): jem_fast's time and memory, each baseline's ratio
    (or why it has none), from the families' result rows."""
    out = []
    for family, payload in payloads.items():
        cases = {}
        for row in payload.get("results", []):
            cases.setdefault(_case_key(row, family), []).append(row)
        for rows in cases.values():
            jf = next((r for r in rows if r["impl"] == "jem_fast"), None)
            if jf is None:
                continue
            entry = {"family": family, "op": op_name(jf, family), "shape": shape_text(jf),
                     "dtype": jf.get("dtype", ""), "sweep": jf.get("sweep", ""),
                     "jem_fast_ms": _time_ms(jf), "jem_fast_status": jf.get("status"),
                     "jem_fast_peak_mb": jf.get("peak_extra_mb"), "baselines": {}}
            for r in rows:
                if r is jf:
                    continue
                label = IMPL_LABELS.get(r["impl"], r["impl"])
                t = _time_ms(r)
                ratio = (round(t / entry["jem_fast_ms"], 2)
                         if t is not None and entry["jem_fast_ms"] else None)
                entry["baselines"][label] = {"ratio": ratio, "ms": t, "status": r.get("status"),
                                             "peak_mb": r.get("peak_extra_mb"),
                                             "note": r.get("note", "")}
            out.append(entry)
    return out


def _ratio_cell(b):
    if b is None:
        return ""
    if b["ratio"] is not None:
        return f"{b['ratio']:.2f}x"
    return {"skipped": "skip", "n/a": "n/a"}.get(b["status"], str(b["status"]))


def _mb(value):
    return f"{value:.0f}" if isinstance(value, (int, float)) else str(value or "")


def summary_table(rows) -> str:
    if not rows:
        return "(no results)"
    labels = []
    for r in rows:
        for label in r["baselines"]:
            if label not in labels:
                labels.append(label)
    # The --baselines vocabulary first, in its order; in-module variants (EMA loops) after.
    # A baseline left out by --baselines everywhere gets no column.
    labels = [x for x in labels if any(
        r["baselines"].get(x, {}).get("note") != "not in --baselines"
        and r["baselines"].get(x) is not None for r in rows)]
    seen = list(labels)
    labels.sort(key=lambda x: (BASELINE_ORDER.index(x) if x in BASELINE_ORDER
                               else len(BASELINE_ORDER), seen.index(x)))
    cells = []
    for r in rows:
        ref = r["baselines"].get("reference")
        cell = {"family": r["family"], "op": r["op"], "shape": r["shape"], "dtype": r["dtype"],
                "jf": (f"{r['jem_fast_ms']:.2f}" if r["jem_fast_ms"] is not None
                       else r["jem_fast_status"]),
                "jf_mb": _mb(r["jem_fast_peak_mb"]),
                "ref_mb": _mb(ref["peak_mb"]) if ref else ""}
        for label in labels:
            cell[label] = _ratio_cell(r["baselines"].get(label))
        cells.append(cell)
    columns = [("family", "family"), ("op", "op"), ("shape", "shape"), ("dtype", "dtype"),
               ("jf", "jem_fast ms")]
    columns += [(label, f"{label} x") for label in labels]
    columns += [("jf_mb", "jem_fast peak MB"), ("ref_mb", "reference peak MB")]
    return format_table(cells, columns)


def write_summary(out_dir, stem, rows, payloads, total_s):
    """<stem>.json: the summary rows, where each family's full results are, and the wall time;
    <stem>.csv: one line per summary row, a ratio / time / peak column per baseline."""
    flat = []
    for r in rows:
        line = {k: v for k, v in r.items() if k != "baselines"}
        for label, b in r["baselines"].items():
            line[f"{label}_ratio"] = b["ratio"]
            line[f"{label}_ms"] = b["ms"]
            line[f"{label}_status"] = b["status"]
            line[f"{label}_peak_mb"] = b["peak_mb"]
        flat.append(line)
    payload = {"benchmark": "summary",
               "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "total_wall_s": round(total_s, 1),
               "family_files": {name: p.get("files") for name, p in payloads.items()},
               "machine": next(iter(payloads.values()), {}).get("machine"),
               "summary": rows}
    return write_results(out_dir, stem, payload, flat)


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------

def _matplotlib():
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001 - any import problem means "no plots"
        return None, f"matplotlib not importable ({type(exc).__name__}); pip install matplotlib"
    return plt, None


def _x_key(rows):
    """The shape key that varies most among these rows (the plot's x axis), or None."""
    best, count = None, 1
    for key in ("n", "d", "b", "k", "m"):
        values = {r.get(key) for r in rows if isinstance(r.get(key), (int, float))}
        if len(values) > count:
            best, count = key, len(values)
    return best


def _series(rows, x_key):
    """{(op, impl, fixed dims): [(x, time_ms or None, peak_mb or None, note)]} sorted by x."""
    out = {}
    for r in rows:
        if x_key is None or not isinstance(r.get(x_key), (int, float)):
            continue
        fixed = " ".join(f"{k.upper()}={r[k]}" for k in ("n", "d", "m", "b", "k")
                         if k != x_key and r.get(k) not in (None, ""))
        label = f"{op_name(r, '')} {r['impl']}" + (f" ({fixed})" if fixed else "")
        mb = r.get("peak_extra_mb")
        out.setdefault((label, r.get("dtype", "")), []).append(
            (r[x_key], _time_ms(r), mb if isinstance(mb, (int, float)) else None,
             "" if r.get("status") == "ok" else str(r.get("note", ""))))
    return {k: sorted(v) for k, v in out.items()}


def _memory_reason(note):
    note = note.lower()
    return any(word in note for word in ("memory", " gb", "out of memory", "oom"))


def plot_family(plt, name, payload, out_dir):
    """One figure: time and peak extra memory against the varying dimension, a line per (op,
    impl, fixed dims). A reference that did not run (skipped by its memory estimate, or out of
    memory) is drawn as an 'x' on the top edge at that x. None when nothing varies."""
    rows = payload.get("results", [])
    groups = {}
    for r in rows:
        groups.setdefault((op_name(r, name), r.get("sweep", "")), []).append(r)
    panels = []
    for (op, sweep), op_rows in groups.items():
        x_key = _x_key(op_rows)
        if x_key is not None:
            panels.append((op, sweep, x_key, op_rows))
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 3.6 * len(panels)), squeeze=False)
    for (op, sweep, x_key, op_rows), (ax_t, ax_m) in zip(panels, axes):
        for (label, dtype), points in _series(op_rows, x_key).items():
            xs = [p[0] for p in points]
            for ax, idx in ((ax_t, 1), (ax_m, 2)):
                ok = [(x, p[idx]) for x, p in zip(xs, points) if p[idx] is not None]
                if not ok:
                    continue  # an implementation that never ran here (not selected, no peer)
                line, = ax.plot(*zip(*ok), marker="o", label=f"{label} {dtype}")
                color = line.get_color()
                # Only a reference that did not fit is drawn: rows skipped for time (e.g. compile
                # in --quick) or missing peers say nothing about scaling.
                missing = [p[0] for p in points if p[idx] is None and _memory_reason(p[3])]
                if missing:
                    # axes transform: x in data, y at the top edge of the panel
                    ax.plot(missing, [0.98] * len(missing), "x", markersize=10, color=color,
                            transform=ax.get_xaxis_transform(), clip_on=False,
                            label=f"{label}: not run (memory)")
        title = f"{name}: {op}" + (f" ({sweep})" if sweep else "")
        for ax, ylabel in ((ax_t, "time per call, ms (median)"), (ax_m, "peak extra memory, MB")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(x_key.upper() if len(x_key) == 1 else x_key)
            ax.set_ylabel(ylabel)
            ax.set_title(title, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    machine = payload.get("machine") or {}
    fig.suptitle(f"jem_fast {name} -- {payload.get('device')}, {payload.get('mode')}, "
                 f"{payload.get('threads')} threads, "
                 f"{machine.get('gpu_name', machine.get('cpu_model', ''))}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # room for the suptitle
    path = Path(out_dir) / f"{name}_{payload.get('device')}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(payloads, out_dir):
    """Writes one PNG per family (where a dimension varies); returns (paths, reason if none)."""
    plt, why = _matplotlib()
    if plt is None:
        return [], why
    paths = []
    for name, payload in payloads.items():
        path = plot_family(plt, name, payload, out_dir)
        if path is not None:
            paths.append(path)
    return paths, (None if paths else "no family had a dimension that varies")


__all__ = ["summary_rows", "summary_table", "write_summary", "plot_all", "plot_family"]

