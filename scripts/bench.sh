#!/usr/bin/env bash
# The main job: the benchmark suite on its quick default grid (CPU, 2 threads): the covariance
# losses (VICReg, Barlow Twins) and the contrastive family (NT-Xent, CLIP, MoCo), each against the
# eager reference and torch.compile in the same run. Tables on the terminal, JSON/CSV in
# benchmarks/out/. Extra arguments go to both benchmarks, e.g. `--full` or `--out DIR`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$JEM_ROOT"
"$JEM_PY" -m benchmarks.bench_covariance "$@"
"$JEM_PY" -m benchmarks.bench_info_nce "$@"
