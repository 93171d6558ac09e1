"""The `jem-fast` command's wiring: info and its self-test, bench's arguments, the summary and
plots on made-up results. No benchmark runs here (timings never go into tests)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jem_fast
from jem_fast import cli
from jem_fast.bench import common, report

ROOT = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_info_selftest_passes(capsys):
    rc = cli.main(["info", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"jem_fast {jem_fast.__version__}" in out
    assert "CPU kernels (" in out and "vicreg_forward" in out
    assert "torch.get_num_threads()" in out
    assert " 0 failed" in out
    for name in ("VICRegLoss", "BarlowTwinsLoss", "NTXentLoss", "InfoNCELoss", "SwaVLoss",
                 "DINOLoss", "DeepClusterV2Loss", "WMSELoss", "sinkhorn_knopp",
                 "assign_to_centroids", "update_ema", "NegativeCosineSimilarity"):
        assert any(line.split()[:1] == ["PASS"] and name in line for line in out.splitlines()), \
            f"{name} did not pass:\n{out}"


def test_info_selftest_fails_on_a_wrong_op(monkeypatch, capsys):
    # A loss that is 10% off must be reported as FAIL and make the exit code 1.
    original = jem_fast.losses.VICRegLoss.forward
    monkeypatch.setattr(jem_fast.losses.VICRegLoss, "forward",
                        lambda self, a, b: 1.1 * original(self, a, b))
    rc = cli.main(["info", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 1
    assert any(line.split()[:1] == ["FAIL"] and "VICRegLoss" in line
               for line in out.splitlines()), out


def test_info_selftest_reports_an_exception_as_failure(monkeypatch):
    from jem_fast import selftest

    def broken(device, g):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(selftest, "CHECKS", [("broken op", broken)])
    (res,) = selftest.run_selftest("cpu")
    assert res.status == "FAIL" and "kernel exploded" in res.detail


def test_info_without_selftest(capsys):
    assert cli.main(["info", "--no-selftest"]) == 0
    assert "self-test" not in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_info_cuda_selftest_without_gpu(capsys):
    assert cli.main(["info", "--device", "cuda"]) == 1
    out = capsys.readouterr().out
    assert "no CUDA device" in out or "no CUDA kernels" in out


def test_bench_help_lists_ops_and_baselines(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("--quick", "--full", "--scaling", "--baselines", "--ops", "--out", "vicreg",
                 "simclr", "sinkhorn", "reference", "inf_cl"):
        assert word in out


@pytest.mark.parametrize("argv,message", [
    (["bench", "--ops", "vicreg,nonsense"], "unknown op(s) ['nonsense']"),
    (["bench", "--ops", ","], "--ops needs at least one name"),
    (["bench", "--baselines", "reference,pytorch3"], "unknown baseline(s) ['pytorch3']"),
    (["bench", "--threads", "0"], "expected a positive integer"),
    (["bench", "--quick", "--full"], "not allowed with argument"),
    (["bench", "--device", "tpu"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_bench_cuda_without_gpu(capsys, tmp_path):
    assert cli.main(["bench", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cuda" in capsys.readouterr().err


def test_resolve_ops():
    fams = cli.FAMILIES
    assert cli.resolve_ops(["barlow,clip"], fams) == {"covariance": ["barlow_twins"],
                                                      "info_nce": ["clip"]}
    # a family name takes the whole family, whatever ops of it are also named
    assert cli.resolve_ops(["vicreg", "covariance"], fams) == {"covariance": None}
    assert cli.resolve_ops(["ema", "sinkhorn", "simclr"], fams) == {
        "info_nce": ["simclr"], "clustering": ["sinkhorn"], "local": ["ema"]}


def test_family_arguments_reach_the_modules():
    args = cli.build_parser().parse_args(["bench", "--baselines", "reference", "--threads", "1",
                                          "--dtype", "float32", "--out", "o"])
    args.baseline_list = cli.parse_baselines(args.baselines)
    argv = cli._family_argv(args, "info_nce", "--losses", ["clip"], "--quick")
    from jem_fast.bench import bench_info_nce
    parsed = bench_info_nce.parse_args(argv)
    assert parsed.losses == ("clip",) and parsed.threads == 1 and parsed.out == "o"
    assert common.parse_baselines(parsed.baselines) == ("reference",)


def test_baseline_selection():
    assert common.baseline_skip_note("compile", ("reference",)) == "not in --baselines"
    assert common.baseline_skip_note("eager", ("reference",)) is None
    assert common.baseline_skip_note("jem_fast", ()) is None
    assert common.baseline_skip_note("foreach_lerp", ("reference",)) is None  # not a baseline
    assert common.baseline_skip_note("lightly", None) is None
    with pytest.raises(ValueError, match="unknown baseline"):
        common.parse_baselines("eager")  # the CLI maps 'eager' to 'reference'; modules do not
    assert cli.parse_baselines("eager,compile") == ["reference", "compile"]


def _timing(ms):
    return {"median_ms": ms, "p25_ms": ms, "p75_ms": ms, "min_ms": ms, "max_ms": ms,
            "repeats": 3, "samples_ms": [ms] * 3}


def _fake_payload():
    rows = []
    for d in (1024, 4096, 16384):
        rows.append({"loss": "vicreg", "n": 256, "d": d, "dtype": "float32", "impl": "jem_fast",
                     "status": "ok", "note": "", "fwd_bwd": _timing(d / 1000),
                     "peak_extra_mb": d / 100, "sweep": "D growing, N=256"})
        if d < 16384:
            rows.append({"loss": "vicreg", "n": 256, "d": d, "dtype": "float32",
                         "impl": "eager", "status": "ok", "note": "",
                         "fwd_bwd": _timing(d / 100), "peak_extra_mb": d / 10,
                         "sweep": "D growing, N=256"})
        else:
            rows.append({"loss": "vicreg", "n": 256, "d": d, "dtype": "float32",
                         "impl": "eager", "status": "skipped", "peak_extra_mb": "n/a",
                         "note": "reference skipped: estimated 6.4 GB",
                         "sweep": "D growing, N=256"})
    return {"device": "cpu", "mode": "quick", "threads": 2, "machine": {"cpu_model": "test"},
            "results": rows, "files": {"json": "x.json", "csv": "x.csv"}}


def test_summary_table_and_files(tmp_path):
    payloads = {"covariance": _fake_payload()}
    rows = report.summary_rows(payloads)
    assert len(rows) == 3
    first = rows[0]
    assert first["op"] == "vicreg" and first["shape"] == "N=256 D=1024"
    assert first["baselines"]["reference"]["ratio"] == pytest.approx(10.0)
    last = rows[-1]
    assert last["baselines"]["reference"]["ratio"] is None
    table = report.summary_table(rows)
    # the eager reference is "vs eager"; a skipped one says why ("too big": its estimate)
    assert "vs eager" in table and "10.0x" in table and "too big" in table
    assert " skip " not in table
    json_path, csv_path = report.write_summary(tmp_path, "summary_test", rows, payloads, 1.0)
    data = json.loads(Path(json_path).read_text())
    assert data["summary"][0]["jem_fast_ms"] == pytest.approx(1.024)
    header = Path(csv_path).read_text().splitlines()[0]
    assert "reference_ratio" in header and "jem_fast_peak_mb" in header


def test_plots_or_a_reason(tmp_path):
    paths, why = report.plot_all({"scaling": _fake_payload()}, tmp_path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert paths == [] and "matplotlib" in why
        return
    assert [p.name for p in paths] == ["scaling_cpu.png"]
    assert paths[0].stat().st_size > 1000


def test_console_script_and_metadata():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["jem-fast"] == "jem_fast.cli:main"
    assert meta["project"]["name"] == "jem_fast"


def test_python_m_jem_fast_and_benchmark_shims():
    # `python -m jem_fast` is the same command; the old `python -m benchmarks.bench_x` entry
    # points still reach the one implementation in jem_fast.bench.
    for argv in (["-m", "jem_fast", "bench", "--help"],
                 ["-m", "benchmarks.bench_covariance", "--help"]):
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "--baselines" in proc.stdout
    import benchmarks.common
    assert benchmarks.common is common
