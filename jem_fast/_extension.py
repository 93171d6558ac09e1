"""Loads the compiled extension once and says clearly what is missing when it is not there."""
from __future__ import annotations

import torch  # noqa: F401  (loads libtorch/libc10 before the extension needs them)

try:
    from . import _C  # noqa: F401  (loading it registers the ops in torch.ops.jem_fast)

    _IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - only hit on a broken install
    _C = None
    _IMPORT_ERROR = exc


def require_extension():
    if _C is None:
        raise ImportError(
            "jem_fast's compiled extension (jem_fast._C) could not be loaded: "
            f"{_IMPORT_ERROR}. Build it with `pip install --no-build-isolation .` "
            "(or `python setup.py build_ext --inplace`) against the torch you use."
        )
    return _C


def build_info() -> dict:
    """What this build was compiled with: torch and CUDA versions, archs, kernels per device."""
    return dict(require_extension().build_info())
