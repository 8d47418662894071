"""HTML report, compare report and table export, on hand-made run folders.

The numbers are fabricated (the renderer is under test, not the trainer), chosen so every
expected ratio and Pareto set can be worked out by hand.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from txsuite.config.record import Record
from txsuite.report import export_table, render_compare, render_report
from txsuite.report import curves as report_curves
from txsuite.report.compare import compare_findings, compare_tables
from txsuite.report.convergence_view import short_noise
from txsuite.report.encoding import choose_encoding
from txsuite.report.environment import env_diff
from txsuite.report.export import with_provenance
from txsuite.report.frame import build_cell_table, export_frame
from txsuite.report.pareto import front_with_noise, pareto_optimal
from txsuite.report.run_report import table_for
from txsuite.report.summary import fastest_finding, least_memory_finding, summarize
from txsuite.report.tableview import breakable

from txsuite.results import RunFolder

XSS = "<script>alert(1)</script>"
GiB = 2**30


def config(precision="fp32", micro_batch=4, grad_accum=1, lr=3e-4):
    return {"model": {"preset": "tiny", "n_layer": None}, "data": {"dataset": "shakespeare", "seq_len": 64},
            "train": {"steps": 20, "micro_batch": micro_batch, "grad_accum": grad_accum, "lr": lr},
            "precision": precision, "device": "cpu"}


def record(cell_id, label, cfg, repeat=0, status="ok", reason=None, run_id="r1", env=None, **metrics):
    if status == "ok":
        tok = metrics.get("tokens_per_s", 1000.0)
        base = {"tokens_per_s": tok, "samples_per_s": tok / 64, "step_time_p50_s": 64 / tok,
                "step_time_p90_s": 70 / tok, "peak_mem_bytes": 1 * GiB, "mfu": 0.1, "val_loss": 2.0,
                "loss_curve": [[s, s * 0.05, 4.0 - 0.1 * s] for s in range(20)],
                "step_times_s": [64 / tok] * 10}
        base.update(metrics)
        metrics = base
    return Record(matrix="m", run_id=run_id, cell_id=cell_id, repeat=repeat, config=cfg, status=status,
                  reason=reason, label=label, env=env or {"host": "box", "torch": "2.6.0"}, metrics=metrics)


def write_run(run_dir: Path, records, meta=None, env=None) -> Path:
    store = RunFolder(run_dir)
    for r in records:
        store.append(r)
    if meta is not None:
        store.write_json("matrix.json", meta)
    if env is not None:
        store.write_json("env.json", env)
    return run_dir


def grid_run(run_dir: Path, axes=("precision", "micro_batch"), extra=(), meta=None, env=None) -> Path:
    """A precision x micro-batch grid (or fewer/more axes), two repeats per cell."""
    values = {"precision": ["fp32", "bf16"], "micro_batch": [2, 4], "grad_accum": [1, 2]}
    combos = [{}]
    for axis in axes:
        combos = [dict(c, **{axis: v}) for c in combos for v in values[axis]]
    records = []
    for i, combo in enumerate(combos):
        label = " ".join(f"{k}={v}" for k, v in combo.items())
        speed = (2.0 if combo.get("precision") == "bf16" else 1.0) * combo.get("micro_batch", 4)
        mem = (0.5 if combo.get("precision") == "bf16" else 1.0) * combo.get("micro_batch", 4) * GiB
        for repeat in range(2):
            records.append(record(f"c{i}", label, config(**combo), repeat=repeat,
                                  tokens_per_s=1000 * speed * (1 + 0.02 * repeat), peak_mem_bytes=mem,
                                  val_loss=2.0 + 0.01 * i))
    return write_run(run_dir, [*records, *extra], meta=meta, env=env)


def html_of(run_dir: Path, tmp_path: Path) -> str:
    return render_report(run_dir, tmp_path / "report.html").read_text()


def summary_part(html: str) -> str:
    """The summary as text to search: cell names carry <wbr> line-break opportunities."""
    return html.split('id="summary"', 1)[1].split('id="charts"', 1)[0].replace("<wbr>", "")


# ---------------------------------------------------------------- Pareto

def test_pareto_front_of_hand_made_points():
    # (tokens/s: more is better, memory: less is better)
    points = [(10, 5), (8, 3), (12, 9), (7, 3), (10, 6), (12, 9), (float("nan"), 1), (5, 1), (None, 0)]
    assert pareto_optimal(points, ("max", "min")) == [True, True, True, False, False, True, False, True, False]


def test_pareto_front_respects_senses_and_rejects_unknown_ones():
    points = [(1.0, 1.0), (2.0, 2.0), (0.5, 3.0)]
    assert pareto_optimal(points, ("min", "min")) == [True, False, True]
    assert pareto_optimal(points, ("max", "max")) == [False, True, True]
    with pytest.raises(ValueError, match="'max' or 'min'"):
        pareto_optimal(points, ("up", "min"))


def test_points_off_the_front_are_judged_against_noise():
    """Point 0 is on the front; 1, 2 and 3 are dominated by it on the estimates. The verdicts
    (what paired.py would say) decide: beaten beyond noise on one objective and not worse on the
    other -> dominated; tested but never separated -> within noise; never tested -> untested."""
    points = [(10, 1), (9, 1), (8, 1), (7, 1), (float("nan"), 0)]
    verdicts = {(0, 1): ("within noise", "within noise"),
                (0, 2): ("better", "within noise"), (1, 2): ("within noise", "within noise"),
                (0, 3): ("better", "worse"), (1, 3): ("untested", "untested"), (2, 3): ("within noise", "untested")}
    place = front_with_noise(points, ("max", "min"), lambda i, j, k, tests: [verdicts[pair][k] for pair in zip(i, j)])
    assert place == ["front", "within noise", "dominated", "within noise", None]
    untested = front_with_noise(points, ("max", "min"), lambda i, j, k, tests: ["untested"] * len(i))
    assert untested == ["front", "untested", "untested", "untested", None]
    half = front_with_noise(points, ("max", "min"), lambda i, j, k, tests: [("better", "untested")[k]] * len(i))
    assert half == ["front", "within noise", "within noise", "within noise", None]  # lighter, speed untested


def three_speed_run(run_dir: Path, speeds: dict[str, list[float]]) -> Path:
    """Cells a, b, c ... with these tokens/s per round and the same 1 GiB peak; a is the reference."""
    records = [record(cid, f"cell {cid}", config(micro_batch=2 + i), repeat, tokens_per_s=tok)
               for i, (cid, per_round) in enumerate(speeds.items()) for repeat, tok in enumerate(per_round)]
    return write_run(run_dir, records, meta={"name": "m", "baseline": "cell a"})


def test_front_and_ratio_colours_follow_the_paired_test_not_the_medians(tmp_path):
    """b is 2 % behind a on the medians but the rounds disagree: within noise of the front, an
    uncoloured speed-up. c is ~20 % behind in every round: dominated, its speed-up red. With one
    round each, nothing is tested and the summary says so."""
    run = three_speed_run(tmp_path / "run", {"a": [102, 90, 118], "b": [100, 95, 110], "c": [82, 72, 95]})
    cells = table_for(RunFolder(run).load()).cells.set_index("cell_id")
    assert cells["front"].to_dict() == {"a": "front", "b": "within noise", "c": "dominated"}
    assert cells.loc["b", "speed_verdict"] == "within noise" and cells.loc["c", "speed_verdict"] == "slower"
    assert cells.loc["c", "memory_verdict"] == "within noise"  # the same peak every round
    html = html_of(run, tmp_path)
    near = summary_part(html).split('id="near-front-cells"', 1)[1].split("</div>", 1)[0]
    assert "cell b" in near and "cell c" not in near
    cell_table = html.split('id="cell-table"', 1)[1].split("</table>", 1)[0]  # not the other metrics' table
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr[^>]*>\s*<td[^>]*>(cell [abc])<.*?</tr>", cell_table,
                                                        re.S)}
    assert "≈" in rows["cell b"] and "≈" not in rows["cell c"] and "✓" in rows["cell a"]
    assert 'class="num worse"' in rows["cell c"] and 'class="num worse"' not in rows["cell b"]

    once = three_speed_run(tmp_path / "once", {"a": [102], "b": [100], "c": [82]})
    summary = summary_part(html_of(once, tmp_path))
    assert 'id="near-front-cells"' not in summary and "not tested against noise" in summary


def test_a_cell_is_dominated_only_when_its_whole_family_of_tests_allows_it(tmp_path):
    """b trails a by 7-13 % over three rounds: separated at 95 % (t = 5.8 > 4.30), so its speed-up
    is coloured, but not at 97.5 % (< 6.2), the level each of the two tests that could make it
    dominated is made at; it stays within noise of the front."""
    a = [100.0, 120.0, 90.0]
    b = [tok / math.exp(d) for tok, d in zip(a, (0.07, 0.10, 0.13))]
    run = three_speed_run(tmp_path / "run", {"a": a, "b": b})
    cells = table_for(RunFolder(run).load()).cells.set_index("cell_id")
    assert cells.loc["b", "speed_verdict"] == "slower"
    assert cells.loc["b", "front"] == "within noise"


def test_peak_memory_differences_below_its_resolution_are_not_called(tmp_path):
    """Peak memory barely moves between repetitions: a steady 0.04 % (what equal cells showed)
    passes the t test but is below the 0.1 % resolution; a steady 0.5 % is a difference."""
    def lightest(excess):
        records = [record(cid, f"cell {cid}", config(micro_batch=2 + i), repeat, tokens_per_s=tok,
                          peak_mem_bytes=GiB * (1 + excess * i) + 4096 * repeat)
                   for i, cid in enumerate("ab") for repeat, tok in enumerate((100, 110, 95))]
        table = table_for(RunFolder(write_run(tmp_path / f"run{excess}", records)).load())
        return least_memory_finding(table), table.cells.set_index("cell_id").loc["b", "memory_verdict"]
    card, verdict = lightest(0.0004)
    assert card.what == "Least memory: not separated" and verdict == "within noise"
    card, verdict = lightest(0.005)
    assert card.what == "Least memory" and "beyond noise" in card.detail and verdict == "heavier"


# ---------------------------------------------------------------- run report

def test_report_is_self_contained_escaped_and_has_charts(tmp_path):
    extra = [
        record("xss", XSS, config("fp16", 8), status="skipped", reason="fp16 needs <cuda> & a GPU"),
        record("bad", "precision=fp32 micro_batch=64", config("fp32", 64), status="oom",
               reason="CUDA out of memory. Tried to allocate 8.00 GiB\nTraceback (most recent call last):\n  boom"),
    ]
    meta = {"name": "prec<ision>", "description": f"desc {XSS}", "axes": {"precision": ["fp32", "bf16"]}}
    run = grid_run(tmp_path / "run", extra=extra, meta=meta, env={"host": "box", "cpu": "Xeon"})
    html = html_of(run, tmp_path)

    assert html.count("<svg") >= 4
    for attr in re.findall(r'(?:src|href)\s*=\s*["\']?([^"\'\s>]+)', html, flags=re.I):
        assert not attr.lower().startswith(("http:", "https:", "//")), attr
    assert "<link" not in html and not re.search(r"<script[^>]+src", html) and "@import" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html
    assert "prec&lt;ision&gt;" in html and "&lt;cuda&gt; &amp; a GPU" in html
    for key in ("pareto", "ratios", "loss", "quality", "heatmap", "mfu"):
        assert f'data-chart="{key}"' in html, key
    assert 'data-chart-skipped="energy"' in html  # no energy measured: a note, no chart
    assert 'class="data sortable"' in html and "data-tables-sortable" in html


def test_summary_names_best_cells_pareto_set_and_every_problem(tmp_path):
    extra = [
        record("oom", "precision=fp32 micro_batch=64", config("fp32", 64), status="oom",
               reason="CUDA out of memory <tried 8 GiB>\nlog line 1\nlog line 2"),
        record("hang", "precision=fp32 micro_batch=32", config("fp32", 32), status="timeout",
               reason="no result after 600 s; the cell's process group was killed"),
        record("skip", "precision=fp8 micro_batch=4", config("fp8", 4), status="skipped",
               reason="fp8 training is not implemented"),
        record("c0", "precision=fp32 micro_batch=2", config("fp32", 2), repeat=2, status="failed",
               reason="the worker exited with code 1 before writing a result"),
    ]
    run = grid_run(tmp_path / "run", extra=extra)
    summary = summary_part(html_of(run, tmp_path))
    assert "CUDA out of memory &lt;tried 8 GiB&gt;" in summary
    assert "log line 2" in summary  # the log tail is there, folded
    assert "no result after 600 s" in summary
    assert "fp8 training is not implemented" in summary
    assert "1 of 3 repeats" in summary and "the worker exited with code 1" in summary
    # bf16 micro_batch=4 is fastest; bf16 micro_batch=2 lightest; both are the Pareto set.
    table = table_for(RunFolder(run).load())
    front = set(table.cells.loc[table.cells["pareto"], "label"])
    assert front == {"precision=bf16 micro_batch=2", "precision=bf16 micro_batch=4"}
    pareto_line = summary.split('id="pareto-cells"', 1)[1].split("</div>", 1)[0]
    assert all(label in pareto_line for label in front)
    assert "precision=fp32" not in pareto_line
    fastest = summary.split("Fastest", 1)[1].split("</div></div>", 1)[0]
    assert "precision=bf16 micro_batch=4" in fastest


def test_fastest_is_named_only_when_its_lead_is_beyond_noise_paired_by_round(tmp_path):
    """Rounds move together (the machine's state of that stretch): a 2 % lead that the rounds do
    not back is a tie, named as one; a lead in every round is the fastest; with one repetition
    per cell the card says it is untested. Least memory is tested the same way."""
    def table(speeds_a, speeds_b):
        records = [record(cid, f"cell {cid}", config(), repeat, tokens_per_s=tok)  # the same 1 GiB peak each
                   for cid, speeds in (("a", speeds_a), ("b", speeds_b)) for repeat, tok in enumerate(speeds)]
        return table_for(RunFolder(write_run(tmp_path / f"run{speeds_a[0]}-{len(speeds_a)}", records)).load())

    def fastest(speeds_a, speeds_b):
        return fastest_finding(table(speeds_a, speeds_b))
    tie = fastest([102, 90, 118], [100, 95, 110])  # a leads by ~2 %, rounds disagree
    assert tie.what == "Fastest: not separated" and tie.cell == "cell a, cell b" and "within noise" in tie.detail
    lightest = least_memory_finding(table([101, 91, 119], [100, 95, 110]))
    assert lightest.what == "Least memory: not separated"  # equal peaks: no lighter cell
    lead = fastest([120, 100, 140], [100, 84, 118])  # a leads by ~19 % in every round
    assert lead.what == "Fastest" and lead.cell == "cell a" and "beyond noise" in lead.detail
    once = fastest([120], [100])
    assert once.what == "Fastest" and "not tested against noise" in once.detail
    # a tie says what more repetitions would tell, projected from the run's noise: a steady 6 %
    # lead in noisy rounds wants a few more; a 2 % lead in rounds that disagree, more than ten
    steady = fastest([106, 118, 96], [100, 108, 93])
    assert steady.what == "Fastest: not separated" and "`repeats: " in steady.detail and "a projection" in steady.detail
    assert "more than 10 repetitions" in tie.detail


def test_speedup_and_memory_ratio_against_the_named_reference(tmp_path):
    records = []
    for repeat, (tok_a, tok_b) in enumerate([(100, 50), (130, 55), (110, 60)]):
        records.append(record("a", "precision=fp32", config("fp32"), repeat, tokens_per_s=tok_a, peak_mem_bytes=4 * GiB))
        records.append(record("b", "precision=bf16", config("bf16"), repeat, tokens_per_s=tok_b, peak_mem_bytes=2 * GiB))
    run = write_run(tmp_path / "run", records, meta={"name": "m", "baseline": "precision=bf16"})
    cells = table_for(RunFolder(run).load()).cells.set_index("cell_id")
    assert cells.loc["b", "is_reference"] and not cells.loc["a", "is_reference"]
    # the engine's estimate: the geometric mean of the rounds' ratios, with its 95 % interval
    rounds = [100 / 50, 130 / 55, 110 / 60]
    assert cells.loc["a", "speedup"] == pytest.approx(math.prod(rounds) ** (1 / 3))
    assert cells.loc["a", "speedup_lo"] < min(rounds) and cells.loc["a", "speedup_hi"] > max(rounds)
    assert cells.loc["a", "speed_verdict"] == "faster" and cells.loc["a", "speedup_lo"] > 1
    assert cells.loc["a", "mem_ratio"] == pytest.approx(2.0)
    assert cells.loc["b", ["speedup", "speedup_lo", "speedup_hi"]].tolist() == [1.0, 1.0, 1.0]
    html = html_of(run, tmp_path)
    assert "2.05×" in html

    # By cell id as well; an unknown baseline falls back to the first cell and says so.
    by_id = build_cell_table(RunFolder(run).records(), reference="b").cells.set_index("cell_id")
    assert by_id.loc["a", "speedup"] == pytest.approx(math.prod(rounds) ** (1 / 3))
    RunFolder(run).write_json("matrix.json", {"name": "m", "baseline": "precision=tf32"})
    fallback = table_for(RunFolder(run).load())
    assert fallback.reference == "a" and "matches no cell" in fallback.reference_note
    assert "matches no cell" in summary_part(html_of(run, tmp_path))


def test_a_ratio_and_its_colour_come_from_one_comparison(tmp_path):
    """The reference ran in slow states of the machine (its probes 1.25x their best), the other
    cell in good ones: as measured the cell's median is 5 % above the reference's, brought to the
    best state it is 16 % below. The ratio shown is the one the verdict is about, below 1 and
    called slower, not 1.05x coloured slower; a cell with one round keeps the measured ratio."""
    records = []
    for repeat, (tok_a, tok_b) in enumerate([(105, 100), (104, 99), (106, 101)]):
        records.append(record("a", "precision=fp32", config("fp32"), repeat, tokens_per_s=tok_a,
                              probe_steps_s=0.010, probe_best_s=0.010))
        records.append(record("b", "precision=bf16", config("bf16"), repeat, tokens_per_s=tok_b,
                              probe_steps_s=0.0125, probe_best_s=0.010))
    records.append(record("c", "precision=fp16", config("fp16"), 0, tokens_per_s=80))
    run = write_run(tmp_path / "run", records, meta={"name": "m", "baseline": "precision=bf16"})
    cells = table_for(RunFolder(run).load()).cells.set_index("cell_id")
    assert cells.loc["a", "tokens_per_s"] / cells.loc["b", "tokens_per_s"] == pytest.approx(105 / 100)
    assert cells.loc["a", "speedup"] == pytest.approx(1.05 / 1.25, rel=0.01)
    assert cells.loc["a", "speed_verdict"] == "slower" and cells.loc["a", "speedup_hi"] < 1
    assert cells.loc["c", "speedup"] == pytest.approx(80 / 100) and cells.loc["c", "speed_verdict"] == "untested"
    # the Fastest card leads with the cell the comparisons are about: b, brought to the best state
    card = fastest_finding(table_for(RunFolder(run).load()))
    assert card.cell_id == "b" and card.what == "Fastest: not separated"  # c's one round is untested
    assert "the other reaches 0.64×" in card.detail  # c's one round: 80 / (100 x 1.25); a is slower beyond noise


def test_cards_under_a_busy_machine_say_why_their_speed_is_untested(tmp_path):
    """Every repetition ran while the machine was many times slower than its best (a neighbour on
    the cores): the speed verdicts are untested, and the cards say that the slow states were left
    out (not "one repetition per cell") and mark the medians' speed ratio untested, while memory,
    which the machine's state does not move, is still compared."""
    records = []
    for repeat in (0, 1):
        busy = {"probe_before_s": 0.20, "probe_after_s": 0.30, "probe_best_s": 0.010}
        records.append(record("a", "precision=fp32", config("fp32"), repeat, tokens_per_s=50 + repeat,
                              train_mem_bytes=(200 + repeat) * 2 ** 20, **busy))
        records.append(record("b", "precision=bf16", config("bf16"), repeat, tokens_per_s=48 - repeat,
                              train_mem_bytes=(100 + repeat) * 2 ** 20, **busy))
        records.append(record("c", "precision=fp16", config("fp16"), repeat, tokens_per_s=40,
                              train_mem_bytes=(150 + repeat) * 2 ** 20, **busy))
    run = write_run(tmp_path / "run", records, meta={"name": "m", "baseline": "precision=fp32"})
    summary = summarize(table_for(RunFolder(run).load()))
    fastest = next(f for f in summary.findings if f.what.startswith("Fastest"))
    assert "6 repetitions measured while the machine ran over 2x slower than its best left out" in fastest.detail
    assert "one repetition per cell" not in fastest.detail
    lightest = next(f for f in summary.findings if f.what.startswith("Least memory"))
    assert lightest.cell_id == "b" and "lighter than every other cell beyond noise" in lightest.detail
    assert "the reference's speed (untested) and 0.50× its memory" in lightest.detail
    assert "its memory (untested)" not in lightest.detail


@pytest.mark.parametrize("axes, drawn", [
    (("precision",), False),
    (("precision", "micro_batch"), True),
    (("precision", "micro_batch", "grad_accum"), False),
])
def test_heatmap_only_when_exactly_two_axes_vary(tmp_path, axes, drawn):
    html = html_of(grid_run(tmp_path / "run", axes=axes), tmp_path)
    assert ('data-chart="heatmap"' in html) is drawn
    assert ('data-chart-skipped="heatmap"' in html) is not drawn


def test_axes_are_read_from_the_records_without_matrix_json(tmp_path):
    run = grid_run(tmp_path / "run", axes=("precision", "grad_accum"))
    table = table_for(RunFolder(run).load())
    assert table.axes == ["precision", "train.grad_accum"]
    assert table.fixed["train.micro_batch"] == 4 and table.fixed["model.preset"] == "tiny"
    assert "model.n_layer" in table.fixed  # None-valued keys are fixed too, not axes


def test_axes_follow_the_order_the_matrix_declares(tmp_path):
    # matrix.json is written with sorted keys, so declaration order comes from the labels, which
    # the matrix writes in order; a mapping-valued axis (batch.yaml) keeps its sub-key order.
    records = [record(f"c{i}", f"train={{micro_batch: {mb}, grad_accum: {ga}}} precision={p}",
                      config(p, mb, ga)) for i, (mb, ga, p) in enumerate([(8, 1, "fp32"), (4, 2, "bf16")])]
    meta = {"name": "m", "axes": {"precision": ["fp32", "bf16"],
                                  "train": [{"grad_accum": 1, "micro_batch": 8}, {"grad_accum": 2, "micro_batch": 4}]}}
    run = write_run(tmp_path / "run", records, meta=meta)
    assert table_for(RunFolder(run).load()).axes == ["train.micro_batch", "train.grad_accum", "precision"]
    swapped = [record(f"c{i}", f"train.micro_batch={mb} precision={p}", config(p, mb))
               for i, (mb, p) in enumerate([(8, "fp32"), (4, "bf16")])]
    assert build_cell_table(swapped).axes == ["train.micro_batch", "precision"]


def test_energy_chart_only_when_energy_was_measured(tmp_path):
    run = write_run(tmp_path / "run", [
        record("a", "precision=fp32", config("fp32"), energy_per_token_j=4e-4),
        record("b", "precision=bf16", config("bf16"), energy_per_token_j=2e-4),
    ])
    html = html_of(run, tmp_path)
    chart = html.split('data-chart="energy"', 1)[1].split("</figure>", 1)[0]
    assert "<svg" in chart and "200 µJ" in chart and "400 µJ" in chart


def test_report_of_a_run_with_no_measurements_still_renders(tmp_path):
    run = write_run(tmp_path / "run", [
        record("a", "precision=fp8", config("fp8"), status="skipped", reason="no fp8 here"),
        record("b", "precision=fp16", config("fp16"), status="failed", reason="boom"),
    ])
    html = html_of(run, tmp_path)
    assert "<svg" not in html
    assert 'data-chart-skipped="pareto"' in html and 'data-chart-skipped="loss"' in html
    assert "no fp8 here" in summary_part(html) and "boom" in summary_part(html)


def test_diverged_cell_curve_is_drawn_up_to_where_it_stopped(tmp_path):
    diverged = record("d", "precision=fp16", config("fp16"), status="diverged", reason="loss became NaN at step 7",
                      loss_curve=[[0, 0.0, 4.0], [5, 0.3, 9.0], [7, 0.4, float("nan")]])
    run = write_run(tmp_path / "run", [record("a", "precision=fp32", config("fp32")), diverged])
    table = table_for(RunFolder(run).load())
    curves = report_curves.collect(table.cells, table.repeats, "loss_curve")
    assert curves.diverged == {"d"}
    assert curves.frame[curves.frame["cell"] == "d"]["step"].tolist() == [0, 5]  # the NaN point is dropped
    assert "loss became NaN" in summary_part(html_of(run, tmp_path))


def chart_of(html: str, key: str) -> str:
    return html.split(f'data-chart="{key}"', 1)[1].split("</figure>", 1)[0]


def test_loss_curves_that_coincide_are_drawn_striped_and_named(tmp_path):
    """fp32 and bf16 that train the same curve would hide each other: they are drawn as one line
    striped in both colours and the chart's note names them; a cell whose curve differs is not."""
    curve = [[s, s * 0.05, 4.0 - 0.1 * s] for s in range(20)]
    records = [record("a", "precision=fp32", config("fp32"), loss_curve=curve),
               record("b", "precision=bf16", config("bf16"), loss_curve=[[s, w / 2, v + 1e-4] for s, w, v in curve]),
               record("c", "precision=fp16", config("fp16"), loss_curve=[[s, w, v + 0.5] for s, w, v in curve])]
    chart = chart_of(html_of(write_run(tmp_path / "run", records), tmp_path), "loss")
    note = chart.split('class="note">', 1)[1].split("</div>", 1)[0]
    assert "striped" in note and "precision=fp32 and precision=bf16" in note and "fp16" not in note
    assert chart.count("stroke-dasharray") == 2  # the two striped lines; fp16's is solid


def test_an_axis_that_neither_colour_nor_line_style_shows_gets_a_row_of_panels_per_value(tmp_path):
    """One axis is the colour, another the line style: the third would give two cells one look, so
    the loss curves have a row of panels per value of it."""
    run = grid_run(tmp_path / "run", axes=("precision", "micro_batch", "grad_accum"))
    table = table_for(RunFolder(run).load())
    enc = choose_encoding(table.ok, table.measured_axes)
    third = (set(table.measured_axes) - {enc.hue_key, enc.style_key}).pop()
    assert report_curves.facet_axis(table.cells, table.measured_axes, enc) == third
    chart = chart_of(html_of(run, tmp_path), "loss")
    name = third.rsplit(".", 1)[-1]
    assert all(f"{name} = {v}" in chart for v in table.cells[third].unique())
    two = table_for(RunFolder(grid_run(tmp_path / "two")).load())
    assert report_curves.facet_axis(two.cells, two.measured_axes, choose_encoding(two.ok, two.measured_axes)) is None


def test_a_log_step_time_axis_labels_1_2_and_5_times_each_power_of_ten(tmp_path):
    records = [record("a", "precision=fp32", config("fp32"), step_times_s=[0.3, 0.4, 0.5] * 4),
               record("b", "precision=bf16", config("bf16"), step_times_s=[2.0, 2.5, 3.0] * 4)]
    chart = chart_of(html_of(write_run(tmp_path / "run", records), tmp_path), "steps")
    texts = {t.strip() for t in re.findall(r"<text[^>]*>([^<]*)</text>", chart)}  # text stays <text>
    assert {"500", "1,000", "2,000"} <= texts


def test_cell_names_wrap_between_their_names_never_inside_a_word(tmp_path):
    assert breakable("memory.activation_checkpointing=none") == \
        '<span class="w">memory.<wbr>activation_<wbr>checkpointing=<wbr>none</span>'
    assert breakable("lr: 0.003") == "lr: 0.003"  # no break inside a number
    assert breakable(XSS) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    run = write_run(tmp_path / "run", [record("a", "memory.activation_checkpointing=none", config())])
    table = html_of(run, tmp_path).split('id="cell-table"', 1)[1].split("</table>", 1)[0]
    assert "memory.<wbr>activation_<wbr>checkpointing=<wbr>none" in table
    assert 'data-sort="memory.activation_checkpointing=none"' in table  # sorting reads the plain text
    markdown = export_table(run, tmp_path / "t.md", "markdown").read_text()
    assert "<wbr>" not in markdown and "memory.activation_checkpointing=none" in markdown


def test_the_noise_used_is_a_few_words_with_the_sentence_as_tooltip_and_footnote(tmp_path):
    assert short_noise("seeds (t interval over 3 seeds, paired)") == "3 seeds, paired"
    assert short_noise("seeds (t interval over 3 seeds, paired) at the common budget of 102k tokens (one cell "
                       "saw 2x as many)") == "3 seeds, paired, at 102k tokens"
    assert short_noise("one seed; training noise from the run's 2 pair(s) of cells with several seeds (4 degrees "
                       "of freedom)") == "1 seed + the run's seed noise"
    section = html_of(grid_run(tmp_path / "run"), tmp_path).split('<section id="convergence">', 1)[1]
    section = section.split("</section>", 1)[0]  # one seed per cell, no target
    sentence = "one seed: training noise is not measured, so one seed cannot tell (use seeds: 3)"
    assert f'<td class="small noise" title="{sentence}" data-sort="{sentence}">1 seed: not measured</td>' in section
    assert 'id="noise-used"' in section and sentence in section.split('id="noise-used"', 1)[1]
    assert "tokens to target" not in section.split("</thead>", 1)[0]  # a column of dashes only is left out


# ---------------------------------------------------------------- compare

def compare_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_run(tmp_path / "a", [
        record("c1", "precision=fp32", config("fp32"), tokens_per_s=100, peak_mem_bytes=4 * GiB, val_loss=2.0),
        record("c2", "precision=bf16", config("bf16"), tokens_per_s=200, peak_mem_bytes=2 * GiB, val_loss=2.1),
        record("c3", "precision=fp16", config("fp16"), tokens_per_s=300, peak_mem_bytes=2 * GiB),
    ], env={"host": "box-a", "cpu": "Xeon", "packages": {"torch": "2.6.0"}})
    b = write_run(tmp_path / "b", [
        record("c1", "precision=fp32", config("fp32"), run_id="r2", tokens_per_s=200, peak_mem_bytes=2 * GiB, val_loss=2.2),
        # Same label, different cell id (e.g. a default changed between commits): matched by label.
        record("c2-new", "precision=bf16", config("bf16", lr=1e-3), run_id="r2", tokens_per_s=100,
               peak_mem_bytes=2 * GiB, val_loss=2.1),
        record("c4", "precision=tf32", config("tf32"), run_id="r2", tokens_per_s=50),
    ], env={"host": "box-b", "cpu": "Xeon", "packages": {"torch": "2.7.0"}})
    return a, b


def test_compare_matches_cells_and_computes_b_over_a(tmp_path):
    a, b = compare_runs(tmp_path)
    c = compare_tables(table_for(RunFolder(a).load()), table_for(RunFolder(b).load()))
    pairs = c.pairs.set_index("cell_id")
    assert pairs.loc["c1", "tokens_per_s_ratio"] == pytest.approx(2.0)
    assert pairs.loc["c1", "peak_mem_bytes_ratio"] == pytest.approx(0.5)
    assert pairs.loc["c1", "val_loss_ratio"] == pytest.approx(1.1)
    assert pairs.loc["c2", "matched_by"] == "label" and pairs.loc["c2", "tokens_per_s_ratio"] == pytest.approx(0.5)
    assert c.only_a == ["precision=fp16 (c3)"] and c.only_b == ["precision=tf32 (c4)"]


def test_compare_calls_a_change_only_beyond_how_much_a_whole_run_moves(tmp_path):
    """Two repetitions a side, every one of B faster than every one of A: a 1.3x throughput ratio
    is inside what a whole run's level moves between two runs of unchanged code (the run-noise
    prior), so it is within noise and the summary says no change; 2x is faster beyond noise.
    The fork server's pid is no environment difference."""
    def runs(name, ratio, pid_b=2463):
        a = write_run(tmp_path / name / "a", [record("c1", "precision=fp32", config(), repeat=r, tokens_per_s=t,
                                                     env={"launcher": "fork server (server pid 2463)"})
                                              for r, t in enumerate((100, 102))])
        b = write_run(tmp_path / name / "b", [record("c1", "precision=fp32", config(), repeat=r, run_id="r2",
                                                     tokens_per_s=t * ratio,
                                                     env={"launcher": f"fork server (server pid {pid_b})"})
                                              for r, t in enumerate((100, 102))])
        comparison = compare_tables(table_for(RunFolder(a).load()), table_for(RunFolder(b).load()))
        return comparison.pairs.loc[0, "tokens_per_s_verdict"], compare_findings(comparison), a, b
    verdict, findings, a, b = runs("moved", 1.3, pid_b=9999)
    assert verdict == "within noise"
    assert any(line.startswith("No change beyond noise") for line in findings), findings
    assert not [row.key for row in env_diff(RunFolder(a).load(), RunFolder(b).load()) if row.differs]
    verdict, findings, _, _ = runs("changed", 2.0)
    assert verdict == "faster"
    assert any(line.startswith("tokens/s: faster beyond noise in 1 cell") for line in findings), findings


def test_compare_report_shows_ratios_unmatched_cells_and_env_differences(tmp_path):
    a, b = compare_runs(tmp_path)
    html = render_compare(a, b, tmp_path / "cmp.html").read_text()
    assert html.count("<svg") >= 2
    assert "2.00×" in html and "0.50×" in html
    unmatched = html.split('id="unmatched"', 1)[1].split('id="environment"', 1)[0]
    assert "precision=fp16 (c3)" in unmatched and "precision=tf32 (c4)" in unmatched
    env = html.split('id="environment"', 1)[1]
    assert re.search(r'<tr class="diff"><td>packages\.torch</td><td>2\.6\.0</td><td>2\.7\.0</td>', env)
    assert re.search(r"<tr><td>cpu</td><td>Xeon</td><td>Xeon</td>", env)  # equal rows are not highlighted
    assert "matched by label" in html


# ---------------------------------------------------------------- export

def test_exports_round_trip_and_reject_unknown_formats(tmp_path):
    extra = [record("bad", "precision=fp32 micro_batch=64 | wide", config("fp32", 64), status="oom", reason="OOM")]
    run = grid_run(tmp_path / "run", extra=extra, meta={"name": "m", "axes": {}})
    loaded = RunFolder(run).load()
    expected = with_provenance(export_frame(table_for(loaded)), loaded)

    csv = pd.read_csv(export_table(run, tmp_path / "t.csv", "csv"))
    unknown = ["txsuite_commit", "host"]  # these test records carry neither: None in the frame, NaN in csv
    pd.testing.assert_frame_equal(csv.drop(columns=unknown), expected.drop(columns=unknown), check_dtype=False)
    parquet = pd.read_parquet(export_table(run, tmp_path / "t.parquet", "parquet"))
    pd.testing.assert_frame_equal(parquet, expected, check_dtype=False)
    rows = json.loads(export_table(run, tmp_path / "t.json", "json").read_text())
    assert len(rows) == len(expected) and rows[0]["matrix"] == "m" and rows[0]["run_id"] == loaded.run_id
    assert list(csv.columns[:4]) == ["matrix", "run_id", "txsuite_commit", "host"]  # rows of many runs stack
    assert {"tokens_per_s", "peak_mem_bytes", "speedup", "pareto", "precision", "train.micro_batch",
            "speed_verdict", "memory_verdict", "quality_verdict"} <= set(csv)

    text = export_table(run, tmp_path / "t.md", "markdown").read_text()
    cells_md, quality_md = text.split("\n## Convergence\n\n")  # two tables: the cells, then the quality aggregates
    origin, md = cells_md.splitlines()[0], cells_md.splitlines()[2:]
    assert origin.startswith(f"matrix `m`, run_id `{loaded.run_id}`")  # where the pasted table came from
    assert md[0].startswith("| cell | status |") and set(md[1]) <= set("|-: ")
    assert len(md) == 2 + len(expected)
    assert any("micro_batch=64 \\| wide" in line for line in md)
    assert all(line.count("|") - line.count("\\|") == md[0].count("|") for line in md)
    quality_lines = quality_md.splitlines()
    assert quality_lines[0].startswith("| cell | seeds | val_loss_mean |")
    assert len(quality_lines) == 2 + int(expected["val_loss_mean"].notna().sum())

    with pytest.raises(ValueError, match="csv, parquet, json, markdown"):
        export_table(run, tmp_path / "t.xlsx", "xlsx")


def test_markdown_escapes_html_in_labels(tmp_path):
    run = write_run(tmp_path / "run", [record("x", XSS, config())])
    text = export_table(run, tmp_path / "t.md", "markdown").read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text


# ---------------------------------------------------------------- headless browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_opens_in_a_headless_browser_without_errors(tmp_path):
    extra = [record("xss", XSS, config("fp16", 8), status="skipped", reason="no fp16")]
    run = grid_run(tmp_path / "run", extra=extra)
    page = render_report(run, tmp_path / "report.html")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--enable-logging=stderr", "--v=0"]

    def browse(*extra_flags: str) -> subprocess.CompletedProcess:
        profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
        try:
            return subprocess.run([*flags, f"--user-data-dir={profile}", *extra_flags, page.as_uri()],
                                  capture_output=True, text=True, timeout=45)
        except subprocess.TimeoutExpired:
            pytest.fail("the page never finished loading (a script dialog such as alert() blocks headless chromium)")

    dom = browse("--dump-dom")
    sortable = page.read_text().count('<table class="data sortable"')  # cells, convergence verdicts
    assert sortable >= 2
    # the table script ran and made every one of them sortable
    assert f'data-tables-sortable="{sortable}"' in dom.stdout, dom.stderr[-2000:]
    assert "<script>alert(1)" not in dom.stdout
    shot = tmp_path / "shot.png"
    result = browse(f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
    assert shot.exists() and shot.stat().st_size > 10_000
    for log in (dom.stderr, result.stderr):
        errors = [line for line in log.splitlines() if "Uncaught" in line or re.search(r"CONSOLE.*(error|Error)", line)]
        assert not errors, errors


WIDTHS_JS = """<script>window.addEventListener("load", function () {
  var out = Array.prototype.map.call(document.querySelectorAll(".table-scroll"), function (box) {
    var table = box.querySelector("table");
    return (table.id || table.className.replace(/ /g, ".")) + " " + box.clientWidth + " " + box.scrollWidth; });
  var pre = document.createElement("pre"); pre.id = "widths"; pre.textContent = out.join("\\n");
  document.body.appendChild(pre); });</script>"""


def table_widths(page: Path, tmp_path: Path, window: str) -> dict[str, tuple[int, int]]:
    """table id -> (visible, full) width of its scroll box, laid out by headless chromium."""
    probe = page.with_name(page.stem + "-widths.html")
    probe.write_text(page.read_text().replace("</body>", WIDTHS_JS + "</body>"))
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--hide-scrollbars", f"--user-data-dir={tmp_path / ('widths-' + probe.stem)}",
                           f"--window-size={window}", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=45)
    lines = re.search(r'<pre id="widths">(.*?)</pre>', done.stdout, re.S).group(1).splitlines()
    return {name: (int(visible), int(full)) for name, visible, full in (line.split() for line in lines)}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_the_tables_fit_a_1400_px_window_without_sideways_scrolling(tmp_path):
    """Every measured metric of a real CPU run (25 columns as one table needed 2,564 px), long
    names, and compare's three columns per metric, at 1,400 px."""
    more = {"train_mem_bytes": 0.3 * GiB, "optimizer_state_bytes": 25e6, "val_ppl": 16.1, "cell_overhead_s": 4.9,
            "machine_slowdown": 20.7, "host_page_faults_per_step": 2060, "step_flops": 19.7e9, "step_ops": 447,
            "step_alloc_bytes": 190e6}
    records = [record(f"c{i}", f"precision={p} memory.activation_checkpointing={c}", config(p), repeat=r,
                      tokens_per_s=1000 + 100 * i + r, **more)
               for i, (p, c) in enumerate([(p, c) for p in ("fp32", "bf16", "bf16-pure") for c in ("none", "full")])
               for r in range(2)]
    run = write_run(tmp_path / "run", records)
    widths = table_widths(render_report(run, tmp_path / "report.html"), tmp_path, "1400,2000")
    assert {"cell-table", "diagnostics-table", "convergence-table"} <= set(widths)
    assert all(full <= visible for visible, full in widths.values()), widths
    a, b = compare_runs(tmp_path)
    widths = table_widths(render_compare(a, b, tmp_path / "cmp.html"), tmp_path, "1400,2000")
    assert all(full <= visible for visible, full in widths.values()), widths


def test_the_report_checks_each_cells_prediction_against_what_it_measured(tmp_path):
    predicted = {"predicted_tokens_per_s": 1100.0, "predicted_tokens_per_s_low": 1000.0,
                 "predicted_tokens_per_s_high": 1210.0, "predicted_train_mem_bytes": 3 * 2**20,
                 "predicted_params_bytes": 2 * 2**20, "predicted_other_bytes": 2**20,
                 "predicted_speed_source": "fitted on 8 repetitions of this host"}
    records = [record("c0", "precision=fp32", config(), repeat=r, tokens_per_s=1000.0, train_mem_bytes=4 * 2**20,
                      **predicted) for r in range(2)]
    html = html_of(write_run(tmp_path / "run", records), tmp_path)
    section = html[html.index('id="predictions"'):html.index('id="matrix"')]
    assert "fitted on 8 repetitions of this host" in section
    assert "+10%" in section and "-25%" in section  # 1100 predicted for 1000 measured; 3 MiB for 4
    assert "Median absolute error of tokens/s: 10%" in section
    assert 'id="predictions"' not in html_of(write_run(tmp_path / "plain", [record("c0", "x", config())]), tmp_path)
    assert "Memory by role" not in section  # no record measured its roles


def test_the_report_sets_each_predicted_memory_part_beside_the_role_measured_at_the_peak(tmp_path):
    predicted = {"predicted_tokens_per_s": 1100.0, "predicted_train_mem_bytes": 8 * 2**20,
                 "predicted_params_bytes": 2 * 2**20, "predicted_grads_bytes": 2 * 2**20,
                 "predicted_optimizer_bytes": 2 * 2**20, "predicted_activations_bytes": 2 * 2**20}
    measured = {"tensors_at_peak_bytes": 9 * 2**20, "params_at_peak_bytes": 2 * 2**20, "grads_at_peak_bytes": 2**20,
                "optimizer_at_peak_bytes": 2 * 2**20, "activations_at_peak_bytes": 4 * 2**20,
                "other_at_peak_bytes": 0}
    records = [record("c0", "precision=fp32", config(), repeat=r, tokens_per_s=1000.0, train_mem_bytes=10 * 2**20,
                      **predicted, **measured) for r in range(2)]
    html = html_of(write_run(tmp_path / "run", records), tmp_path)
    section = html[html.index('id="predictions"'):html.index('id="matrix"')]
    assert "Memory by role" in section
    assert "predicted 2.00 MiB, -50%" in section  # activations: 2 MiB predicted, 4 measured
    assert "predicted 2.00 MiB, +100%" in section  # gradients: 2 predicted, 1 live at the peak
    assert "The model is worst on gradients" in section


def test_a_large_runs_report_says_what_it_is_doing(tmp_path):
    from txsuite.report.run_report import PROGRESS_FROM_CELLS, render_run
    records = [record(f"c{i}", f"train.lr={i}", config(lr=1e-4 * (i + 1))) for i in range(PROGRESS_FROM_CELLS + 1)]
    heard = []
    render_run(write_run(tmp_path / "run", records), tmp_path / "r.html", on_progress=heard.append)
    assert heard[0].startswith(f"report: read {PROGRESS_FROM_CELLS + 1} records")
    assert any("cells" in line for line in heard) and heard[-1].startswith("report: written to")
    small = []
    render_run(write_run(tmp_path / "small", records[:3]), tmp_path / "s.html", on_progress=small.append)
    assert small == []  # a small run renders in seconds, without a word
