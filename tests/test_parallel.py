"""Data parallelism: a 2-rank DDP cell (torchrun, gloo on this CPU) trains on the same global
samples as the single-process control and must reproduce its loss curve within the noise of
fp32 reduction order, which the test measures rather than assumes."""
import textwrap

import pytest
from cli_helpers import txsuite

from suite.matrix import MatrixError, load_matrix
from suite.store import RunStore


@pytest.mark.slow
def test_ddp_two_ranks_match_the_single_process_curve(tmp_path):
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""\
        name: ddp
        fixed:
          model: {preset: tiny}
          data: {dataset: markov, seq_len: 64, symbols: 16}
          train: {steps: 10, warmup_steps: 1, micro_batch: 2, grad_accum: 2, lr: 1.0e-3}
        include:
          - {train: {micro_batch: 1, grad_accum: 4}}                       # same samples, other reduction order
          - {parallel: {engine: ddp, dp: 2}, train: {micro_batch: 2, grad_accum: 1}}
        constant: [tokens_per_step]
        """))
    out = txsuite("run", "p.yaml", "--run-id", "r", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    recs = RunStore(tmp_path / "results/ddp/r").records()
    control = next(r for r in recs if r.config["parallel"]["engine"] == "none" and r.config["train"]["micro_batch"] == 2)
    reordered = next(r for r in recs if r.config["train"]["micro_batch"] == 1)
    ddp = next(r for r in recs if r.config["parallel"]["engine"] == "ddp")
    curve = [p[2] for p in control.metrics["loss_curve"]]
    noise = max(abs(a[2] - b) for a, b in zip(reordered.metrics["loss_curve"], curve))
    gap = max(abs(a[2] - b) for a, b in zip(ddp.metrics["loss_curve"], curve))
    tolerance = 10 * noise + 8 * 1.2e-7 * max(curve)
    assert gap <= tolerance, (gap, noise, tolerance)
    assert curve[-1] < curve[0] - 0.3  # the loss fell: the comparison means something
    m = ddp.metrics
    assert m["world_size"] == 2 and len(m["per_rank_peak_mem_bytes"]) == 2
    assert m["tokens_per_s_per_device"] == pytest.approx(m["tokens_per_s"] / 2)
    assert ddp.metrics["val_loss"] == pytest.approx(control.metrics["val_loss"], abs=tolerance + 1e-6)


def test_ddp_does_not_take_tensor_or_pipeline_parallelism(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: x\nfixed:\n  parallel: {engine: ddp, dp: 1, tp: 2}\n")
    with pytest.raises(MatrixError, match="tensor/pipeline parallelism is not available"):
        load_matrix(path)
    path.write_text("name: x\nfixed:\n  parallel: {engine: fsdp, dp: 2}\n")
    with pytest.raises(MatrixError, match="engine 'fsdp' is not available.*none, ddp"):
        load_matrix(path)
