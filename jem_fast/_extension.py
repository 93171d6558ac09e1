"""Loads the compiled extension once, and refuses clearly when it cannot work: no compiled module
(a source checkout, an incomplete install), or one compiled against another torch release."""
from __future__ import annotations

import glob
import os
import re
import sys

import torch  # loads libtorch/libc10 before the extension needs them

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

REBUILD_COMMAND = "pip install --no-build-isolation --no-deps --force-reinstall --no-cache-dir ."


def torch_abi_version(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string: the part that jem_fast._C's C++ ABI depends
    on (torch keeps it within a minor release, e.g. 2.14.0 and 2.14.1+cu130)."""
    match = re.match(r"(\d+)\.(\d+)", str(version))
    if not match:
        raise ValueError(f"cannot read major.minor from torch version {version!r}")
    return int(match.group(1)), int(match.group(2))


def source_checkout_root(package_dir: str = PACKAGE_DIR) -> str | None:
    """The repository (or unpacked sdist) folder when `package_dir` is jem_fast's source tree."""
    root = os.path.dirname(package_dir)
    if (os.path.isfile(os.path.join(root, "setup.py"))
            and os.path.isfile(os.path.join(root, "csrc", "sources.txt"))):
        return root
    return None


def _how_to_fix(package_dir: str) -> str:
    root = source_checkout_root(package_dir)
    if root is not None:
        return (f"You are importing the source tree at {root}, built for another torch (e.g. by "
                "the scripts' own .venv); cd elsewhere to use the jem_fast installed for this "
                "interpreter, or rebuild in place: `pip install --no-build-isolation -e .`.")
    return ("Rebuild it against this torch from a jem_fast checkout or unpacked sdist: "
            f"`{REBUILD_COMMAND}`, or install the torch it was built for.")


def torch_mismatch(built_for: str, built_with_cuda: bool, running: str,
                   running_cuda: str | None, package_dir: str = PACKAGE_DIR) -> str | None:
    """Why an extension compiled against torch `built_for` cannot run under torch `running`
    (None when it can)."""
    where = f"jem_fast at {package_dir} was compiled against torch {built_for}"
    here = f"this is torch {running} ({sys.executable})"
    if torch_abi_version(built_for) != torch_abi_version(running):
        major, minor = torch_abi_version(built_for)
        return (f"{where}, but {here}; its compiled extension only works with torch "
                f"{major}.{minor}.x. {_how_to_fix(package_dir)}")
    if built_with_cuda and running_cuda is None:
        return (f"{where} with CUDA kernels, but {here}, a CPU-only build of torch. "
                f"{_how_to_fix(package_dir)}")
    return None


def _compiled_files(package_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(package_dir, "_C.*.so"))
                  + glob.glob(os.path.join(package_dir, "_C.so"))
                  + glob.glob(os.path.join(package_dir, "_C*.pyd")))


def _read_build_config():
    try:
        from . import _build_config
    except ImportError:  # built without setup.py (CMake) or by an older setup.py
        return None
    return _build_config


def _load():
    compiled = _compiled_files(PACKAGE_DIR)
    if not compiled:
        root = source_checkout_root()
        if root is not None:
            raise ImportError(
                f"you are importing the source tree at {root}, which has no compiled extension; "
                "cd elsewhere to use the installed jem_fast, or build in place with "
                "`pip install --no-build-isolation -e .`")
        raise ImportError(
            f"jem_fast at {PACKAGE_DIR} has no compiled extension (jem_fast._C): the install is "
            f"incomplete. {_how_to_fix(PACKAGE_DIR)}")

    config = _read_build_config()
    if config is not None:  # checked before loading: a _C for another torch may not even load
        problem = torch_mismatch(config.TORCH_VERSION, config.WITH_CUDA, torch.__version__,
                                 torch.version.cuda)
        if problem:
            raise ImportError(problem)
    try:
        from . import _C  # loading it registers the ops in torch.ops.jem_fast
    except ImportError as exc:
        built_for = f"torch {config.TORCH_VERSION}" if config is not None else "an unknown torch"
        raise ImportError(
            f"jem_fast's compiled extension {compiled[0]} could not be loaded ({exc}); it was "
            f"built for {built_for}, this is torch {torch.__version__}. "
            f"{_how_to_fix(PACKAGE_DIR)}") from exc
    # The version compiled into the module itself covers builds without _build_config.py.
    info = _C.build_info()
    problem = torch_mismatch(info["torch_version"], bool(info["with_cuda"]), torch.__version__,
                             torch.version.cuda)
    if problem:
        raise ImportError(problem)
    return _C, config


_C, _BUILD_CONFIG = _load()


def require_extension():
    """The loaded extension module (kept for callers; a failed load already raised on import)."""
    return _C


def build_info() -> dict:
    """What this build was compiled with: torch and CUDA versions, archs, kernels per device,
    and (for builds made by setup.py) why CUDA kernels were or were not compiled.

    Returns:
        dict with torch_version, with_cuda, cuda_version, cuda_archs, cpu_kernels and
        cuda_kernels (the ops with a kernel on each device), cuda_reason (why CUDA kernels
        were or were not compiled, and how to change it) and build_type (release or debug).
    """
    info = dict(_C.build_info())
    if _BUILD_CONFIG is not None:
        info["cuda_reason"] = _BUILD_CONFIG.CUDA_REASON
        info["build_type"] = _BUILD_CONFIG.BUILD_TYPE
    else:
        info["cuda_reason"] = "unknown (built without setup.py's record, e.g. by CMake)"
        info["build_type"] = "unknown"
    return info
