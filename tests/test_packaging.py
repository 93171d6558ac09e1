"""What a user of the package meets: the licence and metadata, an sdist that carries every file
the build needs, the refusal of isolated builds, and the import-time messages for a source tree
without a compiled extension and for an extension compiled against another torch release.
Nothing here compiles: the sdist is made with `setup.py sdist` (no torch needed) and the import
checks run in subprocesses on temporary copies of the package."""
import re
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import types

import pytest
import torch

import jem_fast
from jem_fast import _extension

ROOT = pathlib.Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_bsd3_licence_is_declared_and_shipped(pyproject):
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License")
    assert "the jem_fast authors" in text
    assert "Neither the name of the copyright holder nor the names of its" in text
    project = pyproject["project"]
    assert project["license"] == "BSD-3-Clause"
    assert project["license-files"] == ["LICENSE"]
    assert project["authors"] == [{"name": "the jem_fast authors"}]


def test_metadata_describes_the_package(pyproject):
    project = pyproject["project"]
    classifiers = set(project["classifiers"])
    for expected in ("Programming Language :: Python :: 3", "Programming Language :: C++",
                     "Environment :: GPU :: NVIDIA CUDA", "Operating System :: POSIX :: Linux",
                     "Topic :: Scientific/Engineering :: Artificial Intelligence", "Typing :: Typed"):
        assert expected in classifiers
    # PEP 639: the licence expression replaces the License :: classifiers (setuptools rejects both).
    assert not any(c.startswith("License ::") for c in classifiers)
    assert (ROOT / "jem_fast" / "py.typed").is_file()


def test_long_description_opens_with_what_the_package_is(pyproject):
    readme = pyproject["project"]["readme"]
    assert readme["content-type"] == "text/markdown"
    text = (ROOT / readme["file"]).read_text()
    first_paragraph = text.split("\n\n")[1]
    assert first_paragraph.startswith("jem_fast is a C++/CUDA extension for PyTorch")
    assert "```" not in text.split("## Install")[0], "no commands before the Install section"


def test_torch_pin_is_computed_at_build_time_and_torch_is_not_a_build_requirement(pyproject):
    assert "dependencies" in pyproject["project"]["dynamic"]
    assert "dependencies" not in pyproject["project"]
    requires = pyproject["build-system"]["requires"]
    assert not any(r.split("<")[0].split(">")[0].split("=")[0].strip() == "torch" for r in requires)
    assert "setuptools>=77" in requires  # PEP 639 license metadata


def _copy_sources(destination):
    """The checkout's sources, without virtual environments and build outputs."""
    ignore = shutil.ignore_patterns(".venv*", "build", ".git", "__pycache__", "*.egg-info",
                                    ".pytest_cache", "out", "dist", "*.so")
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE", "README.md",
                 "CMakeLists.txt"):
        shutil.copy2(ROOT / name, destination / name)
    for folder in ("csrc", "jem_fast", "docs", "tests"):
        shutil.copytree(ROOT / folder, destination / folder, ignore=ignore)


def test_sdist_carries_everything_the_build_needs_and_no_build_output(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    _copy_sources(tree)
    # Outputs of an earlier in-place build that must not travel.
    (tree / "jem_fast" / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\0")
    (tree / "jem_fast" / "_build_config.py").write_text("TORCH_VERSION = '0.0'\n")
    # `import torch` fails in this process: making an sdist must not need torch.
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "no_torch"))
    (tmp_path / "no_torch").mkdir()
    (tmp_path / "no_torch" / "torch.py").write_text("raise ImportError('torch is hidden')\n")
    result = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                            cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (archive,) = tmp_path.glob("jem_fast-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
        pkg_info = tar.extractfile(next(m for m in tar.getmembers()
                                        if m.name.endswith("/PKG-INFO")
                                        and m.name.count("/") == 1)).read().decode()

    needed = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*")
              if p.suffix in (".h", ".cuh", ".cpp", ".cu") or p.name == "sources.txt"}
    needed |= {"LICENSE", "README.md", "docs/PYPI.md", "CMakeLists.txt", "setup.py",
               "pyproject.toml", "jem_fast/py.typed", "jem_fast/__init__.py",
               "jem_fast/_extension.py"}
    assert needed <= names, sorted(needed - names)
    assert not [n for n in names if n.endswith(".so") or n.endswith("_build_config.py")]
    assert not [n for n in names if n.startswith("tests/")]  # the suite needs the repository
    assert "License-Expression: BSD-3-Clause" in pkg_info
    assert "License-File: LICENSE" in pkg_info
    assert "Requires-Dist: torch>=2.11" in pkg_info  # the sdist builds against any supported torch
    assert "Dynamic: requires-dist" in pkg_info      # ... and its wheel pins the one it used


def _run_setup_without_torch(tmp_path, extra_path):
    """Run setup.py's wheel build as pip's isolated build would: no torch importable."""
    hide_torch = tmp_path / "hide_torch"
    hide_torch.mkdir(exist_ok=True)
    (hide_torch / "torch.py").write_text("raise ImportError('No module named torch')\n")
    code = ("import runpy, sys; sys.path[:0] = %r; sys.argv = ['setup.py', 'bdist_wheel'];"
            " runpy.run_path(%r, run_name='__main__')" % ([str(hide_torch)] + extra_path,
                                                        str(ROOT / "setup.py")))
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def test_isolated_build_stops_at_once_with_no_build_isolation_advice(tmp_path):
    build_env = tmp_path / "pip-build-env-k2j4" / "overlay" / "lib" / "site-packages"
    build_env.mkdir(parents=True)
    result = _run_setup_without_torch(tmp_path, [str(build_env)])
    assert result.returncode != 0
    assert "isolated environment" in result.stderr and str(build_env) in result.stderr
    assert "pip install --no-build-isolation ." in result.stderr
    result = _run_setup_without_torch(tmp_path, [])
    assert result.returncode != 0
    assert "no torch is importable by" in result.stderr
    assert "pip install --no-build-isolation ." in result.stderr


def test_torch_fetched_into_a_build_environment_is_refused(monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("jem_fast_setup_isolation", ROOT / "setup.py")
    setup_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_py)
    fetched = types.SimpleNamespace(
        __version__="2.14.1", __file__="/tmp/pip-build-env-x1/overlay/lib/torch/__init__.py")
    monkeypatch.setitem(sys.modules, "torch", fetched)
    with pytest.raises(SystemExit, match="temporary build environment"):
        setup_py.import_build_torch()


# --- import-time checks on temporary copies of the package -----------------------------------

def _package_copy(parent, *, source_tree, build_config=None, extension=None):
    """jem_fast's Python files under parent/jem_fast; with source_tree, parent also looks like a
    checkout (setup.py, csrc/sources.txt). extension: "real" links the running build's _C,
    "placeholder" is a file that would not load."""
    parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(pathlib.Path(jem_fast.__file__).parent, parent / "jem_fast",
                    ignore=shutil.ignore_patterns("__pycache__", "_C*.so", "_C*.pyd",
                                                  "_build_config.py"))
    if source_tree:
        (parent / "setup.py").write_text("")
        (parent / "csrc").mkdir()
        (parent / "csrc" / "sources.txt").write_text("[cpu]\n")
    real = pathlib.Path(_extension._C.__file__)
    if extension == "real":
        os.symlink(real, parent / "jem_fast" / real.name)
    elif extension == "placeholder":
        (parent / "jem_fast" / real.name).write_bytes(b"not an ELF file")
    if build_config is not None:
        (parent / "jem_fast" / "_build_config.py").write_text(
            "TORCH_VERSION = %r\nWITH_CUDA = %r\nCUDA_REASON = %r\nCUDA_ARCHS = ''\n"
            "BUILD_TYPE = 'release'\n" % build_config)
    return parent


def _import_jem_fast(cwd, prelude="", code="import jem_fast; print(jem_fast.__file__)"):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _other_minor(version):
    major, minor = _extension.torch_abi_version(version)
    return f"{major}.{minor - 1 if minor else minor + 1}.0"


def test_source_tree_without_extension_says_so_and_how_to_fix(tmp_path):
    checkout = _package_copy(tmp_path / "checkout", source_tree=True)
    result = _import_jem_fast(checkout)
    assert result.returncode != 0
    assert (f"you are importing the source tree at {checkout}, which has no compiled extension"
            in result.stderr)
    assert "cd elsewhere" in result.stderr and "pip install --no-build-isolation -e ." in result.stderr
    assert "circular import" not in result.stderr


def test_install_without_extension_says_it_is_incomplete(tmp_path):
    site = _package_copy(tmp_path / "site", source_tree=False)
    result = _import_jem_fast(site)
    assert result.returncode != 0
    assert "has no compiled extension (jem_fast._C): the install is incomplete" in result.stderr
    assert _extension.REBUILD_COMMAND in result.stderr


def test_extension_recorded_for_another_torch_is_refused_before_loading(tmp_path):
    built_for = _other_minor(torch.__version__)
    # A placeholder _C: the recorded version must stop the import before anything is loaded.
    site = _package_copy(tmp_path / "site", source_tree=False, extension="placeholder",
                         build_config=(built_for, False, "no (CPU_ONLY=1 was set)"))
    result = _import_jem_fast(site)
    assert result.returncode != 0
    assert f"was compiled against torch {built_for}, but this is torch {torch.__version__}" in result.stderr
    major, minor = _extension.torch_abi_version(built_for)
    assert f"only works with torch {major}.{minor}.x" in result.stderr
    assert _extension.REBUILD_COMMAND in result.stderr


def test_in_tree_extension_under_another_torch_points_at_the_source_tree(tmp_path):
    """The scripts' in-place build, imported by an interpreter whose torch differs: simulated by
    changing torch.__version__ before the import; the check uses the version compiled into _C."""
    checkout = _package_copy(tmp_path / "checkout", source_tree=True, extension="real")
    running = _other_minor(torch.__version__)
    result = _import_jem_fast(checkout, prelude=f"import torch; torch.__version__ = {running!r}; ")
    assert result.returncode != 0
    built = jem_fast.build_info()["torch_version"]
    # the build record keeps torch's local label (e.g. 2.14.1+cu130), the compiled-in version not
    assert re.search(rf"was compiled against torch {re.escape(built)}(\+\S+)?, but this is torch "
                     rf"{re.escape(running)}", result.stderr), result.stderr
    assert f"You are importing the source tree at {checkout}" in result.stderr
    assert "pip install --no-build-isolation -e ." in result.stderr


def test_matching_build_imports_and_reports_why_cuda_was_or_was_not_built(tmp_path):
    info = jem_fast.build_info()
    reason = "no (torch X has CUDA 13.0 and nvcc was found, but no GPU is visible)"
    site = _package_copy(tmp_path / "site", source_tree=False, extension="real",
                         build_config=(torch.__version__, bool(info["with_cuda"]), reason))
    result = _import_jem_fast(site, code="import jem_fast, json; "
                                         "print(json.dumps(jem_fast.build_info()))")
    assert result.returncode == 0, result.stderr
    import json
    reported = json.loads(result.stdout.strip().splitlines()[-1])
    assert reported["cuda_reason"] == reason and reported["build_type"] == "release"
    assert reported["torch_version"] == info["torch_version"]


@pytest.mark.parametrize("built, with_cuda, running, running_cuda, problem", [
    ("2.14.1", False, "2.14.0+cu130", "13.0", None),          # patch releases share the ABI
    ("2.14.1+cu130", True, "2.14.1+cu130", "13.0", None),
    ("2.14.1+cu130", False, "2.14.1+cpu", None, None),        # a CPU-only build runs anywhere
    ("2.14.1+cu130", True, "2.14.1+cpu", None, "a CPU-only build of torch"),
    ("2.13.0", False, "2.14.1", None, "only works with torch 2.13.x"),
])
def test_torch_compatibility_rule(built, with_cuda, running, running_cuda, problem):
    message = _extension.torch_mismatch(built, with_cuda, running, running_cuda,
                                        package_dir="/site-packages/jem_fast")
    if problem is None:
        assert message is None
    else:
        assert problem in message and _extension.REBUILD_COMMAND in message
