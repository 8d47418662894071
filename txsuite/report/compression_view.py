"""The report's compression section: a table of every compressed cell beside its dense
control, and a chart of quality cost against model size (numbers: txsuite.report.compression)."""
from __future__ import annotations

from typing import Any

import pandas as pd

from txsuite.report import formatting as fmt
from txsuite.report.charts import Chart
from txsuite.report.compression import COMPRESS, is_compressed
from txsuite.report.svg import plot_text, report_style, subplots, to_svg
from txsuite.report.tableview import Column, TableCell, TableView, ratio_class, sort_key, verdict_class


def compression_section(table) -> dict[str, Any] | None:
    """The report's compression table and chart; None when no cell of the run compresses."""
    cells = table.cells
    if "compress_control" not in cells or "config.compress.quantization" not in table.repeats:
        return None
    configs = table.repeats.drop_duplicates("cell_id").set_index("cell_id")
    compressed = {cid: is_compressed(configs.at[cid, COMPRESS + "quantization"],
                                     configs.at[cid, COMPRESS + "pruning"]) for cid in cells["cell_id"]}
    if not any(compressed.values()):
        return None
    rows = cells[[compressed[c] or c in set(cells["compress_control"].dropna()) for c in cells["cell_id"]]]
    return {"table": _table_view(rows, configs, compressed), "chart": _quality_vs_size(rows, compressed),
            "missing_control": [r["label"] or r["cell_id"] for _, r in rows.iterrows()
                                if compressed[r["cell_id"]] and not isinstance(r["compress_control"], str)]}


def _table_view(rows: pd.DataFrame, configs: pd.DataFrame, compressed: dict[str, bool]) -> TableView:
    columns = [Column("cell", hint="the cell id is below; 'control' marks a dense control"),
               Column("quantization"), Column("pruning"),
               Column("val loss", True, "after compression (the control: as trained)"),
               Column("Δ val loss", True, "compressed val loss minus the dense control's; > 0 is a quality cost. "
                                          "Below: ± 2 standard errors of the paired per-sequence differences on "
                                          "the same validation windows; 'within noise' when |Δ| is smaller"),
               Column("Δ perplexity", True, "perplexity minus the dense control's"),
               Column("model size", True, "parameters and buffers as stored, quantized tensors included"),
               Column("size ratio", True, "model size ÷ the dense control's"),
               Column("prefill tokens/s", True, "one forward over [4, seq_len] prompts"),
               Column("decode tokens/s", True, "greedy, one token at a time, batch 1, no KV cache"),
               Column("decode speed-up", True, "decode tokens/s ÷ the dense control's; coloured when the paired "
                                               "test over the repetitions separates it from 1 (one repetition: "
                                               "not tested, no colour)"),
               Column("sparsity", True, "zeros among the pruned weights")]
    view = TableView(columns)
    for _, row in rows.iterrows():
        cid = row["cell_id"]
        control = not compressed[cid]
        label = row["label"] or row.get("short_label") or cid
        view.rows.append([
            TableCell(label, label, "label", sub=cid + (" · control" if control else "")),
            TableCell(*[fmt.plain(configs.at[cid, COMPRESS + "quantization"])] * 2),
            TableCell(*[fmt.plain(configs.at[cid, COMPRESS + "pruning"])] * 2),
            TableCell(fmt.plain(_loss(row), 5), sort_key(_loss(row)), "num"),
            TableCell(fmt.signed(row["control_loss_delta"]), sort_key(row["control_loss_delta"]),
                 "num " + _delta_class(row["control_loss_delta"], row.get("control_loss_delta_se")),
                 sub=_noise(row["control_loss_delta"], row.get("control_loss_delta_se"))),
            TableCell(fmt.signed(row["control_ppl_delta"]), sort_key(row["control_ppl_delta"]), "num"),
            TableCell(fmt.bytes_(row["model_size_bytes"]), sort_key(row["model_size_bytes"]), "num"),
            TableCell(fmt.ratio(row["size_ratio"]), sort_key(row["size_ratio"]), "num " + ratio_class(row["size_ratio"], False)),
            TableCell(fmt.si(row["prefill_tokens_per_s"]), sort_key(row["prefill_tokens_per_s"]), "num"),
            TableCell(fmt.si(row["decode_tokens_per_s"]), sort_key(row["decode_tokens_per_s"]), "num"),
            TableCell(fmt.ratio(row["decode_speedup"]), sort_key(row["decode_speedup"]),
                 "num " + verdict_class(row.get("decode_speedup_verdict"))),
            TableCell(fmt.percent(row["sparsity_achieved"]), sort_key(row["sparsity_achieved"]), "num"),
        ])
        view.row_classes.append("reference" if control else "")
    return view


def _quality_vs_size(rows: pd.DataFrame, compressed: dict[str, bool]):
    chart = Chart("compression", "Quality cost vs model size",
                  "Each compressed cell against its dense control: validation-loss change (up is worse) "
                  "by model size relative to the control (left is smaller). Dashed lines: the control.")
    points = rows[[compressed[c] for c in rows["cell_id"]]]
    points = points[points["control_loss_delta"].notna() & points["size_ratio"].notna()]
    if points.empty:
        chart.note = "no compressed cell has both a loss delta and a size ratio against a dense control"
        return chart
    with report_style():
        fig, ax = subplots(figsize=(7.6, 4.4))
        ax.axhline(0.0, color="#222", lw=1, ls="--")
        ax.axvline(1.0, color="#222", lw=1, ls="--")
        ax.scatter(points["size_ratio"], points["control_loss_delta"], s=46, color="#3b6fb6", zorder=3)
        for _, row in points.iterrows():
            text = row.get("short_label") or row["label"] or row["cell_id"]
            ax.annotate(plot_text(str(text)), (row["size_ratio"], row["control_loss_delta"]), xytext=(6, 4),
                        textcoords="offset points", fontsize=7.5)
        ax.set_xlabel("model size ÷ dense control")
        ax.set_ylabel("Δ validation loss vs dense control")
        ax.set_xlim(0, max(1.1, float(points["size_ratio"].max()) * 1.1))
        chart.svg = to_svg(fig)
    return chart


def _loss(row: pd.Series) -> float:
    value = row["compressed_val_loss"]
    return row["val_loss"] if not fmt.is_number(value) else value


def _delta_class(value: Any, se: Any = None) -> str:
    if not fmt.is_number(value) or float(value) == 0 or _within_noise(value, se):
        return ""
    return "worse" if float(value) > 0 else "better"


def _within_noise(value: Any, se: Any) -> bool:
    return fmt.is_number(value) and fmt.is_number(se) and abs(float(value)) < 2 * float(se)


def _noise(value: Any, se: Any) -> str:
    if not fmt.is_number(se):
        return ""
    return f"± {2 * float(se):.2g}" + (" · within noise" if _within_noise(value, se) else "")
