"""Build jem_fast._C with torch.utils.cpp_extension.

The extension is compiled against the torch installed in the building environment, so build with
`pip install --no-build-isolation .`; the wheel then requires that torch's major.minor release.

CUDA kernels are compiled when any of these holds (and CPU_ONLY/JEM_FAST_CPU_ONLY is not 1):
  * FORCE_CUDA=1,
  * TORCH_CUDA_ARCH_LIST is set,
  * torch was built with CUDA, nvcc is found and a GPU is visible.
The build prints which it chose and why (`pip install -v` shows it, with ninja's progress).
Release builds carry no debug info; DEBUG=1 builds with -O0 -g.
Source lists live in csrc/sources.txt so CMakeLists.txt builds exactly the same files.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "jem_fast"
BUILD_CONFIG_MODULE = "_build_config.py"  # written next to _C at build time, read on import
MIN_TORCH = "2.11"

# Commands that only package or describe the sources: they need neither torch nor a compiler, so
# an sdist can be made anywhere. Every other command (bdist_wheel, dist_info, build_ext, develop,
# editable_wheel, install...) compiles or pins against the installed torch.
SOURCE_ONLY_COMMANDS = {"sdist", "egg_info", "clean", "check"}

DEFAULT_CUDA_ARCHS = ["8.0", "8.6", "8.9", "9.0", "10.0", "12.0"]


def _flag(name, env=None):
    env = os.environ if env is None else env
    return env.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def needs_torch(argv):
    """Whether the setup.py command line builds the extension or the wheel's metadata."""
    commands = set(argv[1:])
    return not (commands & SOURCE_ONLY_COMMANDS)


def isolated_build_env_paths(paths):
    """Entries of `paths` that lie in a temporary build environment made by pip's or `build`'s
    build isolation: a torch found there was fetched for the build, not the one the user runs."""
    markers = ("pip-build-env-", os.sep + "build-env-")
    return [p for p in paths if p and any(m in p for m in markers)]


def no_build_isolation_advice(reason):
    return (
        f"jem_fast: {reason}\n"
        "jem_fast's C++/CUDA extension must be compiled against the torch it will run with, so it\n"
        "is built in the environment that already has torch (torch >= 2.11) installed:\n"
        "    pip install --no-build-isolation .            # from a checkout or an unpacked sdist\n"
        "    pip install --no-build-isolation jem_fast     # from an index\n"
        "Install torch first if it is missing (e.g. `pip install torch`)."
    )


def import_build_torch():
    """The torch to compile against, or SystemExit with the --no-build-isolation advice."""
    isolated = isolated_build_env_paths(sys.path + [sys.prefix])
    try:
        import torch
    except ImportError:
        where = ("pip is building jem_fast in an isolated environment "
                 f"({isolated[0]}), which has no torch" if isolated
                 else f"no torch is importable by {sys.executable}")
        raise SystemExit(no_build_isolation_advice(where + "."))
    if isolated_build_env_paths([os.path.abspath(torch.__file__)]):
        raise SystemExit(no_build_isolation_advice(
            f"torch {torch.__version__} was imported from a temporary build environment "
            f"({os.path.dirname(torch.__file__)}); the extension would not match your torch."))
    return torch


def torch_requirement(torch_version):
    """Requires-Dist for a wheel compiled against `torch_version`: same major.minor, any patch
    (the C++ ABI of torch changes between minor releases)."""
    match = re.match(r"(\d+)\.(\d+)", torch_version)
    if not match:
        raise ValueError(f"cannot read major.minor from torch version {torch_version!r}")
    return f"torch=={match.group(1)}.{match.group(2)}.*"


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


def decide_cuda(env, torch_version, torch_cuda, gpu_count, cuda_home):
    """(build the CUDA kernels?, why) from the environment variables, torch's version and CUDA
    version (None for a CPU build of torch), the number of visible GPUs and the toolkit root
    (None when no nvcc + libcudart was found). Raises when CUDA is forced but cannot be built."""
    if _flag("CPU_ONLY", env) or _flag("JEM_FAST_CPU_ONLY", env):
        name = "CPU_ONLY" if _flag("CPU_ONLY", env) else "JEM_FAST_CPU_ONLY"
        return False, f"no ({name}=1 was set)"
    arch_list = env.get("TORCH_CUDA_ARCH_LIST", "")
    forced_by = ("FORCE_CUDA=1" if _flag("FORCE_CUDA", env)
                 else f"TORCH_CUDA_ARCH_LIST={arch_list} was set" if arch_list else None)
    if forced_by and torch_cuda is None:
        raise RuntimeError(f"{forced_by}, but this torch is a CPU build (torch {torch_version}). "
                           "Install a CUDA build of torch or unset FORCE_CUDA/TORCH_CUDA_ARCH_LIST.")
    if forced_by and cuda_home is None:
        raise RuntimeError(f"{forced_by}, but no CUDA toolkit with bin/nvcc and libcudart was "
                           "found. Set CUDA_HOME to the toolkit root.")
    if forced_by:
        return True, f"yes ({forced_by}; nvcc from {cuda_home})"
    if torch_cuda is None:
        return False, (f"no (torch {torch_version} is a CPU-only build; install a CUDA build of "
                       "torch to compile them)")
    if cuda_home is None:
        return False, (f"no (torch {torch_version} has CUDA {torch_cuda}, but no CUDA toolkit with "
                       "bin/nvcc and libcudart was found; install one or set CUDA_HOME to its root)")
    if gpu_count == 0:
        return False, (f"no (torch {torch_version} has CUDA {torch_cuda} and nvcc was found in "
                       f"{cuda_home}, but no GPU is visible; set FORCE_CUDA=1 to build them anyway, "
                       "e.g. on a login node)")
    return True, (f"yes (torch {torch_version} has CUDA {torch_cuda}, nvcc was found in "
                  f"{cuda_home} and {gpu_count} GPU(s) are visible)")


def _default_arch_list(cuda_home):
    """DEFAULT_CUDA_ARCHS that this nvcc can target, the newest also as PTX."""
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


def compile_flags(debug, platform=sys.platform):
    """(C++ flags, linker flags). Release: -O3 and no debug info (Python's own CFLAGS carry -g,
    which made _C 29.7 MB); DEBUG=1: -O0 -g, symbols kept."""
    cxx = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    cxx.append("-fvisibility=hidden")  # the C++ standard is the one torch asks for
    # GCC only turns the selects of the branch-free exp (cpu_math.h) and of max reductions into
    # vector blends when FP traps need not be preserved; without this every CPU kernel loop
    # stayed scalar. Values are unchanged (no reassociation, no fast-math).
    cxx.append("-fno-trapping-math")
    link = []
    if platform.startswith("linux"):
        # Without OpenMP, ATen's at::parallel_for in our CPU kernels runs on one thread; with it
        # they share torch's OpenMP pool (libgomp, the runtime torch itself uses on Linux).
        cxx.append("-fopenmp")
        link.append("-fopenmp")
        if not debug:
            link.append("-Wl,--strip-debug")
    return cxx, link


class BuildPlan:
    """What `setup.py` compiles, decided once from the environment and the installed torch."""

    def __init__(self, torch):
        self.torch_version = torch.__version__
        self.debug = _flag("DEBUG")
        self.cuda_home = _find_cuda_home()
        gpu_count = torch.cuda.device_count() if torch.version.cuda else 0
        self.with_cuda, self.cuda_reason = decide_cuda(
            os.environ, torch.__version__, torch.version.cuda, gpu_count, self.cuda_home)
        self.cuda_archs = ""
        if self.with_cuda:
            if not os.environ.get("TORCH_CUDA_ARCH_LIST") and gpu_count == 0:
                # No GPU to ask: a fat binary for every supported architecture plus PTX for newer
                # ones, so the wheel runs on A100, L4/4090, H100/H200, B200 and RTX 50xx alike.
                os.environ["TORCH_CUDA_ARCH_LIST"] = _default_arch_list(self.cuda_home)
            self.cuda_archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or ";".join(sorted({
                "%d.%d" % torch.cuda.get_device_capability(i) for i in range(gpu_count)}))
        self.requirement = torch_requirement(self.torch_version)

    def report(self):
        jobs = (f"{os.environ['MAX_JOBS']} (MAX_JOBS)" if os.environ.get("MAX_JOBS")
                else f"ninja's default for {os.cpu_count()} cores (MAX_JOBS limits it)")
        lines = [
            f"torch:        {self.torch_version} (the wheel requires {self.requirement})",
            "CPU kernels:  yes",
            f"CUDA kernels: {self.cuda_reason}",
        ]
        if self.with_cuda:
            lines.append(f"CUDA archs:   {self.cuda_archs}")
        lines += [
            "build type:   " + ("debug (DEBUG=1: -O0 -g, symbols kept)" if self.debug
                                else "release (-O3, no debug info; DEBUG=1 keeps it)"),
            f"jobs:         {jobs}; `pip install -v` shows ninja's [done/total] lines",
        ]
        rule = "-" * 72
        return "\n".join([f"jem_fast build {rule[15:]}"] + ["  " + s for s in lines] + [rule])

    def config_module(self):
        """Source of jem_fast/_build_config.py: what this build was compiled with and why."""
        return (
            "# Written by jem_fast's setup.py when jem_fast._C was compiled; read on import.\n"
            f"TORCH_VERSION = {self.torch_version!r}\n"
            f"WITH_CUDA = {self.with_cuda!r}\n"
            f"CUDA_REASON = {self.cuda_reason!r}\n"
            f"CUDA_ARCHS = {self.cuda_archs!r}\n"
            f"BUILD_TYPE = {'debug' if self.debug else 'release'!r}\n"
        )

    def extension(self):
        from torch.utils.cpp_extension import CppExtension, CUDAExtension

        cxx_flags, link_flags = compile_flags(self.debug)
        define_macros = [("TORCH_EXTENSION_NAME", "_C")]
        sources = _read_sources("cpu")
        include_dirs = [os.path.join(ROOT, "csrc")]
        if not self.with_cuda:
            return CppExtension("jem_fast._C", sources, include_dirs=include_dirs,
                                define_macros=define_macros,
                                extra_compile_args={"cxx": cxx_flags},
                                extra_link_args=link_flags)

        # torch.utils.cpp_extension reads CUDA_HOME at import time; make nvcc and cudart agree.
        import torch.utils.cpp_extension as cpp_ext
        os.environ["CUDA_HOME"] = self.cuda_home
        cpp_ext.CUDA_HOME = self.cuda_home
        include_dirs += _wheel_cuda_include_dirs()
        nvcc_flags = (["-O0", "-g"] if self.debug else ["-O3"]) + [
            "-lineinfo", "--expt-relaxed-constexpr",
            f"--threads={os.environ.get('NVCC_THREADS', '2')}"]
        define_macros.append(("WITH_CUDA", None))
        define_macros.append(("JEM_FAST_CUDA_ARCHS", '"%s"' % self.cuda_archs.replace('"', "")))
        sources += _read_sources("cuda")
        return CUDAExtension("jem_fast._C", sources, include_dirs=include_dirs,
                             define_macros=define_macros,
                             extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                             extra_link_args=link_flags)


def make_build_ext(plan):
    """torch's BuildExtension (ninja) that first prints the plan and writes _build_config.py
    next to where _C goes (the wheel's build folder, and the source tree for in-place builds)."""
    from torch.utils.cpp_extension import BuildExtension

    base = BuildExtension.with_options(use_ninja=True)

    class BuildExtensionWithReport(base):
        def run(self):
            print(plan.report(), flush=True)
            targets = {os.path.join(self.build_lib, PACKAGE)}
            if self.inplace or getattr(self, "editable_mode", False):
                targets.add(os.path.join(ROOT, PACKAGE))
            for folder in targets:
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, BUILD_CONFIG_MODULE), "w") as f:
                    f.write(plan.config_module())
            super().run()

    return BuildExtensionWithReport


def setup_arguments(argv):
    """setup() keywords; metadata other than the torch pin lives in pyproject.toml."""
    arguments = dict(packages=find_packages(ROOT, include=[PACKAGE, PACKAGE + ".*"]),
                     package_data={PACKAGE: ["py.typed"]}, zip_safe=False)
    if not needs_torch(argv):
        # An sdist is compiled later, against whatever torch its builder has.
        arguments["install_requires"] = [f"torch>={MIN_TORCH}", "numpy"]
        return arguments
    plan = BuildPlan(import_build_torch())
    arguments.update(install_requires=[plan.requirement, "numpy"],
                     ext_modules=[plan.extension()],
                     cmdclass={"build_ext": make_build_ext(plan)})
    return arguments


if __name__ == "__main__":  # pip, `python -m build` and `python setup.py` all run it as __main__
    setup(**setup_arguments(sys.argv))
