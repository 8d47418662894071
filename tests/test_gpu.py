"""GPU-only checks (marker `gpu`; every test skips itself without CUDA). bench/gpu_check.sh runs
them with `pytest -m gpu`. What the CPU can check with fakes is in tests/test_gpu_path.py.

The two worker tests (`test_bf16_cell_on_cuda_records_nvml_fields`,
`test_fp8_cell_on_cuda`) check the worker's contract: NVML telemetry and the allocator
statistics in every CUDA record, and fp8 applied through txsuite.techniques.float8."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from txsuite.measure import peak
from txsuite.measure.memory import cuda_memory
from txsuite.measure.nominal import nominal_key
from txsuite.measure.nvml import Telemetry
from txsuite.config.spec import CellConfig, DataSpec, ModelSpec, TrainSpec
from txsuite.techniques import TrainSetup, Unsupported
from txsuite.techniques import float8

REPO = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]
FP8_CAPABLE = HAS_CUDA and torch.cuda.get_device_capability(0) >= float8.MIN_CAPABILITY
NVML_FIELDS = ("nvml_mem_used_peak_bytes", "gpu_util_mean_pct", "sm_clock_mean_mhz", "power_mean_w",
               "energy_j", "energy_per_token_j", "energy_source")


def cuda0():
    return torch.device("cuda", 0)


def cell(**kw) -> CellConfig:
    base = dict(model=ModelSpec(preset="tiny"), data=DataSpec(seq_len=64),
                train=TrainSpec(steps=20, warmup_steps=3, micro_batch=4, eval_batches=2), device="cuda")
    base.update(kw)
    return CellConfig(**base)


def busy(seconds: float, n: int = 4096) -> None:
    a = torch.randn(n, n, device=cuda0(), dtype=torch.bfloat16)
    torch.cuda.synchronize()
    import time
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def test_telemetry_samples_the_cells_device():
    s = Telemetry.for_device(torch, cuda0(), interval_s=0.05)
    busy(0.5)  # "warm-up"
    s.mark()
    busy(1.5)
    out = s.stop(tokens=1000)
    assert out["telemetry_samples"] >= 10, out
    for key in NVML_FIELDS:
        assert out[key] is not None, (key, out["telemetry_note"])
    assert out["nvml_device_name"] == torch.cuda.get_device_name(0)  # the same GPU as torch's cuda:0
    assert out["energy_source"] in ("counter", "power-integral")
    assert out["energy_j"] > 0 and out["power_mean_w"] > 0 and out["gpu_util_mean_pct"] > 10
    assert out["telemetry_window_s"] == pytest.approx(1.5, abs=0.5)


def test_cuda_memory_statistics_on_the_device():
    torch.cuda.reset_peak_memory_stats(cuda0())
    xs = [torch.empty(n * 2**20, dtype=torch.uint8, device=cuda0()) for n in (1, 3, 7, 64)]
    del xs[1]
    m = cuda_memory(torch, cuda0())
    assert 0 < m["cuda_max_allocated_bytes"] <= m["cuda_max_reserved_bytes"]
    assert 0 <= m["cuda_fragmentation"] < 1
    assert isinstance(m["cuda_alloc_retries"], int) and m["cuda_inactive_split_peak_bytes"] is not None


def test_peak_is_measured_once_and_cached_per_device(tmp_path, monkeypatch):
    monkeypatch.setenv("TXSUITE_CACHE", str(tmp_path))
    name = torch.cuda.get_device_name(0)
    first = peak.peak_flops(torch, cuda0(), "bf16", name)
    again = peak.peak_flops(torch, cuda0(), "bf16", name)
    assert (first["peak_cached"], again["peak_cached"]) == (False, True)
    assert first["peak_flops"] > 1e12 and again["peak_flops"] == first["peak_flops"]
    cache = json.loads((tmp_path / "peaks.json").read_text())
    assert cache[first["peak_key"]]["flops"] == first["peak_flops"] and name in first["peak_key"]
    if nominal_key(name) is not None:  # a measured peak cannot beat the datasheet by much
        assert 0.2 < first["peak_flops"] / first["nominal_peak_flops"] < 1.15
    fp32 = peak.peak_flops(torch, cuda0(), "fp32", name)  # tf32 off: below bf16
    assert fp32["peak_flops"] < first["peak_flops"]
    if FP8_CAPABLE:
        fp8 = peak.peak_flops(torch, cuda0(), "fp8", name)
        assert fp8["peak_flops"] > first["peak_flops"]


def test_fp8_converts_linear_layers_and_trains():
    from txsuite.model import GPT, GPTConfig, lm_loss
    model = GPT(GPTConfig(vocab_size=256, max_seq_len=64, n_layer=2, n_head=4, d_model=128, d_ff=512)).to(cuda0())
    setup = TrainSetup(model=model, device=cuda0())
    if not FP8_CAPABLE:
        with pytest.raises(Unsupported, match="compute capability"):
            float8.apply(setup, cell(precision="fp8"))
        return
    from torchao.float8.float8_linear import Float8Linear
    setup = float8.apply(setup, cell(precision="fp8"))
    assert setup.facts["fp8_linear_layers"] == 8 and setup.facts["fp8_kept_layers"] == ["lm_head"]
    assert sum(isinstance(m, Float8Linear) for m in model.modules()) == 8
    x = torch.randint(0, 256, (4, 64), device=cuda0())  # B * T = 256: 16-aligned for the fp8 GEMMs
    y = torch.roll(x, -1, dims=1)
    with setup.autocast():
        loss = lm_loss(model(x), y)
    loss.backward()
    assert math.isfinite(loss.item())
    assert model.blocks[0].mlp.fc.weight.grad is not None


def _trainer_on(device, precision: str):
    """A tiny model's Trainer and its pinned host batches, as the worker builds them."""
    from txsuite.train import build_training
    c = cell(precision=precision, train=TrainSpec(steps=20, warmup_steps=3, micro_batch=4, grad_accum=2,
                                                  eval_batches=2))
    training = build_training(c, device)
    return training.trainer, training.batches


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_training_step_never_waits_on_the_gpu(precision):
    """Inside Trainer.step nothing synchronises with the device (no .item(), no pageable copy,
    no data-dependent shape): the worker's one sync per step, for timing, is outside it. The
    first step may (optimizer state, kernel autotuning); the next two must not."""
    trainer, batches = _trainer_on(cuda0(), precision)
    trainer.step(batches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising CUDA call raises
    try:
        trainer.step(batches)
        loss = trainer.step(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(float(loss))


def _run_worker(tmp_path, c: CellConfig, memory_limit_bytes: int | None = None) -> dict:
    cell_json, result_json = tmp_path / "cell.json", tmp_path / "result.json"
    cell_json.write_text(json.dumps({"config": c.to_dict(), "cell_id": c.cell_id(),
                                     "memory_limit_bytes": memory_limit_bytes}))
    out = subprocess.run([sys.executable, "-m", "txsuite.run.worker", str(cell_json), str(result_json)],
                         cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(result_json.read_text())


def test_bf16_cell_on_cuda_records_nvml_fields(tmp_path):
    r = _run_worker(tmp_path, cell(precision="bf16"))
    assert r["status"] == "ok", r["reason"]
    m = r["metrics"]
    for key in NVML_FIELDS:
        assert m.get(key) is not None, (key, m.get("telemetry_note"))
    assert m["cuda_alloc_retries"] is not None and 0 <= m["cuda_fragmentation"] < 1
    assert 0 < m["mfu"] < 1 and m["hfu"] >= m["mfu"]
    if nominal_key(r["env"]["device_name"]) is not None:
        assert m["nominal_peak_flops"] > 0


def test_fp8_cell_on_cuda(tmp_path):
    r = _run_worker(tmp_path, cell(precision="fp8"))
    if not FP8_CAPABLE:
        assert r["status"] == "skipped" and "compute capability" in r["reason"]
        return
    assert r["status"] == "ok", r["reason"]
    assert r["metrics"]["fp8_linear_layers"] > 0 and math.isfinite(r["metrics"]["val_loss"])


def test_memory_limit_caps_the_gpu_not_the_address_space(tmp_path):
    """--memory-limit on a CUDA cell: a generous cap trains (a host address-space cap that small
    would kill the CUDA context), a cap below the model's own state is `oom`."""
    roomy = _run_worker(tmp_path, cell(precision="bf16"), memory_limit_bytes=2 * 2**30)
    assert roomy["status"] == "ok", roomy["reason"]
    assert roomy["metrics"]["cuda_max_reserved_bytes"] <= 2 * 2**30
    tight = _run_worker(tmp_path, cell(precision="bf16"), memory_limit_bytes=2**20)
    assert tight["status"] == "oom", tight["reason"]
