#!/usr/bin/env python3
"""Static launch-resource check of jem_fast's CUDA kernels (no GPU needed, only nvcc).

Every .cu file of csrc/sources.txt's [cuda] section is compiled to a cubin for each target
architecture with the nvcc flags of the real build (setup.py), in parallel (MAX_JOBS, default:
the CPUs this process may use). For every kernel -- every template instantiation -- it reads

  * registers per thread, static shared memory and spill stores/loads (ptxas -v), and
  * the max-threads launch bound (EIATTR_MAX_THREADS in the cubin's .nv.info.<kernel> section,
    parsed here from the ELF directly: no cuobjdump needed),

and it reads the sources for the launch sites and the dynamic shared memory markers below.
Launch sites are `kernel<<<grid, block, smem, stream>>>(...)` and calls of launch helpers whose
kernel argument names a __global__ kernel: the project's cuda::launch(what, kernel, grid, block,
smem, stream, args...) (csrc/common/cuda_utils.cuh), cudaLaunchKernel and
cudaLaunchCooperativeKernel (more with --launch-helper). Block sizes and dynamic shared memory
are resolved from literals, constexpr/const names (nearest definition above the launch, or in
the csrc headers the file includes), dim3(...), sizeof, casts and + - * / % << >> min max.

It fails (exit 1) when, for some kernel and architecture:

  (a) the kernel has no __launch_bounds__ (project rule: every kernel carries __launch_bounds__
      matching how it is launched);
  (b) a block of `threads` threads does not get its registers, or threads > 1024. Threads are the
      launch bound and every block size the host launches with (resolved from the source). The
      register check is the hardware's, from CUDA's own cuda_occupancy.h
      (cudaOccMaxBlocksPerSMRegsLimit): registers are allocated per warp in units of 256,
          regs_per_warp = ceil(regs * 32 / 256) * 256,   warps = ceil(threads / 32),
      and the launch fits only if
          regs_per_warp * warps                  <= 65536   ("software check"), and
          regs_per_warp * round_up(warps, 4)     <= 65536   ("hardware check": the register
                                                             file is split over 4 SM
                                                             sub-partitions, 16384 each).
      The second is the stricter one when warps is not a multiple of 4 (e.g. 224 regs x 288
      threads passes the first and fails the second); ptxas uses the same rule when it caps
      registers for a __launch_bounds__;
  (c) static shared memory + the kernel's maximum dynamic shared memory exceeds the per-block
      limit of the architecture: 48 KB (49152 B) without opt-in, else the opt-in maximum
      (ARCH_LIMITS below);
  (d) the launch bound disagrees with a block size the host launches with (launch > bound: the
      launch fails; bound > every launch: the bound is not the one the kernel runs with).
      Launches whose block size cannot be resolved are warnings, not errors;
  (m) a kernel is launched with a dynamic shared memory argument that does not evaluate to 0
      and carries no marker, or a marker is malformed, unresolvable or smaller than a resolved
      launch.

Spills (ptxas "bytes spill stores/loads" > 0) are warnings; --strict-spills makes them errors.
Compile errors (e.g. ptxas' "uses too much shared data") are errors.

Dynamic shared memory marker
----------------------------
A kernel whose launch passes dynamic shared memory declares its maximum in a `//` comment placed
above its definition (the marker applies to the next __global__ kernel defined after it in the
same file; template <...> lines and other comments may sit in between):

    // launch-resources: max_dynamic_smem_bytes=<value> opt_in=<yes|no>
    template <typename T>
    __global__ void __launch_bounds__(kThreads) my_kernel(...)

  max_dynamic_smem_bytes  an integer, or a constant expression without spaces over constexpr /
                          const names visible in the file or its csrc headers, e.g.
                          `max_dynamic_smem_bytes=kMaxSmemBytes` or `=(kMaxViews+1)*4096`.
                          sizeof(float|double|int|...) is understood; templates are not.
                          `device_optin` (alias `runtime`): the host lets it grow up to the
                          device's cudaDevAttrMaxSharedMemoryPerBlockOptin, checked at run time
                          (needs opt_in=yes). Static + dynamic then reaches the opt-in maximum
                          only if the kernel has no static shared memory, so a kernel with
                          static shared memory fails (c) with this value.
  opt_in                  yes: the host raises cudaFuncAttributeMaxDynamicSharedMemorySize
                          with cudaFuncSetAttribute (the limit is the arch's opt-in maximum);
                          no: the 48 KB default applies.
  kernel=<name>           optional: name the kernel explicitly instead of "the next one".

Kernels launched only with a dynamic shared memory argument that evaluates to 0 (or none) need
no marker.

Usage
-----
    python scripts/check_cuda_resources.py                  # all files, all archs
    python scripts/check_cuda_resources.py --archs sm_90 --files losses/vicreg_cuda.cu
    python scripts/check_cuda_resources.py --json build/cuda_resources.json
    python scripts/check_cuda_resources.py --list-limits

Exit status: 0 all checks pass (warnings allowed), 1 violations, 2 usage or tool error.
Nothing is written to the source tree: cubins go to a temporary folder (or --build-dir).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------------------
# Per-architecture limits.
#
# Sources:
#  * NVIDIA CUDA C++ Programming Guide, "Compute Capabilities", table "Technical Specifications per
#    Compute Capability" (https://docs.nvidia.com/cuda/cuda-programming-guide/05-appendices/
#    compute-capabilities.html; formerly cuda-c-programming-guide/#compute-capabilities):
#    max threads per block 1024, 64K 32-bit registers per block (and per SM), 255 registers per
#    thread, 48 KB of shared memory per block without opt-in (static shared memory can never
#    exceed it; ptxas rejects it), and the "maximum amount of shared memory per thread block"
#    with opt-in: 8.0: 163 KB, 8.6: 99 KB, 8.9: 99 KB, 9.0: 227 KB, 10.0: 227 KB, 12.0: 99 KB
#    (1 KB per block of the SM's 164/100/228 KB is reserved by the driver).
#  * NVIDIA Ampere / Hopper / Blackwell tuning guides: A100 "up to 163 KB", H100 and B200 "up to
#    227 KB" of shared memory per thread block, "static shared memory allocations remain limited
#    to 48 KB" (the Blackwell guide as quoted in NVIDIA/cudnn-frontend PR #1164).
#  * cudaDevAttrMaxSharedMemoryPerBlockOptin as devices report it: 101376 on RTX 3090 / A6000
#    (triton-lang/triton #384), RTX 4090 (meta-pytorch/attention-gym #14) and RTX 5090, which
#    also reports 65536 registers per block (pytorch/pytorch #161376). 166912 = 163 KB and
#    232448 = 227 KB for A100 and H100/B200 follow from the guide's numbers.
#  * CUDA 13.0 include/cuda_occupancy.h: register allocation unit 256 per warp and 4
#    sub-partitions per SM for compute capability 8.x-12.x (cudaOccRegAllocationGranularity,
#    cudaOccSubPartitionsPerMultiprocessor, cudaOccMaxBlocksPerSMRegsLimit).
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchLimits:
    cc: str
    smem_optin: int              # max shared memory per block with opt-in, bytes
    smem_per_sm: int             # shared memory per SM, bytes (informational)
    smem_default: int = 48 * 1024
    regs_per_block: int = 64 * 1024
    max_threads: int = 1024
    max_block_z: int = 64
    max_regs_per_thread: int = 255
    reg_unit: int = 256          # register allocation unit, per warp
    sub_partitions: int = 4


KB = 1024
ARCH_LIMITS: Dict[str, ArchLimits] = {
    "sm_80": ArchLimits("8.0", smem_optin=163 * KB, smem_per_sm=164 * KB),
    "sm_86": ArchLimits("8.6", smem_optin=99 * KB, smem_per_sm=100 * KB),
    "sm_89": ArchLimits("8.9", smem_optin=99 * KB, smem_per_sm=100 * KB),
    "sm_90": ArchLimits("9.0", smem_optin=227 * KB, smem_per_sm=228 * KB),
    "sm_100": ArchLimits("10.0", smem_optin=227 * KB, smem_per_sm=228 * KB),
    "sm_120": ArchLimits("12.0", smem_optin=99 * KB, smem_per_sm=100 * KB),
}
DEFAULT_ARCHS = list(ARCH_LIMITS)   # the same list as setup.py's DEFAULT_CUDA_ARCHS

WARP = 32

# The nvcc flags of the real build: setup.py's nvcc_flags (-O3 -lineinfo --expt-relaxed-constexpr),
# its macros (WITH_CUDA, TORCH_EXTENSION_NAME) and include dir (csrc), plus the flags that
# torch.utils.cpp_extension adds to every nvcc call (COMMON_NVCC_FLAGS). The C++ standard is the
# one torch asks for; ptxas' results on this tree are the same for c++17 and c++20 (--std).
BUILD_NVCC_FLAGS = [
    "-O3", "-lineinfo", "--expt-relaxed-constexpr",
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
    "-DWITH_CUDA", "-DTORCH_EXTENSION_NAME=_C",
]
DEFAULT_STD = "c++20"

DEVICE_OPTIN = ("device_optin", "runtime")

# Launch helpers besides `kernel<<<grid, block, smem, stream>>>`: function name -> argument
# positions (kernel, grid, block, dynamic smem). The project's own csrc/common/cuda_utils.cuh
# cuda::launch(what, kernel, grid, block, smem_bytes, stream, args...) wraps cudaLaunchKernelEx.
# A call counts as a launch only when the kernel argument names a __global__ kernel of the file
# or its headers. Add more with --launch-helper NAME:K,G,B,S.
LAUNCH_HELPERS: Dict[str, Tuple[int, int, int, int]] = {
    "launch": (1, 2, 3, 4),
    "cudaLaunchKernel": (0, 1, 2, 4),
    "cudaLaunchCooperativeKernel": (0, 1, 2, 4),
}

RULES = {
    "a": "no __launch_bounds__",
    "b": "registers/threads",
    "c": "shared memory",
    "d": "launch bound vs launch",
    "m": "dynamic smem marker",
    "e": "compile error",
    "s": "spills",
    "w": "warning",
}


# ------------------------------------------------------------------------------------------------
# Limit arithmetic
# ------------------------------------------------------------------------------------------------

def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def regs_per_warp(regs: int, lim: ArchLimits) -> int:
    return ceil_div(regs * WARP, lim.reg_unit) * lim.reg_unit


def register_check(regs: int, threads: int, lim: ArchLimits) -> Tuple[bool, str]:
    """(fits, explanation) for one block of `threads` threads at `regs` registers per thread."""
    rpw = regs_per_warp(regs, lim)
    warps = ceil_div(threads, WARP)
    soft = rpw * warps
    hard = rpw * ceil_div(warps, lim.sub_partitions) * lim.sub_partitions
    if regs > lim.max_regs_per_thread:
        return False, f"{regs} registers per thread > {lim.max_regs_per_thread}"
    if soft > lim.regs_per_block:
        return False, (f"{regs} regs x {threads} threads: {warps} warps x {rpw} regs/warp "
                       f"= {soft} > {lim.regs_per_block}")
    if hard > lim.regs_per_block:
        return False, (f"{regs} regs x {threads} threads: {rpw} regs/warp x {warps} warps "
                       f"rounded up to {ceil_div(warps, lim.sub_partitions) * lim.sub_partitions}"
                       f" (4 sub-partitions) = {hard} > {lim.regs_per_block}")
    return True, f"{regs} regs x {threads} threads = {hard} <= {lim.regs_per_block}"


def max_threads_for_regs(regs: int, lim: ArchLimits) -> int:
    """Largest block size (multiple of 32) whose registers fit; 0 if none."""
    for t in range(lim.max_threads, 0, -WARP):
        if register_check(regs, t, lim)[0]:
            return t
    return 0


def smem_limit(lim: ArchLimits, opt_in: bool) -> int:
    return lim.smem_optin if opt_in else lim.smem_default


# ------------------------------------------------------------------------------------------------
# Cubin (ELF) reader: the .nv.info attributes
# ------------------------------------------------------------------------------------------------

EIATTR_MAX_THREADS = 0x05     # __launch_bounds__(maxThreads): u32 x, y, z
EIATTR_REQNTID = 0x10         # .reqntid: u32 x, y, z
EIATTR_MAXREG_COUNT = 0x1B    # register cap ptxas derived (0xff: none)
EIATTR_REGCOUNT = 0x2F        # global .nv.info: u32 symbol index, u32 registers
EIFMT_SVAL = 0x04             # attribute with a u16 size and a payload; others are 4 bytes
STO_CUDA_ENTRY = 0x10         # st_other bit of kernel (entry) symbols


@dataclass
class CubinKernel:
    name: str
    max_threads: Optional[Tuple[int, int, int]] = None
    reqntid: Optional[Tuple[int, int, int]] = None
    maxreg: Optional[int] = None
    regcount: Optional[int] = None


def _nv_info_attrs(data: bytes) -> List[Tuple[int, int, bytes]]:
    """(format, attribute, payload) records of a .nv.info section."""
    out, i = [], 0
    while i + 4 <= len(data):
        fmt, attr = data[i], data[i + 1]
        if fmt == EIFMT_SVAL:
            size = struct.unpack_from("<H", data, i + 2)[0]
            out.append((fmt, attr, data[i + 4:i + 4 + size]))
            i += 4 + size
        else:  # EIFMT_NVAL / BVAL / HVAL: the value sits in the 2 bytes after the header
            out.append((fmt, attr, data[i + 2:i + 4]))
            i += 4
    return out


def read_cubin(path: Path) -> Dict[str, CubinKernel]:
    """Kernels of a cubin (64-bit little-endian ELF) with their launch attributes."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = []
    for k in range(shnum):
        (name, stype, _flags, _addr, off, size, link, info, _align,
         entsize) = struct.unpack_from("<IIQQQQIIQQ", data, shoff + k * shentsize)
        sections.append((name, stype, off, size, link, info, entsize))
    str_off = sections[shstrndx][2]

    def cstr(base: int, off: int) -> str:
        end = data.index(b"\0", base + off)
        return data[base + off:end].decode("latin-1")

    named = [(cstr(str_off, s[0]),) + s[1:] for s in sections]
    kernels: Dict[str, CubinKernel] = {}
    symbols: List[str] = []
    for sname, stype, off, size, link, _info, entsize in named:
        if stype == 2:  # SHT_SYMTAB
            strtab = sections[link][2]
            for j in range(size // (entsize or 24)):
                st_name, st_info, st_other, _shndx, _v, _s = struct.unpack_from(
                    "<IBBHQQ", data, off + j * (entsize or 24))
                nm = cstr(strtab, st_name)
                symbols.append(nm)
                if (st_info & 0xF) == 2 and (st_other & STO_CUDA_ENTRY):
                    kernels.setdefault(nm, CubinKernel(nm))
    for sname, stype, off, size, _link, _info, _entsize in named:
        if sname.startswith(".nv.info."):
            k = kernels.setdefault(sname[len(".nv.info."):], CubinKernel(sname[len(".nv.info."):]))
            for fmt, attr, payload in _nv_info_attrs(data[off:off + size]):
                if attr == EIATTR_MAX_THREADS and fmt == EIFMT_SVAL and len(payload) >= 12:
                    k.max_threads = struct.unpack_from("<III", payload)
                elif attr == EIATTR_REQNTID and fmt == EIFMT_SVAL and len(payload) >= 12:
                    k.reqntid = struct.unpack_from("<III", payload)
                elif attr == EIATTR_MAXREG_COUNT and fmt != EIFMT_SVAL:
                    k.maxreg = struct.unpack_from("<H", payload)[0]
        elif sname == ".nv.info":
            for fmt, attr, payload in _nv_info_attrs(data[off:off + size]):
                if attr == EIATTR_REGCOUNT and fmt == EIFMT_SVAL and len(payload) >= 8:
                    sym, regs = struct.unpack_from("<II", payload)
                    if sym < len(symbols) and symbols[sym] in kernels:
                        kernels[symbols[sym]].regcount = regs
    return kernels


# ------------------------------------------------------------------------------------------------
# ptxas -v output
# ------------------------------------------------------------------------------------------------

@dataclass
class PtxasKernel:
    name: str
    regs: Optional[int] = None
    smem: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    barriers: Optional[int] = None
    error: Optional[str] = None


_RE_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_RE_PROPS = re.compile(r"Function properties for (\S+)")
_RE_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_RE_USED = re.compile(r"ptxas info\s*:\s*Used (\d+) registers(.*)")
_RE_SMEM = re.compile(r"(\d+) bytes smem")
_RE_BAR = re.compile(r"used (\d+) barriers")
_RE_PTXAS_ENTRY_ERR = re.compile(r"ptxas error\s*:\s*Entry function '([^']+)' (.*)")


def parse_ptxas(text: str) -> Dict[str, PtxasKernel]:
    """Entry functions of one ptxas -v log (a single architecture)."""
    kernels: Dict[str, PtxasKernel] = {}
    frames: Dict[str, Tuple[int, int, int]] = {}
    current: Optional[PtxasKernel] = None
    props_for: Optional[str] = None
    for line in text.splitlines():
        m = _RE_ENTRY.search(line)
        if m:
            current = kernels.setdefault(m.group(1), PtxasKernel(m.group(1)))
            props_for = None
            continue
        m = _RE_PROPS.search(line)
        if m:
            props_for = m.group(1)
            continue
        m = _RE_FRAME.search(line)
        if m and props_for:
            frames[props_for] = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
            props_for = None
            continue
        m = _RE_USED.search(line)
        if m and current is not None and current.regs is None:
            current.regs = int(m.group(1))
            rest = m.group(2)
            sm = _RE_SMEM.search(rest)
            current.smem = int(sm.group(1)) if sm else 0
            bm = _RE_BAR.search(rest)
            current.barriers = int(bm.group(1)) if bm else None
            continue
        m = _RE_PTXAS_ENTRY_ERR.search(line)
        if m:
            k = kernels.setdefault(m.group(1), PtxasKernel(m.group(1)))
            k.error = m.group(2).strip()
    for name, k in kernels.items():
        if name in frames:
            k.stack, k.spill_stores, k.spill_loads = frames[name]
    return kernels


# ------------------------------------------------------------------------------------------------
# Demangling
# ------------------------------------------------------------------------------------------------

def demangle_all(names: Sequence[str]) -> Dict[str, str]:
    names = sorted(set(names))
    tool = shutil.which("c++filt") or shutil.which("llvm-cxxfilt")
    if tool and names:
        try:
            out = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True,
                                 text=True, timeout=60, check=True).stdout.splitlines()
            if len(out) == len(names):
                return dict(zip(names, out))
        except (OSError, subprocess.SubprocessError):
            pass
    return {n: _fallback_demangle(n) for n in names}


def _fallback_demangle(mangled: str) -> str:
    """Qualified name only, from the <length><identifier> runs of an Itanium name."""
    m = re.match(r"_Z(N?)(.*)", mangled)
    if not m:
        return mangled
    rest, parts = m.group(2), []
    while True:
        while rest[:1] in ("K", "V", "L"):
            rest = rest[1:]
        mm = re.match(r"(\d+)", rest)
        if not mm:
            break
        n = int(mm.group(1))
        ident = rest[len(mm.group(1)):len(mm.group(1)) + n]
        parts.append("(anonymous namespace)" if ident.startswith("_GLOBAL__N") else ident)
        rest = rest[len(mm.group(1)) + n:]
        if not m.group(1):
            break
    return "void " + "::".join(parts) + "(...)" if parts else mangled


def _match_open_angle(s: str, close: int) -> int:
    depth = 0
    for i in range(close, -1, -1):
        if s[i] == ">":
            depth += 1
        elif s[i] == "<":
            depth -= 1
            if depth == 0:
                return i
    return -1


def split_demangled(demangled: str) -> Tuple[str, str, str]:
    """(qualified name with template args, base name, base name with template args)."""
    s = demangled.replace("(anonymous namespace)::", "")
    if s.startswith("void "):
        s = s[5:]
    depth, qual = 0, s
    for i, c in enumerate(s):
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            qual = s[:i]
            break
    qual = qual.strip()
    core, targs = qual, ""
    if qual.endswith(">"):
        j = _match_open_angle(qual, len(qual) - 1)
        if j > 0:
            core, targs = qual[:j], qual[j:]
    base = core.split("::")[-1]
    return qual, base, base + targs


# ------------------------------------------------------------------------------------------------
# Source analysis: constants, kernels, markers, launches
# ------------------------------------------------------------------------------------------------

def strip_comments_and_strings(text: str) -> str:
    """Comments and string/char literal contents replaced by spaces (offsets and newlines kept)."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and i + 1 < n and text[i + 1] == "/":
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif c == "/" and i + 1 < n and text[i + 1] == "*":
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if text[k] != "\n":
                    out[k] = " "
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                out[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(out)


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


_INT_TYPES = (r"(?:unsigned\s+long\s+long|unsigned\s+long|unsigned\s+int|long\s+long|unsigned|int|"
              r"long|short|size_t|std::size_t|u?int(?:8|16|32|64)_t|std::u?int(?:8|16|32|64)_t|"
              r"auto|dim3)")
_RE_DEF = re.compile(
    r"(?P<quals>(?:\b(?:static|constexpr|const|inline|__device__|__host__|__constant__)\s+)*)"
    r"\b(?P<type>" + _INT_TYPES + r")\s+(?:const\s+)?(?P<name>[A-Za-z_]\w*)\s*"
    r"(?:=\s*(?P<expr>[^;{}]+?)|(?P<ctor>\((?:[^;()]|\([^;()]*\))*\)|\{[^;{}]*\}))\s*;")

SIZEOF = {
    "char": 1, "bool": 1, "int8_t": 1, "uint8_t": 1, "unsigned char": 1,
    "short": 2, "int16_t": 2, "uint16_t": 2, "half": 2, "__half": 2, "__nv_bfloat16": 2,
    "nv_bfloat16": 2, "half2": 4, "__half2": 4, "__nv_bfloat162": 4,
    "int": 4, "unsigned": 4, "float": 4, "int32_t": 4, "uint32_t": 4,
    "double": 8, "long": 8, "int64_t": 8, "uint64_t": 8, "size_t": 8, "float2": 8,
    "float4": 16, "double2": 16,
}


@dataclass
class Definition:
    name: str
    pos: int            # offset in its file; -1 for headers
    expr: str
    const: bool
    end: int
    text_ref: str       # "self" or a header path


@dataclass
class Marker:
    file: str
    line: int
    pos: int
    raw: str
    max_dyn_expr: Optional[str] = None
    opt_in: Optional[bool] = None
    kernel: Optional[str] = None
    errors: List[str] = field(default_factory=list)


@dataclass
class KernelDef:
    name: str
    file: str
    line: int
    pos: int
    bound_expr: Optional[str]
    marker: Optional[Marker] = None


@dataclass
class Launch:
    kernel: str
    file: str
    line: int
    block_expr: str
    smem_expr: str
    block: Optional[Tuple[int, int, int]] = None
    block_threads: Optional[int] = None
    block_error: Optional[str] = None
    smem: Optional[int] = None          # resolved dynamic smem bytes (None: unresolved)
    smem_error: Optional[str] = None


class Unresolved(Exception):
    pass


class SourceInfo:
    """What one .cu file (plus the csrc headers it includes) says about its kernels."""

    def __init__(self, path: Path, include_dirs: Sequence[Path], display: str):
        self.path = path
        self.display = display
        self.raw = path.read_text(errors="replace")
        self.code = strip_comments_and_strings(self.raw)
        self.headers: List[Tuple[Path, str, str]] = []   # (path, raw, code)
        self._collect_headers(path, include_dirs, set())
        self.defs: Dict[str, List[Definition]] = {}
        for hp, _hraw, hcode in self.headers:
            self._collect_defs(hcode, header=True, ref=str(hp))
        self._collect_defs(self.code, header=False, ref="self")
        self.kernels: List[KernelDef] = []
        self.markers: List[Marker] = []
        self.problems: List[str] = []
        for hp, hraw, hcode in self.headers:
            self._collect_kernels_and_markers(hraw, hcode, self._rel(hp))
        self._collect_kernels_and_markers(self.raw, self.code, display)
        self.launches: List[Launch] = self._collect_launches()
        self.sets_max_dynamic_smem = bool(re.search(
            r"cudaFuncSetAttribute\s*\((?:[^;]*?)cudaFuncAttributeMaxDynamicSharedMemorySize",
            self.code + "".join(h[2] for h in self.headers), re.S))

    def _rel(self, p: Path) -> str:
        try:
            return str(p.resolve().relative_to((ROOT / "csrc").resolve()))
        except ValueError:
            return str(p)

    def _collect_headers(self, path: Path, include_dirs: Sequence[Path], seen: set) -> None:
        text = path.read_text(errors="replace")
        for m in re.finditer(r'^\s*#\s*include\s*"([^"]+)"', text, re.M):
            for base in [path.parent, *include_dirs]:
                cand = (base / m.group(1))
                if cand.is_file():
                    key = str(cand.resolve())
                    if key not in seen:
                        seen.add(key)
                        self._collect_headers(cand, include_dirs, seen)
                        raw = cand.read_text(errors="replace")
                        self.headers.append((cand, raw, strip_comments_and_strings(raw)))
                    break

    def _collect_defs(self, code: str, header: bool, ref: str) -> None:
        for m in _RE_DEF.finditer(code):
            quals = m.group("quals") or ""
            whole = m.group(0)
            const = "const" in quals.split() or "constexpr" in quals.split() or \
                re.search(r"\bconst\s+" + re.escape(m.group("name")) + r"\b", whole) is not None
            if m.group("expr") is not None:
                expr = m.group("expr").strip()
            else:
                ctor = m.group("ctor")
                inner = ctor[1:-1]
                expr = f"dim3({inner})" if m.group("type") == "dim3" else f"({inner})"
            self.defs.setdefault(m.group("name"), []).append(Definition(
                m.group("name"), -1 if header else m.start("name"), expr, const, m.end(), ref))

    # -- kernels and markers ---------------------------------------------------------------

    _RE_GLOBAL = re.compile(r"\b__global__\b")

    def _collect_kernels_and_markers(self, raw: str, code: str, display: str) -> None:
        kernels_here: List[KernelDef] = []
        for m in self._RE_GLOBAL.finditer(code):
            i, bound = m.end(), None
            name = None
            while i < len(code):
                ws = re.match(r"\s+", code[i:])
                if ws:
                    i += ws.end()
                    continue
                q = re.match(r"(void|static|inline|extern|__noinline__|__forceinline__)\b",
                             code[i:])
                if q:
                    i += q.end()
                    continue
                q = re.match(r"(__launch_bounds__|__maxnreg__|__cluster_dims__)\s*\(", code[i:])
                if q:
                    j = _balanced(code, i + q.end() - 1)
                    if j < 0:
                        break
                    if q.group(1) == "__launch_bounds__":
                        bound = " ".join(code[i + q.end():j].split())
                    i = j + 1
                    continue
                q = re.match(r"([A-Za-z_]\w*(?:::[A-Za-z_]\w*)*)\s*[(<]", code[i:])
                if q:
                    name = q.group(1).split("::")[-1]
                break
            if name:
                kernels_here.append(KernelDef(name, display, line_of(code, m.start()), m.start(),
                                              bound))
        for m in re.finditer(r"//\s*launch-resources\s*:(.*)$", raw, re.M):
            mk = Marker(display, line_of(raw, m.start()), m.start(), m.group(0).strip())
            body = m.group(1).strip()
            for tok in body.split():
                kv = tok.split("=", 1)
                if len(kv) != 2 or not kv[1]:
                    mk.errors.append(f"cannot read '{tok}' (expected key=value)")
                    continue
                key, val = kv
                if key == "max_dynamic_smem_bytes":
                    mk.max_dyn_expr = val
                elif key == "opt_in":
                    if val.lower() in ("yes", "true", "1"):
                        mk.opt_in = True
                    elif val.lower() in ("no", "false", "0"):
                        mk.opt_in = False
                    else:
                        mk.errors.append(f"opt_in={val}: expected yes or no")
                elif key == "kernel":
                    mk.kernel = val
                else:
                    mk.errors.append(f"unknown key '{key}'")
            if mk.max_dyn_expr is None:
                mk.errors.append("max_dynamic_smem_bytes missing")
            if mk.opt_in is None and not any("opt_in" in e for e in mk.errors):
                mk.errors.append("opt_in missing (yes or no)")
            if mk.max_dyn_expr in DEVICE_OPTIN and mk.opt_in is False:
                mk.errors.append(f"max_dynamic_smem_bytes={mk.max_dyn_expr} needs opt_in=yes")
            target = None
            if mk.kernel:
                cands = [k for k in kernels_here + self.kernels if k.name == mk.kernel]
                target = cands[0] if cands else None
                if target is None:
                    mk.errors.append(f"kernel={mk.kernel}: no such kernel defined")
            else:
                after = [k for k in kernels_here if k.pos > m.start()]
                target = min(after, key=lambda k: k.pos) if after else None
                if target is None:
                    mk.errors.append("no __global__ kernel follows the marker")
            if target is not None:
                if target.marker is not None:
                    mk.errors.append(f"{target.name} already has a marker "
                                     f"(line {target.marker.line})")
                else:
                    target.marker = mk
            self.markers.append(mk)
        self.kernels.extend(kernels_here)

    # -- launches ---------------------------------------------------------------------------

    _RE_LAUNCH = re.compile(
        r"(?P<name>[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*)\s*"
        r"(?P<targs><(?:[^<>;{}]|<(?:[^<>;{}]|<[^<>;{}]*>)*>)*>)?\s*<<<")

    def _collect_launches(self) -> List[Launch]:
        out = []
        code = self.code
        # kernel<<<grid, block, smem, stream>>>(...)
        for m in self._RE_LAUNCH.finditer(code):
            start = m.end()
            end = _find_launch_end(code, start)
            if end < 0:
                self.problems.append(f"line {line_of(code, m.start())}: unterminated <<<")
                continue
            args = split_top_level(code[start:end])
            out.append(self._launch(m.group("name").split("::")[-1], m.start(),
                                    args[1] if len(args) > 1 else "",
                                    args[2] if len(args) > 2 else "0"))
        # helper(..., kernel, ..., grid, block, smem, ...): LAUNCH_HELPERS
        kernel_names = {k.name for k in self.kernels}
        helpers = "|".join(re.escape(h) for h in LAUNCH_HELPERS)
        for m in re.finditer(r"(?<![\w.>])(?:[A-Za-z_]\w*::)*(?P<helper>" + helpers + r")\s*"
                             r"(?:<[^;(){}]*>\s*)?\(", code):
            close = _balanced(code, m.end() - 1)
            if close < 0:
                continue
            k_i, _g_i, b_i, s_i = LAUNCH_HELPERS[m.group("helper")]
            args = split_top_level(code[m.end():close])
            if len(args) <= max(k_i, b_i):
                continue
            names = [n.split("::")[-1] for n in
                     re.findall(r"[A-Za-z_]\w*(?:::[A-Za-z_]\w*)*", args[k_i])]
            kern = next((n for n in names if n in kernel_names), None)
            if kern is None:
                continue   # a call of a function with the same name, or a kernel pointer
            out.append(self._launch(kern, m.start(), args[b_i],
                                    args[s_i] if len(args) > s_i else "0"))
        out.sort(key=lambda ln: ln.line)
        return out

    def _launch(self, name: str, pos: int, block_expr: str, smem_expr: str) -> Launch:
        ln = Launch(name, self.display, line_of(self.code, pos), " ".join(block_expr.split()),
                    " ".join(smem_expr.split()))
        try:
            dims = self.eval_dims(block_expr, pos)
            ln.block = dims
            ln.block_threads = dims[0] * dims[1] * dims[2]
        except Unresolved as exc:
            ln.block_error = str(exc)
        try:
            ln.smem = self.eval_int(smem_expr, pos)
        except Unresolved as exc:
            ln.smem_error = str(exc)
        return ln

    # -- expression evaluation ----------------------------------------------------------------

    def lookup(self, name: str, pos: int) -> Definition:
        cands = self.defs.get(name, [])
        local = [d for d in cands if d.text_ref == "self" and 0 <= d.pos < pos]
        if local:
            d = max(local, key=lambda d: d.pos)
            if not d.const and self._reassigned(name, d.end, pos):
                raise Unresolved(f"'{name}' is assigned again before use")
            return d
        headers = [d for d in cands if d.text_ref != "self"]
        if headers:
            consts = [d for d in headers if d.const]
            return (consts or headers)[-1]
        raise Unresolved(f"no constant definition of '{name}' found")

    def _reassigned(self, name: str, a: int, b: int) -> bool:
        seg = self.code[a:b]
        n = re.escape(name)
        return re.search(r"\b" + n + r"\s*(?:\.\s*[xyz]\s*)?(?:[-+*/%&|^]|<<|>>)?=(?!=)", seg) \
            is not None or re.search(r"(?:\+\+|--)\s*" + n + r"\b|\b" + n + r"\s*(?:\+\+|--)",
                                     seg) is not None

    def eval_value(self, expr: str, pos: int, depth: int = 0):
        if depth > 24:
            raise Unresolved("definitions nest too deeply")
        py = cxx_to_python(expr)
        try:
            tree = ast.parse(py, mode="eval")
        except SyntaxError:
            raise Unresolved(f"cannot evaluate '{expr}'") from None

        def resolve(name: str):
            d = self.lookup(name, pos)
            return self.eval_value(d.expr, d.pos if d.pos >= 0 else pos, depth + 1)

        return eval_ast(tree.body, resolve)

    def eval_int(self, expr: str, pos: int) -> int:
        v = self.eval_value(expr, pos)
        if isinstance(v, tuple):
            raise Unresolved(f"'{expr}' is a dim3, expected a number")
        return v

    def eval_dims(self, expr: str, pos: int) -> Tuple[int, int, int]:
        v = self.eval_value(expr, pos)
        if isinstance(v, tuple):
            return v
        return (v, 1, 1)


def _balanced(s: str, open_idx: int) -> int:
    depth = 0
    for i in range(open_idx, len(s)):
        if s[i] == "(":
            depth += 1
        elif s[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _find_launch_end(code: str, start: int) -> int:
    depth = 0
    i = start
    while i < len(code):
        c = code[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == ";":
            return -1
        elif code.startswith(">>>", i) and depth == 0:
            return i
        i += 1
    return -1


def split_top_level(s: str) -> List[str]:
    """Split at commas outside (), [], {} and outside template argument lists (`k<I, A>`)."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(s):
        c = s[i]
        if c == "<" and re.search(r"[A-Za-z_]\w*\s*$", "".join(cur)):
            m = re.match(r"<[\w\s:,*&]*(?:<[\w\s:,*&]*>[\w\s:,*&]*)*>", s[i:])
            if m and re.match(r"\s*(?:[,()]|$)", s[i + m.end():]):
                cur.append(m.group(0))
                i += m.end()
                continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


_CAST_TYPES = (r"(?:const\s+)?(?:unsigned\s+long\s+long|unsigned\s+long|unsigned\s+int|long\s+long|"
               r"unsigned|int|long|short|size_t|std::size_t|u?int(?:8|16|32|64)_t|"
               r"std::u?int(?:8|16|32|64)_t)")


def cxx_to_python(expr: str) -> str:
    s = " ".join(expr.split())

    def _sizeof(m):
        t = " ".join(m.group(1).split()).replace("std::", "")
        if t in SIZEOF:
            return str(SIZEOF[t])
        return "__sizeof_unknown__"

    s = re.sub(r"\bsizeof\s*\(\s*([\w: ]+?)\s*\)", _sizeof, s)
    s = re.sub(r"\bstatic_cast\s*<[^<>]*(?:<[^<>]*>[^<>]*)*>\s*\(", "(", s)
    s = re.sub(r"\(\s*" + _CAST_TYPES + r"\s*\)", "", s)
    s = re.sub(r"\b" + _CAST_TYPES + r"\s*\(", "(", s)
    s = re.sub(r"\bstd::(min|max)\b", r"\1", s)
    s = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)(?:[uU](?:ll|LL|l|L)?|(?:ll|LL|l|L)[uU]?)\b", r"\1", s)
    s = re.sub(r"\b(?:[A-Za-z_]\w*::)+([A-Za-z_]\w*)", r"\1", s)
    s = s.replace("/", "//")
    return s


def eval_ast(node, resolve: Callable[[str], object]):
    """Integer constant folding over a small, safe subset of Python's AST."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and \
            not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        if node.id == "__sizeof_unknown__":
            raise Unresolved("sizeof of an unknown type")
        if node.id in ("true", "false"):
            return int(node.id == "true")
        return resolve(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _scalar(eval_ast(node.operand, resolve))
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a = _scalar(eval_ast(node.left, resolve))
        b = _scalar(eval_ast(node.right, resolve))
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
               ast.FloorDiv: lambda: int(a / b) if b else _div0(), ast.Mod: lambda: a % b,
               ast.LShift: lambda: a << b, ast.RShift: lambda: a >> b,
               ast.BitOr: lambda: a | b, ast.BitAnd: lambda: a & b, ast.BitXor: lambda: a ^ b}
        for t, f in ops.items():
            if isinstance(node.op, t):
                return f()
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        args = [eval_ast(a, resolve) for a in node.args]
        if node.func.id == "dim3" and 1 <= len(args) <= 3:
            dims = [_scalar(a) for a in args] + [1] * (3 - len(args))
            return tuple(dims)
        if node.func.id in ("min", "max") and len(args) == 2:
            return (min if node.func.id == "min" else max)(_scalar(args[0]), _scalar(args[1]))
        if node.func.id == "ceil_div" and len(args) == 2:
            return ceil_div(_scalar(args[0]), _scalar(args[1]))
        raise Unresolved(f"call of {node.func.id}()")
    raise Unresolved(f"cannot evaluate '{ast.unparse(node) if hasattr(ast, 'unparse') else node}'")


def _scalar(v) -> int:
    if isinstance(v, tuple):
        raise Unresolved("dim3 used as a number")
    return v


def _div0():
    raise Unresolved("division by zero")


# ------------------------------------------------------------------------------------------------
# Compilation
# ------------------------------------------------------------------------------------------------

@dataclass
class CompileResult:
    file: str
    arch: str
    ok: bool
    seconds: float
    log: str
    ptxas: Dict[str, PtxasKernel]
    cubin: Dict[str, CubinKernel]
    error: Optional[str] = None


def compile_one(nvcc: str, src: Path, display: str, arch: str, out_dir: Path,
                include_dirs: Sequence[Path], std: str, extra: Sequence[str]) -> CompileResult:
    out = out_dir / (re.sub(r"[^\w.]+", "_", display) + f".{arch}.cubin")
    cmd = [nvcc, "-cubin", f"-arch={arch}", f"-std={std}", *BUILD_NVCC_FLAGS,
           *[f"-I{d}" for d in include_dirs], "-Xptxas", "-v", *extra, "-o", str(out), str(src)]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        log, rc = p.stdout + p.stderr, p.returncode
    except (OSError, subprocess.SubprocessError) as exc:
        log, rc = f"{' '.join(cmd)}: {exc}", -1
    dt = time.time() - t0
    ptx = parse_ptxas(log)
    cub: Dict[str, CubinKernel] = {}
    err = None
    if rc == 0 and out.is_file():
        try:
            cub = read_cubin(out)
        except (ValueError, struct.error, IndexError) as exc:
            err = f"cannot read {out.name}: {exc}"
    else:
        lines = [ln for ln in log.splitlines() if "error" in ln.lower()] or log.splitlines()[-5:]
        err = "; ".join(ln.strip() for ln in lines[:4]) or f"nvcc exited with {rc}"
    return CompileResult(display, arch, rc == 0 and err is None, dt, log, ptx, cub, err)


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------

@dataclass
class Finding:
    severity: str        # "error" | "warning"
    rule: str            # key of RULES
    file: str
    kernel: str          # qualified demangled name (template args, no parameters) or "-"
    arch: str            # "sm_90" or "-"
    message: str


@dataclass
class KernelArch:
    file: str
    arch: str
    mangled: str
    demangled: str = ""
    qualified: str = ""
    base: str = ""
    short: str = ""
    regs: Optional[int] = None
    smem: Optional[int] = None
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    bound: Optional[int] = None
    bound_dims: Optional[Tuple[int, int, int]] = None
    maxreg: Optional[int] = None
    elf_regcount: Optional[int] = None
    launch_threads: List[int] = field(default_factory=list)
    launch_unresolved: int = 0
    dyn_smem: Optional[object] = None        # int, "device_optin" or None (unknown)
    opt_in: Optional[bool] = None
    limit_smem: Optional[int] = None
    max_threads_regs: Optional[int] = None
    findings: List[Finding] = field(default_factory=list)

    @property
    def status(self) -> str:
        if any(f.severity == "error" for f in self.findings):
            return "FAIL"
        if self.findings:
            return "WARN"
        return "OK"


def check(results: List[CompileResult], sources: Dict[str, SourceInfo], archs: Sequence[str],
          strict_spills: bool) -> Tuple[List[KernelArch], List[Finding]]:
    all_names = [n for r in results for n in list(r.ptxas) + list(r.cubin)]
    dem = demangle_all(all_names)
    rows: List[KernelArch] = []
    general: List[Finding] = []
    seen_defs: Dict[Tuple[str, str], bool] = {}

    for r in sorted(results, key=lambda r: (r.file, archs.index(r.arch))):
        src = sources[r.file]
        lim = ARCH_LIMITS[_arch_key(r.arch)]
        if not r.ok and not any(k.error for k in r.ptxas.values()):
            general.append(Finding("error", "e", r.file, "-", r.arch, r.error or "compile failed"))
        names = sorted(set(r.ptxas) | set(r.cubin))
        for name in names:
            p = r.ptxas.get(name)
            c = r.cubin.get(name)
            if p is None and c is not None and r.ok:
                general.append(Finding("warning", "w", r.file, name, r.arch,
                                       "kernel in the cubin but not in ptxas' report"))
            ka = KernelArch(r.file, r.arch, name)
            ka.demangled = dem.get(name, name)
            ka.qualified, ka.base, ka.short = split_demangled(ka.demangled)
            if p is not None:
                ka.regs, ka.smem = p.regs, p.smem
                ka.stack, ka.spill_stores, ka.spill_loads = p.stack, p.spill_stores, p.spill_loads
                if p.error:
                    ka.findings.append(Finding("error", "e", r.file, ka.qualified, r.arch,
                                               f"ptxas: {p.error}"))
            if c is not None:
                dims = c.max_threads or c.reqntid
                if dims:
                    ka.bound_dims = tuple(dims)
                    ka.bound = dims[0] * dims[1] * dims[2]
                ka.maxreg = c.maxreg
                ka.elf_regcount = c.regcount
                if p is not None and c.regcount is not None and p.regs is not None \
                        and c.regcount != p.regs:
                    ka.findings.append(Finding(
                        "warning", "w", r.file, ka.qualified, r.arch,
                        f"ptxas reports {p.regs} registers, the cubin {c.regcount}"))
            _check_kernel(ka, src, lim, r.ok and c is not None, strict_spills)
            seen_defs[(r.file, ka.base)] = True
            rows.append(ka)

    # Source-level problems, once per file.
    for display, src in sources.items():
        for mk in src.markers:
            for e in mk.errors:
                general.append(Finding("error", "m", mk.file, mk.kernel or "-", "-",
                                       f"marker at line {mk.line}: {e}"))
        for prob in src.problems:
            general.append(Finding("warning", "w", display, "-", "-", prob))
        compiled = {k for (f, k) in seen_defs if f == display}
        for ln in src.launches:
            if ln.kernel not in compiled and compiled:
                general.append(Finding("warning", "d", display, ln.kernel, "-",
                                       f"line {ln.line}: launch of '{ln.kernel}', which is no "
                                       f"kernel compiled from this file"))
        launched = {ln.kernel for ln in src.launches}
        for k in src.kernels:
            if k.file == display and k.name in compiled and k.name not in launched:
                launched.add(k.name)   # once per kernel (explicit instantiations repeat it)
                general.append(Finding("warning", "d", display, k.name, "-",
                                       f"line {k.line}: no launch of {k.name} found in this file "
                                       f"(<<<...>>> or a launch helper); its block size is not "
                                       f"checked"))
    return rows, general


def _arch_key(arch: str) -> str:
    m = re.match(r"(sm_\d+)", arch)
    return m.group(1) if m else arch


def _check_kernel(ka: KernelArch, src: SourceInfo, lim: ArchLimits, have_cubin: bool,
                  strict_spills: bool) -> None:
    f, q, arch = ka.file, ka.qualified, ka.arch

    def add(sev, rule, msg):
        ka.findings.append(Finding(sev, rule, f, q, arch, msg))

    launches = [ln for ln in src.launches if ln.kernel == ka.base]
    kdefs = [k for k in src.kernels if k.name == ka.base]
    marker = next((k.marker for k in kdefs if k.marker is not None), None)

    # (a) launch bounds
    if have_cubin and ka.bound is None:
        add("error", "a", "no __launch_bounds__ (no max-threads attribute in the cubin)")

    # launch block sizes
    for ln in launches:
        if ln.block_threads is None:
            ka.launch_unresolved += 1
            add("warning", "d", f"line {ln.line}: block size '{ln.block_expr}' not resolved "
                                f"({ln.block_error})")
        else:
            ka.launch_threads.append(ln.block_threads)
            if ln.block and ln.block[2] > lim.max_block_z:
                add("error", "b", f"line {ln.line}: block z = {ln.block[2]} > {lim.max_block_z}")
    ka.launch_threads = sorted(set(ka.launch_threads))

    # (b) registers x threads, threads <= 1024
    if ka.regs is not None:
        ka.max_threads_regs = max_threads_for_regs(ka.regs, lim)
        threads = set(ka.launch_threads)
        if ka.bound:
            threads.add(ka.bound)
        for t in sorted(threads):
            what = "launch bound" if t == ka.bound else "launched block"
            if t > lim.max_threads:
                add("error", "b", f"{what} of {t} threads > {lim.max_threads}")
                continue
            fits, why = register_check(ka.regs, t, lim)
            if not fits:
                add("error", "b", f"{what}: {why} (at most {ka.max_threads_regs} threads fit)")

    # (d) bound vs launches
    if ka.bound is not None and ka.launch_threads:
        too_big = [t for t in ka.launch_threads if t > ka.bound]
        if too_big:
            add("error", "d", f"launched with {max(too_big)} threads > __launch_bounds__ "
                              f"{ka.bound} (the launch fails)")
        elif ka.launch_unresolved == 0 and ka.bound > max(ka.launch_threads):
            add("error", "d", f"__launch_bounds__ {ka.bound} > the largest launch "
                              f"({max(ka.launch_threads)} threads): the bound must match the "
                              f"launch")

    # (c) shared memory and (m) markers
    dyn_launches = [ln for ln in launches if ln.smem != 0]
    static = ka.smem or 0
    if marker is not None and not marker.errors:
        ka.opt_in = bool(marker.opt_in)
        if marker.max_dyn_expr in DEVICE_OPTIN:
            ka.dyn_smem = "device_optin"
        else:
            try:
                try:   # the definitions above the marker first, then the whole file
                    if marker.file != src.display:
                        raise Unresolved("marker in a header")
                    ka.dyn_smem = src.eval_int(marker.max_dyn_expr, marker.pos)
                except Unresolved:
                    ka.dyn_smem = src.eval_int(marker.max_dyn_expr, len(src.code))
            except Unresolved as exc:
                add("error", "m", f"marker (line {marker.line}): max_dynamic_smem_bytes="
                                  f"{marker.max_dyn_expr} not resolved ({exc})")
        if marker.opt_in and not src.sets_max_dynamic_smem:
            add("warning", "m", "marker says opt_in=yes but no cudaFuncSetAttribute(..., "
                                "cudaFuncAttributeMaxDynamicSharedMemorySize, ...) in the file")
        for ln in dyn_launches:
            if ln.smem is not None and isinstance(ka.dyn_smem, int) and ln.smem > ka.dyn_smem:
                add("error", "m", f"line {ln.line}: launched with {ln.smem} B of dynamic shared "
                                  f"memory > the marker's {ka.dyn_smem}")
    elif marker is None:
        for ln in dyn_launches:
            what = (f"{ln.smem} B" if ln.smem is not None else f"'{ln.smem_expr}'")
            add("error", "m", f"line {ln.line}: launched with {what} of dynamic shared memory "
                              f"but no '// launch-resources: max_dynamic_smem_bytes=... "
                              f"opt_in=...' marker")
        ka.dyn_smem = 0 if not dyn_launches else None
        ka.opt_in = False
        resolved = [ln.smem for ln in dyn_launches if ln.smem is not None]
        if resolved and len(resolved) == len(dyn_launches):
            ka.dyn_smem = max(resolved)
    ka.limit_smem = smem_limit(lim, bool(ka.opt_in))
    if ka.smem is not None:
        if static > lim.smem_default:
            add("error", "c", f"static shared memory {static} B > {lim.smem_default} B "
                              f"(static allocations cannot opt in)")
        if ka.dyn_smem == "device_optin" and static > 0:
            add("error", "c", f"dynamic shared memory may grow to the device's opt-in maximum "
                              f"({lim.smem_optin} B on {arch}) but the kernel also has {static} B "
                              f"of static shared memory: static + dynamic > {lim.smem_optin} B "
                              f"(bound the dynamic part by opt-in - static and declare a number)")
        if isinstance(ka.dyn_smem, int) and not (static > lim.smem_default and not ka.dyn_smem):
            total = static + ka.dyn_smem
            if total > ka.limit_smem:
                how = "opt-in maximum" if ka.opt_in else "limit without opt-in"
                add("error", "c", f"static {static} B + dynamic {ka.dyn_smem} B = {total} B > "
                                  f"{ka.limit_smem} B ({arch} {how})")

    # spills
    if ka.spill_stores or ka.spill_loads:
        add("error" if strict_spills else "warning", "s",
            f"{ka.spill_stores} B spill stores, {ka.spill_loads} B spill loads "
            f"({ka.regs} registers)")


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------

def _fmt_bytes(v) -> str:
    if v is None:
        return "?"
    if isinstance(v, str):
        return v
    return str(v)


def render_table(rows: List[KernelArch], archs: Sequence[str]) -> str:
    by_kernel: Dict[Tuple[str, str], Dict[str, KernelArch]] = {}
    for ka in rows:
        by_kernel.setdefault((ka.file, ka.mangled), {})[ka.arch] = ka
    lines = []
    name_w = 46
    cell_w = 9
    header = (f"  {'kernel':<{name_w}} {'bound':>5} {'launch':>9} {'dyn':>7} "
              + " ".join(f"{a:>{cell_w}}" for a in archs) + f" {'spill':>6}  status")
    cur_file = None
    for (file, mangled) in sorted(by_kernel, key=lambda k: (k[0], _short_of(by_kernel[k]))):
        per = by_kernel[(file, mangled)]
        any_ka = next(iter(per.values()))
        if file != cur_file:
            cur_file = file
            lines.append("")
            lines.append(file + "    (per arch: registers/static smem bytes, ! = fails there; "
                                "dyn: max dynamic smem bytes, + = opt-in)")
            lines.append(header)
        bounds = {ka.bound for ka in per.values()}
        bound = "/".join(str(b) for b in sorted(x for x in bounds if x)) or "-"
        launch = "/".join(str(t) for t in any_ka.launch_threads)
        if any_ka.launch_unresolved:
            launch = (launch + "/?") if launch else "?"
        launch = launch or "-"
        if any_ka.dyn_smem == "device_optin":
            dyn = "optin"
        elif any_ka.dyn_smem not in (0, None):
            dyn = str(any_ka.dyn_smem)
        else:
            dyn = "-" if any_ka.dyn_smem == 0 else "?"
        if any_ka.opt_in and any_ka.dyn_smem not in (0, None):
            dyn += "+"
        cells = []
        for a in archs:
            ka = per.get(a)
            if ka is None:
                cells.append(f"{'n/a':>{cell_w}}")
                continue
            c = f"{_fmt_bytes(ka.regs)}/{_fmt_bytes(ka.smem)}"
            if ka.status == "FAIL" and any(f.rule in "bce" and f.severity == "error"
                                           for f in ka.findings):
                c += "!"
            cells.append(f"{c:>{cell_w}}")
        spill = max((ka.spill_stores + ka.spill_loads) for ka in per.values())
        statuses = [ka.status for ka in per.values()]
        status = "FAIL" if "FAIL" in statuses else ("WARN" if "WARN" in statuses else "OK")
        rules = sorted({f.rule for ka in per.values() for f in ka.findings
                        if f.severity == "error" or status != "FAIL"})
        short = any_ka.short if len(any_ka.short) <= name_w else any_ka.short[:name_w - 1] + "~"
        lines.append(f"  {short:<{name_w}} {bound:>5} {launch:>9} {dyn:>7} " + " ".join(cells)
                     + f" {spill if spill else '-':>6}  {status}"
                     + (f" ({','.join(rules)})" if rules and status != "OK" else ""))
    return "\n".join(lines)


def _short_of(per: Dict[str, KernelArch]) -> str:
    return next(iter(per.values())).short


def group_findings(findings: List[Finding],
                   archs: Sequence[str]) -> List[Tuple[Finding, List[str]]]:
    groups: Dict[Tuple[str, str, str, str, str], List[str]] = {}
    first: Dict[Tuple[str, str, str, str, str], Finding] = {}
    for fd in findings:
        key = (fd.severity, fd.file, fd.kernel, fd.rule, fd.message)
        groups.setdefault(key, [])
        if fd.arch not in groups[key]:
            groups[key].append(fd.arch)
        first.setdefault(key, fd)
    order = {a: i for i, a in enumerate(archs)}
    out = []
    for key, arch_list in groups.items():
        arch_list.sort(key=lambda a: order.get(a, -1))
        out.append((first[key], arch_list))
    out.sort(key=lambda x: (x[0].severity != "error", x[0].file, x[0].kernel, x[0].rule,
                            order.get(x[1][0], -1)))
    return out


def merge_instantiations(grouped):
    """One line for the instantiations of a kernel that share a finding on the same archs."""
    merged: Dict[tuple, Tuple[Finding, List[str], List[str]]] = {}
    order = []
    for fd, arch_list in grouped:
        core, targs = fd.kernel, ""
        if fd.kernel.endswith(">"):
            j = _match_open_angle(fd.kernel, len(fd.kernel) - 1)
            if j > 0:
                core, targs = fd.kernel[:j], fd.kernel[j + 1:-1]
        key = (fd.severity, fd.file, core, fd.rule, fd.message, tuple(arch_list))
        if key not in merged:
            merged[key] = (fd, arch_list, [])
            order.append(key)
        if targs:
            merged[key][2].append(targs)
    out = []
    for key in order:
        fd, arch_list, targs = merged[key]
        if len(targs) > 1:
            fd = Finding(fd.severity, fd.rule, fd.file,
                         key[2] + ", ".join(f"<{t}>" for t in targs), fd.arch, fd.message)
        out.append((fd, arch_list))
    return out


def _arch_text(arch_list: List[str], archs: Sequence[str]) -> str:
    if arch_list == ["-"]:
        return "-"
    if len(arch_list) == len(archs) and len(archs) > 1:
        return "all"
    return ",".join(a.replace("sm_", "") for a in arch_list)


def render_findings(grouped, archs: Sequence[str], severity: str, title: str) -> str:
    sel = merge_instantiations([(f, a) for f, a in grouped if f.severity == severity])
    if not sel:
        return ""
    kw = min(64, max(len(f.kernel) for f, _ in sel))
    fw = max(len(f.file) for f, _ in sel)
    aw = max(4, max(len(_arch_text(a, archs)) for _, a in sel))
    used = sorted({f.rule for f, _ in sel})
    lines = [f"{title} ({len(sel)}; " + ", ".join(f"{r}: {RULES[r]}" for r in used) + "):",
             f"  {'file':<{fw}}  {'kernel':<{kw}}  {'arch':<{aw}}  rule  details"]
    for f, a in sel:
        k = f.kernel
        lines.append(f"  {f.file:<{fw}}  {k:<{kw}}  {_arch_text(a, archs):<{aw}}  ({f.rule})   "
                     f"{f.message}")
    return "\n".join(lines)


def render_limits(archs: Sequence[str]) -> str:
    lines = ["per-block limits (CUDA C++ Programming Guide, compute capability table; "
             "cuda_occupancy.h):",
             f"  {'arch':<7} {'cc':>5} {'threads':>7} {'regs':>6} {'reg unit':>8} "
             f"{'smem':>6} {'smem opt-in':>12} {'smem/SM':>8}"]
    for a in archs:
        lim = ARCH_LIMITS[_arch_key(a)]
        lines.append(f"  {a:<7} {lim.cc:>5} {lim.max_threads:>7} {lim.regs_per_block:>6} "
                     f"{lim.reg_unit:>8} {lim.smem_default:>6} {lim.smem_optin:>12} "
                     f"{lim.smem_per_sm:>8}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------

def find_nvcc(explicit: Optional[str]) -> Optional[str]:
    for cand in (explicit, os.environ.get("NVCC"), shutil.which("nvcc"),
                 os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc")
                 if os.environ.get("CUDA_HOME") else None,
                 "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def read_cuda_sources(csrc: Path) -> List[str]:
    section, out = None, []
    for line in (csrc / "sources.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"\[(\w+)\]$", line)
        if m:
            section = m.group(1)
        elif section == "cuda":
            out.append(line)
    return out


def normalize_arch(a: str) -> str:
    a = a.strip().lower()
    m = re.fullmatch(r"(?:sm_|compute_)?(\d+)\.?(\d)?([af]?)", a)
    if not m:
        raise ValueError(a)
    num = m.group(1) + (m.group(2) or "")
    if m.group(2) is None and len(m.group(1)) == 1:
        num = m.group(1) + "0"
    return f"sm_{num}{m.group(3)}"


def _split_list(values: Optional[Sequence[str]]) -> List[str]:
    out: List[str] = []
    for v in values or []:
        out.extend(x for x in re.split(r"[,\s;]+", v) if x)
    return out


def default_jobs() -> int:
    env = os.environ.get("MAX_JOBS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description="Static launch-resource check of the CUDA kernels (registers, shared "
                    "memory, __launch_bounds__) for several architectures, with nvcc only.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Marker syntax: // launch-resources: max_dynamic_smem_bytes=<int|expr|"
               "device_optin> opt_in=<yes|no>  (above the kernel; see the module docstring).")
    ap.add_argument("--archs", action="append",
                    help=f"architectures, comma separated (default: {','.join(DEFAULT_ARCHS)})")
    ap.add_argument("--files", action="append",
                    help="only these .cu files (paths relative to csrc/ or to the current "
                         "folder), comma separated (default: csrc/sources.txt [cuda])")
    ap.add_argument("--json", metavar="PATH", help="write machine-readable results here")
    ap.add_argument("--strict-spills", action="store_true", help="register spills are errors")
    ap.add_argument("--jobs", "-j", type=int, default=None,
                    help="parallel nvcc processes (default: $MAX_JOBS, else the CPU count)")
    ap.add_argument("--nvcc", help="nvcc to use (default: $NVCC, PATH, $CUDA_HOME/bin)")
    ap.add_argument("--std", default=DEFAULT_STD, help=f"C++ standard (default {DEFAULT_STD})")
    ap.add_argument("--csrc", default=str(ROOT / "csrc"),
                    help="the csrc folder (sources.txt, include dir); default: this checkout's")
    ap.add_argument("--nvcc-flag", action="append", default=[],
                    help="extra flag for nvcc (repeatable)")
    ap.add_argument("--launch-helper", action="append", default=[], metavar="NAME:K,G,B,S",
                    help="another launch function: argument positions of kernel, grid, block and "
                         "dynamic smem (default helpers: " + ", ".join(
                             f"{k}:{','.join(map(str, v))}" for k, v in LAUNCH_HELPERS.items())
                         + ")")
    ap.add_argument("--build-dir", help="keep the cubins and logs here (default: a temporary "
                                        "folder, removed afterwards)")
    ap.add_argument("--skip-if-no-nvcc", action="store_true",
                    help="exit 0 with a message when no nvcc is found")
    ap.add_argument("--list-limits", action="store_true", help="print the per-arch limits and exit")
    ap.add_argument("--quiet", "-q", action="store_true",
                    help="no per-kernel table, only violations and the summary")
    args = ap.parse_args(argv)

    try:
        archs = [normalize_arch(a) for a in _split_list(args.archs)] or list(DEFAULT_ARCHS)
    except ValueError as exc:
        print(f"check_cuda_resources: bad architecture '{exc}'", file=sys.stderr)
        return 2
    archs = list(dict.fromkeys(archs))
    unknown = [a for a in archs if _arch_key(a) not in ARCH_LIMITS]
    if unknown:
        print(f"check_cuda_resources: no limits known for {', '.join(unknown)} "
              f"(known: {', '.join(ARCH_LIMITS)})", file=sys.stderr)
        return 2
    if args.list_limits:
        print(render_limits(archs))
        return 0

    nvcc = find_nvcc(args.nvcc)
    if nvcc is None:
        msg = "check_cuda_resources: nvcc not found (set --nvcc, $NVCC or $CUDA_HOME)"
        print(msg, file=sys.stderr)
        return 0 if args.skip_if_no_nvcc else 2
    try:
        supported = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True,
                                   timeout=120).stdout.split()
    except (OSError, subprocess.SubprocessError):
        supported = []
    if supported:
        missing = [a for a in archs if "compute_" + re.sub(r"[af]$", "", a[3:]) not in supported]
        if missing:
            print(f"check_cuda_resources: {nvcc} cannot compile for {', '.join(missing)}",
                  file=sys.stderr)
            return 2

    for spec in args.launch_helper:
        m = re.fullmatch(r"([A-Za-z_]\w*):(\d+),(\d+),(\d+),(\d+)", spec.strip())
        if not m:
            print(f"check_cuda_resources: bad --launch-helper '{spec}' (NAME:K,G,B,S)",
                  file=sys.stderr)
            return 2
        LAUNCH_HELPERS[m.group(1)] = tuple(int(m.group(i)) for i in range(2, 6))

    csrc = Path(args.csrc).resolve()
    files: List[Tuple[Path, str]] = []
    wanted = _split_list(args.files)
    if wanted:
        for f in wanted:
            cands = [Path(f), csrc / f]
            p = next((c for c in cands if c.is_file()), None)
            if p is None:
                print(f"check_cuda_resources: no such file: {f}", file=sys.stderr)
                return 2
            p = p.resolve()
            try:
                disp = str(p.relative_to(csrc))
            except ValueError:
                disp = str(p)
            files.append((p, disp))
    else:
        try:
            files = [((csrc / f).resolve(), f) for f in read_cuda_sources(csrc)]
        except OSError as exc:
            print(f"check_cuda_resources: cannot read {csrc / 'sources.txt'}: {exc}",
                  file=sys.stderr)
            return 2
    if not files:
        print("check_cuda_resources: no .cu files to check", file=sys.stderr)
        return 2

    jobs = max(1, args.jobs or default_jobs())
    tmp_owned = args.build_dir is None
    out_dir = Path(args.build_dir or tempfile.mkdtemp(prefix="jem_cuda_resources_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        sources: Dict[str, SourceInfo] = {}
        for p, disp in files:
            inc = [csrc, p.parent]
            sources[disp] = SourceInfo(p, inc, disp)
        tasks = [(p, disp, a) for p, disp in files for a in archs]
        # Longest files first keeps the pool busy to the end.
        tasks.sort(key=lambda t: -t[0].stat().st_size)
        results: List[CompileResult] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            futs = [pool.submit(compile_one, nvcc, p, disp, a, out_dir, [csrc, p.parent],
                                args.std, args.nvcc_flag) for p, disp, a in tasks]
            for fut in concurrent.futures.as_completed(futs):
                results.append(fut.result())
        if not tmp_owned:
            for r in results:
                (out_dir / (re.sub(r"[^\w.]+", "_", r.file) + f".{r.arch}.log")).write_text(r.log)
        rows, general = check(results, sources, archs, args.strict_spills)
    finally:
        if tmp_owned:
            shutil.rmtree(out_dir, ignore_errors=True)
    elapsed = time.time() - t0

    findings = general + [f for ka in rows for f in ka.findings]
    grouped = group_findings(findings, archs)
    merged = merge_instantiations(grouped)
    n_err = sum(1 for f, _ in merged if f.severity == "error")
    n_warn = sum(1 for f, _ in merged if f.severity == "warning")
    kernels = {(ka.file, ka.mangled) for ka in rows}
    failing = {(ka.file, ka.mangled) for ka in rows if ka.status == "FAIL"}
    fail_cells = sum(1 for ka in rows if ka.status == "FAIL")
    compile_fail = [r for r in results if not r.ok]
    status = "FAIL" if n_err else "OK"

    if not args.quiet:
        print(render_table(rows, archs))
        print()
    for sev, title in (("error", "VIOLATIONS"), ("warning", "warnings")):
        txt = render_findings(grouped, archs, sev, title)
        if txt:
            print(txt)
            print()
    summary = (f"check_cuda_resources: {status}: {len(files)} files, {len(kernels)} kernels x "
               f"{len(archs)} archs ({len(rows)} kernel-arch pairs): {len(failing)} kernels fail "
               f"({fail_cells} pairs), {n_err} violations, {n_warn} warnings"
               + (f", {len(compile_fail)} compile failures" if compile_fail else "")
               + f"; {elapsed:.1f} s, {jobs} jobs, {os.path.basename(nvcc)} -std={args.std}")
    print(summary)

    if args.json:
        try:
            ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout.strip().splitlines()[-1:]
        except (OSError, subprocess.SubprocessError):
            ver = []
        doc = {
            "status": status,
            "nvcc": nvcc, "nvcc_version": ver[0] if ver else None,
            "flags": ["-cubin", "-arch=<arch>", f"-std={args.std}", *BUILD_NVCC_FLAGS,
                      "-I<csrc>", "-Xptxas", "-v", *args.nvcc_flag],
            "archs": archs,
            "limits": {a: vars(ARCH_LIMITS[_arch_key(a)]) for a in archs},
            "files": [d for _, d in files],
            "elapsed_s": round(elapsed, 2), "jobs": jobs, "strict_spills": args.strict_spills,
            "compile": [{"file": r.file, "arch": r.arch, "ok": r.ok,
                         "seconds": round(r.seconds, 2), "error": r.error}
                        for r in sorted(results, key=lambda r: (r.file, r.arch))],
            "kernels": [{
                "file": ka.file, "arch": ka.arch, "mangled": ka.mangled,
                "demangled": ka.demangled, "kernel": ka.qualified, "name": ka.base,
                "registers": ka.regs, "static_smem_bytes": ka.smem, "stack_frame_bytes": ka.stack,
                "spill_stores_bytes": ka.spill_stores, "spill_loads_bytes": ka.spill_loads,
                "launch_bound": ka.bound, "launch_bound_dims": ka.bound_dims,
                "ptxas_maxreg": ka.maxreg, "cubin_regcount": ka.elf_regcount,
                "max_threads_for_registers": ka.max_threads_regs,
                "launch_block_threads": ka.launch_threads,
                "launch_unresolved": ka.launch_unresolved,
                "max_dynamic_smem_bytes": ka.dyn_smem, "opt_in": ka.opt_in,
                "smem_limit_bytes": ka.limit_smem, "status": ka.status,
                "findings": [vars(f) for f in ka.findings],
            } for ka in sorted(rows, key=lambda k: (k.file, k.short, k.arch))],
            "findings": [dict(vars(f), archs=a) for f, a in grouped],
            "summary": {"kernels": len(kernels), "pairs": len(rows),
                        "failing_kernels": len(failing), "failing_pairs": fail_cells,
                        "violations": n_err, "warnings": n_warn,
                        "compile_failures": len(compile_fail)},
        }
        jp = Path(args.json)
        if jp.parent and not jp.parent.exists():
            jp.parent.mkdir(parents=True, exist_ok=True)
        jp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return 1 if n_err else 0


if __name__ == "__main__":
    sys.exit(main())
