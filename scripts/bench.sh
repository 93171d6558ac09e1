#!/usr/bin/env bash
# The main job: the benchmark suite on its quick default grid (CPU, 2 threads), table on the
# terminal, JSON/CSV in benchmarks/out/. Extra arguments go to the benchmark, e.g. `--full`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$JEM_ROOT"
"$JEM_PY" -m benchmarks.bench_covariance "$@"
