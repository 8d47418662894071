"""What a user writes and what a run produces, as data (L0-L1; never imports torch).

    spec/       the settings of one cell, one module per family, each with its rules
    host.py     what the machine offers, and which valid cells it cannot run (skipped, not failed)
    matrix.py   a matrix file -> validated cells (L1)
    record.py   the result record of one cell repetition
    metrics.py  every metric a record carries: unit, better direction, per-step or not, format
    yamlsource.py  safe YAML with the line of every key
"""
