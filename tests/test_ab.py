"""`txsuite ab`: two versions of the code in one job, from this clone (slow: a few real cells).

The base side is HEAD in a temporary worktree, the head side the working tree; both must be a
txsuite that has `plan --json` (every commit since `txsuite ab` exists)."""
import json
import subprocess
from pathlib import Path

import pytest
from cli_helpers import txsuite

REPO = Path(__file__).resolve().parents[1]
MATRIX = """\
name: abtiny
fixed:
  model: {preset: tiny, n_layer: 1}
  data: {dataset: markov, seq_len: 32}
  train: {steps: 6, warmup_steps: 2, micro_batch: 4}
  measure: {threads: 1}
axes:
  precision: [fp32]
guard: {tokens_per_s: -5%, step_flops: +0%}
"""


def _worktrees() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "worktree", "list", "--porcelain"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.startswith("worktree ")]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["--lockstep"], []], ids=["lockstep", "default"])
def test_ab_alternates_the_two_versions_and_decides_on_pairs(tmp_path, mode):
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip(reason="not a git checkout")
    (tmp_path / "m.yaml").write_text(MATRIX)
    before = _worktrees()
    out = txsuite("ab", str(tmp_path / "m.yaml"), "--base", "HEAD", "--min-rounds", "2", "--max-rounds", "2",
                  "--results-dir", str(tmp_path / "results"), "--run-id", "t", "--json", str(tmp_path / "v.json"),
                  *mode, cwd=REPO)
    assert out.returncode in (0, 1, 3), out.stdout + out.stderr
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["verdict"] == {0: "PASS", 1: "FAIL", 3: "INCONCLUSIVE"}[out.returncode]
    root = tmp_path / "results" / "ab" / "abtiny" / "t"
    assert json.loads((root / "ab.json").read_text())["rounds"] == 2
    sides = {}
    for side in ("base", "head"):
        records = [json.loads(line) for line in (root / side / "records.jsonl").read_text().splitlines()]
        assert [r["repeat"] for r in records] == [0, 1] and all(r["status"] == "ok" for r in records)
        for r in records:  # every repetition carries its machine state and its step counters
            assert r["metrics"]["machine_slowdown"] >= 1.0 and r["metrics"]["step_ops"] > 0
        sides[side] = records
    # the first side alternates from round to round (ABBA): round 0 base first, round 1 head first;
    # in lockstep (both sides have the gate) both start at once and the first step says who went first
    steps = root / "lockstep.jsonl"
    assert steps.exists() == bool(mode)  # HEAD has the lockstep gate: asked for, it is used; by default not
    if steps.exists():
        lines = [json.loads(line) for line in steps.read_text().splitlines()]
        assert [(line["round"], line["first"], line["turns"][0][0]) for line in lines] == [
            (0, "base", "base"), (1, "head", "head")]
        assert "steps in lockstep" in " ".join(verdict["notes"])
    else:
        assert "no --lockstep" in " ".join(verdict["notes"])
        assert sides["base"][0]["started_at"] <= sides["head"][0]["started_at"]
        assert sides["head"][1]["started_at"] <= sides["base"][1]["started_at"]
    flops = next(row for row in verdict["rows"] if row["metric"] == "step_flops")
    clean = not subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "txsuite"],
                               capture_output=True, text=True).stdout.strip()
    if clean:  # the same code on both sides: the counters agree exactly
        assert flops["verdict"] == "PASS" and flops["ratio"] == 1.0 and verdict["counters"] == []
    assert _worktrees() == before  # the temporary worktree is gone


def test_ab_refuses_a_ref_that_is_not_a_commit(tmp_path):
    (tmp_path / "m.yaml").write_text(MATRIX)
    out = txsuite("ab", str(tmp_path / "m.yaml"), "--base", "no-such-branch-xyz", "--results-dir", str(tmp_path),
                  cwd=REPO)
    assert out.returncode == 2 and "no-such-branch-xyz" in out.stderr and "Traceback" not in out.stderr
