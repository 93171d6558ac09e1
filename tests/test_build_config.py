"""setup.py's decisions, checked through its functions without compiling anything: which CUDA
architectures a GPU-less build targets, whether CUDA kernels are built and why, which commands
need torch, the torch pin of the wheel, and the release/debug flags. setup.py only calls setup()
when run as __main__, so importing it here builds nothing."""
import importlib.util
import os
import pathlib
import sys
import types

import pytest

SETUP = pathlib.Path(__file__).resolve().parent.parent / "setup.py"


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("jem_fast_setup_under_test", SETUP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_archs_cover_every_supported_gpu_with_ptx(setup_py, tmp_path):
    # An sm_90-only binary without PTX fails with "no kernel image" on every other GPU.
    assert setup_py.DEFAULT_CUDA_ARCHS == ["8.0", "8.6", "8.9", "9.0", "10.0", "12.0"]
    # No nvcc under this root: the full list, the newest also as PTX.
    assert setup_py._default_arch_list(str(tmp_path)) == "8.0;8.6;8.9;9.0;10.0;12.0+PTX"


def test_default_archs_keep_what_the_local_nvcc_supports(setup_py, tmp_path):
    if os.name != "posix":
        pytest.skip("needs a POSIX shell")
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho compute_80 compute_86 compute_89 compute_90\n")
    nvcc.chmod(0o755)
    assert setup_py._default_arch_list(str(tmp_path)) == "8.0;8.6;8.9;9.0+PTX"


@pytest.mark.parametrize("argv, needed", [
    (["setup.py", "sdist", "--formats", "gztar", "--dist-dir", "/tmp/x"], False),
    (["setup.py", "egg_info"], False),
    (["setup.py", "clean", "--all"], False),
    (["setup.py", "dist_info", "--output-dir", "/tmp/x"], True),   # the wheel's metadata pins torch
    (["setup.py", "bdist_wheel", "--dist-dir", "/tmp/x"], True),
    (["setup.py", "editable_wheel", "--dist-dir", "/tmp/x"], True),
    (["setup.py", "build_ext", "--inplace"], True),
    (["setup.py", "develop"], True),
])
def test_only_packaging_commands_run_without_torch(setup_py, argv, needed):
    assert setup_py.needs_torch(argv) is needed


def test_sdist_arguments_need_no_torch_and_keep_the_torch_range(setup_py, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    arguments = setup_py.setup_arguments(["setup.py", "sdist"])
    assert arguments["install_requires"] == [f"torch>={setup_py.MIN_TORCH}", "numpy"]
    assert "ext_modules" not in arguments
    assert arguments["package_data"] == {"jem_fast": ["py.typed"]}


@pytest.mark.parametrize("version, requirement", [
    ("2.14.1+cu130", "torch==2.14.*"), ("2.13.0", "torch==2.13.*"), ("2.11.0a0+git1234", "torch==2.11.*"),
])
def test_wheel_pins_the_torch_minor_release_it_was_compiled_against(setup_py, version, requirement):
    assert setup_py.torch_requirement(version) == requirement


def test_unreadable_torch_version_is_an_error(setup_py):
    with pytest.raises(ValueError, match="major.minor"):
        setup_py.torch_requirement("nightly")


CUDA_HOME = "/opt/cuda-toolkit"


def _decide(setup_py, env=None, torch_cuda="13.0", gpus=0, cuda_home=CUDA_HOME):
    return setup_py.decide_cuda(env or {}, "2.14.1+cu130" if torch_cuda else "2.14.1+cpu",
                                torch_cuda, gpus, cuda_home)


def test_login_node_builds_cpu_only_and_says_how_to_force(setup_py):
    with_cuda, reason = _decide(setup_py)
    assert not with_cuda
    assert reason.startswith("no (")
    assert "CUDA 13.0" in reason and CUDA_HOME in reason
    assert "no GPU is visible" in reason and "FORCE_CUDA=1" in reason


def test_cpu_only_switch_wins_over_everything(setup_py):
    for name in ("CPU_ONLY", "JEM_FAST_CPU_ONLY"):
        with_cuda, reason = _decide(setup_py, {name: "1", "FORCE_CUDA": "1"}, gpus=1)
        assert not with_cuda and f"{name}=1" in reason


def test_cpu_torch_and_missing_toolkit_explain_themselves(setup_py):
    with_cuda, reason = _decide(setup_py, torch_cuda=None)
    assert not with_cuda and "CPU-only build" in reason
    with_cuda, reason = _decide(setup_py, gpus=1, cuda_home=None)
    assert not with_cuda and "no CUDA toolkit" in reason and "CUDA_HOME" in reason


def test_forced_and_automatic_cuda_builds(setup_py):
    assert _decide(setup_py, {"FORCE_CUDA": "1"}) == (True, f"yes (FORCE_CUDA=1; nvcc from {CUDA_HOME})")
    with_cuda, reason = _decide(setup_py, {"TORCH_CUDA_ARCH_LIST": "9.0"})
    assert with_cuda and "TORCH_CUDA_ARCH_LIST=9.0" in reason
    with_cuda, reason = _decide(setup_py, gpus=2)
    assert with_cuda and "2 GPU(s) are visible" in reason


def test_forced_cuda_that_cannot_build_is_an_error(setup_py):
    with pytest.raises(RuntimeError, match="CPU build"):
        _decide(setup_py, {"FORCE_CUDA": "1"}, torch_cuda=None)
    with pytest.raises(RuntimeError, match="CUDA_HOME"):
        _decide(setup_py, {"TORCH_CUDA_ARCH_LIST": "9.0"}, cuda_home=None)


def test_release_builds_drop_debug_info_and_debug_builds_keep_it(setup_py):
    cxx, link = setup_py.compile_flags(debug=False, platform="linux")
    # Python's own CFLAGS carry -g and come first; the last -g* option is the one gcc uses.
    assert [f for f in cxx if f.startswith("-g")][-1] == "-g0" and "-O3" in cxx
    assert "-Wl,--strip-debug" in link
    cxx, link = setup_py.compile_flags(debug=True, platform="linux")
    assert [f for f in cxx if f.startswith("-g")][-1] == "-g" and "-O0" in cxx
    assert not any("strip" in f for f in link)


def _fake_torch(version, cuda, gpus):
    return types.SimpleNamespace(__version__=version, version=types.SimpleNamespace(cuda=cuda),
                                 cuda=types.SimpleNamespace(device_count=lambda: gpus))


def test_build_plan_reports_and_records_its_choice(setup_py, monkeypatch):
    for name in ("CPU_ONLY", "JEM_FAST_CPU_ONLY", "FORCE_CUDA", "TORCH_CUDA_ARCH_LIST", "DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MAX_JOBS", "3")
    plan = setup_py.BuildPlan(_fake_torch("2.13.0+cpu", None, 0))
    report = plan.report()
    assert "torch==2.13.*" in report
    assert f"CUDA kernels: {plan.cuda_reason}" in report and "CPU-only build" in plan.cuda_reason
    assert "release" in report and "3 (MAX_JOBS)" in report and "pip install -v" in report

    recorded = {}
    exec(plan.config_module(), recorded)
    assert recorded["TORCH_VERSION"] == "2.13.0+cpu"
    assert recorded["WITH_CUDA"] is False
    assert recorded["CUDA_REASON"] == plan.cuda_reason
    assert recorded["BUILD_TYPE"] == "release"


def test_isolated_build_environments_are_recognised(setup_py):
    paths = ["/usr/lib/python3.11", "/tmp/pip-build-env-abc123/overlay/lib/python3.11/site-packages",
             "/tmp/build-env-xyz/lib/python3.11/site-packages", "/home/u/.venv/lib/site-packages"]
    assert setup_py.isolated_build_env_paths(paths) == paths[1:3]
