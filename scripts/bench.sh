#!/usr/bin/env bash
# The main job: the benchmark suite on its quick default grid (CPU, 2 threads), every op family
# against its eager reference (and torch.compile / lightly where the quick grid runs them) in the
# same run: covariance losses (VICReg, Barlow Twins), InfoNCE (NT-Xent, CLIP, MoCo), clustering
# (Sinkhorn-Knopp, DINO, SwAV), DeepCluster-v2 assignment, the local methods (BYOL/SimSiam
# cosine, EMA) and, when present, augmentation. Tables on the terminal, JSON/CSV in
# benchmarks/out/. Extra arguments go to every benchmark, e.g. `--full` or `--out DIR`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$JEM_ROOT"
for bench in covariance info_nce clustering deepcluster local augment; do
  if [ -f "benchmarks/bench_$bench.py" ]; then
    "$JEM_PY" -m "benchmarks.bench_$bench" "$@"
  fi
done
