"""How much a whole run's throughput moves from run to run on a shared machine: the measured
figures the guard (suite.guard.noise) and the compare report (suite.report.compare) judge with.

Measured on this project's 2-core runner (AMD EPYC, AVX2) with bench/run_drift.py, 2026-12-01:
runs of one matrix in a row (3 repetitions of 25 steps each) differ from run to run by 13.6 %,
21.0 % and 6.7 % in three idle sessions of 20, 20 and 10 runs (sd of a run's mean log tokens/s
beyond what its repetitions' spread explains), pooled 16.2 % over 47 degrees of freedom; with
every repetition brought to the machine's best state by its probe (`--normalize state`,
suite.guard.state), 5.6 %, 10.0 % and 0.0 %, pooled 7.3 %.
"""

RUN_NOISE = 0.16  # sd of a run's log throughput from run to run, raw
RUN_NOISE_STATE = 0.07  # the same after `--normalize state`
