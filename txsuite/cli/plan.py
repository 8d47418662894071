"""`txsuite plan`: expand and validate a matrix, print its cells and how long it will take here."""
from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from txsuite.cli.common import (OVERRIDES_HELP, UsageProblem, console, device_option, load, matrix_argument,
                                only_option, overrides_argument, this_host, yes_option)
from txsuite.config.matrix import Matrix
from txsuite.run.observed import duration_text

BIG_VOCAB = 65536  # above this, the plan checks what BPE can learn from the corpus at all


@click.command(epilog=OVERRIDES_HELP)
@matrix_argument
@overrides_argument
@device_option
@only_option
@yes_option
@click.option("--json", "as_json", is_flag=True, help="Print the planned matrix as JSON (cells with their resolved "
                                                      "configs), for other tools.")
def plan(matrix_path: str, overrides: tuple[str, ...], device: str | None, only: str | None, yes: bool,
         as_json: bool) -> None:
    """Expand and validate MATRIX; print its cells and the sweep's estimated time; run nothing."""
    from txsuite.run.runner import select

    matrix = load(matrix_path, device, yes, overrides)
    matrix.cells = select(matrix.cells, only)
    if not matrix.cells:  # as `run --only` answers: a pattern that matches nothing is a typo, not a plan
        raise UsageProblem(f"--only {only!r} matches no cell of {matrix.source}.")
    if as_json:
        click.echo(json.dumps({**matrix.to_json(), "fingerprint": matrix.fingerprint()}, default=str))
        return
    show_plan(matrix)


def show_plan(matrix: Matrix) -> None:
    """The plan's table with each cell's predicted speed and memory, its notes, what this host
    will make of the cells, and the sweep's estimated time."""
    from txsuite.run.observed import Predictor

    predictor = Predictor(this_host().gpu_name)
    console.print(plan_table(matrix, predictor))
    for note in matrix.notes:
        console.print(f"note: {note}", markup=False)
    host_notes(matrix.cells)
    model = predictor.model
    speed = (f"speed fitted on {model.speed_fitted_on} repetitions measured here" if model.speed is not None
             else "speed: the matmuls at this host's measured peak, the rest at its measured memory bandwidth "
                  "and per-operator overhead, the optimizer steps as measured here, weighed as on the reference "
                  "host (CPU) or uncorrected (GPU): no repetition measured here yet")
    memory = (f"memory fitted on {model.memory_fitted_on}" if model.memory is not None
              else "memory: the estimate, with the reference host's heap prior for CPU cells (nothing measured "
                   "here yet)")
    console.print(f"predictions: {speed}; {memory} (txsuite/measure/predict.py)", markup=False)
    estimate = predictor.sweep(matrix.cells, matrix.repetitions)
    most = predictor.sweep(matrix.cells, matrix.most_repetitions) if matrix.detect is not None else None
    console.print(estimate.describe() + (f"; about {duration_text(most.seconds)} if every round up to "
                                         f"{matrix.most_repetitions} is added" if most and most.seconds else ""),
                  markup=False)
    if matrix.search == "pareto":
        from txsuite.run.search import describe_probe
        console.print(describe_probe(matrix), markup=False, soft_wrap=True)


def host_notes(cells) -> None:
    """What this host will make of the planned cells that the plan's table does not say."""
    from txsuite.config.host import emulated_bf16_note
    from txsuite.config.spec.measure import cache_allocator_note
    for note in (emulated_bf16_note(cells, this_host()), cache_allocator_note(cells)):
        if note:
            console.print(note, soft_wrap=True, markup=False)


def _bpe_limit(cell, limits: dict[str, int]) -> int | None:
    """The most a BPE can learn from the cell's corpus, for asks above BIG_VOCAB (read once per
    corpus); None otherwise."""
    d = cell.data
    if d.tokenizer != "bpe" or (d.vocab_size or 0) <= BIG_VOCAB:
        return None
    if d.dataset not in limits:
        from txsuite.data.corpora import bpe_vocab_limit
        limits[d.dataset] = bpe_vocab_limit(d.dataset)
        if limits[d.dataset] < d.vocab_size:
            console.print(f"note: a byte-level BPE can learn at most ~{limits[d.dataset]:,} tokens from "
                          f"{d.dataset!r}; the memory estimate uses that, not the {d.vocab_size:,} asked", markup=False)
    return limits[d.dataset]


def plan_table(matrix: Matrix, predictor) -> Table:
    runs = (f"{matrix.repetitions} runs each ({matrix.seeds} seeds, {matrix.repeats} repeats: repetition r "
            f"trains with seed r mod {matrix.seeds})" if matrix.seeds > 1 else f"{matrix.repeats} repeats")
    if matrix.detect is not None:
        runs += (f", up to {matrix.most_repetitions} while the rounds cannot detect a {matrix.detect:.0%} "
                 f"tokens/s gap to the reference")
    table = Table(title=f"{matrix.name}: {len(matrix.cells)} cells x {runs}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("cell id")
    table.add_column("cell")
    table.add_column("tokens/step", justify="right")
    table.add_column("predicted tokens/s", justify="right")
    table.add_column("predicted train memory", justify="right")
    table.add_column("status")
    limits: dict[str, int] = {}
    for i, cell in enumerate(matrix.cells):
        status = f"[yellow]skipped: {escape(cell.skip_reason)}[/]" if cell.skip_reason else "[green]will run[/]"
        _bpe_limit(cell.config, limits)  # says where a corpus caps what BPE can learn
        p = predictor.predict(cell.config)
        speed = "—" if p.tokens_per_s is None else (
            f"{_si(p.tokens_per_s)}" + (f" ({_si(p.low)}–{_si(p.high)})" if p.low is not None else ""))
        table.add_row(str(i), cell.cell_id, escape(cell.label), f"{cell.config.tokens_per_step:,}", speed,
                      f"{p.train_mem_bytes / 2**20:,.0f} MiB", status)
    return table


def _si(value: float) -> str:
    return f"{value / 1e3:,.1f}k" if value >= 1e3 else f"{value:,.0f}"
