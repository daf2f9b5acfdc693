#!/usr/bin/env bash
# The whole test suite from a fresh clone: install, check that the CUDA sources and the Triton
# kernels compile (for sm_80/sm_90, without a GPU), run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY=${VENV:-.venv}/bin/python
echo "== line counts (files over 800 lines should be split)"
find sglang_diffusion -name '*.py' -print0 | xargs -0 wc -l | sort -n | tail -6
echo "== nvcc: every csrc/cuda/*.cu for sm_80 and sm_90, warnings are errors"
NVCC=${NVCC:-$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1 || true)}
[ -n "$NVCC" ] || { echo "nvcc not found (set NVCC): the CUDA sources cannot be checked" >&2; exit 1; }
CU_OUT=$(mktemp -d)
# Plain nvcc, no torch: the .cu files include no torch headers. One call per file builds both archs.
ls csrc/cuda/*.cu | xargs -P 2 -I{} sh -c '"$0" -c -std=c++17 -O3 -gencode arch=compute_80,code=sm_80 \
  -gencode arch=compute_90,code=sm_90 -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
  -o "$1/$(basename {}).o" {} && echo "  ok {}"' "$NVCC" "$CU_OUT"
rm -rf "$CU_OUT"
echo "== triton: every kernel compiled ahead of time for sm_90 (no GPU needed)"
env -u TRITON_INTERPRET TRITON_DEFAULT_FP_FUSION=1 "$PY" -m sglang_diffusion.triton_kernels.aot --arch 90
echo "== pytest"
"$PY" -m pytest -q -p no:cacheprovider --timeout=900 --durations=15 tests
