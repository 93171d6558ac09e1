"""`jem-fast bench`'s summary over the benchmark families: one table (one line per case, at most
160 characters), its JSON and CSV, and the figures when matplotlib is importable: summary.png
(per case, speedup over each baseline and peak memory) and, for the scaling view,
scaling_<device>.png (time and memory against the growing N or D).

Input: {family: payload} where payload is what run_benchmark_main returns (the same dict it
writes as JSON), so the summary never re-measures anything.
"""
from __future__ import annotations

import datetime
from pathlib import Path

from .common import (CONTENDED_MARK, MAX_LINE_WIDTH, case_label, format_mb, format_ms,
                     format_ratio, format_table, is_contended, reason_tag, table_legend, wrap,
                     write_results)

SHAPE_KEYS = ("n", "d", "m", "b", "k", "crops", "views", "case")
# Summary column label of each baseline impl (the --baselines names; 'reference' is the eager
# oracle). Impls not listed are shown under their own name.
IMPL_LABELS = {"eager": "reference", "compile": "compile"}
# What the summary table and figure show of each baseline: the --baselines names, "reference"
# as "eager" (for the EMA update the per-parameter loop, its eager formula, stands in).
# In-module variants (foreach_lerp) stay in their family's table and the JSON.
DISPLAY_NAMES = {"reference": "eager", "compile": "compile", "lightly": "lightly",
                 "inf_cl": "inf_cl", "kornia": "kornia", "torchvision": "torchvision",
                 "dali": "DALI", "lightly_simd": "lightly+pillow-simd"}
STANDS_IN_FOR = {"reference": ("reference", "loop")}
# What one timed call of a family is, where its payload and rows do not say.
FAMILY_STEPS = {"augment": "call", "deepcluster": "fwd"}


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
                     "case": case_label(jf), "dtype": jf.get("dtype", ""),
                     "sweep": jf.get("sweep", ""),
                     "step": (jf.get("step") or payload.get("step")
                              or FAMILY_STEPS.get(family, "fwd+bwd")),
                     "jem_fast_ms": _time_ms(jf), "jem_fast_status": jf.get("status"),
                     "jem_fast_note": jf.get("note", ""),
                     "jem_fast_contended": is_contended(jf),
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
                                             "note": r.get("note", ""),
                                             "contended": is_contended(r)}
            out.append(entry)
    return out


def shown_baseline(entry, label):
    """The baseline entry the summary shows under `label` (see STANDS_IN_FOR), or None."""
    for name in STANDS_IN_FOR.get(label, (label,)):
        if name in entry["baselines"]:
            return entry["baselines"][name]
    return None


def _cell(b):
    if b is None:
        return ""
    if b["ratio"] is not None:
        return format_ratio(b["ratio"]) + (CONTENDED_MARK if b.get("contended") else "")
    return reason_tag(b)


def shown_labels(rows):
    """(labels with a column, {label: why it has none}) among DISPLAY_NAMES: a baseline that
    is not installed, or left out by --baselines, everywhere gets a line instead of a column."""
    shown, absent = [], {}
    for label in DISPLAY_NAMES:
        entries = [b for b in (shown_baseline(r, label) for r in rows) if b is not None]
        if not entries:
            continue
        tags = {reason_tag(b) if b["ratio"] is None else "ran" for b in entries}
        if "not selected" in tags:  # --baselines is one choice for the whole run
            absent[label] = "not selected"
        elif tags == {"not installed"}:
            absent[label] = "not installed"
        else:
            shown.append(label)
    return shown, absent


def summary_table(rows, max_width=None) -> str:
    """One line per case of every family: jem_fast's median time, "vs <baseline>" = that
    baseline's time / jem_fast's, peak extra memory of jem_fast and of the eager reference;
    the legend (the reasons that appear, the contention mark) under it."""
    if not rows:
        return "(no results)"
    labels, absent = shown_labels(rows)
    several_dtypes = len({r["dtype"] for r in rows}) > 1
    steps = {r.get("step", "fwd+bwd") for r in rows}
    cells, tags, contended = [], set(), False
    for r in rows:
        ref = shown_baseline(r, "reference")
        cell = {"case": r.get("case") or f"{r['op']} {r['shape']}",
                "step": r.get("step", "fwd+bwd"),
                "jf": (format_ms(r["jem_fast_ms"]) + (CONTENDED_MARK
                                                       if r.get("jem_fast_contended") else "")
                       if r["jem_fast_ms"] is not None else reason_tag(
                           {"status": r["jem_fast_status"], "note": r.get("jem_fast_note")})),
                "jf_mb": format_mb(r["jem_fast_peak_mb"]),
                "ref_mb": format_mb(ref["peak_mb"]) if ref else ""}
        if several_dtypes:
            cell["case"] += f" {r['dtype']}"
        contended |= bool(r.get("jem_fast_contended"))
        for label in labels:
            b = shown_baseline(r, label)
            cell[label] = _cell(b)
            if b is not None and b["ratio"] is None:
                tags.add(cell[label])
            contended |= bool(b and b.get("contended"))
        cells.append(cell)
    time_header = f"{next(iter(steps))} ms" if len(steps) == 1 else "jem_fast ms"
    columns = [("case", "case")] + ([("step", "timed")] if len(steps) > 1 else [])
    columns += [("jf", time_header)] + [(x, f"vs {DISPLAY_NAMES[x]}") for x in labels]
    columns += [("jf_mb", "jem_fast MB"), ("ref_mb", "eager MB")]
    text = format_table(cells, columns, max_width=max_width or MAX_LINE_WIDTH)
    extra = ("timed: fwd+bwd = forward and backward, fwd = forward (no backward exists), call "
             "= one call (augmentation), update = one EMA update; for the EMA update 'eager' "
             "is the per-parameter Python loop" if len(steps) > 1 else None)
    text += "\n" + table_legend(time_header, tags, contended, extra)
    if absent:
        text += "\n" + wrap("not compared: " + ", ".join(
            f"{DISPLAY_NAMES[x]} ({why})" for x, why in absent.items()))
    return text


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


COLORS = {"jem_fast": "#1f77b4", "reference": "#ff7f0e", "compile": "#2ca02c",
          "lightly": "#d62728", "inf_cl": "#e377c2", "kornia": "#8c564b",
          "torchvision": "#9467bd", "dali": "#17becf"}


def figure_title(what, payload) -> str:
    """'<what> -- cpu (AMD EPYC), quick grid, 2 threads, torch 2.14.1'."""
    machine = payload.get("machine") or {}
    where = machine.get("gpu_name") if payload.get("device") == "cuda" else \
        machine.get("cpu_model", "")
    torch_version = str(machine.get("torch_version", "")).split("+")[0]
    return (f"{what} -- {payload.get('device')} ({where}), {payload.get('mode')} grid, "
            f"{payload.get('threads')} threads" + (f", torch {torch_version}"
                                                   if torch_version else ""))


def _tick_formatter(unit):
    """Log-axis tick labels as plain numbers (0.1x, 1x, 10x) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: f"{v:g}{unit}")


def _plot_value(value, floor):
    return max(value, floor) if isinstance(value, (int, float)) else None


def plot_summary(plt, rows, payload, out_dir, name="summary.png"):
    """One figure for the quick grid: per case, jem_fast's speedup over each baseline as grouped
    horizontal bars on a log axis with the 1x line (left panel), and the peak extra memory of
    jem_fast and of each baseline (right panel, log axis). A baseline that did not fit ('too
    big', 'OOM') is written where its bar would be. None when no case has a comparison."""
    labels, _absent = shown_labels(rows)
    cases = [r for r in rows if any(shown_baseline(r, x) for x in labels)]
    if not cases:
        return None
    several_dtypes = len({r["dtype"] for r in cases}) > 1

    def drawn(r, label):  # a bar, or a reason worth a line: not "not installed" / "not selected"
        b = shown_baseline(r, label)
        return b is not None and (b["ratio"] is not None or isinstance(b["peak_mb"], (int, float))
                                  or reason_tag(b) not in ("not selected", "not installed"))
    case_bars = [["jem_fast"] + [x for x in labels if drawn(r, x)] for r in cases]
    slot, gap = 1.0, 0.8  # bar pitch and the space between cases, in y units
    total = sum(len(bars) for bars in case_bars) * slot + gap * len(cases)
    fig, (ax_s, ax_m) = plt.subplots(1, 2, figsize=(15, max(1.4 + 0.2 * total, 4.0)),
                                     sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    yticks, ylabels = [], []
    ratios, mems = [], []
    top = 0.0
    for r, bars in zip(cases, case_bars):
        center = top - (len(bars) - 1) * slot / 2  # cases from the top down
        top -= len(bars) * slot + gap
        yticks.append(center)
        ylabels.append(f"{r.get('case') or r['op']}" + (f" {r['dtype']}" if several_dtypes
                                                        else "") + f"\n({r['step']})")
        for j, label in enumerate(bars):
            y = center + ((len(bars) - 1) / 2 - j) * slot
            if label == "jem_fast":
                mb = r["jem_fast_peak_mb"]
                b = None
                if r["jem_fast_ms"] is not None:  # the absolute time the ratios are taken of
                    ax_s.text(1.0, y, f"  jem_fast {format_ms(r['jem_fast_ms'])} ms",
                              va="center", fontsize=7, color=COLORS["jem_fast"])
            else:
                b = shown_baseline(r, label)
                if b is None:
                    continue
                mb = b["peak_mb"]
                if b["ratio"] is not None:
                    ratios.append(b["ratio"])
                    ax_s.barh(y, b["ratio"], height=slot * 0.8, left=0,
                              color=COLORS.get(label, "grey"))
                    ax_s.text(b["ratio"], y, f" {format_ratio(b['ratio'])}", va="center",
                              fontsize=7)
                else:
                    why = reason_tag(b)
                    if why not in ("not selected", "not installed"):
                        ax_s.text(1.0, y, f"  {DISPLAY_NAMES[label]}: {why}", va="center",
                                  fontsize=7, color=COLORS.get(label, "grey"), style="italic")
            if isinstance(mb, (int, float)):
                mems.append(mb)
                ax_m.barh(y, _plot_value(mb, 0.01), height=slot * 0.8,
                          color=COLORS.get(label, "grey"))
                ax_m.text(_plot_value(mb, 0.01), y, f" {format_mb(mb)}", va="center", fontsize=7)
            elif label == "reference" and b is not None and reason_tag(b) in ("too big", "OOM"):
                ax_m.text(0.01, y, f"  eager: {reason_tag(b)}", va="center", fontsize=7,
                          color=COLORS["reference"], style="italic")
    ax_s.set_xscale("log")
    if ratios:
        low, high = min(ratios + [1.0]), max(ratios + [1.0])
        ax_s.set_xlim(low / 2.5, high * 4)
    ax_s.set_ylim(top + gap / 2, slot * 0.7)
    ax_s.axvline(1.0, color="black", linewidth=1)
    ax_s.text(1.0, 1.0, " 1x: as fast as jem_fast ", transform=ax_s.get_xaxis_transform(),
              ha="center", va="bottom", fontsize=8)
    ax_s.xaxis.set_major_formatter(_tick_formatter("x"))
    ax_s.set_xlabel("baseline time / jem_fast time (log scale; right of 1x: jem_fast faster)")
    ax_s.set_yticks(yticks)
    ax_s.set_yticklabels(ylabels, fontsize=8)
    ax_s.grid(True, axis="x", which="both", alpha=0.3)
    ax_s.set_title("speedup of jem_fast over each baseline", fontsize=10, pad=14)
    ax_m.set_xscale("log")
    if mems:
        ax_m.set_xlim(0.01, max(max(mems), 1.0) * 8)
    ax_m.xaxis.set_major_formatter(_tick_formatter(""))
    ax_m.set_xlabel("peak extra memory of one call, MB (log scale)")
    ax_m.grid(True, axis="x", which="both", alpha=0.3)
    ax_m.set_title("peak extra memory", fontsize=10, pad=14)
    ax_m.tick_params(axis="y", length=0)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS.get(x, "grey"))
               for x in ["jem_fast"] + labels]
    fig.legend(handles, ["jem_fast"] + [DISPLAY_NAMES[x] for x in labels],
               loc="upper right", ncol=len(labels) + 1, fontsize=8, frameon=False)
    fig.suptitle(figure_title("jem_fast against eager, compile and peer libraries", payload),
                 fontsize=10, x=0.01, ha="left")
    contended = any(r.get("jem_fast_contended") or any(
        b.get("contended") for b in r["baselines"].values()) for r in cases)
    if contended:
        fig.text(0.01, 0.004, "Some timings ran while other processes used the CPUs (marked "
                 f"{CONTENDED_MARK} in the tables): rerun on a quiet machine before quoting "
                 "them.", fontsize=8, color="#b00000")
    height = fig.get_figheight()  # inches: keep ~0.8 in for the title, ~0.3 in for the note
    fig.tight_layout(rect=(0, 0.3 / height, 1, 1 - 0.8 / height))
    path = Path(out_dir) / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_family(plt, name, payload, out_dir):
    """Line plots of a real sweep (the scaling view): per (op, sweep), time and peak extra
    memory against the dimension that grows, a line per (impl, dtype), both axes log. Where the
    reference did not run for lack of memory (its estimate, or out of memory) an 'x' on the top
    edge marks it. None when nothing varies."""
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
    from matplotlib.ticker import LogLocator, NullFormatter

    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 3.6 * len(panels) + 0.8),
                             squeeze=False)
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
                    ax.plot(missing, [0.97] * len(missing), "x", markersize=10, color=color,
                            markeredgewidth=2, transform=ax.get_xaxis_transform(),
                            clip_on=False, label=f"{label}: does not fit (not run)")
        title = f"{op}" + (f", {sweep}" if sweep else "")
        x_name = x_key.upper() if len(x_key) == 1 else x_key
        for ax, ylabel in ((ax_t, "fwd+bwd time, ms (median)"),
                           (ax_m, "peak extra memory, MB")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_formatter(_tick_formatter(""))
            # 1-2-5 steps: a sweep often spans less than a decade of time or memory
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(_tick_formatter(""))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(x_name)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}: {'time' if ax is ax_t else 'memory'} vs {x_name}",
                         fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="best", framealpha=0.85)
    fig.suptitle(figure_title(f"jem_fast {name}", payload), fontsize=10)
    if any(is_contended(r) for r in rows):
        fig.text(0.01, 0.004, "Some timings ran while other processes used the CPUs (marked "
                 f"{CONTENDED_MARK} in the table): rerun on a quiet machine before quoting "
                 "them.", fontsize=8, color="#b00000")
    height = fig.get_figheight()  # inches: ~0.5 in for the suptitle, ~0.3 in for the note
    fig.tight_layout(rect=(0, 0.3 / height, 1, 1 - 0.5 / height))
    path = Path(out_dir) / f"{name}_{payload.get('device')}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(payloads, out_dir, summary=None):
    """The figures of a run: summary.png from the summary rows of the families (not the sweeps),
    and line plots of the real sweeps (the scaling view). Returns (paths, reason if none)."""
    plt, why = _matplotlib()
    if plt is None:
        return [], why
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    grid = {name: p for name, p in payloads.items() if name != "scaling"}
    rows = summary if summary is not None else summary_rows(grid)
    rows = [r for r in rows if r["family"] != "scaling"]
    if rows and grid:
        path = plot_summary(plt, rows, next(iter(grid.values())), out_dir)
        if path is not None:
            paths.append(path)
    if "scaling" in payloads:
        path = plot_family(plt, "scaling", payloads["scaling"], out_dir)
        if path is not None:
            paths.append(path)
    return paths, (None if paths else "nothing to draw: no comparison ran")


__all__ = ["summary_rows", "summary_table", "write_summary", "plot_all", "plot_family",
           "plot_summary"]
