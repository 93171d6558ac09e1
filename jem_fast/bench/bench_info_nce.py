"""InfoNCE-type SSL losses (SimCLR NT-Xent, CLIP symmetric InfoNCE, MoCo with a memory bank):
jem_fast against the eager reference (which materializes the logits matrices) and
torch.compile(reference), in one run: time of forward+backward and of forward alone, and peak
extra memory of one forward+backward.

    python -m jem_fast.bench.bench_info_nce [--device cpu|cuda] [--quick|--full] [--out DIR]
                                        [--threads N] [--dtype float32|bfloat16|float16]
                                        [--losses simclr,clip,moco]

Prints a table and writes info_nce_<device>_<date>.json and .csv into --out
(default benchmarks/out). See METHODOLOGY below (also stored in the JSON) for what is measured.
"""
from __future__ import annotations

import sys

import torch  # before jem_fast: its extension links against libtorch
import torch.nn.functional as F

import jem_fast
from jem_fast.reference import info_nce_loss_reference, ntxent_loss_reference

from .common import (CONTENDED_FRACTION, DTYPES, MEMORY_METHODOLOGY,
                     QUICK_COMPILE_MAX_EAGER_S, TIMING, benchmark_dtypes,
                     benchmark_mode, benchmark_parser, dtype_name, find_ok_row,
                     format_table, log, measure_row, peer_available, quick_compile_skip,
                     rss_probe, run_benchmark_main, targets_result, timing_cells,
                     timing_columns)

MODULE = "jem_fast.bench.bench_info_nce"

# ---------------------------------------------------------------------------------------------
# What is run
# ---------------------------------------------------------------------------------------------

# The three losses, with the settings of their usual training recipes.
#   simclr: NTXentLoss(temperature=0.5) on (out0, out1) of B rows each: 2B x 2B logits.
#   clip:   InfoNCELoss(temperature=0.07, symmetric=True) on (q, k) of N rows: N x N logits,
#           cross-entropy over rows and over columns.
#   moco:   NTXentLoss(temperature=0.2, memory_bank_size=(M, D)): each out0 row against
#           [its out1 positive, the M bank keys]: B x (M + 1) logits. out1 comes from the
#           momentum (key) encoder, so it gets no gradient, and neither does the bank.
SIMCLR_TEMPERATURE, CLIP_TEMPERATURE, MOCO_TEMPERATURE = 0.5, 0.07, 0.2
LOSSES = ("simclr", "clip", "moco")
IMPLS = ("jem_fast", "eager", "compile", "lightly", "inf_cl")
# lightly has NT-Xent (with and without a memory bank) but no symmetric CLIP loss.
LIGHTLY_LOSSES = ("simclr", "moco")


def case(loss, n, d, m=None, impls=("jem_fast", "eager", "compile"), fwd=True, note=""):
    """One shape: n = batch rows (B or N), d = dim, m = bank keys (moco only).
    impls: what runs (the others get a 'skipped' row with `note`); fwd: also time forward.
    lightly runs wherever the eager reference does and lightly has the loss."""
    if loss in LIGHTLY_LOSSES and "eager" in impls and "lightly" not in impls:
        impls = tuple(impls) + ("lightly",)
    return {"loss": loss, "n": n, "d": d, "m": m, "impls": impls, "fwd": fwd, "note": note}


QUICK_JF_ONLY = "not run in --quick (jem_fast only at this shape); run --full"
CASES = {
    ("cpu", "quick"): [
        case("simclr", 2048, 128),
        case("simclr", 8192, 128, impls=("jem_fast",), fwd=False, note=QUICK_JF_ONLY),
        case("clip", 2048, 256, impls=("jem_fast", "eager"), note=QUICK_JF_ONLY.replace(
            "jem_fast only at this shape", "compile only for simclr")),
        case("moco", 256, 128, 65536, impls=("jem_fast", "eager"), note=QUICK_JF_ONLY.replace(
            "jem_fast only at this shape", "compile only for simclr")),
    ],
    ("cpu", "full"): [
        case("simclr", 2048, 128), case("simclr", 4096, 128), case("simclr", 8192, 128),
        case("clip", 4096, 256), case("clip", 8192, 256),
        case("moco", 256, 128, 65536),
    ],
    ("cuda", "quick"): [
        case("simclr", 4096, 128),
        case("clip", 32768, 256, impls=("jem_fast", "eager", "compile", "inf_cl")),
        case("moco", 256, 128, 65536),
    ],
    ("cuda", "full"): [
        case("simclr", 4096, 128), case("simclr", 16384, 128),
        case("clip", 32768, 256, impls=("jem_fast", "eager", "compile", "inf_cl")),
        case("clip", 65536, 256, impls=("jem_fast", "eager", "compile", "inf_cl")),
        case("moco", 256, 128, 65536),
    ],
}

# The reference materializes the logits; it is skipped (with a note) when this estimate of its
# extra memory exceeds the limit: CPU 4 GB, CUDA half of the GPU's memory. The factor is the
# peak number of live logits-sized matrices (clip: N x N per direction, both directions
# counted), calibrated with the memory probe on CPU, float32, eager (peak extra memory / bytes
# of one logits matrix): simclr B=2048 (4096 x 4096 logits, 64 MiB): 214 MiB = 3.4 matrices;
# clip N=4096 (64 MiB per direction): 337 MiB = 5.3; moco B=256, M=65536 (64 MiB): 202 MiB =
# 3.2. Rounded up, plus one.
REF_LOGITS_MATRICES = {"simclr": 5, "clip": 7, "moco": 5}
CPU_REF_LIMIT_BYTES = 4e9
# The correctness gate runs the reference in float64; where its estimate at the benchmark shape
# exceeds this (CPU: bytes; CUDA: fraction of the GPU memory), the gate runs at the largest B
# (or N) halved from the benchmark's that fits, and says so.
CPU_GATE_LIMIT_BYTES = 1.5e9
CUDA_GATE_FRACTION = 0.25

# Correctness gate, run before timing: relative error of the loss and norm-wise relative error
# of every input gradient against the reference on float64 copies of the inputs (float16 and
# bfloat16: at most max(this, 2 x the error of the reference run in that dtype)).
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6, torch.bfloat16: 1e-2,
             torch.float16: 1e-2}

# The CPU targets (issue): SimCLR B=2048, D=128, float32, 2 threads: jem_fast fwd+bwd at least
# as fast as the eager reference; B=8192, D=128: jem_fast peak extra memory < 512 MB.
TARGET_SPEED = ("simclr", 2048, 128, 1.0)
TARGET_MEMORY = ("simclr", 8192, 128, 512.0)

METHODOLOGY = {
    "timing": "wall clock of whole calls: time.perf_counter on CPU, CUDA events (host waits "
              "for the end event) on CUDA; warm-up calls untimed; median and spread (p25-p75 "
              "and min-max) over the repeats",
    "fwd_bwd": "torch.autograd.grad(loss(*inputs), <inputs that require grad>) -- forward, "
               "then the input gradients (no .grad accumulation). simclr and clip: gradients "
               "of both views; moco: gradient of out0 only (out1 is the key encoder's output "
               "and the bank holds past keys: no gradient for either)",
    "fwd": "loss(*inputs) with grad mode on (the forward half of a training step, autograd "
           "graph built and discarded)",
    "ratio": "impl median time / jem_fast median time, same run (>1: jem_fast is faster)",
    "losses": f"simclr: jem_fast.NTXentLoss(temperature={SIMCLR_TEMPERATURE}) vs "
              f"ntxent_loss_reference(out0, out1, {SIMCLR_TEMPERATURE}) (2B x 2B logits); "
              f"clip: jem_fast.InfoNCELoss(temperature={CLIP_TEMPERATURE}, symmetric=True) vs "
              f"info_nce_loss_reference(q, k, {CLIP_TEMPERATURE}, symmetric=True) (N x N "
              "logits, both directions); moco: jem_fast.NTXentLoss(temperature="
              f"{MOCO_TEMPERATURE}, memory_bank_size=(M, D)) vs ntxent_loss_reference(out0, "
              f"out1, {MOCO_TEMPERATURE}, negatives=bank) (B x (M + 1) logits). inf_cl "
              "(CUDA, clip only, when importable): 0.5 * (cal_flash_loss(q, k, scale=1/T)"
              ".mean() + cal_flash_loss(k, q, scale=1/T).mean()) on normalized q, k "
              "(Inf-CL's single-GPU kernel; it computes in float32 whatever the input dtype). "
              "lightly (simclr, moco; when importable): lightly.loss.NTXentLoss with the same "
              "temperature (moco: memory_bank_size=(M, D), its bank loaded with the same keys "
              "and updated on every call like jem_fast's); skipped with the reference where "
              "the reference is (it materializes the same logits)",
    "moco_bank": "M keys, F.normalize(randn) seeded, in the benchmark dtype, passed to the "
                 "reference as negatives; jem_fast's MemoryBank is loaded with the same keys. "
                 "jem_fast's NTXentLoss clones the bank snapshot and enqueues out1 on every "
                 "call with out0.requires_grad (as lightly does); both are part of its time "
                 "and memory. The correctness gate compares against the reference on the bank "
                 "snapshot taken before the call",
    "inputs": "out0 = 0.8 * randn(B, D), out1 = out0 + s * randn(B, D) (seeded, float32, "
              "then cast to the benchmark dtype), s = 0.3 (simclr, moco); clip: q and k the "
              "same way with s = 1.0 (at 0.3 the positives dominate at T = 0.07: loss ~1e-3, "
              "near-zero gradients)",
    "other_cpu_fraction": "share of all CPUs' time used by other processes while the row was "
                          "timed (/proc/stat busy minus this process's CPU time); rows above "
                          f"{CONTENDED_FRACTION} are marked CONTENDED",
    "peak_extra_memory_cpu": "fresh child process (python -m jem_fast.bench.bench_info_nce "
                             "--memory-probe ...): one forward+backward at 1/32 of the batch "
                             "(and of the bank) first (code pages, thread pool), then inputs "
                             "(and the loss module, with its bank) are created, free heap "
                             "memory is returned to the OS (malloc_trim(0)), the peak RSS is "
                             "reset to the current RSS (/proc/self/clear_refs) and read as "
                             "baseline, one forward+backward runs, delta = peak RSS - "
                             "baseline. Peak RSS = VmHWM (/proc/self/status), not ru_maxrss: "
                             "on Linux a fork+exec child's ru_maxrss starts at its parent's "
                             "peak. Includes the gradient tensors and whatever the allocator "
                             "keeps resident",
    **MEMORY_METHODOLOGY,
    "reference_skip": "the reference (eager and compile) is skipped where REF_LOGITS_MATRICES "
                      "x logits bytes exceeds 4 GB (CPU) or half of the GPU memory (CUDA)",
    "compile": "torch.compile(reference, dynamic=False) after torch._dynamo.reset(), per loss "
               "and shape; compile_s = the first (compiling) forward+backward call, shorter "
               "when inductor's on-disk cache already holds the graph; in --quick on CPU, "
               "only for simclr and skipped where the eager forward+backward takes more than "
               f"{QUICK_COMPILE_MAX_EAGER_S} s",
    "flops": "G = 2 * N * M * D (one logits matmul; simclr N = M = 2B, clip N = M, moco N = "
             "B, M = bank keys). fwd+bwd = 4 G where the keys get a gradient (forward logits, "
             "backward recomputed logits, grad of queries, grad of keys: simclr, clip) and 3 G "
             "for moco (no gradient for the bank); fwd = G. Nominal, the same for all "
             "implementations (the reference does not recompute the logits: its real count is "
             "lower); achieved TFLOP/s = nominal FLOPs / median time",
}

# ---------------------------------------------------------------------------------------------
# Implementations and inputs
# ---------------------------------------------------------------------------------------------

def simclr_reference(out0, out1):
    return ntxent_loss_reference(out0, out1, SIMCLR_TEMPERATURE)


def clip_reference(q, k):
    return info_nce_loss_reference(q, k, CLIP_TEMPERATURE, symmetric=True)


def moco_reference(out0, out1, bank):
    return ntxent_loss_reference(out0, out1, MOCO_TEMPERATURE, negatives=bank)


REFERENCES = {"simclr": simclr_reference, "clip": clip_reference, "moco": moco_reference}


def inf_cl_available():
    """(True, None) or (False, why not)."""
    try:
        from inf_cl import cal_flash_loss  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a Triton/CUDA setup error
        return False, f"inf_cl not importable ({type(exc).__name__}: {str(exc)[:80]})"
    return True, None


def inf_cl_clip(q, k):
    from inf_cl import cal_flash_loss

    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    scale, head_dim = 1.0 / CLIP_TEMPERATURE, min(q.shape[1], 256)
    return 0.5 * (cal_flash_loss(qn, kn, scale=scale, head_dim=head_dim).mean()
                  + cal_flash_loss(kn, qn, scale=scale, head_dim=head_dim).mean())


class _BankedNTXent:
    """jem_fast MoCo: NTXentLoss with its MemoryBank loaded with `bank`; called as
    fn(out0, out1, bank) like the reference (the bank argument is ignored: the module's own bank
    is used, and updated, as in training)."""

    def __init__(self, bank):
        m, d = bank.shape
        self.module = jem_fast.NTXentLoss(MOCO_TEMPERATURE, memory_bank_size=(m, d))
        self.module.to(bank.device)
        with torch.no_grad():
            self.module.memory_bank.bank.copy_(bank)

    def __call__(self, out0, out1, bank=None):
        return self.module(out0, out1)


class _LightlyNTXent:
    """lightly.loss.NTXentLoss called as fn(*inputs) like the reference: SimCLR as is; MoCo with
    its memory bank loaded with the same keys as the reference's negatives (the bank argument is
    then ignored, and lightly's bank is updated on every call, as in training)."""

    def __init__(self, loss, inputs):
        from lightly.loss import NTXentLoss

        if loss == "simclr":
            self.module = NTXentLoss(temperature=SIMCLR_TEMPERATURE)
            return
        bank = inputs[2]
        self.module = NTXentLoss(temperature=MOCO_TEMPERATURE, memory_bank_size=tuple(bank.shape))
        self.module.to(bank.device)
        self.module.memory_bank.bank = bank.detach().clone()

    def __call__(self, out0, out1, bank=None):
        return self.module(out0, out1)


def make_impl(loss: str, impl: str, inputs):
    """The callable (*inputs) -> scalar loss of one implementation."""
    if impl == "jem_fast":
        if loss == "simclr":
            return jem_fast.NTXentLoss(SIMCLR_TEMPERATURE)
        if loss == "clip":
            return jem_fast.InfoNCELoss(CLIP_TEMPERATURE, symmetric=True)
        return _BankedNTXent(inputs[2])
    if impl == "eager":
        return REFERENCES[loss]
    if impl == "compile":
        torch._dynamo.reset()  # a fresh, static-shape compilation per loss and shape
        return torch.compile(REFERENCES[loss], dynamic=False)
    if impl == "inf_cl":
        return inf_cl_clip
    if impl == "lightly":
        return _LightlyNTXent(loss, inputs)
    raise ValueError(impl)


# Noise between the two views. CLIP's temperature 0.07 makes the positive logit of views as close
# as simclr's (cosine 0.94: 13.4) dominate all N negatives: loss ~1e-3 and gradients that are
# mostly rounding error in low precision. With 1.0 (cosine 0.62: logit 8.9 against negatives of
# std 0.9) the loss is ~1-2 at N = 4096-32768, where training spends its time.
VIEW_NOISE = {"simclr": 0.3, "clip": 1.0, "moco": 0.3}


def make_inputs(loss, n, d, m, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = 0.8 * torch.randn(n, d, generator=g)
    b = a + VIEW_NOISE[loss] * torch.randn(n, d, generator=g)
    a = a.to(device=device, dtype=dtype).requires_grad_()
    if loss == "moco":
        bank = F.normalize(torch.randn(m, d, generator=g), dim=1)
        return a, b.to(device=device, dtype=dtype), bank.to(device=device, dtype=dtype)
    return a, b.to(device=device, dtype=dtype).requires_grad_()


def fwd_bwd(fn, inputs):
    return torch.autograd.grad(fn(*inputs), [x for x in inputs if x.requires_grad])


def logits_shape(loss, n, m):
    """(rows, columns) of one logits matrix the reference materializes."""
    if loss == "simclr":
        return 2 * n, 2 * n
    if loss == "clip":
        return n, n
    return n, m + 1


def reference_extra_bytes(loss, n, m, dtype):
    rows, cols = logits_shape(loss, n, m)
    return REF_LOGITS_MATRICES[loss] * rows * cols * torch.finfo(dtype).bits // 8


def nominal_flops(loss, n, d, m):
    """(G, fwd+bwd FLOPs): see METHODOLOGY['flops']."""
    rows, cols = (2 * n, 2 * n) if loss == "simclr" else (n, n) if loss == "clip" else (n, m)
    g = 2 * rows * cols * d
    return g, (3 if loss == "moco" else 4) * g


# ---------------------------------------------------------------------------------------------
# Correctness gate
# ---------------------------------------------------------------------------------------------

def gate_batch(loss, n, m, limit):
    """The largest batch n / 2^k whose float64 reference fits in `limit` (at least 8)."""
    while n > 8 and reference_extra_bytes(loss, n, m, torch.float64) > limit:
        n //= 2
    return n


def relative_errors(value, grads, value64, grads64, names):
    errors = {"loss": (abs(value.double() - value64) / value64.abs().clamp_min(1e-12)).item()}
    for name, g, g64 in zip(names, grads, grads64):
        errors[f"grad_{name}"] = ((g.double() - g64).norm() / g64.norm().clamp_min(1e-30)).item()
    return errors


def check_against_reference(loss, n, d, m, dtype, device):
    """Loss and input gradients of jem_fast vs the reference on float64 copies of the inputs.
    float16/bfloat16: the tolerance of each error is max(TOLERANCE, 2 x the error of the
    reference run in that dtype), as the low-precision normalization dominates both.
    Returns the errors; exits with a clear message when one exceeds its tolerance."""
    inputs = make_inputs(loss, n, d, m, dtype, device)
    fn = make_impl(loss, "jem_fast", inputs)
    if loss == "moco":  # the bank as it was before this call (the call enqueues out1)
        snapshot = fn.module.memory_bank.bank.clone()
    value = fn(*inputs)
    grads = torch.autograd.grad(value, [x for x in inputs if x.requires_grad])
    names = [name for name, x in zip(("out0", "out1"), inputs) if x.requires_grad]

    def reference(dt):
        xs = [x.detach().to(dt).requires_grad_(x.requires_grad) for x in inputs]
        if loss == "moco":
            xs[2] = snapshot.to(dt)
        value_ = REFERENCES[loss](*xs)
        return value_, torch.autograd.grad(value_, [x for x in xs if x.requires_grad])

    value64, grads64 = reference(torch.float64)
    errors = relative_errors(value, grads, value64, grads64, names)
    tolerance = {k: TOLERANCE[dtype] for k in errors}
    result = {k: float(f"{v:.3g}") for k, v in errors.items()}
    if dtype in (torch.float16, torch.bfloat16):
        ref_errors = relative_errors(*reference(dtype), value64, grads64, names)
        tolerance = {k: max(tolerance[k], 2 * ref_errors[k]) for k in errors}
        result.update({f"reference_{dtype_name(dtype)}_{k}": float(f"{v:.3g}")
                       for k, v in ref_errors.items()})
    bad = {k: v for k, v in errors.items() if not v <= tolerance[k]}  # also catches NaN
    if bad:
        sys.exit(f"ABORT: jem_fast {loss} (N={n}, D={d}, M={m}, {dtype}, {device}) does not "
                 f"match the float64 reference: relative errors {bad} exceed their tolerance "
                 f"{ {k: float(f'{tolerance[k]:.3g}') for k in bad} } (jem_fast loss "
                 f"{value.item():.8g}, reference {value64.item():.8g}). "
                 "Not benchmarking a wrong result.")
    return result


# ---------------------------------------------------------------------------------------------
# One measurement
# ---------------------------------------------------------------------------------------------

def case_name(spec):
    loss, n, d, m = spec["loss"], spec["n"], spec["d"], spec["m"]
    return (f"{loss} {'N' if loss == 'clip' else 'B'}={n} D={d}"
            + (f" bank {m}" if m else ""))


def base_row(spec, impl, dtype):
    rows, cols = logits_shape(spec["loss"], spec["n"], spec["m"])
    return {"loss": spec["loss"], "label": case_name(spec), "n": spec["n"], "d": spec["d"],
            "keys": cols,
            "dtype": dtype_name(dtype), "impl": impl, "status": "ok", "note": ""}


def skipped_row(spec, impl, dtype, note):
    return dict(base_row(spec, impl, dtype), status="skipped", note=note, peak_extra_mb="n/a")


def measure(spec, impl, dtype, args, timing):
    """Times one implementation on one shape and measures its peak extra memory."""
    loss, n, d, m = spec["loss"], spec["n"], spec["d"], spec["m"]
    row = base_row(spec, impl, dtype)

    def build():
        inputs = make_inputs(loss, n, d, m, dtype, args.device)
        fn = make_impl(loss, impl, inputs)
        forward = (lambda: fn(*inputs)) if spec["fwd"] else None
        return (lambda: fwd_bwd(fn, inputs)), forward

    probe_spec = {"loss": loss, "impl": impl, "n": n, "d": d, "m": m,
                  "dtype": row["dtype"], "threads": args.threads}
    return measure_row(row, build, device=args.device, timing=timing, probe_module=MODULE,
                       probe_spec=probe_spec)


def memory_probe(spec: dict) -> dict:
    """Child-process side of the CPU memory measurement (see METHODOLOGY)."""
    torch.set_num_threads(spec["threads"])
    loss, impl, n, d, m = spec["loss"], spec["impl"], spec["n"], spec["d"], spec["m"]
    dtype = DTYPES[spec["dtype"]]

    def build(n_, m_):
        inputs = make_inputs(loss, n_, d, m_, dtype, "cpu")
        return (make_impl(loss, impl, inputs),) + tuple(inputs)

    def step(fn, *inputs):
        fwd_bwd(fn, inputs)

    if impl == "compile":
        built = build(n, m)
        step(*built)  # compile + first call; the probe measures the second call
        return rss_probe(lambda: built, step)
    small = (max(n // 32, 8), max(m // 32, 8) if m else None)
    return rss_probe(lambda: build(n, m), step, warmup=lambda: step(*build(*small)))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def run(args):
    mode = benchmark_mode(args)
    timing = TIMING[(args.device, mode)]
    rows, checks = [], []
    for dtype in benchmark_dtypes(args):
        for spec in CASES[(args.device, mode)]:
            if spec["loss"] in args.losses:
                rows += bench_one(spec, dtype, args, timing, mode, checks)
    return rows, checks


def bench_one(spec, dtype, args, timing, mode, checks):
    loss, n, d, m = spec["loss"], spec["n"], spec["d"], spec["m"]
    shape = f"{loss} N={n} D={d}" + (f" M={m}" if m else "") + f" {dtype_name(dtype)}"
    ref_bytes = reference_extra_bytes(loss, n, m, dtype)
    if args.device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        ref_limit, gate_limit = 0.5 * total, CUDA_GATE_FRACTION * total
    else:
        ref_limit, gate_limit = CPU_REF_LIMIT_BYTES, CPU_GATE_LIMIT_BYTES
    rows_, cols = logits_shape(loss, n, m)
    ref_skip = None
    if ref_bytes > ref_limit:
        ref_skip = (f"reference skipped: estimated {ref_bytes / 1e9:.1f} GB "
                    f"({REF_LOGITS_MATRICES[loss]} x {rows_} x {cols} logits) > "
                    f"{ref_limit / 1e9:.1f} GB")

    n_gate = gate_batch(loss, n, m, gate_limit)
    key = {"loss": loss, "n": n_gate, "d": d, "m": m, "dtype": dtype_name(dtype)}
    done = next((c for c in checks if all(c.get(k) == v for k, v in key.items())), None)
    if done is None:
        log(f"[{shape}] correctness check" + (f" at N={n_gate}" if n_gate != n else ""))
        errors = check_against_reference(loss, n_gate, d, m, dtype, args.device)
        checks.append(dict(key, errors=errors, for_shapes=[n]))
    else:
        done["for_shapes"].append(n)

    inf_cl_ok, inf_cl_why = inf_cl_available() if "inf_cl" in spec["impls"] else (False, None)
    lightly_ok, lightly_why = peer_available("lightly", "lightly.loss", "NTXentLoss")
    rows = []
    for impl in IMPLS:
        if impl == "inf_cl" and impl not in spec["impls"]:
            continue  # only listed where it applies (CUDA, clip)
        if impl == "lightly" and loss not in LIGHTLY_LOSSES:
            continue  # lightly has no such loss: no row, an empty cell
        if impl == "lightly" and impl in spec["impls"] and not lightly_ok and not ref_skip:
            rows.append(skipped_row(spec, impl, dtype, lightly_why))
            continue
        if impl not in spec["impls"]:
            note = spec["note"]
            if impl in ("eager", "compile", "lightly") and ref_bytes > ref_limit:
                note = ref_skip
            elif impl == "eager":
                note = f"{note}; reference would need ~{ref_bytes / 1e9:.1f} GB (estimate)"
            rows.append(skipped_row(spec, impl, dtype, note))
            continue
        if impl in ("eager", "compile", "lightly") and ref_skip:
            rows.append(skipped_row(spec, impl, dtype, ref_skip))
            continue
        if impl == "inf_cl" and not inf_cl_ok:
            rows.append(skipped_row(spec, impl, dtype, inf_cl_why))
            continue
        compile_skip = quick_compile_skip(rows, mode, args.device) if impl == "compile" else None
        if compile_skip:
            rows.append(skipped_row(spec, impl, dtype, compile_skip))
            continue
        log(f"[{shape}] {impl}")
        rows.append(measure(spec, impl, dtype, args, timing))

    jf = rows[0]
    g, flops = nominal_flops(loss, n, d, m)
    for row in rows:
        if row["status"] != "ok":
            continue
        row["fwd_bwd_vs_jem_fast"] = round(row["fwd_bwd"]["median_ms"]
                                           / jf["fwd_bwd"]["median_ms"], 2)
        row["tflops_fwd_bwd"] = round(flops / (row["fwd_bwd"]["median_ms"] / 1e3) / 1e12, 4)
        if "fwd" in row and "fwd" in jf:
            row["fwd_vs_jem_fast"] = round(row["fwd"]["median_ms"] / jf["fwd"]["median_ms"], 2)
            row["tflops_fwd"] = round(g / (row["fwd"]["median_ms"] / 1e3) / 1e12, 4)
    return rows


def evaluate_targets(rows, args):
    """Project targets on CPU, float32, 2 threads (see TARGET_SPEED, TARGET_MEMORY)."""
    if args.device != "cpu":
        return None

    def find(loss, n, d, impl):
        return find_ok_row(rows, loss, impl, n, d, "float32")

    targets = []
    loss, n, d, min_ratio = TARGET_SPEED
    jf, eager = find(loss, n, d, "jem_fast"), find(loss, n, d, "eager")
    if jf is not None and eager is not None:
        ratio = eager["fwd_bwd_vs_jem_fast"]
        targets.append({"target": f"{loss} B={n} D={d} fwd+bwd: eager / jem_fast time >= "
                                  f"{min_ratio:g}",
                        "measured": f"{ratio:.2f}x (jem_fast {jf['fwd_bwd']['median_ms']:.0f} "
                                    f"ms, eager {eager['fwd_bwd']['median_ms']:.0f} ms)",
                        "met": ratio >= min_ratio})
        compiled = find(loss, n, d, "compile")
        if compiled is not None:
            targets.append({"target": f"(info, no target) {loss} B={n} D={d} fwd+bwd: "
                                      "compile / jem_fast time",
                            "measured": f"{compiled['fwd_bwd_vs_jem_fast']:.2f}x (compile "
                                        f"{compiled['fwd_bwd']['median_ms']:.0f} ms)",
                            "met": None})
    loss, n, d, max_mb = TARGET_MEMORY
    jf = find(loss, n, d, "jem_fast")
    if jf is not None:
        mem = jf["peak_extra_mb"]
        targets.append({"target": f"{loss} B={n} D={d} jem_fast peak extra memory < {max_mb:g} "
                                  "MB", "measured": f"{mem} MB",
                        "met": isinstance(mem, (int, float)) and mem < max_mb})
    return targets_result("D=128, float32, CPU, 2 threads", targets, args.threads)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def table_rows(rows, device):
    out = []
    for r in rows:
        t = dict(timing_cells(r), loss=r["loss"], n=r["n"], d=r["d"], keys=r["keys"],
                 dtype=r["dtype"], impl=r["impl"])
        if r["status"] == "ok":
            t["tflops"] = f"{r['tflops_fwd_bwd']:.2f}"
        out.append(t)
    columns = [("loss", "loss"), ("n", "B/N"), ("d", "D"), ("keys", "keys"), ("dtype", "dtype"),
               ("impl", "impl")]
    columns += timing_columns("fwd+bwd")
    if device == "cuda":
        columns += [("tflops", "TFLOP/s")]
    return format_table(out, columns + [("note", "note")])


def parse_args(argv=None):
    p = benchmark_parser(MODULE, __doc__)
    p.add_argument("--losses", default=",".join(LOSSES),
                   help="comma-separated subset of %(default)s")
    args = p.parse_args(argv)
    args.losses = tuple(x.strip() for x in args.losses.split(",") if x.strip())
    unknown = set(args.losses) - set(LOSSES)
    if unknown:
        p.error(f"--losses: unknown {sorted(unknown)}; choose from {LOSSES}")
    return args


def main(argv=None):
    args = parse_args(argv)
    return run_benchmark_main(
        args, name="info_nce", title="InfoNCE",
        legend="simclr: NT-Xent on two views of B rows (2B x 2B logits); clip: symmetric "
               "InfoNCE on N pairs; moco: NT-Xent against a bank of keys; fwd+bwd = the loss "
               "and the gradients of the inputs that get one; against the eager reference "
               "(materializes the logits), torch.compile of it and lightly.loss.NTXentLoss",
        step="fwd+bwd",
        run=run, evaluate_targets=evaluate_targets, table=table_rows,
        memory_probe=memory_probe, methodology=METHODOLOGY,
        extra_payload={"losses": list(args.losses)})


if __name__ == "__main__":
    main()
