#!/usr/bin/env bash
# The test suite: prepares .venv (scripts/env.sh) on first use, then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k vicreg`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$JEM_ROOT"
"$JEM_PY" -m pytest -q tests "$@"
