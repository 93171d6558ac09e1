"""Build jem_fast._C with torch.utils.cpp_extension.

CUDA kernels are compiled when any of these holds (and CPU_ONLY/JEM_FAST_CPU_ONLY is not 1):
  * FORCE_CUDA=1,
  * TORCH_CUDA_ARCH_LIST is set,
  * torch was built with CUDA, nvcc is found and a GPU is visible.
Source lists live in csrc/sources.txt so CMakeLists.txt builds exactly the same files.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _read_sources(kind):
    """Return the files listed under '[kind]' in csrc/sources.txt."""
    sources, section = [], None
    with open(os.path.join(ROOT, "csrc", "sources.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
            elif section == kind:
                sources.append(os.path.join("csrc", line))
    return sources


def _find_cuda_home():
    """The toolkit root holding bin/nvcc AND lib64/libcudart.so.

    The nvcc on PATH may be a wrapper script living elsewhere, so resolve it and also look at
    the conventional /usr/local/cuda-* folders before trusting torch's guess."""
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.environ[var])
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # a wrapper script: take the path it execs
            with open(nvcc, "r", errors="ignore") as f:
                for tok in f.read().split():
                    if tok.endswith("/bin/nvcc") and os.path.exists(tok):
                        candidates.append(os.path.dirname(os.path.dirname(tok)))
        except OSError:
            pass
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True) + ["/usr/local/cuda"]
    for root in candidates:
        has_nvcc = os.path.exists(os.path.join(root, "bin", "nvcc"))
        has_cudart = glob.glob(os.path.join(root, "lib64", "libcudart.so*")) or glob.glob(
            os.path.join(root, "targets", "*", "lib", "libcudart.so*"))
        if has_nvcc and has_cudart:
            return os.path.realpath(root)
    return None


def _wheel_cuda_include_dirs():
    """cuBLAS/cuSPARSE headers shipped inside the torch CUDA wheel (nvidia/cu*/include)."""
    dirs = []
    for site in sys.path:
        for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
            for d in glob.glob(os.path.join(site, pattern)):
                if os.path.isdir(d) and d not in dirs:
                    dirs.append(d)
    return dirs


def _want_cuda():
    if _flag("CPU_ONLY") or _flag("JEM_FAST_CPU_ONLY"):
        return False, None
    cuda_home = _find_cuda_home()
    forced = _flag("FORCE_CUDA") or bool(os.environ.get("TORCH_CUDA_ARCH_LIST"))
    auto = torch.version.cuda is not None and torch.cuda.is_available() and cuda_home is not None
    if forced and torch.version.cuda is None:
        raise RuntimeError("FORCE_CUDA/TORCH_CUDA_ARCH_LIST given, but this torch is a CPU build "
                           f"(torch {torch.__version__}). Install a CUDA build of torch or unset them.")
    if forced and cuda_home is None:
        raise RuntimeError("FORCE_CUDA/TORCH_CUDA_ARCH_LIST given, but no CUDA toolkit with nvcc "
                           "and libcudart was found. Set CUDA_HOME to the toolkit root.")
    return forced or auto, cuda_home


DEFAULT_CUDA_ARCHS = ["8.0", "8.6", "8.9", "9.0", "10.0", "12.0"]


def _default_arch_list(cuda_home):
    """DEFAULT_CUDA_ARCHS that this nvcc can target, the newest also as PTX."""
    import subprocess
    archs = list(DEFAULT_CUDA_ARCHS)
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--list-gpu-arch"],
                             capture_output=True, text=True, timeout=60).stdout
        known = {line.strip().replace("compute_", "") for line in out.split()}
        supported = [a for a in archs if a.replace(".", "") in known]
        archs = supported or archs
    except (OSError, subprocess.SubprocessError):
        pass
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


def make_extension():
    with_cuda, cuda_home = _want_cuda()
    debug = _flag("DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx_flags = opt + ["-fvisibility=hidden"]  # the C++ standard is the one torch asks for
    # GCC only turns the selects of the branch-free exp (cpu_math.h) and of max reductions into
    # vector blends when FP traps need not be preserved; without this every CPU kernel loop
    # stayed scalar. Values are unchanged (no reassociation, no fast-math).
    cxx_flags.append("-fno-trapping-math")
    link_flags = []
    if sys.platform.startswith("linux"):
        # Without OpenMP, ATen's at::parallel_for in our CPU kernels runs on one thread; with it
        # they share torch's OpenMP pool (libgomp, the runtime torch itself uses on Linux).
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    define_macros = [("TORCH_EXTENSION_NAME", "_C")]
    sources = _read_sources("cpu")
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not with_cuda:
        return CppExtension("jem_fast._C", sources, include_dirs=include_dirs,
                            define_macros=define_macros, extra_compile_args={"cxx": cxx_flags},
                            extra_link_args=link_flags)

    # torch.utils.cpp_extension reads CUDA_HOME at import time; make sure nvcc and cudart agree.
    import torch.utils.cpp_extension as cpp_ext
    os.environ["CUDA_HOME"] = cuda_home
    cpp_ext.CUDA_HOME = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # No GPU to ask: a fat binary for every supported architecture plus PTX for newer ones,
        # so the wheel runs on A100, L4/4090, H100/H200, B200 and RTX 50xx alike.
        os.environ["TORCH_CUDA_ARCH_LIST"] = _default_arch_list(cuda_home)
    print(f"jem_fast: building CUDA kernels for TORCH_CUDA_ARCH_LIST="
          f"{os.environ.get('TORCH_CUDA_ARCH_LIST') or '(the visible GPUs)'}", flush=True)
    include_dirs += _wheel_cuda_include_dirs()
    nvcc_flags = opt + ["-lineinfo", "--expt-relaxed-constexpr",
                        f"--threads={os.environ.get('NVCC_THREADS', '2')}"]
    define_macros.append(("WITH_CUDA", None))
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    define_macros.append(("JEM_FAST_CUDA_ARCHS", '"%s"' % arch.replace('"', "")))
    sources += _read_sources("cuda")
    return CUDAExtension("jem_fast._C", sources, include_dirs=include_dirs,
                         define_macros=define_macros,
                         extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                         extra_link_args=link_flags)


# Name, version, dependencies and the jem-fast console script are in pyproject.toml ([project]).
setup(
    packages=find_packages(include=["jem_fast", "jem_fast.*"]),
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
