#!/usr/bin/env bash
# The main job: `jem-fast bench` on its quick default grid (CPU, 2 threads), every op family
# against its eager reference (and torch.compile / lightly / torchvision where the quick grid runs
# them) in the same run: covariance losses (VICReg, Barlow Twins), InfoNCE (NT-Xent, CLIP, MoCo),
# clustering (Sinkhorn-Knopp, DINO, SwAV), DeepCluster-v2 assignment, the local methods
# (BYOL/SimSiam cosine, EMA) and augmentation. Each family's table and one summary table on the
# terminal; JSON/CSV (and PNG plots when matplotlib is installed) in benchmarks/out/ unless --out
# is given. Extra arguments go to `jem-fast bench`, e.g. `--full`, `--scaling` or `--out DIR`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$JEM_ROOT"
"$JEM_PY" -m jem_fast bench --out benchmarks/out "$@"
