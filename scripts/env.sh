#!/usr/bin/env bash
# Prepare a virtual environment with torch and the dev requirements, and build jem_fast into it
# (editable, so the tests import the tree). Sourced by scripts/test.sh and scripts/bench.sh.
#
#   JEM_VENV   venv folder (default: .venv in the repository)
#   JEM_TORCH  torch requirement(s) (default: torch==2.14.1; a torch that is already installed
#              in the venv and satisfies it is kept)
#   JEM_EXTRA  extra requirements (default: -r requirements-peers.txt, the pinned torchvision and
#              lightly the benchmarks and parity tests compare against; set JEM_EXTRA= to skip)
#   CPU_ONLY=1 / FORCE_CUDA=1 / TORCH_CUDA_ARCH_LIST  forwarded to setup.py
set -euo pipefail
JEM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
JEM_VENV=${JEM_VENV:-$JEM_ROOT/.venv}
JEM_TORCH=${JEM_TORCH:-torch==2.14.1}
JEM_EXTRA=${JEM_EXTRA--r $JEM_ROOT/requirements-peers.txt}
JEM_PY="$JEM_VENV/bin/python"

if [ ! -x "$JEM_PY" ]; then
  python3 -m venv "$JEM_VENV"
fi
# pip prints a warning per unreachable local index; keep the log readable.
# setuptools>=77 reads pyproject's PEP 639 licence fields; a fresh venv of Python < 3.12 has 65.
"$JEM_PY" -m pip install -q --disable-pip-version-check $JEM_TORCH "setuptools>=77" -r "$JEM_ROOT/requirements-dev.txt" ${JEM_EXTRA:-} 2>&1 \
  | grep -v "^WARNING: Location" || true
"$JEM_PY" -c "import torch" || { echo "torch did not install into $JEM_VENV" >&2; exit 1; }

# Rebuild only when a source is newer than the compiled module (ninja makes it incremental).
so=$(ls "$JEM_ROOT"/jem_fast/_C*.so 2>/dev/null | head -n 1 || true)
built_for=$(cat "$JEM_ROOT/build/.jem_fast_built_for" 2>/dev/null || true)
want="$("$JEM_PY" -c 'import torch;print(torch.__version__)') cpu_only=${CPU_ONLY:-0} force_cuda=${FORCE_CUDA:-0} archs=${TORCH_CUDA_ARCH_LIST:-}"
if [ -z "$so" ] || [ "$built_for" != "$want" ] || \
   [ -n "$(find "$JEM_ROOT/csrc" "$JEM_ROOT/setup.py" -newer "$so" -print -quit)" ]; then
  echo "== building jem_fast ($want)"
  # The module and its build record (jem_fast/_build_config.py, checked on import) go together.
  rm -f "$JEM_ROOT"/jem_fast/_C*.so "$JEM_ROOT/jem_fast/_build_config.py"
  (cd "$JEM_ROOT" && MAX_JOBS=${MAX_JOBS:-2} "$JEM_PY" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 \
     | grep -v "^WARNING: Location" || true)
  mkdir -p "$JEM_ROOT/build" && echo "$want" > "$JEM_ROOT/build/.jem_fast_built_for"
fi
(cd /tmp && "$JEM_PY" -c "
import textwrap, jem_fast
i = jem_fast.build_info()
print(textwrap.fill(f\"jem_fast build: torch {i['torch_version']}, {len(i['cpu_kernels'])} CPU kernels, \"
                    f\"{len(i['cuda_kernels'])} CUDA kernels (archs: {i['cuda_archs'] or '-'}); CUDA: {i['cuda_reason']}\",
                    width=120, subsequent_indent='  '))")
