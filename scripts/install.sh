#!/usr/bin/env bash
# Set up sglang-diffusion from a fresh clone into .venv (or $VENV).
# torch is installed first and explicitly: on a machine without a GPU the CPU build
# (TORCH_SPEC, default torch==2.13.0); a bare `torch` requirement would pull a multi-GB CUDA
# build. The package is then built with --no-build-isolation so sglang_diffusion._C compiles
# against that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test}
if [ -z "${TORCH_SPEC:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    TORCH_SPEC="torch"          # a GPU: the default (CUDA) build
  else
    TORCH_SPEC="torch==2.13.0"  # no GPU: the CPU build
  fi
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel ninja
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "$TORCH_SPEC" numpy
"$PY" -m pip install -q --no-build-isolation -e ".[$EXTRAS]"
"$PY" -c "import sglang_diffusion, torch; print('sglang-diffusion', sglang_diffusion.__version__, 'on torch', torch.__version__)"
