#!/usr/bin/env bash
# One prepared run for a lent GPU machine (its own python3 with a CUDA torch, nvcc, ninja,
# pytest; compute-sanitizer where installed; nothing downloadable). Under 8 minutes on an H200
# with 16 cores. Every stage has its own timeout and writes its result under OUT_DIR as soon as
# it finishes, so a timeout loses nothing that came before:
#   machine.txt    GPU, driver, torch, build_info()
#   build.log      ninja build for sm_90 (the lent machine is Hopper)
#   cuda_tests.log the CUDA tests (tests/test_cuda_runtime.py + every test with "cuda" in its id)
#   sanitizer.log  compute-sanitizer memcheck (and racecheck) over a small CUDA test subset
#   bench.txt      jem-fast info --device all + the GPU quick benchmark grid
#   results.tar.gz the benchmark JSON/CSV
#   summary.txt    one line per stage: name, exit status, seconds
#   bash scripts/gpu_check.sh OUT_DIR
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONDONTWRITEBYTECODE=1
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

# stage NAME TIMEOUT_S LOG -- command...: runs it, appends "NAME rc=R Ns" to summary.txt.
stage() {
  local name=$1 limit=$2 log=$3; shift 4
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$SUMMARY"
  return $rc
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
  nvcc --version | tail -1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

rm -f jem_fast/_C*.so
stage build 300 "$OUT/build.log" -- env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 \
  NVCC_THREADS=4 $PY setup.py build_ext --inplace || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import jem_fast; print(jem_fast.build_info())" >> "$OUT/machine.txt" 2>&1

stage cuda_tests 180 "$OUT/cuda_tests.log" -- $PY -m pytest -q -p no:cacheprovider -x \
  tests/test_cuda_runtime.py
stage cuda_tests_all 240 "$OUT/cuda_tests_all.log" -- $PY -m pytest -q -p no:cacheprovider \
  tests -k "cuda and not emulated" --deselect tests/test_example.py
grep -hE "passed|failed|error" "$OUT/cuda_tests.log" "$OUT/cuda_tests_all.log" | tail -4

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$SAN" ]; then
  SUBSET="tests/test_cuda_runtime.py::test_covariance_forward_launches_at_every_shape tests/test_cuda_runtime.py::test_augment_largest_blur_kernels"
  stage memcheck 120 "$OUT/sanitizer.log" -- "$SAN" --tool memcheck --error-exitcode 3 \
    $PY -m pytest -q -p no:cacheprovider $SUBSET
  stage racecheck 120 "$OUT/racecheck.log" -- "$SAN" --tool racecheck --error-exitcode 3 \
    $PY -m pytest -q -p no:cacheprovider \
    "tests/test_cuda_runtime.py::test_augment_largest_blur_kernels[63]"
else
  echo "compute-sanitizer not installed" | tee "$OUT/sanitizer.log"
fi

RES=$(mktemp -d)
stage info 60 "$OUT/bench.txt" -- $PY -m jem_fast info --device all
stage bench 150 "$OUT/bench_quick.txt" -- $PY -m jem_fast bench --device cuda --quick --out "$RES"
cat "$OUT/bench_quick.txt" >> "$OUT/bench.txt"
grep -vE "^\[" "$OUT/bench.txt" | tail -60
tar -czf "$OUT/results.tar.gz" -C "$RES" .
cat "$SUMMARY"
