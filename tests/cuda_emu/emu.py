"""Python side of the CUDA-on-CPU emulation: load libjem_cuda_emu.so and call its wrappers.

    from cuda_emu import emu
    lib = emu.load()                     # builds on first use (once per process), or skips
    emu.call("cosine_rows_forward_cuda", emu.dtype_code(x.dtype), x0, x1, N, D, 1e-8, cos, norms)

`call` converts its arguments: a torch.Tensor -> ctypes.c_void_p of its data (CPU, contiguous),
None -> NULL, bool -> c_int, float -> c_double, int -> c_int64; ctypes objects pass unchanged
(use ctypes.c_int(...) for `int` parameters such as a view index or a tile count). On x86-64 an
int64 passed where the wrapper takes an int reads its low 32 bits, but be explicit anyway.

Without the HIP-CPU headers, TBB or a compiler, load() calls pytest.skip with the reason, unless
JEM_REQUIRE_CUDA_EMU=1 (CI), where it fails the test instead. A failed compile always fails.
"""
import ctypes
import os

from . import build as _build

# jem_fast::DType (csrc/common/kernel_dtype.h)
FLOAT32, FLOAT64, FLOAT16, BFLOAT16 = 0, 1, 2, 3
_DTYPE_CODES = {"float32": FLOAT32, "float64": FLOAT64, "float16": FLOAT16, "bfloat16": BFLOAT16}

_LIB = None
_ERROR = None  # (kind, message) of a failed first load, replayed for every later test


def required():
    return os.environ.get("JEM_REQUIRE_CUDA_EMU", "") not in ("", "0")


def _fail_or_skip(kind, message):
    import pytest
    if kind == "skip" and not required():
        pytest.skip(f"CUDA emulation unavailable: {message}")
    pytest.fail(f"CUDA emulation: {message}", pytrace=False)


def load(verbose=True):
    """The emulation library (ctypes.CDLL), built on first use and cached for the process."""
    global _LIB, _ERROR
    if _LIB is not None:
        return _LIB
    if _ERROR is None:
        cfg = _build.Config()
        missing = _build.missing_prerequisites(cfg)
        if missing:
            _ERROR = ("skip", "; ".join(missing))
        else:
            try:
                path = _build.build(cfg, log=print if verbose else None)
                lib = ctypes.CDLL(str(path))
                lib.emu_last_error.restype = ctypes.c_char_p
                lib.emu_last_error.argtypes = []
                _LIB = lib
                return _LIB
            except (_build.BuildError, OSError) as e:
                _ERROR = ("fail", f"build of the emulation library failed: {e}")
    _fail_or_skip(*_ERROR)


def ptr(t):
    """ctypes.c_void_p to the data of a CPU, contiguous tensor (the wrappers read raw bits)."""
    assert t.device.type == "cpu", f"emulated kernels need CPU tensors, got {t.device}"
    assert t.is_contiguous(), "emulated kernels need contiguous tensors"
    return ctypes.c_void_p(t.data_ptr())


def dtype_code(dtype):
    """jem_fast::DType code of a torch dtype (or of its name)."""
    name = dtype if isinstance(dtype, str) else str(dtype).rsplit(".", 1)[-1]
    try:
        return _DTYPE_CODES[name]
    except KeyError:
        raise ValueError(f"no jem_fast::DType for {dtype}") from None


def is_double(dtype):
    """The `is_double` flag of the acc-type launchers (float64 accumulates in double); a bool,
    which `call` passes as a C int."""
    return dtype_code(dtype) == FLOAT64


def acc_dtype(dtype):
    """torch dtype of the accumulation buffers for inputs of `dtype` (float64 or float32)."""
    import torch
    return torch.float64 if dtype_code(dtype) == FLOAT64 else torch.float32


_BYREF_TYPE = type(ctypes.byref(ctypes.c_int()))


def _convert(a):
    if a is None or isinstance(a, (ctypes._SimpleCData, ctypes._Pointer, ctypes.Array,
                                   ctypes.Structure, _BYREF_TYPE)):
        return a
    if isinstance(a, bool):
        return ctypes.c_int(int(a))
    if isinstance(a, int):
        return ctypes.c_int64(a)
    if isinstance(a, float):
        return ctypes.c_double(a)
    if hasattr(a, "data_ptr"):
        return ptr(a)
    raise TypeError(f"cannot pass {type(a).__name__} to an emulated wrapper")


def call(name, *args):
    """Invoke the wrapper `emu_<name>` (the prefix may be given); RuntimeError on failure."""
    lib = load()
    fn_name = name if name.startswith("emu_") else "emu_" + name
    fn = getattr(lib, fn_name)
    fn.restype = ctypes.c_int
    rc = fn(*(_convert(a) for a in args))
    if rc != 0:
        msg = lib.emu_last_error()
        text = msg.decode(errors="replace") if msg else ""
        raise RuntimeError(f"{fn_name} returned {rc}: {text}")
    return rc


def query_i64(name, *args):
    """Call a wrapper whose last parameter is an `int64_t*` result and return that value."""
    out = ctypes.c_int64(-1)
    call(name, *args, ctypes.byref(out))
    return out.value


def pointer_array(tensors):
    """A C array of `const void*` (for launchers taking `const void* const*`); keep it alive."""
    arr = (ctypes.c_void_p * len(tensors))(*(ptr(t).value for t in tensors))
    return arr


# ----------------------------------------------------------------------------- test helpers
def _pytest_fixture():
    import pytest

    @pytest.fixture(scope="session")
    def emu_lib():
        """The emulation library, built once per session by the first test that needs it (a
        deselected test never triggers the build)."""
        return load()

    return emu_lib


try:
    emu_lib = _pytest_fixture()
except ImportError:  # build.py / emu.py used without pytest
    emu_lib = None

DTYPE_NAMES = ["float32", "float64", "float16", "bfloat16"]


def torch_dtype(name):
    import torch
    return getattr(torch, name)


def unit_roundoff(dtype):
    """2^-p of the storage dtype (the relative error of one rounding)."""
    import torch
    return {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11,
            torch.bfloat16: 2.0 ** -8}[dtype]


def assert_close(got, want, rtol, atol, what=""):
    """|got - want| <= atol + rtol |want| elementwise (got upcast to float64), NaN/inf equal."""
    import torch
    got = got.detach().to(torch.float64)
    want = want.detach().to(torch.float64)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    try:
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from None


def misaligned_copy(x, offset_elems=1):
    """A contiguous copy of x whose data pointer is offset_elems elements past a 16-byte (indeed
    64-byte) aligned allocation: it defeats the kernels' vectorized (16-byte pack) paths."""
    import torch
    buf = torch.empty(x.numel() + offset_elems + 64, dtype=x.dtype)
    base = ((-buf.data_ptr()) % 64) // x.element_size()
    out = buf[base + offset_elems: base + offset_elems + x.numel()].view(x.shape)
    out.copy_(x)
    assert out.is_contiguous()
    assert out.data_ptr() % 16 == (offset_elems * x.element_size()) % 16
    return out


def aligned_copy(x):
    """A contiguous copy of x whose data pointer is 64-byte aligned."""
    return misaligned_copy(x, 0)


class Guarded:
    """An output buffer followed by `guard` sentinel elements: `.t` is the (contiguous) tensor to
    pass to a kernel, `.check()` asserts that nothing was written past its end. The body starts as
    NaN (floating) or 0x5A bytes (integer), so entries a kernel should write but does not show."""

    def __init__(self, shape, dtype, guard=64, fill=None):
        import torch
        shape = tuple(shape)
        n = 1
        for s in shape:
            n *= s
        self._n = n
        self._buf = torch.empty(n + guard, dtype=dtype)
        self._buf.view(torch.uint8).fill_(0x5A)  # guard pattern (and body for integer types)
        self._guard0 = self._buf[n:].clone()
        self.t = self._buf[:n].view(shape)
        if fill is not None:
            self.t.fill_(fill)
        elif dtype.is_floating_point:
            self.t.fill_(float("nan"))

    def check(self, what="buffer"):
        import torch
        assert torch.equal(self._buf[self._n:].view(torch.uint8), self._guard0.view(torch.uint8)), \
            f"{what}: a kernel wrote past the end of the buffer"
        return self.t
