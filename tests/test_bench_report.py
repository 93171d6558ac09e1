"""What the benchmarks print and draw: tables that fit a terminal, reasons instead of a bare
"skip", no issue-target lines, --ops honoured by every view, threads from the machine, the
summary figure. Made-up results, or real runs with one repeat and a faked memory probe: no
timing is asserted (timings never go into tests)."""
import os
from pathlib import Path

import pytest

from jem_fast import cli
from jem_fast.bench import bench_local, common, report

MAX_WIDTH = common.MAX_LINE_WIDTH
LONG_NOTE = ("CONTENDED: other processes used 55% of the CPUs while timing; "
             + "route gram (N < D), a note long enough to need cutting; " * 4).strip()


def _timing(ms):
    return {"median_ms": ms, "p25_ms": ms, "p75_ms": ms * 1.1, "min_ms": ms, "max_ms": ms * 2,
            "repeats": 3, "samples_ms": [ms] * 3}


def _row(impl, ms, mb, **fields):
    row = {"impl": impl, "dtype": "float32", "status": "ok", "note": "", "peak_extra_mb": mb,
           "fwd_bwd": _timing(ms), **fields}
    return row


def _skipped(impl, note, status="skipped", **fields):
    return {"impl": impl, "dtype": "float32", "status": status, "note": note,
            "peak_extra_mb": "n/a", **fields}


def _with_ratios(rows):
    jf = next(r for r in rows if r["impl"] == "jem_fast")
    for r in rows:
        if r["status"] == "ok":
            r["fwd_bwd_vs_jem_fast"] = round(r["fwd_bwd"]["median_ms"]
                                             / jf["fwd_bwd"]["median_ms"], 2)
    return rows


def _grid_payloads():
    """Every kind of cell a quick run produces: ratios, each reason, contention, long notes,
    several families, a peer that is not installed anywhere."""
    cov = []
    for n, d in ((256, 8192), (4096, 256), (256, 65536)):
        shape = dict(loss="vicreg", label=f"vicreg N={n} D={d}", n=n, d=d, step="fwd+bwd")
        case = [_row("jem_fast", 10.0, 41.5, note=LONG_NOTE, other_cpu_fraction=0.55, **shape)]
        if d == 65536:
            note = "reference skipped: estimated 103.1 GB of D x D matrices > 4.0 GB"
            case += [_skipped(i, note, **shape) for i in ("eager", "compile", "lightly")]
        else:
            case += [_row("eager", 390.0, 1303.0, **shape),
                     _skipped("compile", "skipped in --quick (eager fwd+bwd 0.8 s > 0.5 s); "
                                         "run --full", **shape),
                     _row("lightly", 633.0, 1943.0, **shape)]
        cov += _with_ratios(case)
    nce_shape = dict(loss="moco", label="moco B=256 D=128 bank 65536", n=256, d=128,
                     step="fwd+bwd")
    nce = _with_ratios([_row("jem_fast", 5.0, 3.0, **nce_shape),
                        _skipped("eager", "RuntimeError: DefaultCPUAllocator: can't allocate "
                                          "memory: you tried to allocate 99 GB", status="n/a",
                                 **nce_shape),
                        _row("lightly", 12.0, 200.0, **nce_shape)])
    aug_shape = dict(case="simclr_preset", images=256, views=2)
    aug = _with_ratios([_row("jem_fast", 80.0, 70.0, **aug_shape),
                        _row("torchvision", 900.0, 150.0, **aug_shape),
                        _skipped("kornia", "kornia not importable (ModuleNotFoundError: No "
                                           "module named 'kornia')", **aug_shape)])
    ema_shape = dict(part="ema", label="ema ResNet-50 params (25.6M)", n=161, d=25557032,
                     step="update")
    ema = _with_ratios([_row("jem_fast", 3.4, 0.05, **ema_shape),
                        _row("loop", 6.5, 0.07, **ema_shape),
                        _row("lightly", 8.9, 0.06, **ema_shape),
                        _row("foreach_lerp", 5.2, 0.05, **ema_shape)])
    machine = {"cpu_model": "Test CPU", "torch_version": "2.14.1+cpu", "usable_cpus": 2}

    def payload(rows, step=None):
        return {"device": "cpu", "mode": "quick", "threads": 2, "step": step,
                "machine": machine, "results": rows, "files": {"json": "x", "csv": "y"}}
    return {"covariance": payload(cov, "fwd+bwd"), "info_nce": payload(nce, "fwd+bwd"),
            "augment": payload(aug), "local": payload(ema)}


def _widest(text):
    return max(len(line) for line in text.splitlines())


def test_compact_family_tables_fit_and_say_why():
    for name, payload in _grid_payloads().items():
        text = common.compact_table(payload["results"], step=payload["step"] or "time")
        assert _widest(text) <= MAX_WIDTH, (name, text)
        assert " skip " not in text and "/jf" not in text, text
    cov = common.compact_table(_grid_payloads()["covariance"]["results"], step="fwd+bwd")
    header = cov.splitlines()[0]
    for column in ("case", "fwd+bwd ms", "vs eager", "vs compile", "vs lightly",
                   "jem_fast MB", "eager MB"):
        assert column in header, header
    assert "39.0x" + common.CONTENDED_MARK in cov or "39.0x" in cov
    assert "too big" in cov and "--full only" in cov
    assert "left out of --quick" in cov  # the legend spells out the reasons it uses
    assert "..." in cov and "route gram" in cov  # the long note was cut to fit
    assert "CONTENDED" not in cov  # the mark on the time says it


def test_compact_table_labels_the_timed_step():
    payloads = _grid_payloads()
    # augmentation has no backward: its time column must not say fwd+bwd
    aug = common.compact_table(payloads["augment"]["results"], step="call")
    assert "call ms" in aug.splitlines()[0] and "fwd+bwd" not in aug
    ema = common.compact_table(payloads["local"]["results"])
    assert "update ms" in ema.splitlines()[0]
    assert "ema ResNet-50 params (25.6M)" in ema and "25557032" not in ema


def test_ema_case_is_named_by_its_model():
    row = bench_local.base_row("ema", 161, 25557032, common.DTYPES["float32"], "jem_fast")
    assert common.case_label(row) == "ema ResNet-50 params (25.6M)"
    assert row["step"] == "update"
    # the JSON keeps the counts
    assert row["n"] == 161 and row["d"] == 25557032


def test_summary_fits_a_terminal_and_names_every_reason():
    rows = report.summary_rows(_grid_payloads())
    text = report.summary_table(rows)
    assert _widest(text) <= MAX_WIDTH, text
    header = text.splitlines()[0]
    assert "vs eager" in header and "vs lightly" in header and "vs torchvision" in header
    assert "timed" in header  # fwd+bwd, update and call differ between the cases
    assert "vs kornia" not in header and "kornia (not installed)" in text
    assert "vs foreach_lerp" not in header  # in-module variants stay in their family table
    for reason in ("too big", "OOM", "--full only"):
        assert reason in text, reason
    assert " skip " not in text and "Targets" not in text
    # the EMA row shows the per-parameter loop under "vs eager"
    ema_line = next(line for line in text.splitlines() if line.startswith("ema ResNet-50"))
    assert "1.91x" in ema_line


def test_summary_figure_and_no_scatter_of_the_grid(tmp_path):
    pytest.importorskip("matplotlib")
    payloads = _grid_payloads()
    paths, why = report.plot_all(payloads, tmp_path)
    assert why is None
    assert [p.name for p in paths] == ["summary.png"]
    assert paths[0].stat().st_size > 10_000
    # no per-family figures of the quick grid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.png"]


def test_threads_default_to_the_usable_cpus():
    usable = len(os.sched_getaffinity(0))
    assert common.default_threads() == usable
    args = cli.build_parser().parse_args(["bench"])
    assert args.threads == usable
    parsed = common.benchmark_parser("x", "doc").parse_args([])
    assert parsed.threads == usable and parsed.wide is False


def test_scaling_view_honours_ops():
    fams = cli.FAMILIES
    assert cli.scaling_losses(None) == ["vicreg", "barlow_twins", "simclr"]
    assert cli.scaling_losses(cli.resolve_ops(["vicreg"], fams)) == ["vicreg"]
    assert cli.scaling_losses(cli.resolve_ops(["info_nce"], fams)) == ["simclr"]
    assert cli.scaling_losses(cli.resolve_ops(["sinkhorn,clip"], fams)) == []


def test_full_with_ops_runs_only_those_ops(monkeypatch, tmp_path):
    from jem_fast.bench import bench_clustering, bench_covariance, bench_info_nce, scaling

    calls = []

    def recorder(name):
        def main(argv):
            calls.append((name, argv))
            return None
        return main
    for name, module in (("covariance", bench_covariance), ("info_nce", bench_info_nce),
                         ("clustering", bench_clustering), ("scaling", scaling)):
        monkeypatch.setattr(module, "main", recorder(name))
    cli.main(["bench", "--full", "--ops", "vicreg", "--no-plots", "--out", str(tmp_path)])
    assert [name for name, _ in calls] == ["covariance", "scaling"]
    for _, argv in calls:
        assert argv[argv.index("--losses") + 1] == "vicreg"
    calls.clear()
    cli.main(["bench", "--full", "--ops", "sinkhorn", "--no-plots", "--out", str(tmp_path)])
    assert [name for name, _ in calls] == ["clustering"]


def test_scaling_module_rejects_an_unknown_sweep(capsys):
    from jem_fast.bench import scaling

    with pytest.raises(SystemExit) as exc:
        scaling.main(["--losses", "clip"])
    assert exc.value.code == 2
    assert "--losses: unknown ['clip']" in capsys.readouterr().err


def test_main_job_output_on_a_real_family(monkeypatch, tmp_path, capsys):
    # A real run of the EMA part (one repeat; the memory probe, a child process per row, is
    # faked): what the user reads must fit, carry no issue targets, and name the case.
    monkeypatch.setitem(common.TIMING, ("cpu", "quick"),
                        dict(warmup=0, repeats=1, min_repeats=1, budget_s=None))
    monkeypatch.setattr(common, "peak_rss_delta_mb", lambda module, spec: {"delta_mb": 1.5})
    monkeypatch.setattr(common, "cpu_busy_fraction", lambda interval_s=0.5: 0.0)
    rc = cli.main(["bench", "--ops", "ema", "--threads", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert _widest(out) <= MAX_WIDTH, out
    assert "Targets" not in out and "MET" not in out
    assert "ema ResNet-50 params (25.6M)" in out and "update ms" in out
    assert "1 thread (of" in out
    assert list(Path(tmp_path).glob("local_cpu_*.json")) and list(
        Path(tmp_path).glob("summary_cpu_*.csv"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "summary.png").exists()


def test_wide_tables_keep_every_figure():
    from jem_fast.bench import bench_covariance

    payloads = _grid_payloads()
    derived = {"tflops_fwd_bwd": 0.5, "hbm_fraction_fwd_bwd": 0.01, "gb_per_s": 9.0,
               "hbm_fraction": 0.002}  # what bench_one / finish add to a row that ran
    for payload in payloads.values():
        for r in payload["results"]:
            if r["status"] == "ok":
                r.update(derived)
    rows = payloads["covariance"]["results"]
    text = bench_covariance.table_rows(rows, "cpu")
    header = text.splitlines()[0]
    for column in ("fwd+bwd ms", "IQR ms", "min-max ms", "time / jem_fast", "peak extra MB"):
        assert column in header, header
    assert "f+b /jf" not in text
    assert LONG_NOTE in text  # --wide cuts nothing
    ema = bench_local.table_rows(payloads["local"]["results"], "cpu")
    assert "foreach_lerp" in ema and "1.53x" in ema


def test_a_library_missing_everywhere_is_a_line_not_a_column():
    rows = _with_ratios([_row("jem_fast", 10.0, 5.0, case="simclr", images=8),
                         _row("torchvision", 30.0, 9.0, case="simclr", images=8),
                         _skipped("lightly_simd", "lightly_simd not importable (ImportError)",
                                  case="simclr", images=8)])
    text = common.compact_table(rows, step="call")
    assert "vs lightly_simd" not in text.splitlines()[0]
    assert "not compared: lightly_simd (not installed)" in text


def test_wide_reaches_the_families():
    args = cli.build_parser().parse_args(["bench", "--wide"])
    args.baseline_list = None
    argv = cli._family_argv(args, "covariance", "--losses", None, "--quick")
    from jem_fast.bench import bench_covariance

    assert bench_covariance.parse_args(argv).wide is True
