"""Clustering-type SSL ops: SwAV's Sinkhorn-Knopp (jem_fast.ops.sinkhorn_knopp), the DINO loss
(jem_fast.DINOLoss) and the SwAV loss (jem_fast.SwaVLoss), against the eager reference (the
same code the tests use as their oracle), torch.compile(reference) and lightly (when
importable), in one run: time of forward+backward (losses) or forward (Sinkhorn, which runs
without gradient), of the losses' forward alone, and peak extra memory of one step.

    python -m jem_fast.bench.bench_clustering [--device cpu|cuda] [--quick|--full] [--out DIR]
                                          [--threads N] [--dtype float32|bfloat16|float16]
                                          [--ops sinkhorn,dino,swav]

Prints a table and writes clustering_<device>_<date>.json and .csv into --out (default
benchmarks/out). See METHODOLOGY below (also stored in the JSON) for what is measured; on CUDA
the table also shows the achieved GB/s against the HBM ceiling (byte counts in METHODOLOGY).
"""
from __future__ import annotations

import math
import sys

import torch  # before jem_fast: its extension links against libtorch
import torch.nn.functional as F

import jem_fast
from jem_fast.ops import sinkhorn_knopp
from jem_fast.reference import (dino_loss_reference, sinkhorn_knopp_reference,
                                swav_loss_reference)

from .common import (CONTENDED_FRACTION, DTYPES, MEMORY_METHODOLOGY,
                     QUICK_COMPILE_MAX_EAGER_S, TIMING, benchmark_dtypes,
                     benchmark_mode, benchmark_parser, dtype_name, format_table, log,
                     measure_row, quick_compile_skip, rss_probe, run_benchmark_main,
                     targets_result, timing_cells, timing_columns)

MODULE = "jem_fast.bench.bench_clustering"

# ---------------------------------------------------------------------------------------------
# What is run
# ---------------------------------------------------------------------------------------------

# Settings of the usual recipes (and the defaults of lightly's and jem_fast's modules).
SINKHORN_EPSILON, SINKHORN_ITERATIONS = 0.05, 3
SWAV_TEMPERATURE = 0.1
DINO_TEACHER_TEMP, DINO_STUDENT_TEMP, DINO_CENTER_MOMENTUM = 0.04, 0.1, 0.9
FEATURE_DIM = 128  # D of the features and prototypes the Sinkhorn / SwAV scores come from
OPS = ("sinkhorn", "dino", "swav")
IMPLS = ("jem_fast", "eager", "compile", "lightly")


def case(op, b, k, teacher=0, student=0, impls=IMPLS, note=""):
    """One shape. sinkhorn: b x k scores; dino: `teacher` teacher crops and `student` student
    crops (the teacher crops are the first student crops) of b x k logits each; swav: `teacher`
    high-resolution and `student` low-resolution crops of b x k scores each.
    impls: what runs (the others get a 'skipped' row with `note`)."""
    return {"op": op, "b": b, "k": k, "teacher": teacher, "student": student, "impls": impls,
            "note": note}


def sinkhorn_case(b, k, **kw):
    return case("sinkhorn", b, k, **kw)


def dino_case(b, k=65536, local_crops=10, **kw):
    return case("dino", b, k, teacher=2, student=2 + local_crops, **kw)


def swav_case(b, k=3000, low=6, **kw):
    return case("swav", b, k, teacher=2, student=low, **kw)


QUICK_NO_COMPILE = ("not run in --quick on CPU (compile only for sinkhorn there: compiling "
                    "and timing the dino / swav graphs takes ~1 min); run --full")
QUICK_NO_COMPILE_IMPLS = ("jem_fast", "eager", "lightly")
CASES = {
    # The CPU target shapes (Sinkhorn 4096 x 3000, DINO B=64 K=65536 2+10 crops) and a small
    # SwAV; about 2 minutes on 2 threads.
    ("cpu", "quick"): [
        sinkhorn_case(4096, 3000),
        dino_case(64, impls=QUICK_NO_COMPILE_IMPLS, note=QUICK_NO_COMPILE),
        swav_case(256, impls=QUICK_NO_COMPILE_IMPLS, note=QUICK_NO_COMPILE),
    ],
    ("cpu", "full"): [
        sinkhorn_case(4096, 3000), sinkhorn_case(1024, 65536),
        dino_case(32), dino_case(64),
        swav_case(256), swav_case(1024),
    ],
    ("cuda", "quick"): [
        sinkhorn_case(4096, 3000), sinkhorn_case(1024, 65536),
        dino_case(64),
        swav_case(4096),
    ],
    ("cuda", "full"): [
        sinkhorn_case(4096, 3000), sinkhorn_case(1024, 65536), sinkhorn_case(16384, 3000),
        dino_case(64), dino_case(128),
        swav_case(4096), swav_case(16384),
    ],
}

# Correctness gate, run before timing: relative error of the output (Sinkhorn: norm-wise over Q;
# losses: the loss, and the largest norm-wise relative error of the gradient of any crop)
# against the reference on float64 copies of the same (already rounded) inputs. jem_fast
# computes in float32 whatever the input dtype, so in low precision only the rounding of its
# gradients to the input dtype remains.
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6, torch.bfloat16: 1e-2,
             torch.float16: 1e-2}
# The float64 reference of DINO at B=64, K=65536, 14 crops needs ~2.5 GB and a few seconds on 2
# CPU threads: on CPU the DINO gate runs at this batch per crop (K and the crops unchanged).
CPU_GATE_MAX_B = {"dino": 16}

# On CUDA every timed call takes the next of several input sets, together larger than the L2
# cache (~50-60 MB on an H200), so no call reads inputs left in L2 by the one before.
CUDA_ROTATE_MIN_BYTES = 256 * 2**20
CUDA_ROTATE_MAX_SETS = 8

HBM_BYTES_PER_S = 4.3e12  # measured device-to-device copy of an H200

# Targets (issue). CPU, float32, 2 threads: DINO fwd+bwd (B=64, K=65536, 2+10 crops) >= 3x
# faster than eager and jem_fast peak extra memory < 1/3 of eager's; Sinkhorn 4096 x 3000 >= 2x
# faster than eager. CUDA (each dtype run): Sinkhorn at both sizes >= 3x eager and within 3x of
# its HBM floor (bytes / 4.3 TB/s); DINO >= 3x eager.
CPU_TARGET_DINO = (64, 65536, 3.0, 1 / 3)
CPU_TARGET_SINKHORN = (4096, 3000, 2.0)
CUDA_TARGET_SINKHORN = ((4096, 3000), (1024, 65536), 3.0, 3.0)
CUDA_TARGET_DINO = (64, 65536, 3.0)

METHODOLOGY = {
    "timing": "wall clock of whole calls: time.perf_counter on CPU, CUDA events (host waits "
              "for the end event) on CUDA; warm-up calls untimed; median and spread (p25-p75 "
              "and min-max) over the repeats",
    "step": "sinkhorn: one call Q = sinkhorn(scores) (forward only: the op runs without "
            "gradient; the fwd_bwd fields hold it, the fwd fields are absent). dino, swav: "
            "torch.autograd.grad(loss, <crops that require grad>) -- forward, then the input "
            "gradients (no .grad accumulation); fwd = the loss alone with grad mode on (autograd "
            "graph built and discarded); bwd_est_ms = fwd_bwd median - fwd median",
    "ratio": "impl median time / jem_fast median time, same run (>1: jem_fast is faster)",
    "sinkhorn": f"jem_fast.ops.sinkhorn_knopp(scores, {SINKHORN_EPSILON}, "
                f"{SINKHORN_ITERATIONS}) (log domain, float32 math and output, check_finite=True: "
                "one device sync) vs sinkhorn_knopp_reference(scores, same) (SwAV's algorithm "
                "as written, in the input dtype); lightly: lightly.loss.swav_loss.sinkhorn("
                f"scores, iterations={SINKHORN_ITERATIONS}, epsilon={SINKHORN_EPSILON})",
    "dino": f"jem_fast.DINOLoss(output_dim=K, teacher_temp={DINO_TEACHER_TEMP}, "
            f"warmup_teacher_temp={DINO_TEACHER_TEMP}, student_temp={DINO_STUDENT_TEMP}, "
            f"center_momentum={DINO_CENTER_MOMENTUM})(teacher, student) vs "
            "dino_loss_reference(teacher, student, center, same temperatures and momentum) "
            "(returns (loss, new center); the gradient is taken of the loss) with a fixed zero "
            "center; lightly.loss.DINOLoss with the same arguments. 2 teacher crops (no grad) "
            "and 2 + 10 student crops (grad) of B x K logits; the teacher crops are the first "
            "two student crops (pairs with the same index are excluded: 2 x 12 - 2 = 22 pairs). "
            "One jem_fast (and lightly) module is reused for all timed calls, so its center "
            "buffer is updated on every call, as in training (the update is part of the time); "
            "the reference also computes its new center each call. The correctness gate and the "
            "CPU memory probe use a fresh module, whose zero center equals the reference's",
    "swav": f"jem_fast.SwaVLoss(temperature={SWAV_TEMPERATURE}, sinkhorn_iterations="
            f"{SINKHORN_ITERATIONS}, sinkhorn_epsilon={SINKHORN_EPSILON})(high, low) vs "
            "swav_loss_reference(high, low, None, same settings) and lightly.loss.SwaVLoss with "
            "the same settings; 2 high- and 6 low-resolution crops of B x K scores, all "
            "requiring grad; no queue",
    "inputs": f"sinkhorn and swav: scores = normalize(z) @ normalize(C)^T with C = randn(K, "
              f"{FEATURE_DIM}) prototypes and z = randn(B, {FEATURE_DIM}) features (swav: one "
              "base z per batch, each crop z + 0.5 * randn noise), seeded, computed in float32 "
              "then cast to the benchmark dtype; the swav crops are leaves that require grad "
              "(the loss, not the projection, is timed). dino: teacher crops = randn(B, K), "
              "student crops = teacher crop (v mod 2) + randn(B, K), seeded, float32 then cast",
    "cuda_input_rotation": "on CUDA each timed call uses the next of n input sets (n = "
                           f"ceil({CUDA_ROTATE_MIN_BYTES // 2**20} MiB / bytes of one set), "
                           f"at most {CUDA_ROTATE_MAX_SETS}), so the inputs of a call are not "
                           "resident in L2 from the call before; CPU: one input set",
    "bytes": "nominal minimum HBM traffic of one step, e = bytes per element of the input "
             "dtype, the same for every implementation. sinkhorn: 7 reads of the B x K scores "
             "(3 iterations x (column pass + row pass) + the pass that writes Q) in their dtype "
             "+ one write of the float32 B x K result = (7 e + 4) B K. dino fwd+bwd, S = 12 "
             "student and T = 2 teacher crops: every student logit read twice (forward, "
             "backward), its gradient (input dtype) written once, every teacher logit read "
             "once = (3 S + T) e B K = 38 e B K; dino fwd: (S + T) e B K. swav fwd+bwd, H = 2 "
             "high and L = 6 low crops: 7 Sinkhorn passes over each high crop + every crop read "
             "forward and backward and its gradient written = (7 H + 3 (H + L)) e B K; swav "
             "fwd: (7 H + H + L) e B K. Not counted: the float32 teacher probabilities / codes "
             "an implementation may write and re-read (2 B K floats per teacher crop)",
    "gbps": "achieved GB/s = bytes / median time / 1e9; hbm_fraction = that / "
            f"{HBM_BYTES_PER_S / 1e12:.1f} TB/s (the measured H200 copy ceiling, "
            "device-to-device); the 'HBM floor' of a step = bytes / 4.3 TB/s. Computed on "
            "CPU too (JSON only), where it is not a ceiling fraction",
    "other_cpu_fraction": "share of all CPUs' time used by other processes while the row was "
                          "timed (/proc/stat busy minus this process's CPU time); rows above "
                          f"{CONTENDED_FRACTION} are marked CONTENDED",
    "peak_extra_memory_cpu": "fresh child process (python -m jem_fast.bench.bench_clustering "
                             "--memory-probe ...): one step at 1/32 of B and K first (code "
                             "pages, thread pool), then the inputs (and a fresh loss module) "
                             "are created, free heap memory is returned to the OS "
                             "(malloc_trim(0)), the peak RSS is reset to the current RSS "
                             "(/proc/self/clear_refs) and read as baseline, one step runs, "
                             "delta = peak RSS - baseline (VmHWM). Includes the outputs (Q, the "
                             "gradient tensors) and whatever the allocator keeps resident",
    **MEMORY_METHODOLOGY,
    "compile": "torch.compile(reference, dynamic=False) after torch._dynamo.reset(), per op "
               "and shape; compile_s = the first (compiling) call, shorter when inductor's "
               "on-disk cache already holds the graph; in --quick on CPU only for sinkhorn "
               "(the dino and swav compile rows run in --full and on CUDA), and skipped where "
               "the eager step takes more than "
               f"{QUICK_COMPILE_MAX_EAGER_S} s",
    "correctness_gate": "before timing, jem_fast vs the reference on float64 copies of the "
                        "same inputs: sinkhorn norm-wise relative error of Q; losses: relative "
                        "error of the loss and the largest norm-wise relative error of any "
                        "crop's gradient; tolerance float32 1e-3, bfloat16/float16 1e-2. The "
                        f"CPU dino gate runs at B = {CPU_GATE_MAX_B['dino']} per crop (same K "
                        "and crops); a mismatch aborts the run",
}

# ---------------------------------------------------------------------------------------------
# Implementations and inputs
# ---------------------------------------------------------------------------------------------

def lightly_available():
    """(True, None) or (False, why not)."""
    try:
        from lightly.loss import DINOLoss, SwaVLoss  # noqa: F401
        from lightly.loss.swav_loss import sinkhorn  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken torchvision setup
        return False, f"lightly not importable ({type(exc).__name__}: {str(exc)[:80]})"
    return True, None


def sinkhorn_reference(scores):
    return sinkhorn_knopp_reference(scores, SINKHORN_EPSILON, SINKHORN_ITERATIONS)


def dino_reference(teacher, student, center):
    """(loss, new_center), as the official code computes both each step."""
    return dino_loss_reference(teacher, student, center, DINO_TEACHER_TEMP, DINO_STUDENT_TEMP,
                               DINO_CENTER_MOMENTUM)


def swav_reference(high, low):
    return swav_loss_reference(high, low, None, SWAV_TEMPERATURE, SINKHORN_ITERATIONS,
                               SINKHORN_EPSILON)


def jem_fast_dino(k, device):
    return jem_fast.DINOLoss(output_dim=k, warmup_teacher_temp=DINO_TEACHER_TEMP,
                             teacher_temp=DINO_TEACHER_TEMP, student_temp=DINO_STUDENT_TEMP,
                             center_momentum=DINO_CENTER_MOMENTUM).to(device)


def make_impl(op, impl, k, device):
    """fn(inputs) -> Q (sinkhorn) or the loss tensor, for one implementation."""
    if impl == "compile":
        torch._dynamo.reset()  # a fresh, static-shape compilation per op and shape
    if op == "sinkhorn":
        if impl == "jem_fast":
            return lambda inputs: sinkhorn_knopp(inputs[0], SINKHORN_EPSILON,
                                                 SINKHORN_ITERATIONS)
        if impl == "lightly":
            from lightly.loss.swav_loss import sinkhorn
            return lambda inputs: sinkhorn(inputs[0], iterations=SINKHORN_ITERATIONS,
                                           epsilon=SINKHORN_EPSILON)
        ref = sinkhorn_reference if impl == "eager" else torch.compile(sinkhorn_reference,
                                                                       dynamic=False)
        return lambda inputs: ref(inputs[0])
    if op == "dino":
        if impl == "jem_fast":
            module = jem_fast_dino(k, device)
            return lambda inputs: module(inputs[0], inputs[1])
        if impl == "lightly":
            from lightly.loss import DINOLoss
            module = DINOLoss(output_dim=k, warmup_teacher_temp=DINO_TEACHER_TEMP,
                              teacher_temp=DINO_TEACHER_TEMP, student_temp=DINO_STUDENT_TEMP,
                              center_momentum=DINO_CENTER_MOMENTUM).to(device)
            return lambda inputs: module(inputs[0], inputs[1])
        center = torch.zeros(k, device=device)
        ref = dino_reference if impl == "eager" else torch.compile(dino_reference,
                                                                   dynamic=False)
        return lambda inputs: ref(inputs[0], inputs[1], center)[0]
    if op == "swav":
        if impl == "jem_fast":
            module = jem_fast.SwaVLoss(SWAV_TEMPERATURE, SINKHORN_ITERATIONS, SINKHORN_EPSILON)
            return lambda inputs: module(inputs[0], inputs[1])
        if impl == "lightly":
            from lightly.loss import SwaVLoss
            module = SwaVLoss(temperature=SWAV_TEMPERATURE,
                              sinkhorn_iterations=SINKHORN_ITERATIONS,
                              sinkhorn_epsilon=SINKHORN_EPSILON)
            return lambda inputs: module(inputs[0], inputs[1])
        ref = swav_reference if impl == "eager" else torch.compile(swav_reference, dynamic=False)
        return lambda inputs: ref(inputs[0], inputs[1])
    raise ValueError(op)


def prototype_scores(z, prototypes):
    return F.normalize(z, dim=1) @ F.normalize(prototypes, dim=1).T


def make_inputs(op, b, k, teacher, student, dtype, device, seed=0):
    """sinkhorn: (scores,); dino: (teacher crops, student crops); swav: (high, low)."""
    g = torch.Generator().manual_seed(seed)
    if op == "sinkhorn":
        scores = prototype_scores(torch.randn(b, FEATURE_DIM, generator=g),
                                  torch.randn(k, FEATURE_DIM, generator=g))
        return (scores.to(device=device, dtype=dtype),)
    if op == "dino":
        t = [torch.randn(b, k, generator=g) for _ in range(teacher)]
        s = [t[v % teacher] + torch.randn(b, k, generator=g) for v in range(student)]
        return ([x.to(device=device, dtype=dtype) for x in t],
                [x.to(device=device, dtype=dtype).requires_grad_() for x in s])
    protos = torch.randn(k, FEATURE_DIM, generator=g)
    z = torch.randn(b, FEATURE_DIM, generator=g)
    crops = [prototype_scores(z + 0.5 * torch.randn(b, FEATURE_DIM, generator=g), protos)
             .to(device=device, dtype=dtype).requires_grad_() for _ in range(teacher + student)]
    return crops[:teacher], crops[teacher:]


def grad_inputs(op, inputs):
    """The tensors that get a gradient: dino the student crops, swav every crop."""
    return list(inputs[1]) if op == "dino" else list(inputs[0]) + list(inputs[1])


def run_step(op, fn, inputs):
    """One step: sinkhorn forward; the losses forward + input gradients."""
    if op == "sinkhorn":
        return fn(inputs)
    return torch.autograd.grad(fn(inputs).sum(), grad_inputs(op, inputs))


def element_count(op, b, k, teacher, student):
    return b * k * (1 if op == "sinkhorn" else teacher + student)


def nominal_bytes(op, b, k, teacher, student, dtype):
    """(step bytes, forward bytes or None): see METHODOLOGY['bytes']."""
    e, bk = torch.finfo(dtype).bits // 8, b * k
    if op == "sinkhorn":
        return (7 * e + 4) * bk, None
    if op == "dino":
        return (3 * student + teacher) * e * bk, (student + teacher) * e * bk
    crops = teacher + student
    return (7 * teacher + 3 * crops) * e * bk, (7 * teacher + crops) * e * bk


# ---------------------------------------------------------------------------------------------
# Correctness gate
# ---------------------------------------------------------------------------------------------

def _rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_against_reference(op, b, k, teacher, student, dtype, device):
    """jem_fast vs the reference on float64 copies of the same inputs (see TOLERANCE). Returns
    the errors; exits with a clear message when one exceeds its tolerance."""
    inputs = make_inputs(op, b, k, teacher, student, dtype, device, seed=1)
    fn = make_impl(op, "jem_fast", k, device)  # a fresh module: zero DINO center
    refs = {"sinkhorn": sinkhorn_reference, "swav": swav_reference,
            "dino": lambda t, s: dino_reference(t, s, torch.zeros(k, dtype=torch.float64,
                                                                  device=device))[0]}

    def to64(x):
        return x.detach().double().requires_grad_(x.requires_grad)

    if op == "sinkhorn":
        q = fn(inputs)
        q64 = sinkhorn_reference(inputs[0].double())
        errors = {"Q": _rel(q, q64)}
        value, value64 = q.sum(), q64.sum()
    else:
        value = fn(inputs).reshape(())
        grads = torch.autograd.grad(value, grad_inputs(op, inputs))
        inputs64 = tuple([to64(x) for x in part] for part in inputs)
        value64 = refs[op](*inputs64).reshape(())
        grads64 = torch.autograd.grad(value64, grad_inputs(op, inputs64))
        errors = {"loss": (abs(value.double() - value64) / value64.abs().clamp_min(1e-12)).item(),
                  "grad_max_over_crops": max(_rel(g, g64) for g, g64 in zip(grads, grads64))}
    tolerance = TOLERANCE[dtype]
    bad = {name: v for name, v in errors.items() if not v <= tolerance}  # also catches NaN
    if bad:
        sys.exit(f"ABORT: jem_fast {op} (B={b}, K={k}, crops {teacher}+{student}, {dtype}, "
                 f"{device}) does not match the float64 reference: relative errors {bad} exceed "
                 f"the tolerance {tolerance:g} (jem_fast {value.item():.8g}, reference "
                 f"{value64.item():.8g}). Not benchmarking a wrong result.")
    return {name: float(f"{v:.3g}") for name, v in errors.items()}


# ---------------------------------------------------------------------------------------------
# One measurement
# ---------------------------------------------------------------------------------------------

def crops_label(spec):
    if spec["op"] == "sinkhorn":
        return "-"
    if spec["op"] == "dino":
        return f"{spec['teacher']}t/{spec['student']}s"
    return f"{spec['teacher']}h+{spec['student']}l"


def case_name(spec):
    if spec["op"] == "sinkhorn":
        return f"sinkhorn {spec['b']}x{spec['k']}"
    return (f"{spec['op']} B={spec['b']} K={spec['k']} "
            f"{spec['teacher']}+{spec['student'] - (spec['teacher'] if spec['op'] == 'dino' else 0)}"
            " crops")


def base_row(spec, impl, dtype):
    return {"op": spec["op"], "label": case_name(spec), "b": spec["b"], "k": spec["k"],
            "crops": crops_label(spec),
            "teacher_crops": spec["teacher"], "student_crops": spec["student"],
            "dtype": dtype_name(dtype), "impl": impl,
            "step": "fwd" if spec["op"] == "sinkhorn" else "fwd+bwd",
            "status": "ok", "note": ""}


def skipped_row(spec, impl, dtype, note):
    return dict(base_row(spec, impl, dtype), status="skipped", note=note, peak_extra_mb="n/a")


def input_sets(spec, dtype, device):
    """How many input sets a timed step rotates through (see CUDA_ROTATE_MIN_BYTES)."""
    if device != "cuda":
        return 1
    per_set = element_count(spec["op"], spec["b"], spec["k"], spec["teacher"],
                            spec["student"]) * torch.finfo(dtype).bits // 8
    return max(1, min(CUDA_ROTATE_MAX_SETS, math.ceil(CUDA_ROTATE_MIN_BYTES / per_set)))


def measure(spec, impl, dtype, args, timing):
    """Times one implementation on one shape and measures its peak extra memory."""
    op, b, k, t, s = spec["op"], spec["b"], spec["k"], spec["teacher"], spec["student"]
    row = base_row(spec, impl, dtype)
    n_sets = input_sets(spec, dtype, args.device)
    row["input_sets"] = n_sets

    def build():
        sets = [make_inputs(op, b, k, t, s, dtype, args.device, seed=i) for i in range(n_sets)]
        fn = make_impl(op, impl, k, args.device)
        counter = [0]

        def next_inputs():
            counter[0] += 1
            return sets[counter[0] % n_sets]

        step = lambda: run_step(op, fn, next_inputs())  # noqa: E731
        forward = None if op == "sinkhorn" else (lambda: fn(next_inputs()))
        return step, forward

    probe_spec = {"op": op, "impl": impl, "b": b, "k": k, "teacher": t, "student": s,
                  "dtype": row["dtype"], "threads": args.threads}
    return measure_row(row, build, device=args.device, timing=timing, probe_module=MODULE,
                       probe_spec=probe_spec)


def memory_probe(spec: dict) -> dict:
    """Child-process side of the CPU memory measurement (see METHODOLOGY)."""
    torch.set_num_threads(spec["threads"])
    op, impl, b, k = spec["op"], spec["impl"], spec["b"], spec["k"]
    t, s = spec["teacher"], spec["student"]
    dtype = DTYPES[spec["dtype"]]

    def build(b_, k_):
        return make_impl(op, impl, k_, "cpu"), make_inputs(op, b_, k_, t, s, dtype, "cpu")

    def step(fn, inputs):
        run_step(op, fn, inputs)

    if impl == "compile":
        built = build(b, k)
        step(*built)  # compile + first call; the probe measures the second call
        return rss_probe(lambda: built, step)
    small = (max(b // 32, 8), max(k // 32, 8))
    return rss_probe(lambda: build(b, k), step, warmup=lambda: step(*build(*small)))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def run(args):
    mode = benchmark_mode(args)
    timing = TIMING[(args.device, mode)]
    lightly = lightly_available()
    rows, checks = [], []
    for dtype in benchmark_dtypes(args):
        for spec in CASES[(args.device, mode)]:
            if spec["op"] in args.ops:
                rows += bench_one(spec, dtype, args, timing, mode, checks, lightly)
    return rows, checks


def bench_one(spec, dtype, args, timing, mode, checks, lightly):
    op, b, k, t, s = spec["op"], spec["b"], spec["k"], spec["teacher"], spec["student"]
    shape = f"{op} B={b} K={k}" + (f" crops {crops_label(spec)}" if op != "sinkhorn" else "") \
        + f" {dtype_name(dtype)}"
    b_gate = min(b, CPU_GATE_MAX_B.get(op, b)) if args.device == "cpu" else b
    key = {"op": op, "b": b_gate, "k": k, "teacher": t, "student": s,
           "dtype": dtype_name(dtype)}
    done = next((c for c in checks if all(c.get(x) == v for x, v in key.items())), None)
    if done is None:
        log(f"[{shape}] correctness check" + (f" at B={b_gate}" if b_gate != b else ""))
        errors = check_against_reference(op, b_gate, k, t, s, dtype, args.device)
        checks.append(dict(key, errors=errors, for_shapes=[b]))
    else:
        done["for_shapes"].append(b)

    lightly_ok, lightly_why = lightly
    rows = []
    for impl in IMPLS:
        if impl not in spec["impls"]:
            rows.append(skipped_row(spec, impl, dtype, spec["note"]))
            continue
        if impl == "lightly" and not lightly_ok:
            rows.append(skipped_row(spec, impl, dtype, lightly_why))
            continue
        compile_skip = quick_compile_skip(rows, mode, args.device) if impl == "compile" else None
        if compile_skip:
            rows.append(skipped_row(spec, impl, dtype, compile_skip))
            continue
        log(f"[{shape}] {impl}")
        rows.append(measure(spec, impl, dtype, args, timing))

    jf = rows[0]
    step_bytes, fwd_bytes = nominal_bytes(op, b, k, t, s, dtype)
    for row in rows:
        if row["status"] != "ok":
            continue
        fb_s = row["fwd_bwd"]["median_ms"] / 1e3
        row["fwd_bwd_vs_jem_fast"] = round(fb_s * 1e3 / jf["fwd_bwd"]["median_ms"], 2)
        row["nominal_bytes"] = step_bytes
        row["gbps"] = round(step_bytes / fb_s / 1e9, 2)
        row["hbm_fraction"] = round(step_bytes / fb_s / HBM_BYTES_PER_S, 4)
        row["hbm_floor_ms"] = round(step_bytes / HBM_BYTES_PER_S * 1e3, 4)
        if "fwd" in row:
            fwd_s = row["fwd"]["median_ms"] / 1e3
            row["bwd_est_ms"] = round((fb_s - fwd_s) * 1e3, 4)
            row["gbps_fwd"] = round(fwd_bytes / fwd_s / 1e9, 2)
            if "fwd" in jf:
                row["fwd_vs_jem_fast"] = round(row["fwd"]["median_ms"]
                                               / jf["fwd"]["median_ms"], 2)
    return rows


def find_row(rows, op, b, k, impl, dtype):
    return next((r for r in rows if (r["op"], r["b"], r["k"], r["impl"], r["dtype"])
                 == (op, b, k, impl, dtype) and r["status"] == "ok"), None)


def _speed_item(rows, op, b, k, dtype, min_ratio, label):
    jf, eager = find_row(rows, op, b, k, "jem_fast", dtype), find_row(rows, op, b, k, "eager",
                                                                        dtype)
    if jf is None or eager is None:
        return []
    ratio = eager["fwd_bwd_vs_jem_fast"]
    items = [{"target": f"{label} {jf['step']}: eager / jem_fast time >= {min_ratio:g}",
              "measured": f"{ratio:.2f}x (jem_fast {jf['fwd_bwd']['median_ms']:.3g} ms, eager "
                          f"{eager['fwd_bwd']['median_ms']:.3g} ms)",
              "met": ratio >= min_ratio}]
    for impl in ("compile", "lightly"):
        other = find_row(rows, op, b, k, impl, dtype)
        if other is not None:
            items.append({"target": f"(info, no target) {label}: {impl} / jem_fast time",
                          "measured": f"{other['fwd_bwd_vs_jem_fast']:.2f}x ({impl} "
                                      f"{other['fwd_bwd']['median_ms']:.3g} ms)",
                          "met": None})
    return items


def evaluate_targets(rows, args):
    """The issue's targets: CPU float32 2 threads; CUDA every dtype run (see CPU_TARGET_*,
    CUDA_TARGET_*)."""
    items = []
    if args.device == "cpu":
        b, k, min_ratio, max_mem_ratio = CPU_TARGET_DINO
        label = f"dino B={b} K={k} 2+10 crops"
        items += _speed_item(rows, "dino", b, k, "float32", min_ratio, label)
        jf = find_row(rows, "dino", b, k, "jem_fast", "float32")
        eager = find_row(rows, "dino", b, k, "eager", "float32")
        if jf is not None and eager is not None:
            mj, me = jf["peak_extra_mb"], eager["peak_extra_mb"]
            ok = isinstance(mj, (int, float)) and isinstance(me, (int, float)) and me > 0
            items.append({"target": f"{label} jem_fast peak extra memory < "
                                    f"{max_mem_ratio:.3g} x eager's",
                          "measured": f"jem_fast {mj} MB, eager {me} MB"
                                      + (f" ({mj / me:.2f}x)" if ok else ""),
                          "met": ok and mj < max_mem_ratio * me})
        b, k, min_ratio = CPU_TARGET_SINKHORN
        items += _speed_item(rows, "sinkhorn", b, k, "float32", min_ratio,
                             f"sinkhorn {b} x {k}")
        return targets_result("float32, CPU, 2 threads", items, args.threads)

    dtypes = sorted({r["dtype"] for r in rows})
    for dtype in dtypes:
        *shapes, min_ratio, max_floor = CUDA_TARGET_SINKHORN
        for b, k in shapes:
            label = f"sinkhorn {b} x {k} {dtype}"
            items += _speed_item(rows, "sinkhorn", b, k, dtype, min_ratio, label)
            jf = find_row(rows, "sinkhorn", b, k, "jem_fast", dtype)
            if jf is not None:
                ms, floor = jf["fwd_bwd"]["median_ms"], jf["hbm_floor_ms"]
                items.append({"target": f"{label}: jem_fast time <= {max_floor:g} x HBM floor",
                              "measured": f"{ms / floor:.2f}x ({ms:.4g} ms vs floor "
                                          f"{floor:.4g} ms; {jf['gbps']:.0f} GB/s = "
                                          f"{100 * jf['hbm_fraction']:.0f}% of 4.3 TB/s)",
                              "met": ms <= max_floor * floor})
        b, k, min_ratio = CUDA_TARGET_DINO
        items += _speed_item(rows, "dino", b, k, dtype, min_ratio,
                             f"dino B={b} K={k} 2+10 crops {dtype}")
    return targets_result("CUDA", items, args.threads, target_threads=args.threads)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def table_rows(rows, device):
    out = []
    for r in rows:
        t = dict(timing_cells(r), op=r["op"], b=r["b"], k=r["k"], crops=r["crops"],
                 dtype=r["dtype"], impl=r["impl"], step=r["step"])
        if r["status"] == "ok":
            t["gbps"] = f"{r['gbps']:.0f}"
            t["hbm"] = f"{100 * r['hbm_fraction']:.1f}%"
        out.append(t)
    columns = [("op", "op"), ("b", "B"), ("k", "K"), ("crops", "crops"), ("dtype", "dtype"),
               ("impl", "impl"), ("step", "step")]
    columns += timing_columns("step")
    if device == "cuda":
        columns += [("gbps", "GB/s"), ("hbm", "of 4.3TB/s")]
    return format_table(out, columns + [("note", "note")])


def parse_args(argv=None):
    p = benchmark_parser(MODULE, __doc__)
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of %(default)s")
    args = p.parse_args(argv)
    args.ops = tuple(x.strip() for x in args.ops.split(",") if x.strip())
    unknown = set(args.ops) - set(OPS)
    if unknown:
        p.error(f"--ops: unknown {sorted(unknown)}; choose from {OPS}")
    return args


def main(argv=None):
    args = parse_args(argv)
    return run_benchmark_main(
        args, name="clustering", title="clustering (Sinkhorn-Knopp, DINO, SwAV)",
        legend="sinkhorn: Sinkhorn-Knopp (3 iterations) on B x K scores, forward only (it "
               "runs without gradient); dino: DINOLoss, 2 global + 10 local crops of B x K "
               "logits, fwd+bwd; swav: SwaVLoss, 2 high + 6 low resolution crops, fwd+bwd; "
               "against the eager reference, torch.compile of it and lightly.loss",
        run=run, evaluate_targets=evaluate_targets, table=table_rows,
        memory_probe=memory_probe, methodology=METHODOLOGY,
        extra_payload={"ops": list(args.ops)})


if __name__ == "__main__":
    main()
