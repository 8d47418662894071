"""The GPU path, checked on a CPU host: NVML telemetry against a fake pynvml, CUDA allocator
statistics from a fake stats dict, MFU/HFU arithmetic, the nominal peak table, fp8's skip
reasons and its layer filter, and the GPU matrix planning on a host without a GPU."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from txsuite.config.host import Host
from txsuite.config.matrix import load_matrix
from txsuite.measure import nominal, peak
from txsuite.measure.memory import cuda_memory_from_stats
from txsuite.measure.nvml import FIELDS, NullTelemetry, Telemetry, nvml_device_ref
from txsuite.config.spec import CellConfig, DataSpec, ModelSpec, TrainSpec
from txsuite.techniques import TrainSetup, Unsupported
from txsuite.techniques import float8

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SLOW = 3600.0  # a sampling interval the test never reaches: samples are taken by hand


# ---------------------------------------------------------------- a fake pynvml module
class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """The subset of pynvml that txsuite.measure.nvml calls, with pynvml's units (bytes, %, MHz,
    mW, mJ) and struct shapes. `values` may be changed between samples; a function named in
    `unsupported` raises like NVML_ERROR_NOT_SUPPORTED; `calls` counts every call by name."""
    NVML_CLOCK_SM = 1
    NVMLError = FakeNVMLError

    def __init__(self, unsupported=(), init_error=None, name=b"NVIDIA H100 80GB HBM3", procs=None):
        self.values = {"used": 1_000, "gpu": 50, "memory": 20, "sm": 1_500, "mw": 300_000, "mj": 5_000_000}
        self.unsupported = set(unsupported)
        self.init_error = init_error
        self.name = name
        self.procs = procs
        self.calls: dict[str, int] = {}
        self.handles: list = []
        self.shutdowns = 0
        self._lock = threading.Lock()

    def _call(self, fn):
        with self._lock:
            self.calls[fn] = self.calls.get(fn, 0) + 1
        if fn in self.unsupported:
            raise FakeNVMLError("Not Supported")

    def nvmlInit(self):
        self._call("nvmlInit")
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, i):
        self._call("nvmlDeviceGetHandleByIndex")
        self.handles.append(("index", i))
        return ("h", i)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self._call("nvmlDeviceGetHandleByUUID")
        self.handles.append(("uuid", uuid))
        return ("h", uuid)

    def nvmlDeviceGetName(self, h):
        self._call("nvmlDeviceGetName")
        return self.name

    def nvmlDeviceGetMemoryInfo(self, h):
        self._call("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=80 * 2**30, used=self.values["used"], free=0)

    def nvmlDeviceGetUtilizationRates(self, h):
        self._call("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=self.values["gpu"], memory=self.values["memory"])

    def nvmlDeviceGetClockInfo(self, h, kind):
        self._call("nvmlDeviceGetClockInfo")
        assert kind == self.NVML_CLOCK_SM
        return self.values["sm"]

    def nvmlDeviceGetPowerUsage(self, h):
        self._call("nvmlDeviceGetPowerUsage")
        return self.values["mw"]

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self._call("nvmlDeviceGetTotalEnergyConsumption")
        return self.values["mj"]

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        self._call("nvmlDeviceGetComputeRunningProcesses")
        if self.procs is not None:
            return self.procs
        return [SimpleNamespace(pid=os.getpid(), usedGpuMemory=self.values["used"] // 2),
                SimpleNamespace(pid=1, usedGpuMemory=10**12)]  # somebody else's process


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


# ---------------------------------------------------------------- NVML telemetry
def test_samples_are_parsed_into_fields_with_si_units():
    nv = FakeNvml()
    s = Telemetry.start(0, SLOW, nvml=nv)
    for used, gpu, sm, mw in ((3_000, 90, 1_980, 500_000), (2_000, 70, 1_200, 400_000)):
        nv.values.update(used=used, gpu=gpu, sm=sm, mw=mw)
        s.sample()
    out = s.stop(tokens=1000)
    assert list(out) == list(FIELDS)
    assert out["nvml_device_name"] == "NVIDIA H100 80GB HBM3"  # bytes from old pynvml decoded
    assert out["nvml_mem_used_start_bytes"] == 1_000
    assert out["nvml_mem_used_peak_bytes"] == 3_000
    # this process's entry only (the fake lists another pid with 1 TB)
    assert out["nvml_proc_mem_peak_bytes"] == 1_500
    # samples: start (50%), two by hand, the final one at stop (70% still)
    assert out["telemetry_samples"] == 4
    assert out["gpu_util_mean_pct"] == pytest.approx((50 + 90 + 70 + 70) / 4)
    assert out["gpu_mem_util_mean_pct"] == pytest.approx(20)
    assert out["sm_clock_mean_mhz"] == pytest.approx((1_500 + 1_980 + 1_200 + 1_200) / 4)
    assert out["sm_clock_min_mhz"] == 1_200
    assert out["power_mean_w"] == pytest.approx((300 + 500 + 400 + 400) / 4)  # mW -> W
    assert out["power_max_w"] == pytest.approx(500)
    assert out["telemetry_interval_s"] == SLOW
    assert nv.shutdowns == 1 and s.stop() is out  # stop is idempotent


def test_energy_comes_from_the_counter_delta():
    nv = FakeNvml()
    clock = FakeClock()
    s = Telemetry.start(0, SLOW, nvml=nv, clock=clock)
    clock.t += 10
    nv.values["mj"] += 2_500_000  # 2,500 J in the window
    out = s.stop(tokens=10_000)
    assert out["energy_source"] == "counter"
    assert out["energy_j"] == pytest.approx(2_500.0)
    assert out["energy_per_token_j"] == pytest.approx(0.25)
    assert out["telemetry_window_s"] == pytest.approx(10)


def test_mark_starts_the_measured_window():
    nv = FakeNvml()
    clock = FakeClock()
    s = Telemetry.start(0, SLOW, nvml=nv, clock=clock)
    nv.values.update(mj=nv.values["mj"] + 9_000_000, used=50_000, gpu=5)  # warm-up: compile, idle GPU
    clock.t += 30
    s.sample()
    s.mark()
    nv.values.update(mj=nv.values["mj"] + 1_000_000, used=20_000, gpu=100)
    clock.t += 4
    out = s.stop(tokens=4_000)
    assert out["energy_j"] == pytest.approx(1_000.0)  # the warm-up's 9,000 J are not counted
    assert out["energy_per_token_j"] == pytest.approx(0.25)
    assert out["telemetry_window_s"] == pytest.approx(4)
    assert out["gpu_util_mean_pct"] == pytest.approx(100)  # means over the window only
    assert out["nvml_mem_used_peak_bytes"] == 50_000  # the peak covers the whole life


def counterless_sampler(watts: float):
    """(fake NVML, clock, sampler started at t=0 reading `watts`) on a device without the
    total-energy counter, so energy is integrated from power."""
    nv = FakeNvml(unsupported={"nvmlDeviceGetTotalEnergyConsumption"})
    clock = FakeClock()
    nv.values["mw"] = watts * 1_000
    return nv, clock, Telemetry.start(0, SLOW, nvml=nv, clock=clock)


def test_energy_falls_back_to_integrating_power_when_the_counter_is_unsupported():
    nv, clock, s = counterless_sampler(100)  # 100 W at t=0
    clock.t += 1
    nv.values["mw"] = 200_000
    s.sample()  # 200 W at t=1: 150 J so far
    clock.t += 2
    out = s.stop(tokens=100)  # 200 W at t=3: + 400 J
    assert out["energy_source"] == "power-integral"
    assert out["energy_j"] == pytest.approx(550.0)
    assert out["energy_per_token_j"] == pytest.approx(5.5)
    assert "energy unavailable" in out["telemetry_note"] and "integrated" in out["telemetry_note"]
    assert nv.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1  # not asked again


def test_a_pause_leaves_evaluation_out_of_energy_means_and_window():
    nv = FakeNvml()
    clock = FakeClock()
    s = Telemetry.start(0, SLOW, nvml=nv, clock=clock)
    s.mark()  # t=100
    nv.values.update(gpu=90, mw=400_000)
    clock.t += 3
    nv.values["mj"] += 1_200_000  # 3 s of training: 1,200 J
    with s.paused():  # the pause's first sample is training's last point (90 %, 400 W)
        nv.values.update(gpu=5, sm=800, mw=600_000, used=70_000)  # evaluation: another load, more memory
        s.sample()
        clock.t += 5
        nv.values["mj"] += 500_000  # 500 J of evaluation
        s.sample()
    nv.values.update(gpu=90, sm=1_500, mw=400_000)
    clock.t += 2
    nv.values["mj"] += 800_000  # 2 s of training: 800 J
    out = s.stop(tokens=2_000)
    assert out["energy_source"] == "counter"
    assert out["energy_j"] == pytest.approx(2_000.0)  # the evaluation's 500 J are not counted
    assert out["energy_per_token_j"] == pytest.approx(1.0)
    assert out["telemetry_window_s"] == pytest.approx(5) and out["telemetry_paused_s"] == pytest.approx(5)
    # the pause's first sample and stop's: the two evaluation samples are not in the window
    assert out["telemetry_samples"] == 2
    assert out["gpu_util_mean_pct"] == pytest.approx(90) and out["power_mean_w"] == pytest.approx(400)
    assert out["power_max_w"] == pytest.approx(400) and out["sm_clock_min_mhz"] == 1_500
    assert out["nvml_mem_used_peak_bytes"] == 70_000  # memory peaks cover the whole life, pauses included
    # NVML at the pause's ends only: one counter read each, one sample at its start; the
    # samples taken while paused read memory and processes, not the window's metrics
    assert nv.calls["nvmlDeviceGetTotalEnergyConsumption"] == 5  # start, mark, pause, resume, stop
    assert nv.calls["nvmlDeviceGetUtilizationRates"] == 4  # start, mark, pause, stop
    assert nv.calls["nvmlDeviceGetMemoryInfo"] == 6


def test_a_pause_is_not_integrated_when_the_counter_is_unsupported():
    nv, clock, s = counterless_sampler(100)  # 100 W at t=0
    clock.t += 4
    nv.values["mw"] = 200_000
    with s.paused():  # 200 W at t=4: 600 J so far
        nv.values["mw"] = 900_000
        clock.t += 10
        s.sample()  # evaluation: neither integrated nor bridged
    clock.t += 4
    nv.values["mw"] = 200_000
    out = s.stop(tokens=100)  # from the resume at t=14 (200 W, the last reading before the pause) to t=18: 800 J
    assert out["energy_source"] == "power-integral"
    assert out["energy_j"] == pytest.approx(1_400.0)
    assert out["power_max_w"] == pytest.approx(200)
    assert out["telemetry_window_s"] == pytest.approx(8) and out["telemetry_paused_s"] == pytest.approx(10)
    assert "shorter" not in out["telemetry_note"]  # two stretches of 4 s


def test_pauses_before_mark_nested_or_open_at_stop_are_harmless():
    nv = FakeNvml()
    clock = FakeClock()
    s = Telemetry.start(0, SLOW, nvml=nv, clock=clock)
    with s.paused():  # warm-up evaluation: mark() starts the window afresh anyway
        clock.t += 5
        nv.values["mj"] += 5_000_000
    s.mark()
    clock.t += 3
    nv.values["mj"] += 300_000
    with s.paused():
        with s.paused():  # nested: one span
            clock.t += 1
            nv.values["mj"] += 100_000
        clock.t += 1
        nv.values["mj"] += 100_000
    s.resume()  # unmatched: nothing to end
    clock.t += 3
    nv.values["mj"] += 300_000
    with s.paused():
        clock.t += 2
        nv.values["mj"] += 200_000
        out = s.stop(tokens=600)  # stopped inside a pause: the window ended where it began
    assert out["energy_j"] == pytest.approx(600.0) and out["energy_per_token_j"] == pytest.approx(1.0)
    assert out["telemetry_window_s"] == pytest.approx(6) and out["telemetry_paused_s"] == pytest.approx(4)
    s.pause(), s.resume()  # after stop(): no effect, no NVML call
    assert s.stop() is out and out["telemetry_paused_s"] == pytest.approx(4)

    nv = FakeNvml()
    clock = FakeClock()
    s = Telemetry.start(0, SLOW, nvml=nv, clock=clock)
    with s.paused():
        clock.t += 5
        nv.values["mj"] += 9_000_000
        s.mark()  # marked inside a pause: the window starts paused
        clock.t += 2
        nv.values["mj"] += 1_000_000
    clock.t += 3
    nv.values["mj"] += 600_000
    out = s.stop(tokens=600)
    assert out["energy_j"] == pytest.approx(600.0)
    assert out["telemetry_window_s"] == pytest.approx(3) and out["telemetry_paused_s"] == pytest.approx(2)


def test_a_window_shorter_than_nvml_averaging_is_noted_and_kept():
    def window(seconds, pauses=0, **fake):
        nv = FakeNvml(**fake)
        clock = FakeClock()
        s = Telemetry.start(0, SLOW, nvml=nv, clock=clock)
        s.mark()
        for _ in range(pauses):
            clock.t += seconds / (pauses + 1)
            with s.paused():
                clock.t += 10
        clock.t += seconds / (pauses + 1)
        nv.values["mj"] += int(seconds * 300_000)  # 300 W
        return s.stop(tokens=1_000)

    out = window(5.0)
    assert out["telemetry_note"] is None  # nothing to say: a long window
    out = window(0.5)
    assert out["telemetry_window_s"] == pytest.approx(0.5)
    assert "measured window (0.50 s) is under 2 s, too short for NVML's ~1 s averaging" in out["telemetry_note"]
    assert "power_mean_w and gpu_util_mean_pct lean on the steps before it" in out["telemetry_note"]
    assert "energy_j, from the energy counter, is unaffected" in out["telemetry_note"]
    assert out["power_mean_w"] == pytest.approx(300) and out["gpu_util_mean_pct"] == pytest.approx(50)  # kept
    assert out["energy_source"] == "counter" and out["energy_j"] == pytest.approx(150.0)  # unaffected
    # a long window the pauses cut into short stretches: the same lean, before each stretch
    out = window(3.0, pauses=2)
    assert out["telemetry_window_s"] == pytest.approx(3.0)
    assert "into 3 stretches of 1.00 s on average" in out["telemetry_note"]
    out = window(6.0, pauses=2)
    assert out["telemetry_note"] is None
    # energy integrated from the averaged power readings leans the same way, and says so
    out = window(0.5, unsupported={"nvmlDeviceGetTotalEnergyConsumption"})
    assert out["energy_source"] == "power-integral" and "and so does energy_j" in out["telemetry_note"]


def test_the_sampler_thread_keeps_to_memory_while_paused():
    nv = FakeNvml()
    s = Telemetry.start(0, 0.02, nvml=nv)
    with s.paused():
        time.sleep(0.3)
    s.stop(tokens=1)
    # the thread went on sleeping between samples (no busy wait) and read only memory
    assert 4 <= nv.calls["nvmlDeviceGetMemoryInfo"] <= 0.3 / 0.02 + 8
    assert nv.calls["nvmlDeviceGetUtilizationRates"] <= 4  # start, maybe one before the pause, pause, stop


def test_no_energy_at_all_is_none_not_zero():
    nv = FakeNvml(unsupported={"nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage"})
    out = Telemetry.start(0, SLOW, nvml=nv).stop(tokens=100)
    assert out["energy_j"] is None and out["energy_per_token_j"] is None and out["energy_source"] is None
    assert out["power_mean_w"] is None and out["nvml_mem_used_peak_bytes"] == 1_000


def test_an_unsupported_metric_is_asked_once_and_left_none():
    nv = FakeNvml(unsupported={"nvmlDeviceGetUtilizationRates"})
    s = Telemetry.start(0, SLOW, nvml=nv)
    for _ in range(5):
        s.sample()
    out = s.stop(tokens=1)
    assert nv.calls["nvmlDeviceGetUtilizationRates"] == 1
    assert out["gpu_util_mean_pct"] is None and out["gpu_mem_util_mean_pct"] is None
    assert "utilization unavailable" in out["telemetry_note"]
    assert out["sm_clock_mean_mhz"] == 1_500  # the others still sampled


def test_processes_in_another_pid_namespace_leave_process_memory_unknown():
    nv = FakeNvml(procs=[SimpleNamespace(pid=1, usedGpuMemory=123)])
    out = Telemetry.start(0, SLOW, nvml=nv).stop(tokens=1)
    assert out["nvml_proc_mem_peak_bytes"] is None
    assert "no process of this process tree" in out["telemetry_note"]
    nv = FakeNvml(procs=[SimpleNamespace(pid=os.getpid(), usedGpuMemory=None)])  # NVML_VALUE_NOT_AVAILABLE
    out = Telemetry.start(0, SLOW, nvml=nv).stop(tokens=1)
    assert out["nvml_proc_mem_peak_bytes"] is None and "per-process memory" in out["telemetry_note"]


def _all_none(out):
    return all(out[k] is None for k in FIELDS if k not in ("telemetry_samples", "telemetry_note",
                                                           "telemetry_interval_s"))


def test_missing_pynvml_gives_none_everywhere(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    s = Telemetry.start(0, 0.1)
    assert isinstance(s, NullTelemetry)
    s.mark()
    with s.paused():
        pass
    out = s.stop(tokens=1000)
    assert list(out) == list(FIELDS) and _all_none(out) and out["telemetry_samples"] == 0
    assert "pynvml" in out["telemetry_note"]


def test_nvml_init_failure_gives_none_everywhere():
    nv = FakeNvml(init_error=FakeNVMLError("NVML Shared Library Not Found"))
    out = Telemetry.start(0, 0.1, nvml=nv).stop(tokens=1000)
    assert _all_none(out) and "NVML could not initialise" in out["telemetry_note"]
    assert "Shared Library Not Found" in out["telemetry_note"]
    assert "nvmlDeviceGetMemoryInfo" not in nv.calls


def test_cpu_device_and_no_device_get_the_null_sampler():
    out = Telemetry.for_device(torch, CPU).stop(tokens=10)
    assert _all_none(out) and "cpu" in out["telemetry_note"]
    assert isinstance(Telemetry.start(None), NullTelemetry)


def test_the_sampler_thread_waits_between_samples_and_stops_promptly():
    nv = FakeNvml()
    interval, window = 0.02, 0.4
    s = Telemetry.start(0, interval, nvml=nv)
    time.sleep(window)
    t0 = time.perf_counter()
    s.stop(tokens=1)
    assert time.perf_counter() - t0 < 0.5
    n = nv.calls["nvmlDeviceGetMemoryInfo"]
    # one sample per interval (+ start and stop): a busy-wait would make thousands of calls
    assert 3 <= n <= window / interval + 5, n
    assert not any(t.name == "txsuite-nvml" and t.is_alive() for t in threading.enumerate())

    nv = FakeNvml()
    s = Telemetry.start(0, 30.0, nvml=nv)  # a long interval must not delay stop()
    t0 = time.perf_counter()
    s.stop(tokens=1)
    assert time.perf_counter() - t0 < 0.5 and nv.calls["nvmlDeviceGetMemoryInfo"] == 2


def test_nvml_device_is_found_by_uuid_or_through_cuda_visible_devices():
    assert nvml_device_ref(0, "0b7a-11") == "GPU-0b7a-11"
    assert nvml_device_ref(0, "MIG-0b7a") == "MIG-0b7a"
    assert nvml_device_ref(1, None, env={"CUDA_VISIBLE_DEVICES": "2,3"}) == 3
    assert nvml_device_ref(0, None, env={"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}) == "GPU-aa"
    assert nvml_device_ref(1, None, env={}) == 1
    nv = FakeNvml(unsupported={"nvmlDeviceGetHandleByUUID"})  # e.g. a MIG UUID NVML refuses
    Telemetry.start(0, SLOW, uuid="abc", nvml=nv).stop()
    assert nv.handles[-1][0] == "index"


# ---------------------------------------------------------------- CUDA allocator statistics
def test_cuda_memory_from_a_stats_dict():
    stats = {"allocated_bytes.all.peak": 600, "reserved_bytes.all.peak": 800, "num_alloc_retries": 3,
             "num_ooms": 0, "inactive_split_bytes.all.peak": 50, "allocated_bytes.all.current": 1}
    m = cuda_memory_from_stats(stats)
    assert m["cuda_max_allocated_bytes"] == 600 and m["cuda_max_reserved_bytes"] == 800
    assert m["cuda_alloc_retries"] == 3 and m["cuda_ooms"] == 0
    assert m["cuda_fragmentation"] == pytest.approx(0.25)
    assert m["cuda_inactive_split_peak_bytes"] == 50
    empty = cuda_memory_from_stats({})  # allocator statistics unavailable: unknown, not zero
    assert all(v is None for v in empty.values())


# ---------------------------------------------------------------- MFU / HFU
def test_utilization_arithmetic():
    # 2 devices of 1e10 FLOP/s; 1000 tokens/s x 6e6 model FLOPs = 6e9 -> 0.3; 8e6 hardware -> 0.4
    mfu, hfu = peak.utilization(1000.0, 6e6, 8e6, 1e10, world=2)
    assert mfu == pytest.approx(0.3) and hfu == pytest.approx(0.4)
    assert peak.utilization(1000.0, 6e6, 6e6, 1e10) == pytest.approx((0.6, 0.6))
    assert peak.utilization(1000.0, 6e6, 8e6, None) == (None, None)
    assert peak.utilization(1000.0, 6e6, 8e6, 0.0) == (None, None)
    assert peak.utilization(None, 6e6, 8e6, 1e10) == (None, None)


def test_peak_cache_is_written_once_and_reports_the_nominal_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("TXSUITE_CACHE", str(tmp_path))
    measured = []
    monkeypatch.setattr(peak, "measure_matmul_flops",
                        lambda torch_, device, kind: measured.append(kind) or 1.5e11)
    first = peak.peak_flops(torch, CPU, "bf16-pure", "Some CPU")
    again = peak.peak_flops(torch, CPU, "bf16", "Some CPU")
    assert measured == ["bfloat16"]  # bf16 and bf16-pure share one matmul peak
    assert (first["peak_cached"], again["peak_cached"]) == (False, True)
    assert again["peak_flops"] == 1.5e11 and again["nominal_peak_flops"] is None  # CPUs: no table
    cache = json.loads((tmp_path / "peaks.json").read_text())
    assert cache[first["peak_key"]]["flops"] == 1.5e11 and first["peak_key"].endswith("|bfloat16")


def test_a_cached_peak_below_what_a_cell_achieved_is_measured_again_and_only_raised(tmp_path, monkeypatch):
    """A peak cached in a bad moment (a neighbour on the cores) would give MFU above 100 %: a cell
    that achieved more than the cached peak has it measured again, keeping the better one."""
    monkeypatch.setenv("TXSUITE_CACHE", str(tmp_path))
    readings = iter([5e10, 1.2e11, 9e10])
    monkeypatch.setattr(peak, "measure_matmul_flops", lambda torch_, device, kind: next(readings))
    first = peak.peak_flops(torch, CPU, "fp32", "Some CPU")  # measured under load: 5e10
    plausible = peak.peak_flops(torch, CPU, "fp32", "Some CPU", at_least=4e10)
    assert first["peak_flops"] == plausible["peak_flops"] == 5e10 and plausible["peak_cached"]
    monkeypatch.setattr(peak, "REMEASURE_AFTER_S", 0)  # the entry counts as old
    beaten = peak.peak_flops(torch, CPU, "fp32", "Some CPU", at_least=6e10)
    assert beaten["peak_flops"] == 1.2e11 and beaten["peak_remeasured"] and not beaten["peak_cached"]
    lower = peak.peak_flops(torch, CPU, "fp32", "Some CPU", at_least=1.5e11)  # measures 9e10: kept 1.2e11
    assert lower["peak_flops"] == 1.2e11
    monkeypatch.setattr(peak, "REMEASURE_AFTER_S", 600)  # just measured: no second measurement
    assert peak.peak_flops(torch, CPU, "fp32", "Some CPU", at_least=1e12)["peak_cached"]


# ---------------------------------------------------------------- nominal peaks
@pytest.mark.parametrize("name, precision, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
    ("NVIDIA H100 SXM5 80GB", "fp8", 1978.9),
    ("NVIDIA H100 PCIe", "bf16", 756.5),
    ("NVIDIA H100 NVL", "fp8", 1670.5),
    ("NVIDIA H200", "bf16-pure", 989.4),
    ("NVIDIA H200 NVL", "tf32", 417.5),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
    ("NVIDIA A100 80GB PCIe", "tf32", 156.0),
    ("A100-PCIE-40GB", "fp32", 19.5),
    ("NVIDIA L4", "fp8", 242.5),
    ("NVIDIA GeForce RTX 4090", "fp16", 165.2),
    ("nvidia geforce rtx 4090", "bfloat16", 165.2),  # a matmul kind works as well
])
def test_nominal_peak_by_name_variant(name, precision, tflops):
    assert nominal.nominal_peak_flops(name, precision) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("name, precision", [
    ("NVIDIA A100-SXM4-80GB", "fp8"),  # Ampere: no fp8 tensor cores
    ("NVIDIA L40S", "bf16"),  # not L4
    ("NVIDIA GeForce RTX 4090 D", "bf16"),  # a different part
    ("NVIDIA GeForce RTX 4090 Laptop GPU", "bf16"),
    ("Tesla V100-SXM2-16GB", "fp16"),
    ("Intel(R) Xeon(R) Platinum 8480+", "bf16"),
    ("", "bf16"),
    (None, "bf16"),
])
def test_nominal_peak_is_none_for_unknown_devices_and_missing_precisions(name, precision):
    assert nominal.nominal_peak_flops(name, precision) is None


def test_nominal_table_is_dense_and_ordered():
    for key, row in nominal.NOMINAL_TFLOPS.items():
        assert row["bfloat16"] == row["float16"], key
        assert row["float32"] <= row["tf32"] < row["bfloat16"], key
        if "float8" in row:
            assert row["float8"] == pytest.approx(2 * row["bfloat16"], rel=0.01), key


# ---------------------------------------------------------------- fp8
def cell(**kw):
    base = dict(model=ModelSpec(preset="tiny"), data=DataSpec(seq_len=32),
                train=TrainSpec(steps=3, warmup_steps=1, micro_batch=2, eval_batches=1), device="cpu")
    base.update(kw)
    return CellConfig(**base)


def test_fp8_is_unsupported_on_cpu_and_before_compute_capability_8_9():
    from txsuite.model import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=64, max_seq_len=16, n_layer=1, n_head=2, d_model=32, d_ff=64))
    with pytest.raises(Unsupported, match=r"compute capability >= 8.9.*runs on cpu"):
        float8.apply(TrainSetup(model=model, device=CPU), cell(precision="fp8"))
    cuda = torch.device("cuda", 0)
    with pytest.raises(Unsupported, match=r"NVIDIA A100-SXM4-80GB has compute capability 8.0"):
        float8.check_supported(cuda, (8, 0), "NVIDIA A100-SXM4-80GB")
    float8.check_supported(cuda, (8, 9), "NVIDIA L4")
    float8.check_supported(cuda, (9, 0), "NVIDIA H100 80GB HBM3")
    untouched = TrainSetup(model=model, device=CPU)
    assert float8.apply(untouched, cell(precision="bf16")) is untouched and not untouched.facts


def test_fp8_filter_converts_aligned_linears_and_keeps_the_lm_head():
    pytest.importorskip("torchao.float8", reason="torchao is optional (pip install -e '.[compress]')")
    from torchao.float8 import convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    from txsuite.model import GPT, GPTConfig
    # d_ff = 40: the MLP's two layers are not 16-aligned and stay in high precision
    model = GPT(GPTConfig(vocab_size=64, max_seq_len=16, n_layer=2, n_head=2, d_model=32, d_ff=40))
    converted, kept = float8.convert(model, convert_to_float8_training)  # conversion runs on CPU
    assert converted == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv", "blocks.1.attn.proj"]
    assert kept == ["blocks.0.mlp.fc", "blocks.0.mlp.proj", "blocks.1.mlp.fc", "blocks.1.mlp.proj", "lm_head"]
    assert all(isinstance(model.get_submodule(n), Float8Linear) for n in converted)
    assert not any(isinstance(model.get_submodule(n), Float8Linear) for n in kept)
    assert model.lm_head.weight is model.tok_emb.weight  # the tie survives


def _run_worker(tmp_path, c: CellConfig) -> dict:
    cell_json, result_json = tmp_path / "cell.json", tmp_path / "result.json"
    cell_json.write_text(json.dumps({"config": c.to_dict(), "cell_id": c.cell_id()}))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "txsuite.run.worker", str(cell_json), str(result_json)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(result_json.read_text())


def test_on_a_cpu_host_fp8_cells_are_skipped_with_a_reason_and_bf16_cells_run(tmp_path):
    skipped = _run_worker(tmp_path, cell(precision="fp8"))
    assert skipped["status"] == "skipped" and "fp8" in skipped["reason"]
    ran = _run_worker(tmp_path, cell(precision="bf16"))
    assert ran["status"] == "ok", ran["reason"]
    assert ran["metrics"]["tokens_per_s"] > 0


def test_plan_marks_fp8_on_cpu_skipped_with_the_fp8_reason(write_matrix):
    m = load_matrix(write_matrix("name: x\nfixed: {device: cpu}\naxes: {precision: [fp8, bf16]}\n"), host=Host())
    reasons = {c.config.precision: c.skip_reason for c in m.cells}
    assert "torchao float8" in reasons["fp8"] and "compute capability >= 8.9" in reasons["fp8"]
    assert "on cpu" in reasons["fp8"] and reasons["bf16"] is None


def test_bf16_cells_on_a_cpu_that_emulates_bf16_are_run_but_announced(write_matrix):
    from txsuite.config.host import emulated_bf16_note
    text = "name: x\nfixed: {device: cpu}\naxes: {precision: [fp32, bf16, bf16-pure, fp8]}\n"
    emulating = Host(cpu_bf16=False)
    m = load_matrix(write_matrix(text), host=emulating)
    assert [c.skip_reason is None for c in m.cells] == [True, True, True, False]  # bf16 runs; fp8 cannot
    note = emulated_bf16_note(m.cells, emulating)
    assert "no bf16 instructions" in note and "2 bf16 cell(s)" in note and "--only precision=fp32" in note
    assert emulated_bf16_note(m.cells, Host(cpu_bf16=True)) is None  # native bf16: nothing to say
    assert emulated_bf16_note(m.cells, Host()) is None  # flags unknown: no guess
    assert emulated_bf16_note([c for c in m.cells if c.config.precision == "fp32"], emulating) is None


def test_the_gpu_matrix_plans_on_a_cpu_host_as_skipped_cells():
    m = load_matrix(REPO / "matrices" / "gpu.yaml", host=Host())
    precisions = {c.config.precision for c in m.cells}
    assert {"fp32", "tf32", "bf16", "fp8"} <= precisions
    assert any(c.config.compress.quantization == "int8-weight" for c in m.cells)
    assert any(c.config.model.preset == "1.3b" for c in m.cells)  # the MFU cell
    assert all(c.skip_reason and "no CUDA GPU" in c.skip_reason for c in m.cells)
    # forced onto this CPU: fp8 and tf32 are skipped for their own reasons, the rest would run
    on_cpu = load_matrix(REPO / "matrices" / "gpu.yaml", host=Host(), device_override="cpu")
    reasons = {c.label: c.skip_reason for c in on_cpu.cells}
    assert "compute capability" in reasons["precision=fp8"] and "on cpu" in reasons["precision=fp8"]
    assert "compute capability" in reasons["+ precision=fp8 compile.mode=default"]
    assert "tf32" in reasons["precision=tf32"]
    assert reasons["precision=bf16"] is None and reasons["precision=fp32"] is None


def test_txsuite_plan_of_the_gpu_matrix_does_not_crash_without_a_gpu():
    from txsuite.measure.env import gpus_from_nvidia_smi
    if gpus_from_nvidia_smi():
        pytest.skip(reason="this host has a GPU: the cells would be planned to run")
    out = subprocess.run([sys.executable, "-m", "txsuite.cli", "plan", "matrices/gpu.yaml"],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, COLUMNS="250"))
    assert out.returncode == 0, out.stderr
    cells = len(load_matrix(REPO / "matrices" / "gpu.yaml", host=Host()).cells)
    assert cells >= 10 and out.stdout.count("skipped: device 'cuda'") == cells and "will run" not in out.stdout


def test_plan_skips_fp8_on_a_gpu_too_old_for_it(tmp_path):
    """A stand-in nvidia-smi reports an A100 (compute capability 8.0): `txsuite plan` marks the
    fp8 cell skipped with the capability, keeps bf16 and 2:4 (sparse tensor cores since 8.0)."""
    import os
    import stat
    import subprocess
    import sys

    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\ncase "$1" in\n'
                    '  --query-gpu=name,driver_version,memory.total,compute_cap) '
                    'echo "NVIDIA A100-SXM4-80GB, 550.54, 81920 MiB, 8.0" ;;\n'
                    '  *) echo "NVIDIA A100-SXM4-80GB, 550.54, 81920 MiB" ;;\nesac\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "m.yaml").write_text('name: x\nfixed: {device: cuda}\naxes:\n  precision: [bf16, fp8]\n'
                                     'include:\n  - {precision: bf16, compress: {pruning: "2:4"}}\n')
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-m", "txsuite.cli", "plan", "m.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if "│" in line and ("precision" in line or "2:4" in line)]
    assert any("precision=fp8" in line and "skipped" in line for line in lines), out.stdout
    assert "A100-SXM4-80GB has 8.0" in " ".join(out.stdout.replace("│", " ").split())
    assert not any("precision=bf16" in line and "skipped" in line for line in lines), out.stdout


def test_nvidia_smi_is_asked_once_and_an_old_driver_still_reports_its_gpus(tmp_path, monkeypatch):
    """A driver older than the compute_cap field rejects the whole query: the GPUs are still
    listed (capability unknown, so the plan leaves fp8 to the worker); the answer is cached."""
    import stat

    from txsuite.measure import env as host_env
    log = tmp_path / "calls"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f'#!/bin/sh\necho "$1" >> {log}\ncase "$1" in\n  *compute_cap*) exit 2 ;;\n'
                    '  *) echo "Tesla V100-SXM2-16GB, 418.67, 16160 MiB" ;;\nesac\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    host_env.gpus_from_nvidia_smi.cache_clear()
    try:
        gpus = host_env.gpus_from_nvidia_smi()
        assert gpus == ({"name": "Tesla V100-SXM2-16GB", "driver": "418.67", "memory": "16160 MiB"},)
        assert host_env.gpus_from_nvidia_smi() is gpus
        assert len(log.read_text().splitlines()) == 2  # the full query, then the old one; once
    finally:
        host_env.gpus_from_nvidia_smi.cache_clear()  # the real host's answer for later tests
