"""measure.host_allocator: what each policy changes in a process, and when none is applied.

The policy is process-wide and one-way, so each case runs in its own interpreter."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cli_helpers import run_records

from txsuite.measure.host_allocator import apply_host_allocator

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, Linux page-fault counts")

# Minor page faults of steady-state training steps: the `small` model (4 x 256) at seq 256,
# batch 4, fp32, one thread, 16 steps after three warm-up steps. 16, not 8: under `cache` a run
# still takes a few thousand faults while its heap settles, whatever the step count, while
# glibc's defaults take thousands every step, so only over enough steps do the two stand apart
# (the counts: docs/measurements.md, "Host memory allocator").
FAULTS_OF_TRAINING = """
import json, resource, sys
from txsuite.measure.host_allocator import apply_host_allocator
import torch, torch.nn.functional as F
from txsuite.model import GPT, GPTConfig
fields = apply_host_allocator(sys.argv[1])
torch.set_num_threads(1)  # the faults are the allocator's; a second thread only slows it beside other tests
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=256, max_seq_len=256, n_layer=4, n_head=4, d_model=256, d_ff=1024))
opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
x, y = torch.randint(0, 256, (4, 256)), torch.randint(0, 256, (4, 256))
def step():
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):
    step()
fields["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps(fields))
"""

# One 64 MiB block (above 32 MiB, the most glibc's moving mmap threshold reaches) taken, written
# and freed, again and again; faults counted after 12 rounds, once `cache`'s heap has settled
# (it strands a few copies first: the module's docstring).
FAULTS_OF_A_LARGE_BLOCK = """
import json, resource, sys
from txsuite.measure.host_allocator import apply_host_allocator
import torch
fields = apply_host_allocator(sys.argv[1])
def once():
    torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB of fp32, freed at once
for _ in range(12):
    once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    once()
fields["faults"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(json.dumps(fields))
"""
PAGES_OF_THE_BLOCK = 64 * 2**20 // 4096


def run(code: str, policy: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, policy], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


@LINUX
def test_cache_serves_training_steps_without_the_page_faults_of_the_defaults():
    system, cache = run(FAULTS_OF_TRAINING, "system"), run(FAULTS_OF_TRAINING, "cache")
    assert (system["host_allocator"], cache["host_allocator"]) == ("system", "cache")
    assert system["faults"] > 8000, system
    assert cache["faults"] < system["faults"] / 4, (cache, system)


@LINUX
def test_cache_keeps_even_blocks_above_glibcs_largest_moving_threshold():
    system, cache = run(FAULTS_OF_A_LARGE_BLOCK, "system"), run(FAULTS_OF_A_LARGE_BLOCK, "cache")
    # the defaults map the block afresh each time: the kernel faults in (and zero-fills) every page
    assert system["faults"] >= 0.9 * PAGES_OF_THE_BLOCK, system
    # cache hands it back from malloc's free lists: no page of it is faulted in again
    assert cache["faults"] < 0.01 * PAGES_OF_THE_BLOCK, cache


@LINUX
def test_the_users_own_malloc_settings_win_and_the_record_says_so():
    kept = run(FAULTS_OF_A_LARGE_BLOCK, "cache", MALLOC_TRIM_THRESHOLD_="131072")
    assert kept["host_allocator"] == "system"
    assert "MALLOC_TRIM_THRESHOLD_" in kept["host_allocator_reason"]
    assert kept["faults"] >= 0.9 * PAGES_OF_THE_BLOCK, kept  # nothing was changed


@pytest.mark.parametrize("env, fragment", [
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "jemalloc is preloaded"),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, "GLIBC_TUNABLES"),
])
def test_a_preloaded_allocator_or_glibc_tunables_keep_the_system_policy(monkeypatch, env, fragment):
    from txsuite.measure import host_allocator
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert fragment in host_allocator._why_not_configurable()


def test_an_unknown_policy_is_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match="system, cache"):
        apply_host_allocator("jemalloc")


@LINUX
def test_a_cell_records_the_page_faults_of_its_steps_and_cache_removes_them(tmp_path):
    """Through the CLI and the worker: a wide MLP (d_ff 4096) at seq 512 makes its hidden
    activations 64 MiB blocks (8 x 512 x 4096 fp32), freed and taken again every step."""
    records = run_records(tmp_path, "name: faults\n"
                                    "fixed:\n"
                                    "  model: {preset: tiny, n_layer: 1, d_model: 128, n_head: 2, d_ff: 4096}\n"
                                    "  data: {dataset: markov, seq_len: 512}\n"
                                    "  train: {steps: 4, warmup_steps: 3, micro_batch: 8, eval_batches: 1}\n"
                                    "axes:\n"
                                    "  measure.host_allocator: [system, cache]\n")
    faults = {r.env["host_allocator"]: r.metrics["host_page_faults_per_step"] for r in records}
    block_pages = 8 * 512 * 4096 * 4 // 4096
    assert faults["system"] >= block_pages, faults  # at least one such block zero-filled per step
    assert faults["cache"] < faults["system"] / 4, faults


def test_a_cache_cell_that_cannot_have_its_policy_is_skipped_with_the_reason(tmp_path):
    """With the user's own malloc settings in the environment, `cache` is not applied, and the
    cell is not run as a `system` cell under the label `cache`."""
    [record] = run_records(tmp_path, "name: kept\n"
                                     "fixed:\n"
                                     "  model: {preset: tiny, n_layer: 1}\n"
                                     "  data: {dataset: markov, seq_len: 32}\n"
                                     "  train: {steps: 2, warmup_steps: 1, micro_batch: 2, eval_batches: 1}\n"
                                     "  measure: {host_allocator: cache}\n",
                           env={"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert record.status == "skipped", record.reason
    assert "host_allocator: cache cannot be applied" in record.reason and "MALLOC_TRIM_THRESHOLD_" in record.reason



TOUCHED = r"""
import json
from txsuite.measure.memory import TrainingWindow, host_current_rss_bytes
def touched(n):  # n bytes, every page written
    buf = bytearray(n)
    for i in range(0, n, 4096):
        buf[i] = 1
    return buf
"""


def _in_a_fresh_process(script: str) -> dict:
    """Run TOUCHED + script in a new interpreter and read the JSON it prints; skip where the
    kernel cannot reset the peak resident set."""
    out = subprocess.run([sys.executable, "-c", TOUCHED + script], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    if not got["reset"]:
        pytest.skip(reason="this kernel does not reset the peak resident set (/proc/self/clear_refs)")
    return got


def test_the_training_window_counts_what_training_adds_not_what_the_build_left():
    """Memory the build freed stays resident in glibc's heap and in the high-water mark; the
    window hands it back and resets the mark, so peak - before is the 40 MiB training touched,
    not 40 MiB less whatever the build left behind."""
    got = _in_a_fresh_process(r"""
build = [touched(64 << 10) for _ in range(1920)]  # 120 MiB in heap-sized blocks the build frees
pin = build[-1]  # the last block stays: glibc cannot shrink its heap's top past it by itself
del build
held = host_current_rss_bytes()
window = TrainingWindow().open()
steps = touched(40 << 20)  # 40 MiB the training steps touch
print(json.dumps({"held": held, "before": window.before, "peak": window.peak(), "reset": window.reset}))
""")
    assert got["before"] < got["held"] - (60 << 20)  # the freed build memory went back
    assert 38 << 20 <= got["peak"] - got["before"] <= 60 << 20


def test_a_part_excluded_from_the_training_window_adds_nothing_to_its_peak():
    """The probe between the steps runs inside the window; its own memory (here 96 MiB) must not
    count as training's, and the mark the steps reached before it (40 MiB) is kept."""
    got = _in_a_fresh_process(r"""
window = TrainingWindow().open()
steps = touched(40 << 20)  # 40 MiB the training steps touch, and hold
with window.excluded():
    probe = touched(96 << 20)  # what a probe between the steps touches, and frees
    del probe
print(json.dumps({"before": window.before, "peak": window.peak(), "reset": window.reset}))
""")
    assert 38 << 20 <= got["peak"] - got["before"] <= 60 << 20
