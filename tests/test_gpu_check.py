"""The prepared GPU check's plumbing, on a host without a GPU: bench/device_check.sh (the lent
device machine's entry point) driving bench/gpu_check.sh in rehearsal mode. A session lent a GPU
has minutes, not hours; a broken path, summary or hand-back must show up here, not there."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# The device tool brings back at most this many files from $OUT, none in a sub-folder deeper
# than two (we keep them flat).
DEVICE_OUT_FILES = 8


def _script(name: str, args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "bench" / name), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env})


def _no_nvidia_smi_path(tmp_path: Path) -> str:
    """A PATH with bash, tar and the usual tools but certainly no nvidia-smi."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "tar", "gzip", "cp", "ls", "mkdir", "date", "tail", "tee", "timeout", "dirname",
                 "basename", "cat", "env"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_rehearsal_records_every_gpu_cell_skipped_and_hands_back_flat_files(tmp_path):
    out, check_dir = tmp_path / "OUT", tmp_path / "gpu-check"
    out.mkdir()
    r = _script("device_check.sh", [str(check_dir)],
                {"OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_REHEARSAL": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # what comes back through the device tool: few files, flat, the summary among them
    handed_back = sorted(p.name for p in out.iterdir())
    assert all((out / n).is_file() for n in handed_back) and len(handed_back) <= DEVICE_OUT_FILES
    assert {"summary.txt", "host.txt", "records.jsonl", "report.html", "gpu-check.tgz"} <= set(handed_back)

    planned = yaml.safe_load((REPO / "matrices" / "gpu.yaml").read_text())
    n_cells = len(planned["axes"]["precision"]) + len(planned["include"])
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line]
    assert len(records) == n_cells
    for rec in records:  # never run on the CPU in the GPU's place
        assert rec["status"] == "skipped" and "cuda" in rec["reason"].lower(), rec
    summary = (out / "summary.txt").read_text()
    assert "REHEARSAL" in summary and summary.rstrip().endswith("REHEARSAL PASS")
    assert "nothing below is a GPU figure" in summary
    assert "tests rc 0" in summary  # the gpu-marked tests ran (and skipped themselves)
    assert "skipped" in (out / "pytest-gpu.log").read_text()


def test_without_a_gpu_the_check_refuses_before_running_anything(tmp_path):
    r = _script("gpu_check.sh", [str(tmp_path / "o")],
                {"PATH": _no_nvidia_smi_path(tmp_path), "PYTHON": sys.executable, "GPU_CHECK_REHEARSAL": "0"},
                timeout=60)
    assert r.returncode == 2
    assert "nvidia-smi sees no GPU" in r.stderr
    assert not (tmp_path / "o" / "summary.txt").exists()


def test_a_gpu_that_torch_cannot_see_is_named_not_run_on_the_cpu(tmp_path):
    """nvidia-smi lists a GPU but the interpreter's torch is a CPU build (this host's)."""
    path = _no_nvidia_smi_path(tmp_path)
    smi = Path(path) / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    r = _script("gpu_check.sh", [str(tmp_path / "o")],
                {"PATH": path, "PYTHON": sys.executable, "GPU_CHECK_REHEARSAL": "0"}, timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "torch does not" in r.stderr and sys.executable in r.stderr
    assert not (tmp_path / "o" / "summary.txt").exists()


def _summary_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_summary", REPO / "bench" / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(label, preset, precision, mfu, status="ok"):
    return {"label": label, "cell_id": label, "status": status, "reason": None,
            "config": {"model": {"preset": preset}, "precision": precision},
            "metrics": {"mfu": mfu, "hfu": mfu, "peak_flops": 7.9e14, "tokens_per_s": 1.0,
                        "nominal_peak_flops": 9.89e14, "mfu_nominal": mfu * 0.8}}


def test_the_mfu_headline_is_the_mfu_cells_not_a_slow_peak_precision(tmp_path):
    """fp32's peak is the CUDA-core one, so its MFU can exceed the bf16 1.3B cell's; the
    headline reports what the target is about."""
    gpu_summary = _summary_module()
    records = [_record("precision=fp32", "gpt2-124m", "fp32", 0.71),
               _record("1.3b cell", "1.3b", "bf16", 0.52), _record("350m cell", "gpt2-350m", "bf16", 0.47)]
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (tmp_path / "matrix.json").write_text(json.dumps({"cells": [{"label": r["label"]} for r in records]}))
    lines = gpu_summary.summary(tmp_path, 0, 0, 0, 400, False)
    headline = [line for line in lines if line.startswith("MFU reached")]
    assert len(headline) == 2 and "52.0%" in headline[0] and "'1.3b cell'" in headline[0]
    assert "'350m cell'" in headline[1] and not any("fp32" in line for line in headline)
    assert lines[-1].endswith("PASS")

    # the MFU cells cut off by the budget: the bf16 cells stand in, said so; the verdict fails
    records[1]["status"] = records[2]["status"] = "timeout"
    records.append(_record("precision=bf16", "gpt2-124m", "bf16", 0.31))
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    lines = gpu_summary.summary(tmp_path, 0, 124, 0, 450, False)
    assert any("bf16 cells stand in" in line for line in lines)
    assert [line for line in lines if line.startswith("MFU reached")][0].endswith("'precision=bf16'")
    assert lines[-1].endswith("FAIL")
