#!/usr/bin/env bash
# Set up sglang-diffusion from a fresh clone into .venv (or $VENV), saying what each step does
# and how long it took. `--dry-run` prints the steps and the choices (which torch build) only.
# torch is installed first and explicitly: on a machine without a GPU the CPU build
# (TORCH_SPEC, default torch==2.13.0); a bare `torch` requirement would pull a multi-GB CUDA
# build. The package is then built with --no-build-isolation so sglang_diffusion._C compiles
# against that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test}
if [ -z "${TORCH_SPEC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_SPEC="torch" TORCH_WHY="the default (CUDA) build: nvidia-smi sees a GPU"
  else
    TORCH_SPEC="torch==2.13.0" TORCH_WHY="the CPU build: no GPU seen by nvidia-smi"
  fi
else
  TORCH_WHY="TORCH_SPEC"
fi
PY="$VENV/bin/python"
START=$SECONDS STEP_START=$SECONDS
step() {  # step NUMBER "what it does"
  STEP_START=$SECONDS
  echo "== [$1/5] $2"
}
took() { echo "   done in $((SECONDS - STEP_START)) s"; }
run() {
  if [ "$DRY_RUN" = 1 ]; then echo "   would run: $*"; else "$@"; fi
}

if [ -x "$PY" ]; then
  step 1 "virtual environment: $VENV exists, reusing it"
else
  step 1 "virtual environment: creating $VENV"
  run python3 -m venv "$VENV"
fi
took
step 2 "pip, setuptools, wheel and ninja: upgrading them in $VENV"
run "$PY" -m pip install -q --upgrade pip setuptools wheel ninja
took
if [ -x "$PY" ] && "$PY" -c "import torch" 2>/dev/null; then
  step 3 "torch: $("$PY" -c 'import torch; print(torch.__version__)') is installed, keeping it"
else
  step 3 "torch: installing $TORCH_SPEC ($TORCH_WHY; a download of 0.2-3 GB)"
  run "$PY" -m pip install -q "$TORCH_SPEC" numpy
fi
took
step 4 "sglang-diffusion[$EXTRAS]: installing its dependencies, then compiling the native extension _C (C++ kernels; a few minutes on 2 cores)"
run "$PY" -m pip install -q --no-build-isolation -e ".[$EXTRAS]"
took
step 5 "checking that it imports"
run "$PY" -c "import sglang_diffusion, torch; from sglang_diffusion.ops._native import native_library as n; \
print('   sglang-diffusion', sglang_diffusion.__version__, 'on torch', torch.__version__, '; _C:', \
'built' if n().available else n().missing_reason)"
took
echo "== installed in $((SECONDS - START)) s: $VENV/bin/sglang generate --prompt \"a red circle\""
