#!/usr/bin/env bash
# The whole test suite from a fresh clone: install, check that the CUDA sources compile, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY=${VENV:-.venv}/bin/python
echo "== line counts (files over 800 lines should be split)"
find sglang_diffusion -name '*.py' -print0 | xargs -0 wc -l | sort -n | tail -6
echo "== pytest"
"$PY" -m pytest -q -p no:cacheprovider --timeout=900 --durations=15 tests
