#!/usr/bin/env python3
"""Build the CUDA-on-CPU emulation library libjem_cuda_emu.so (no torch needed).

Every csrc/**/*_cuda.cu listed in the [cuda] section of csrc/sources.txt is rewritten by
cu2cpu.py (kernel launches, dynamic shared memory) and compiled with g++ against HIP-CPU through
the CUDA-name shim in tests/cuda_emu/shim/, together with every tests/cuda_emu/wrap_*.cpp (the
extern "C" wrappers Python calls through ctypes), into one shared library.

Incremental: each object file is named by a SHA-256 of everything that can change it (its source,
every csrc header, the shim, cu2cpu.py, tests/cuda_emu/*.h, the compiler and the flags), so it is
rebuilt exactly when one of those changed, whatever the mtimes say. The link is redone when the
set of objects changed. Compiles run in parallel (MAX_JOBS, default os.cpu_count()).

Environment:
  JEM_CUDA_EMU_SRC    project root whose csrc/ is compiled (default: this repository); point it at
                      a mutated copy of csrc for mutation testing.
  JEM_CUDA_EMU_BUILD  build directory (default <repo>/build/cuda_emu).
  HIPCPU_ROOT         HIP-CPU checkout (default <repo>/../shared/third_party/HIP-CPU).
  JEM_CUDA_EMU_OPT    optimization flag (default -O1: see README.md for the measurement).
  JEM_CUDA_EMU_CXXFLAGS  extra compile flags (split like a shell would),
                      e.g. -DCUDAEMU_NATIVE_SHFL=1.
  JEM_CUDA_EMU_WRAPPERS  only these wrap_*.cpp (comma-separated globs; default all).
  CXX                 compiler (default g++).   MAX_JOBS: parallel compiles.

usage: python tests/cuda_emu/build.py [-v]      (prints the per-file compile times)
"""
import concurrent.futures
import contextlib
import hashlib
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
LIB_NAME = "libjem_cuda_emu.so"
DEFAULT_OPT = "-O1"

sys.path.insert(0, str(HERE))
import cu2cpu  # noqa: E402

del sys.path[0]


class BuildError(RuntimeError):
    pass


class Config:
    def __init__(self):
        env = os.environ
        self.src_root = pathlib.Path(env.get("JEM_CUDA_EMU_SRC") or REPO).resolve()
        self.build_dir = pathlib.Path(
            env.get("JEM_CUDA_EMU_BUILD") or REPO / "build" / "cuda_emu").resolve()
        self.hipcpu_root = pathlib.Path(
            env.get("HIPCPU_ROOT") or REPO.parent / "shared" / "third_party" / "HIP-CPU").resolve()
        self.cxx = env.get("CXX") or "g++"
        self.opt = env.get("JEM_CUDA_EMU_OPT") or DEFAULT_OPT
        self.extra = shlex.split(env.get("JEM_CUDA_EMU_CXXFLAGS", ""))
        jobs = env.get("MAX_JOBS")
        self.jobs = max(1, int(jobs)) if jobs and jobs.isdigit() else (os.cpu_count() or 1)

    @property
    def csrc(self):
        return self.src_root / "csrc"

    @property
    def lib_path(self):
        return self.build_dir / LIB_NAME

    def compile_flags(self):
        return ["-std=c++17", self.opt, "-g0", "-fPIC", "-DWITH_CUDA", "-Wno-attributes",
                f"-I{HERE / 'shim'}", f"-I{self.hipcpu_root / 'include'}", f"-I{self.csrc}",
                f"-I{HERE}", *self.extra]

    def link_flags(self):
        return ["-shared", "-Wl,--no-undefined", "-ltbb", "-pthread"]


def missing_prerequisites(cfg=None):
    """Human-readable reasons the emulation cannot be built here (empty list: it can)."""
    cfg = cfg or Config()
    reasons = []
    if not (cfg.hipcpu_root / "include" / "hip" / "hip_runtime.h").is_file():
        reasons.append(f"HIP-CPU headers not found under {cfg.hipcpu_root} (set HIPCPU_ROOT)")
    tbb_dirs = [pathlib.Path(p) for p in ("/usr/include", "/usr/local/include")]
    tbb_dirs += [pathlib.Path(p) for p in os.environ.get("CPATH", "").split(":") if p]
    if not any((d / "tbb" / "tbb.h").is_file() or (d / "oneapi" / "tbb.h").is_file()
               for d in tbb_dirs):
        reasons.append("TBB headers not found (apt-get install libtbb-dev)")
    if shutil.which(cfg.cxx) is None:
        reasons.append(f"C++ compiler {cfg.cxx!r} not found (set CXX)")
    if not (cfg.csrc / "sources.txt").is_file():
        reasons.append(f"{cfg.csrc / 'sources.txt'} not found (JEM_CUDA_EMU_SRC={cfg.src_root})")
    return reasons


def cuda_sources(cfg):
    """The .cu files of the [cuda] section of csrc/sources.txt, as paths."""
    section, out = None, []
    for line in (cfg.csrc / "sources.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "cuda":
            out.append(cfg.csrc / line)
    if not out:
        raise BuildError(f"no [cuda] sources in {cfg.csrc / 'sources.txt'}")
    return out


def wrapper_sources():
    """tests/cuda_emu/wrap_*.cpp, or only those matching JEM_CUDA_EMU_WRAPPERS (comma-separated
    globs, e.g. "wrap_losses.cpp": work on some kernels while another wrapper does not build)."""
    patterns = [p.strip() for p in os.environ.get("JEM_CUDA_EMU_WRAPPERS", "").split(",")
                if p.strip()]
    found = sorted(HERE.glob("wrap_*.cpp"))
    if patterns:
        found = [p for p in found if any(p.match(pat) for pat in patterns)]
    return found


def _digest(*chunks):
    h = hashlib.sha256()
    for c in chunks:
        h.update(c if isinstance(c, bytes) else str(c).encode())
        h.update(b"\0")
    return h.hexdigest()


_COMPILER_ID = {}


def _compiler_id(cxx):
    if cxx not in _COMPILER_ID:
        try:
            _COMPILER_ID[cxx] = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                               check=False).stdout
        except OSError:
            _COMPILER_ID[cxx] = cxx
    return _COMPILER_ID[cxx]


def _common_digest(cfg):
    """Everything every object depends on besides its own source."""
    files = sorted(p for ext in ("*.h", "*.cuh", "*.hpp", "*.inl") for p in cfg.csrc.rglob(ext))
    files += sorted((HERE / "shim").glob("*.h"))
    files += sorted(HERE.glob("*.h"))  # wrap_common.h and any header the wrappers share
    files += [HERE / "cu2cpu.py"]
    chunks = [_compiler_id(cfg.cxx), shlex.join(cfg.compile_flags())]
    for p in files:
        name = p.relative_to(cfg.csrc) if p.is_relative_to(cfg.csrc) else p.name
        chunks += [str(name), p.read_bytes()]
    return _digest(*chunks)


class Unit:
    """One object file: a translated .cu or a wrapper .cpp."""

    def __init__(self, cfg, source, common):
        self.source = source
        self.is_cu = source.suffix == ".cu"
        rel = source.relative_to(cfg.csrc) if self.is_cu else pathlib.Path("tests") / source.name
        self.stem = str(rel.with_suffix("")).replace(os.sep, "__")
        self.text = source.read_bytes()
        self.key = _digest(common, rel, self.text)[:20]
        self.obj = cfg.build_dir / "obj" / f"{self.stem}.{self.key}.o"
        self.cpp = cfg.build_dir / "gen" / f"{self.stem}.cpp" if self.is_cu else source


def _compile(cfg, unit):
    start = time.perf_counter()
    if unit.is_cu:
        text, _, _ = cu2cpu.translate(unit.text.decode(), str(unit.source))
        unit.cpp.parent.mkdir(parents=True, exist_ok=True)
        unit.cpp.write_text(text)
    unit.obj.parent.mkdir(parents=True, exist_ok=True)
    tmp = unit.obj.with_suffix(f".tmp{os.getpid()}.o")
    cmd = [cfg.cxx, *cfg.compile_flags(), "-c", str(unit.cpp), "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        err = res.stderr if len(res.stderr) <= 8000 else res.stderr[:8000] + "\n[...]"
        raise BuildError(f"compiling {unit.source} failed:\n$ {shlex.join(cmd)}\n{err}")
    os.replace(tmp, unit.obj)
    for old in unit.obj.parent.glob(f"{unit.stem}.*.o"):  # stale versions of this unit
        if old != unit.obj and ".tmp" not in old.name:
            old.unlink(missing_ok=True)
    return time.perf_counter() - start


@contextlib.contextmanager
def _locked(build_dir):
    import fcntl
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(cfg=None, log=None):
    """Build (incrementally) and return the path of libjem_cuda_emu.so. Raises BuildError."""
    cfg = cfg or Config()
    missing = missing_prerequisites(cfg)
    if missing:
        raise BuildError("; ".join(missing))
    log = log or (lambda msg: None)
    with _locked(cfg.build_dir):
        common = _common_digest(cfg)
        units = [Unit(cfg, p, common) for p in cuda_sources(cfg) + wrapper_sources()]
        todo = [u for u in units if not u.obj.is_file()]
        t0 = time.perf_counter()
        if todo:
            log(f"cuda_emu: compiling {len(todo)} of {len(units)} files with "
                f"{min(cfg.jobs, len(todo))} jobs ({cfg.opt}) into {cfg.build_dir}")
            errors = []
            with concurrent.futures.ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
                futures = {pool.submit(_compile, cfg, u): u for u in todo}
                for fut in concurrent.futures.as_completed(futures):
                    u = futures[fut]
                    try:
                        log(f"  {fut.result():6.1f} s  {u.source}")
                    except BuildError as e:
                        errors.append(str(e))
                        log(f"   FAILED  {u.source}")
            if errors:
                raise BuildError("\n\n".join(errors))
        link_key = _digest(shlex.join(cfg.link_flags()), *(u.obj.name for u in units))
        key_file = cfg.build_dir / (LIB_NAME + ".key")
        lib = cfg.lib_path
        if not (lib.is_file() and key_file.is_file() and key_file.read_text() == link_key):
            tmp = lib.with_name(f"{LIB_NAME}.tmp{os.getpid()}")
            cmd = [cfg.cxx, "-o", str(tmp), *(str(u.obj) for u in units), *cfg.link_flags()]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise BuildError(
                    f"linking {lib} failed:\n$ {shlex.join(cmd)}\n{res.stderr[:8000]}")
            os.replace(tmp, lib)  # a process that mapped the old library keeps its copy
            key_file.write_text(link_key)
            log(f"cuda_emu: linked {lib} ({time.perf_counter() - t0:.1f} s in all)")
        else:
            log(f"cuda_emu: {lib} is up to date")
    return lib


def main(argv):
    verbose = "-q" not in argv
    cfg = Config()
    start = time.perf_counter()
    try:
        lib = build(cfg, log=print if verbose else None)
    except BuildError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{lib}  ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
