"""scripts/check_cuda_resources.py: its limit arithmetic and source parsing (always), and the
whole check on a small synthetic .cu compiled for sm_86 and sm_90 (needs nvcc; skipped without).
"""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_cuda_resources.py"


def _load():
    spec = importlib.util.spec_from_file_location("check_cuda_resources", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod   # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


ccr = _load()
NVCC = ccr.find_nvcc(None)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc (CUDA toolkit)")


# ------------------------------------------------------------------------------------------------
# Limit arithmetic
# ------------------------------------------------------------------------------------------------

def test_register_granularity_and_sub_partitions():
    lim = ccr.ARCH_LIMITS["sm_90"]
    assert ccr.register_check(64, 1024, lim)[0]          # 2048 regs/warp x 32 warps = 65536
    assert not ccr.register_check(65, 1024, lim)[0]      # 2080 -> 2304 per warp: 73728
    assert not ccr.register_check(72, 1024, lim)[0]      # the vicreg/barlow finalize defect
    assert ccr.register_check(72, 896, lim)[0]
    assert ccr.max_threads_for_regs(72, lim) == 896
    assert ccr.max_threads_for_regs(64, lim) == 1024
    assert ccr.register_check(255, 256, lim)[0]          # 8160 -> 8192 per warp x 8 warps
    # 224 regs x 9 warps = 64512 fits the total, but the 4 sub-partitions need 12 warps' worth.
    ok, why = ccr.register_check(224, 288, lim)
    assert not ok and "sub-partitions" in why
    assert ccr.register_check(168, 288, lim)[0]          # what ptxas picks for a bound of 288


def test_arch_limits_table():
    got = {a: ccr.ARCH_LIMITS[a].smem_optin for a in ccr.DEFAULT_ARCHS}
    assert got == {"sm_80": 166912, "sm_86": 101376, "sm_89": 101376, "sm_90": 232448,
                   "sm_100": 232448, "sm_120": 101376}
    for lim in ccr.ARCH_LIMITS.values():
        assert (lim.smem_default, lim.regs_per_block, lim.max_threads, lim.reg_unit) == \
            (49152, 65536, 1024, 256)
    assert ccr.smem_limit(ccr.ARCH_LIMITS["sm_86"], opt_in=False) == 49152
    assert [ccr.normalize_arch(a) for a in ("90", "9.0", "sm_90", "sm_90a", "compute_120")] == \
        ["sm_90", "sm_90", "sm_90", "sm_90a", "sm_120"]


# ------------------------------------------------------------------------------------------------
# Parsing: ptxas -v, demangled names, sources
# ------------------------------------------------------------------------------------------------

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z4kernPf' for 'sm_90'
ptxas info    : Function properties for _Z4kernPf
    256 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 4000 bytes smem, 256 bytes cumulative stack size
ptxas info    : Compile time = 31.296 ms
ptxas info    : Function properties for _Z6helperPfi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z5otherPf' for 'sm_90'
ptxas info    : Function properties for _Z5otherPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers, 360 bytes cmem[0]
ptxas error   : Entry function '_Z3bigPf' uses too much shared data (0xc800 bytes, 0xc000 max)
"""


def test_parse_ptxas():
    k = ccr.parse_ptxas(PTXAS_LOG)
    assert set(k) == {"_Z4kernPf", "_Z5otherPf", "_Z3bigPf"}
    a = k["_Z4kernPf"]
    assert (a.regs, a.smem, a.stack, a.spill_stores, a.spill_loads) == (40, 4000, 256, 8, 12)
    assert (k["_Z5otherPf"].regs, k["_Z5otherPf"].smem) == (8, 0)
    assert "too much shared data" in k["_Z3bigPf"].error


def test_split_demangled():
    q, base, short = ccr.split_demangled(
        "void jem_fast::covariance::(anonymous namespace)::vicreg_finalize_kernel<double>"
        "(double const*, long, jem_fast::cuda::AccOf<float>::type*)")
    assert q == "jem_fast::covariance::vicreg_finalize_kernel<double>"
    assert (base, short) == ("vicreg_finalize_kernel", "vicreg_finalize_kernel<double>")
    assert ccr.split_demangled("void k<__half, 8>(int)")[1:] == ("k", "k<__half, 8>")
    assert ccr._fallback_demangle("_ZN8jem_fast3foo6kernelEv") == "void jem_fast::foo::kernel(...)"


SOURCE = r"""
#include "demo.cuh"
namespace {
constexpr int kTileCols = 32;
constexpr int kTileRows = kTileCols / 4;   // 8
constexpr int64_t kChunkBytes = 4096;
constexpr size_t kMaxDyn = (kViews + 1) * kChunkBytes;   // kViews from demo.cuh

template <typename T>
__global__ void __launch_bounds__(kTileCols * kTileRows) tiled(const T* x) {}

// launch-resources: max_dynamic_smem_bytes=kMaxDyn opt_in=no
template <typename I, typename A>
__global__ void __launch_bounds__(256)
chunked(const I* x, A* y) { extern __shared__ unsigned char s[]; }

// launch-resources: max_dynamic_smem_bytes=sizeof(double)*1024 opt_in=maybe
__global__ void badmarker(float* x) {}

__global__ void plain(float* x) {}

// launch-resources: max_dynamic_smem_bytes=device_optin opt_in=yes
__global__ void __launch_bounds__(128) optin_kernel(float* x) {}
}  // namespace

void host(cudaStream_t stream, int n, size_t bytes) {
  const dim3 block(kTileCols, kTileRows);
  tiled<float><<<dim3(n), block, 0, stream>>>(nullptr);
  cuda::launch("chunked", chunked<__half, float>, dim3(n), dim3(256), kMaxDyn / 2, stream,
               nullptr, nullptr);
  int threads = 128;
  if (n > 5) threads = 512;
  plain<<<n, threads, bytes, stream>>>(nullptr);   /* not resolved: assigned again */
  const unsigned t2 = static_cast<unsigned>(2 * 64u);
  cudaLaunchKernel((const void*)plain, dim3(n), dim3(t2), nullptr, 0, stream);
  launch(nullptr, n);   // some other function called launch: ignored
}
"""


def test_source_parsing(tmp_path):
    (tmp_path / "demo.cuh").write_text("#pragma once\nconstexpr int kViews = 8;\n")
    cu = tmp_path / "demo.cu"
    cu.write_text(SOURCE)
    src = ccr.SourceInfo(cu, [tmp_path], "demo.cu")
    kernels = {k.name: k for k in src.kernels}
    assert set(kernels) == {"tiled", "chunked", "badmarker", "plain", "optin_kernel"}
    assert kernels["optin_kernel"].marker.max_dyn_expr == "device_optin"
    assert kernels["tiled"].bound_expr == "kTileCols * kTileRows"
    assert kernels["plain"].bound_expr is None
    mk = kernels["chunked"].marker
    assert mk is not None and mk.opt_in is False and not mk.errors
    assert src.eval_int(mk.max_dyn_expr, len(src.code)) == 9 * 4096
    assert any("opt_in=maybe" in e for e in kernels["badmarker"].marker.errors)
    assert kernels["plain"].marker is None

    launches = {(ln.kernel, ln.line): ln for ln in src.launches}
    by_kernel = {}
    for ln in src.launches:
        by_kernel.setdefault(ln.kernel, []).append(ln)
    assert set(by_kernel) == {"tiled", "chunked", "plain"}
    (t,) = by_kernel["tiled"]
    assert (t.block, t.block_threads, t.smem) == ((32, 8, 1), 256, 0)
    (c,) = by_kernel["chunked"]          # cuda::launch with a comma in the template arguments
    assert (c.block_threads, c.smem) == (256, 9 * 4096 // 2)
    p1, p2 = sorted(by_kernel["plain"], key=lambda ln: ln.line)
    assert p1.block_threads is None and "assigned again" in p1.block_error
    assert p1.smem is None                   # runtime bytes
    assert (p2.block_threads, p2.smem) == (128, 0)   # cudaLaunchKernel(k, grid, block, args, smem)
    assert len(launches) == 4


def _findings(ccr_src, name, arch, regs, smem, bound):
    ka = ccr.KernelArch("demo.cu", arch, "_Z" + name, qualified=name, base=name, short=name,
                        regs=regs, smem=smem, bound=bound)
    ccr._check_kernel(ka, ccr_src, ccr.ARCH_LIMITS[arch], True, False)
    return {(f.severity, f.rule) for f in ka.findings}, ka


def test_rules_on_parsed_source(tmp_path):
    (tmp_path / "demo.cuh").write_text("#pragma once\nconstexpr int kViews = 8;\n")
    cu = tmp_path / "demo.cu"
    cu.write_text(SOURCE)
    src = ccr.SourceInfo(cu, [tmp_path], "demo.cu")
    got, ka = _findings(src, "chunked", "sm_86", 40, 1000, 256)
    assert got == set() and (ka.dyn_smem, ka.opt_in, ka.limit_smem) == (36864, False, 49152)
    got, _ = _findings(src, "chunked", "sm_86", 40, 20000, 256)      # 20000 + 36864 > 49152
    assert got == {("error", "c")}
    got, _ = _findings(src, "tiled", "sm_90", 40, 0, 512)            # bound 512, launch 256
    assert got == {("error", "d")}
    got, ka = _findings(src, "plain", "sm_90", 72, 0, None)
    assert ("error", "a") in got and ("error", "m") in got           # no bound; runtime smem
    assert ("warning", "d") in got and ka.launch_threads == [128]    # one launch unresolved
    got, _ = _findings(src, "plain", "sm_90", 255, 0, None)          # 255 regs x 128: fits
    assert ("error", "b") not in got
    got, ka = _findings(src, "optin_kernel", "sm_120", 32, 0, 128)
    assert ka.dyn_smem == "device_optin" and ka.limit_smem == 101376
    assert ("error", "c") not in got
    got, _ = _findings(src, "optin_kernel", "sm_120", 32, 16, 128)   # static + opt-in max
    assert ("error", "c") in got


def test_expression_evaluator(tmp_path):
    cu = tmp_path / "e.cu"
    cu.write_text("constexpr int kA = 0x20;\nconstexpr unsigned kB = 3u;\n"
                  "static constexpr int kC = std::min(kA, 16) << 1;\n")
    src = ccr.SourceInfo(cu, [tmp_path], "e.cu")
    end = len(src.code)
    assert src.eval_int("kA * kB + sizeof(float)", end) == 100
    assert src.eval_int("static_cast<int>(kC) / 3", end) == 10
    assert src.eval_dims("dim3(kA, kB)", end) == (32, 3, 1)
    for bad in ("sizeof(T)", "kUnknown", "n * 2"):
        with pytest.raises(ccr.Unresolved):
            src.eval_int(bad, end)


# ------------------------------------------------------------------------------------------------
# The whole check on a synthetic .cu (nvcc)
# ------------------------------------------------------------------------------------------------

SYNTHETIC = r"""
#include <cuda_runtime.h>

constexpr int kThreads = 128;
constexpr int kBigThreads = 1024;
constexpr int kStaticFloats = 10 * 1024;          // 40 KB of static shared memory
constexpr int kDynBytes = 64 * 1024;              // + 64 KB dynamic: > 99 KB (sm_86), < 227 KB

#define HEAVY_BODY                                                         \
  double a[40];                                                            \
  _Pragma("unroll") for (int i = 0; i < 40; ++i) a[i] = x[threadIdx.x + i * 1024];  \
  for (int k = 0; k < n; ++k) {                                            \
    _Pragma("unroll") for (int i = 0; i < 40; ++i) a[i] = a[i] * a[(i + 1) % 40] + x[k]; \
  }                                                                        \
  double s = 0;                                                            \
  _Pragma("unroll") for (int i = 0; i < 40; ++i) s += a[i];                \
  y[threadIdx.x] = s;

// (a) no __launch_bounds__
__global__ void no_bounds_kernel(float* x) { x[threadIdx.x] *= 2.0f; }

// (a) and (b): no bound, launched with 1024 threads, ~90 registers
__global__ void heavy_kernel(const double* __restrict__ x, double* y, int n) { HEAVY_BODY }

// bound 1024: ptxas caps registers at 64 and spills (a warning; --strict-spills: an error)
__global__ void __launch_bounds__(kBigThreads)
bounded_heavy_kernel(const double* __restrict__ x, double* y, int n) { HEAVY_BODY }

// (c) on sm_86 only
// launch-resources: max_dynamic_smem_bytes=kDynBytes opt_in=yes
__global__ void __launch_bounds__(256) big_smem_kernel(float* x) {
  __shared__ float s[kStaticFloats];
  extern __shared__ float d[];
  s[threadIdx.x] = x[threadIdx.x];
  d[threadIdx.x] = x[threadIdx.x + 1];
  __syncthreads();
  x[threadIdx.x] = s[kStaticFloats - 1 - threadIdx.x] + d[255 - threadIdx.x];
}

// (d): bound 256, launched with 512 threads
__global__ void __launch_bounds__(256) mismatch_kernel(float* x) { x[threadIdx.x] += 1.0f; }

// (m): dynamic shared memory without a marker
__global__ void __launch_bounds__(kThreads) dyn_no_marker_kernel(float* x) {
  extern __shared__ float d[];
  d[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  x[threadIdx.x] = d[kThreads - 1 - threadIdx.x];
}

// good
template <typename T>
__global__ void __launch_bounds__(kThreads) good_kernel(T* x) { x[threadIdx.x] += T(1); }

void launch_all(float* f, double* d, int n, size_t bytes, cudaStream_t stream) {
  no_bounds_kernel<<<n, kThreads, 0, stream>>>(f);
  heavy_kernel<<<1, kBigThreads, 0, stream>>>(d, d, n);
  bounded_heavy_kernel<<<1, kBigThreads, 0, stream>>>(d, d, n);
  cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kDynBytes);
  big_smem_kernel<<<n, 256, kDynBytes, stream>>>(f);
  mismatch_kernel<<<n, 2 * 256, 0, stream>>>(f);
  dyn_no_marker_kernel<<<n, kThreads, bytes, stream>>>(f);
  const dim3 block(kThreads);
  good_kernel<float><<<n, block, 0, stream>>>(f);
  good_kernel<double><<<n, block, 0, stream>>>(d);
}
"""


def _errors_by_kernel(doc):
    out = {}
    for k in doc["kernels"]:
        rules = {f["rule"] for f in k["findings"] if f["severity"] == "error"}
        out.setdefault(k["name"], {})[k["arch"]] = rules
    return out


@needs_nvcc
def test_check_catches_synthetic_defects(tmp_path, capsys):
    cu = tmp_path / "synthetic_cuda.cu"
    cu.write_text(SYNTHETIC)
    out = tmp_path / "result.json"
    rc = ccr.main(["--csrc", str(tmp_path), "--files", str(cu), "--archs", "sm_86,sm_90",
                   "--json", str(out), "--jobs", "2", "--nvcc", NVCC])
    text = capsys.readouterr().out
    assert rc == 1, text
    doc = json.loads(out.read_text())
    assert doc["status"] == "FAIL" and all(c["ok"] for c in doc["compile"]), doc["compile"]
    err = _errors_by_kernel(doc)
    both = ("sm_86", "sm_90")
    for arch in both:
        assert err["no_bounds_kernel"][arch] == {"a"}
        assert err["heavy_kernel"][arch] == {"a", "b"}
        assert err["bounded_heavy_kernel"][arch] == set()
        assert err["mismatch_kernel"][arch] == {"d"}
        assert err["dyn_no_marker_kernel"][arch] == {"m"}
        assert err["good_kernel"][arch] == set()
    assert err["big_smem_kernel"] == {"sm_86": {"c"}, "sm_90": set()}

    k = {(x["name"], x["arch"]): x for x in doc["kernels"]}
    heavy = k[("heavy_kernel", "sm_90")]
    assert heavy["launch_bound"] is None and heavy["registers"] > 64
    assert heavy["launch_block_threads"] == [1024]
    bounded = k[("bounded_heavy_kernel", "sm_90")]
    assert bounded["launch_bound"] == 1024 and bounded["registers"] <= 64
    assert bounded["spill_stores_bytes"] > 0 and bounded["status"] == "WARN"
    big = k[("big_smem_kernel", "sm_86")]
    assert (big["static_smem_bytes"], big["max_dynamic_smem_bytes"], big["opt_in"]) == \
        (40960, 65536, True)
    assert big["smem_limit_bytes"] == 101376
    assert k[("good_kernel", "sm_86")]["launch_bound"] == 128
    # The report names the file, the demangled kernel, the arch and the numbers.
    assert "VIOLATIONS" in text and "synthetic_cuda.cu" in text
    assert "heavy_kernel" in text and "x 1024 threads" in text
    assert "40960 B + dynamic 65536 B = 106496 B > 101376 B" in text

    # Spills are errors with --strict-spills.
    rc = ccr.main(["--csrc", str(tmp_path), "--files", str(cu), "--archs", "sm_90",
                   "--json", str(out), "--strict-spills", "--quiet", "--nvcc", NVCC])
    capsys.readouterr()
    assert rc == 1
    err = _errors_by_kernel(json.loads(out.read_text()))
    assert err["bounded_heavy_kernel"]["sm_90"] == {"s"}


@needs_nvcc
def test_clean_file_passes(tmp_path, capsys):
    cu = tmp_path / "clean_cuda.cu"
    cu.write_text("constexpr int kThreads = 64;\n"
                  "__global__ void __launch_bounds__(kThreads) k(float* x) {\n"
                  "  x[threadIdx.x] = 0;\n"
                  "}\n"
                  "void run(float* x, int n) { k<<<n, kThreads>>>(x); }\n")
    rc = ccr.main(["--csrc", str(tmp_path), "--files", str(cu), "--archs", "sm_90", "--quiet",
                   "--nvcc", NVCC])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "check_cuda_resources: OK" in text
