"""setup.py's choice of CUDA architectures for builds that cannot ask a GPU. An sm_90-only
binary without PTX fails with "no kernel image" on every other GPU, so the default is a fat
binary for every supported architecture plus PTX. setup.py runs setup() when imported, so the
two definitions are read out of its source."""
import ast
import os
import pathlib

import pytest

SETUP = pathlib.Path(__file__).resolve().parent.parent / "setup.py"


def _load():
    tree = ast.parse(SETUP.read_text())
    keep = [node for node in tree.body
            if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DEFAULT_CUDA_ARCHS"
                                                     for t in node.targets))
            or (isinstance(node, ast.FunctionDef) and node.name == "_default_arch_list")]
    assert len(keep) == 2, "setup.py must define DEFAULT_CUDA_ARCHS and _default_arch_list"
    namespace = {"os": os}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(SETUP), "exec"), namespace)
    return namespace


def test_default_archs_cover_every_supported_gpu_with_ptx(tmp_path):
    ns = _load()
    assert ns["DEFAULT_CUDA_ARCHS"] == ["8.0", "8.6", "8.9", "9.0", "10.0", "12.0"]
    # No nvcc under this root: the full list, the newest also as PTX.
    assert ns["_default_arch_list"](str(tmp_path)) == "8.0;8.6;8.9;9.0;10.0;12.0+PTX"


def test_default_archs_keep_what_the_local_nvcc_supports(tmp_path):
    ns = _load()
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho compute_80 compute_86 compute_89 compute_90\n")
    nvcc.chmod(0o755)
    if os.name != "posix":
        pytest.skip("needs a POSIX shell")
    assert ns["_default_arch_list"](str(tmp_path)) == "8.0;8.6;8.9;9.0+PTX"
