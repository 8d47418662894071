"""GPU telemetry through NVML (the `nvidia-ml-py` package, imported as `pynvml`), sampled in a
background thread while a cell trains.

    sampler = Telemetry.for_device(torch, device)     # or Telemetry.start(index, uuid=...)
    ... warm-up steps ...
    sampler.mark()                                    # optional: the measured window starts here
    ... measured steps ...
    with sampler.paused():                            # optional: left out of the window
        ... evaluation ...
    ... measured steps ...
    fields = sampler.stop(tokens=tokens_trained_in_the_window)

`fields` always has the same keys (FIELDS). Without NVML (package missing, no driver, a CPU
cell, a metric the device does not support) the affected values are None and
`telemetry_note` says why: nothing is estimated or invented. docs/gpu.md defines every field.

Design:
- every NVML call goes through the module object given as `nvml` (default: `import pynvml`), so
  tests pass a fake module and exercise the real parsing (units, structs, errors);
- the thread sleeps in `threading.Event.wait(interval_s)`: no busy wait, and `stop()` wakes
  it at once;
- a metric that raises once (NVML_ERROR_NOT_SUPPORTED, typically) is not asked again; its
  fields stay None and the error is named in the note;
- energy: the difference of the device's total-energy counter
  (nvmlDeviceGetTotalEnergyConsumption, mJ since the driver loaded; Volta and newer) between
  the window's start and `stop()`: `energy_source = "counter"`. Only where that counter is
  unsupported is power integrated over the samples (trapezoids):
  `energy_source = "power-integral"`, as coarse as the interval and the driver's power
  averaging allow;
- a pause (`paused()`, around an evaluation) cuts a span out of the window: its energy (the
  counter read at both ends) is subtracted, its samples enter no mean and no integral, its
  length is not part of `telemetry_window_s`. It costs NVML calls at its two ends only;
- NVML's power reading is itself a ~1 s moving average (Ampere and newer) and utilisation is
  averaged by the driver over 1/6 s to 1 s: a window shorter than NVML_AVERAGING_MIN_WINDOW_S
  keeps its means but says in the note that they lean on what ran before it.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

# Power (nvmlDeviceGetPowerUsage) is a ~1 s moving average on Ampere and newer, and
# utilisation covers the driver's last 1/6 s to 1 s: in a window shorter than 2 s, at least half
# of the readings reach back before the window (into the warm-up, or the paused evaluation), so
# power_mean_w and gpu_util_mean_pct mostly describe that. Such windows get a note, not a fix.
NVML_AVERAGING_MIN_WINDOW_S = 2.0

# Every key `stop()` returns, in order (the null sampler returns the same keys).
FIELDS = (
    "nvml_device_name",
    "nvml_mem_used_start_bytes",
    "nvml_mem_used_peak_bytes",
    "nvml_proc_mem_peak_bytes",
    "gpu_util_mean_pct",
    "gpu_mem_util_mean_pct",
    "sm_clock_mean_mhz",
    "sm_clock_min_mhz",
    "power_mean_w",
    "power_max_w",
    "energy_j",
    "energy_per_token_j",
    "energy_source",
    "telemetry_samples",
    "telemetry_window_s",
    "telemetry_paused_s",
    "telemetry_interval_s",
    "telemetry_note",
)


def _empty(note: str | None, interval_s: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {k: None for k in FIELDS}
    out["telemetry_samples"] = 0
    out["telemetry_interval_s"] = interval_s
    out["telemetry_note"] = note
    return out


class NullTelemetry:
    """The sampler of a cell without NVML: same interface, every value None, the reason kept."""

    def __init__(self, note: str, interval_s: float | None = None):
        self.note = note
        self.interval_s = interval_s

    def mark(self) -> None:
        pass

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    @contextmanager
    def paused(self) -> Iterator[None]:
        yield

    def stop(self, tokens: int | None = None) -> dict[str, Any]:
        return _empty(self.note, self.interval_s)


def nvml_device_ref(index: int, uuid: str | None = None, env: dict | None = None) -> int | str:
    """The NVML identity of torch's CUDA device `index`.

    torch numbers only the visible devices (CUDA_VISIBLE_DEVICES) and, by default, orders them
    fastest first, while NVML numbers every device in PCI order; so the device's UUID is the
    reliable key. Without one, CUDA_VISIBLE_DEVICES is mapped by hand (its entries are NVML
    indices or UUIDs); without that either, the index is taken as is."""
    if uuid:
        uuid = str(uuid)
        return uuid if uuid.startswith(("GPU-", "MIG-")) else "GPU-" + uuid
    from txsuite.measure.env import visible_devices
    entries = visible_devices(os.environ if env is None else env)
    if entries and 0 <= index < len(entries):
        entry = entries[index]
        return int(entry) if entry.isdigit() else entry
    return index


def torch_device_uuid(torch, device) -> str | None:
    """torch's UUID of a CUDA device (None where this torch does not expose it)."""
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        return str(uuid) if uuid else None
    except Exception:  # noqa: BLE001 - an identity we cannot read is not an error of the cell
        return None


def _process_tree_pids() -> set[int]:
    pids = {os.getpid()}
    try:
        import psutil
        pids.update(p.pid for p in psutil.Process().children(recursive=True))
    except Exception:  # noqa: BLE001 - psutil missing or a child gone: this process still counts
        pass
    return pids


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Telemetry:
    """A running NVML sampler for one device. Build it with `start` or `for_device`."""

    @classmethod
    def for_device(cls, torch, device, interval_s: float = 0.1, *, nvml: Any = None) -> "Telemetry | NullTelemetry":
        """The sampler for a torch device: NVML on the same physical GPU (matched by UUID), or
        the null sampler for a CPU cell."""
        if device.type != "cuda":
            return NullTelemetry(f"the cell runs on {device.type}: no GPU telemetry", interval_s)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return cls.start(index, interval_s, uuid=torch_device_uuid(torch, device), nvml=nvml)

    @classmethod
    def start(cls, device_index: int | None, interval_s: float = 0.1, *, uuid: str | None = None,
              nvml: Any = None, clock: Callable[[], float] = time.monotonic) -> "Telemetry | NullTelemetry":
        """Start sampling torch's CUDA device `device_index` (None: no device -> null sampler).
        `nvml` is the pynvml module or a fake with the same functions."""
        if device_index is None:
            return NullTelemetry("no CUDA device: no GPU telemetry", interval_s)
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if nvml is None:
            try:
                import pynvml as nvml
            except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install
                return NullTelemetry(f"nvidia-ml-py (pynvml) is not importable ({type(exc).__name__}: {exc}); "
                                     f"pip install nvidia-ml-py", interval_s)
        try:
            nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - no driver / library: NVMLError subclasses
            return NullTelemetry(f"NVML could not initialise ({type(exc).__name__}: {exc})", interval_s)
        ref = nvml_device_ref(device_index, uuid)
        # the UUID first; one NVML does not know (e.g. some MIG setups): the index mapping
        handle, error = None, None
        for candidate in dict.fromkeys([ref, nvml_device_ref(device_index, None)]):
            try:
                handle = (nvml.nvmlDeviceGetHandleByUUID(candidate) if isinstance(candidate, str)
                          else nvml.nvmlDeviceGetHandleByIndex(candidate))
                break
            except Exception as exc:  # noqa: BLE001 - NVMLError_NotFound and friends
                error = error or exc  # the first failure names the problem
        if handle is None:
            _shutdown(nvml)
            return NullTelemetry(f"NVML has no device {ref!r} ({type(error).__name__}: {error})", interval_s)
        sampler = cls(nvml, handle, interval_s, clock)
        sampler._begin()
        return sampler

    def __init__(self, nvml: Any, handle: Any, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.nvml = nvml
        self.handle = handle
        self.interval_s = float(interval_s)
        self.clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: dict[str, Any] | None = None
        self._broken: dict[str, str] = {}  # metric -> first error; never asked again
        self._notes: list[str] = []
        self.name = self._query("name", lambda: _text(nvml.nvmlDeviceGetName(handle)))
        # whole life (start -> stop)
        self.mem_start: int | None = None
        self.mem_peak: int | None = None
        self.proc_mem_peak: int | None = None
        self._proc_seen = False
        self._tree: tuple[float, set[int]] | None = None  # (when read, pids): re-read every 2 s
        self._pause_depth = 0  # nested pauses: only the outermost one starts and ends a span
        self._reset_window()

    # -- window statistics ---------------------------------------------------------------
    def _reset_window(self) -> None:
        self.samples = 0
        self._util = [0.0, 0]  # sum, count
        self._mem_util = [0.0, 0]
        self._clock = [0.0, 0]
        self.clock_min: float | None = None
        self._power = [0.0, 0]
        self.power_max: float | None = None
        self._integral_j = 0.0
        self._integral_spans = 0  # trapezoids integrated: energy needs at least one
        self._last_power: tuple[float, float] | None = None  # where the next trapezoid starts
        self._window_start: float | None = None
        self._energy_start_j: float | None = None
        # pauses in the window: their time and counter energy, subtracted at stop()
        self.paused_s = 0.0
        self._paused_energy_j = 0.0
        self._counter_went_back = False
        self._pause_start: float | None = None
        self._pause_energy_start_j: float | None = None
        self._stretches = 1  # measured stretches the pauses cut the window into

    def _begin(self) -> None:
        with self._lock:
            self._window_start = self.clock()
            self._energy_start_j = self._energy_counter()
            self._sample_locked()
            self.mem_start = self.mem_peak
        self._thread = threading.Thread(target=self._run, name="txsuite-nvml", daemon=True)
        self._thread.start()

    def mark(self) -> None:
        """Start the measured window now (e.g. after the warm-up steps): energy and the means
        are taken from here to `stop()`. Peak memory still covers the whole life."""
        if self._result is not None:
            return
        with self._lock:
            self._sample_locked()
            last = self._last_power
            self._reset_window()
            self._window_start = self.clock()
            self._energy_start_j = self._energy_counter()
            if last is not None:
                self._last_power = (self._window_start, last[1])
            if self._pause_depth:  # marked inside a pause: the window starts paused
                self._pause_start, self._pause_energy_start_j = self._window_start, self._energy_start_j
                self._stretches = 0  # the resume starts the first one

    # -- pauses ----------------------------------------------------------------------------
    @contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the enclosed span (an evaluation between measured steps) out of the window:
        no energy, no samples in the means, no time in `telemetry_window_s`. Nests; harmless
        before `mark()` (the window restarts there) and after `stop()`."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def pause(self) -> None:
        """Start a paused span (prefer `paused()`). One sample and one counter read, here only."""
        if self._result is not None:
            return
        with self._lock:
            if self._pause_depth == 0:
                self._sample_locked()  # training's last point: the integral runs up to here
                self._pause_start = self.clock()
                self._pause_energy_start_j = self._energy_counter() if self._energy_start_j is not None else None
            self._pause_depth += 1

    def resume(self) -> None:
        """End the paused span started by the matching `pause()`. One counter read, no sample:
        a reading now would be the paused work's (NVML's averaging)."""
        if self._result is not None:
            return
        with self._lock:
            if self._pause_depth == 0:  # unmatched: nothing to end
                return
            self._pause_depth -= 1
            if self._pause_depth:
                return
            now = self.clock()
            self._close_pause_locked(now, self._energy_counter() if self._energy_start_j is not None else None)
            self._stretches += 1
            if self._last_power is not None:
                # as at mark(): the integral resumes here from the last power read before the
                # pause, so no trapezoid spans the pause
                self._last_power = (now, self._last_power[1])

    def _close_pause_locked(self, now: float, energy_j: float | None) -> None:
        self.paused_s += now - self._pause_start
        if self._pause_energy_start_j is not None and energy_j is not None:
            if energy_j >= self._pause_energy_start_j:
                self._paused_energy_j += energy_j - self._pause_energy_start_j
            else:  # the counter restarted during the pause: the window's difference means nothing
                self._counter_went_back = True
        self._pause_start = self._pause_energy_start_j = None

    # -- sampling --------------------------------------------------------------------------
    def _query(self, metric: str, fn: Callable[[], Any]) -> Any:
        if metric in self._broken:
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - NVMLError_NotSupported and friends
            self._broken[metric] = f"{type(exc).__name__}: {exc}".strip()
            return None

    def _energy_counter(self) -> float | None:
        mj = self._query("energy", lambda: self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        return None if mj is None else float(mj) / 1000.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - telemetry must never break training
                self._notes.append(f"sampling stopped: {type(exc).__name__}: {exc}")
                return

    def sample(self) -> None:
        with self._lock:
            self._sample_locked()

    def _sample_locked(self) -> None:
        nv, h = self.nvml, self.handle
        now = self.clock()
        mem = self._query("memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
        if mem is not None:
            used = int(mem.used)
            self.mem_peak = used if self.mem_peak is None else max(self.mem_peak, used)
        if self._pause_depth:
            self._sample_process_memory(now)  # memory peaks cover the whole life, pauses included
            return  # the window's statistics are not asked for, so not charged the paused work
        self.samples += 1
        util = self._query("utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
        if util is not None:
            _add(self._util, util.gpu)
            _add(self._mem_util, util.memory)
        sm = self._query("sm_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
        if sm is not None:
            _add(self._clock, sm)
            self.clock_min = sm if self.clock_min is None else min(self.clock_min, sm)
        mw = self._query("power", lambda: nv.nvmlDeviceGetPowerUsage(h))
        if mw is not None:
            watts = float(mw) / 1000.0
            _add(self._power, watts)
            self.power_max = watts if self.power_max is None else max(self.power_max, watts)
            if self._last_power is not None:
                t0, w0 = self._last_power
                self._integral_j += (now - t0) * (w0 + watts) / 2.0
                self._integral_spans += 1
            self._last_power = (now, watts)
        self._sample_process_memory(now)

    def _sample_process_memory(self, now: float) -> None:
        nv, h = self.nvml, self.handle
        procs = self._query("processes", lambda: nv.nvmlDeviceGetComputeRunningProcesses(h))
        if procs is not None:
            mine = self._tree_pids(now)
            used = [p.usedGpuMemory for p in procs if p.pid in mine]
            if used:
                self._proc_seen = True
                if all(u is not None for u in used):
                    total = int(sum(used))
                    self.proc_mem_peak = total if self.proc_mem_peak is None else max(self.proc_mem_peak, total)

    def _tree_pids(self, now: float) -> set[int]:
        # listing children walks /proc: at most every 2 s, not at every sample
        if self._tree is None or now - self._tree[0] >= 2.0:
            self._tree = (now, _process_tree_pids())
        return self._tree[1]

    # -- the end ---------------------------------------------------------------------------
    def stop(self, tokens: int | None = None) -> dict[str, Any]:
        """Stop sampling and return the fields. `tokens`: tokens this device trained in the
        window (since `mark()`, else since start), for energy per token. Idempotent."""
        if self._result is not None:
            return self._result
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        with self._lock:
            self._sample_locked()  # the window's last point (unless stopped inside a pause)
            end = self.clock()
            energy_end = self._energy_counter() if self._energy_start_j is not None else None
            if self._pause_depth:  # stopped inside a pause: the window ended where it began
                self._close_pause_locked(end, energy_end)
                self._pause_depth = 0
        energy, source = None, None
        if (self._energy_start_j is not None and energy_end is not None and not self._counter_went_back
                and energy_end >= self._energy_start_j):
            energy, source = energy_end - self._energy_start_j - self._paused_energy_j, "counter"
        elif self._integral_spans:
            energy, source = self._integral_j, "power-integral"
            if energy_end is not None and self._energy_start_j is not None:
                self._notes.append("the energy counter went backwards (driver reloaded?): power integrated instead")
        window_s = (end - self._window_start - self.paused_s) if self._window_start is not None else None
        out = _empty(None, self.interval_s)
        out.update({
            "nvml_device_name": self.name,
            "nvml_mem_used_start_bytes": self.mem_start,
            "nvml_mem_used_peak_bytes": self.mem_peak,
            "nvml_proc_mem_peak_bytes": self.proc_mem_peak,
            "gpu_util_mean_pct": _mean(self._util),
            "gpu_mem_util_mean_pct": _mean(self._mem_util),
            "sm_clock_mean_mhz": _mean(self._clock),
            "sm_clock_min_mhz": self.clock_min,
            "power_mean_w": _mean(self._power),
            "power_max_w": self.power_max,
            "energy_j": energy,
            "energy_per_token_j": (energy / tokens) if (energy is not None and tokens) else None,
            "energy_source": source,
            "telemetry_samples": self.samples,
            "telemetry_window_s": window_s,
            "telemetry_paused_s": self.paused_s,
        })
        notes = [f"{metric} unavailable ({err})" for metric, err in self._broken.items()]
        if "processes" not in self._broken and not self._proc_seen:
            notes.append("NVML listed no process of this process tree (other PID namespace?): "
                         "nvml_proc_mem_peak_bytes unknown")
        elif self._proc_seen and self.proc_mem_peak is None:
            notes.append("NVML did not report per-process memory (usedGpuMemory unavailable)")
        if source == "power-integral":
            notes.append(f"energy integrated from power samples every {self.interval_s:g} s "
                         "(total-energy counter unsupported)")
        short = self._averaging_note(window_s, out)
        if short:
            notes.append(short)
        notes.extend(self._notes)
        out["telemetry_note"] = "; ".join(notes) or None
        self._result = out
        _shutdown(self.nvml)
        return out

    def _averaging_note(self, window_s: float | None, out: dict[str, Any]) -> str | None:
        """The note of a window too short for NVML's own averaging (NVML_AVERAGING_MIN_WINDOW_S),
        or of one cut by pauses into stretches that short. The values are kept as read."""
        if window_s is None or (out["power_mean_w"] is None and out["gpu_util_mean_pct"] is None):
            return None
        stretch_s = window_s / max(self._stretches, 1)  # 0: marked and stopped inside one pause
        if stretch_s >= NVML_AVERAGING_MIN_WINDOW_S:
            return None
        limit = f"under {NVML_AVERAGING_MIN_WINDOW_S:g} s, too short for NVML's ~1 s averaging of power and utilisation"
        if self._stretches <= 1:
            text = (f"the measured window ({window_s:.2f} s) is {limit}: power_mean_w and gpu_util_mean_pct "
                    "lean on the steps before it")
        else:
            text = (f"the pauses cut the measured window ({window_s:.2f} s) into {self._stretches} stretches of "
                    f"{stretch_s:.2f} s on average, {limit}: power_mean_w and gpu_util_mean_pct lean on what ran "
                    "before each stretch (the warm-up, the paused work)")
        if out["energy_source"] == "counter":
            return text + " (energy_j, from the energy counter, is unaffected)"
        if out["energy_source"] == "power-integral":
            return text + " (and so does energy_j, integrated from those power readings)"
        return text


def _add(acc: list, value: Any) -> None:
    acc[0] += float(value)
    acc[1] += 1


def _mean(acc: list) -> float | None:
    return acc[0] / acc[1] if acc[1] else None


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - nothing left to do about it
        pass
