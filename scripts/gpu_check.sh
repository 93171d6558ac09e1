#!/usr/bin/env bash
# One prepared run for a lent GPU machine (its own python3 with a CUDA torch, nvcc, pytest):
# build for sm_90, run the CUDA tests and the suite, run the GPU benchmark grids, and leave few
# files in OUT_DIR (the device tool brings back a handful): machine.txt, build.log, tests.log,
# bench.txt and results.tar.gz (every benchmark's JSON + CSV).
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
echo "== build"
rm -f jem_fast/_C*.so
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import jem_fast; print(jem_fast.build_info())" | tee -a "$OUT/machine.txt"
cat "$OUT/machine.txt"
echo "== tests (CUDA ones first, then everything)"
{
  $PY -m pytest -q tests -k "cuda" -p no:cacheprovider
  $PY -m pytest -q tests -p no:cacheprovider
} > "$OUT/tests.log" 2>&1
grep -E "passed|failed|error" "$OUT/tests.log" | tail -4
echo "== benchmarks"
RES=$(mktemp -d)
$PY -m jem_fast info --device all 2>&1 | tee "$OUT/bench.txt" | tail -30
$PY -m jem_fast bench --device cuda --out "$RES" 2>&1 | tee -a "$OUT/bench.txt" | grep -vE "^\[" | tail -80
tar -czf "$OUT/results.tar.gz" -C "$RES" .
