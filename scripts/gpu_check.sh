#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu/check.py says what it runs): on a machine with a CUDA
# GPU and a CUDA torch but no package registry, set up what it lacks, build _C with its CUDA
# sources, then run every section under one time budget. README.md "GPU check" has the steps.
#
#   bash scripts/gpu_check.sh --fetch-wheels   # here, with a registry: the missing pure-Python
#                                              # wheels into wheelhouse/ (git-ignored)
#   bash scripts/gpu_check.sh [check.py args]  # there, with wheelhouse/ beside it
#
# Results (the JSON, the log of the setup and of every section) go to $OUT when it is set
# (the device tool's folder that comes back), else benchmarks/results/. Each step is recorded
# with its exit code; a failed step is reported and the check goes on with what works.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# What the GPU machine's image lacks (/work/.library/device/KINDS.md lists what it has), pinned
# to the versions the CPU machine tests with. --no-deps: each need is named here.
WHEELS=(diffusers==0.42.1 importlib_metadata==10.2.0 ftfy==6.3.1 wcwidth==0.9.4)

if [ "${1:-}" = "--fetch-wheels" ]; then
  exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d wheelhouse "${WHEELS[@]}"
fi

START=$(date +%s)
BUDGET_S=${GPU_CHECK_BUDGET_S:-420}  # the whole run, setup included: 7 minutes
OUT_DIR=${OUT:-benchmarks/results}
mkdir -p "$OUT_DIR"
STEPS=$(mktemp)
LOG="$OUT_DIR/gpu_check-setup.log"
: >"$LOG"

step() {  # step NAME COMMAND...: run it, its output to the log, "NAME rc seconds" to $STEPS
  local name=$1 t0 rc
  shift
  t0=$(date +%s)
  echo "===== $name: $*" >>"$LOG"
  "$@" >>"$LOG" 2>&1
  rc=$?
  echo "$name $rc $(($(date +%s) - t0))" >>"$STEPS"
  echo "setup $name: exit $rc ($(($(date +%s) - t0)) s)"
  [ "$rc" -eq 0 ] || tail -n 15 "$LOG"
  return "$rc"
}

step nvidia_smi nvidia-smi
SITE=/tmp/sglang-diffusion-site
if ls wheelhouse/*.whl >/dev/null 2>&1; then
  step wheels timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" wheelhouse/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no wheelhouse/*.whl: the sections that need diffusers will fail (run --fetch-wheels first)"
  echo "wheels 1 0" >>"$STEPS"
fi

# _C with its CUDA kernels, for this card's architecture, against the machine's torch.
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
  CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
  export CUDA_HOME
fi
CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-${CAP:-9.0}}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
step build_C timeout 300 "$PY" -m pip install --no-index --no-build-isolation --no-deps -e .
RC=$?
if [ "$RC" -ne 0 ] && [ "$RC" -ne 124 ]; then
  # pip's editable install failed (not for time): build in place, and put triton_kernels/ where
  # the package expects it (in the throwaway copy of the tree on that machine).
  step build_C_inplace timeout 300 "$PY" setup.py build_ext --inplace &&
    ln -sfn ../triton_kernels sglang_diffusion/triton_kernels
  export PYTHONPATH="$PWD:$PYTHONPATH"
fi
step import_C "$PY" -c "from sglang_diffusion.ops import _native as n; lib = n.native_library(); \
print('available', lib.available, 'with_cuda', lib.with_cuda, lib.missing_reason); assert lib.with_cuda"

LEFT=$((BUDGET_S - ($(date +%s) - START)))
"$PY" benchmarks/gpu/check.py --out "$OUT_DIR" --setup-log "$STEPS" --budget-s "$LEFT" "$@"
RC=$?
rm -f "$STEPS"
exit "$RC"
