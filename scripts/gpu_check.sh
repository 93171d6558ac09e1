#!/usr/bin/env bash
# One prepared run for a lent GPU machine (its own python3 with a CUDA torch, nvcc, pytest):
# build for sm_90, run the CUDA tests, run the GPU benchmark grid, write everything to OUT_DIR.
#   bash scripts/gpu_check.sh OUT_DIR
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
echo "== build"
rm -f jem_fast/_C*.so
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import jem_fast; print(jem_fast.build_info())" | tee "$OUT/build_info.txt"
echo "== CUDA tests"
$PY -m pytest -q tests -k "cuda" -p no:cacheprovider > "$OUT/tests_cuda.log" 2>&1
tail -15 "$OUT/tests_cuda.log"
echo "== full suite"
$PY -m pytest -q tests -x -p no:cacheprovider > "$OUT/tests_all.log" 2>&1
tail -5 "$OUT/tests_all.log"
echo "== benchmarks"
$PY -m benchmarks.bench_covariance --device cuda --full --out "$OUT" 2>&1 | tee "$OUT/bench_cuda.txt" | tail -40
