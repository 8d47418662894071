"""The verdict engine (txsuite/verdict/): its arithmetic, on constructed and simulated data. How
often it is wrong on real runs is measured by bench/report_verdicts.py (docs/verdicts.md)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from txsuite.report.verdicts import RunVerdicts, by_round
from txsuite.verdict import BETTER, UNTESTED, WITHIN_NOISE, WORSE, Comparison, RoundNoise, in_words
from txsuite.verdict.distributions import t_isf, t_quantile, t_sf, trigamma_inverse
from txsuite.verdict.moderated import Prior, fit_prior, moderate
from txsuite.verdict.runs import RunNoise
from txsuite.verdict import state
from txsuite.verdict.state import SLOW_STATE, adjust, slowdown, state_factor
from txsuite.verdict.words import is_better, is_worse


def test_distributions_match_scipy():
    assert t_quantile(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(7, 0.99) == pytest.approx(stats.t.ppf(0.995, 7))
    assert t_quantile(math.inf) == pytest.approx(1.95996, abs=1e-5)
    assert t_sf(t_isf(0.01, 4.5), 4.5) == pytest.approx(0.01)
    for x in (0.05, 1.0, 4.9, 300.0):
        assert float(special.polygamma(1, trigamma_inverse(x))) == pytest.approx(x, rel=1e-6)


def test_the_prior_pools_alike_variances_and_not_an_outlier():
    rng = np.random.default_rng(1)
    strong = []
    for _ in range(50):
        alike = [float(rng.chisquare(1)) * 0.01 for _ in range(12)]  # one true variance, 1 df each
        strong.append(fit_prior(alike, [1.0] * 12).df)
    assert np.median(strong) > 20  # mostly infinite: alike groups pool
    outlier = [float(rng.chisquare(3)) / 3 * 0.01 for _ in range(12)] + [100.0, 150.0]
    assert fit_prior(outlier, [3.0] * 14).df < 5
    assert fit_prior([0.1, 0.2], [1.0, 1.0]) == Prior.none()  # two groups fit no prior
    assert moderate(0.5, 1.0, Prior(0.1, 3.0), most_df=10.0) == pytest.approx(((3 * 0.1 + 0.5) / 4, 4.0))
    assert moderate(0.5, 1.0, Prior(0.1, math.inf), most_df=7.0) == (0.1, 7.0)
    assert moderate(0.5, 1.0, Prior.none(), most_df=7.0) == (0.5, 1.0)


def _run(gaps: dict[str, float], rounds: int, noise: dict[str, float] | float, rng, shift: float = 0.3):
    """cell -> round -> value: exp(gap + the round's shift + the cell's noise)."""
    shifts = rng.normal(0, shift, rounds)
    sd = noise if isinstance(noise, dict) else {c: noise for c in gaps}
    return {c: {r: math.exp(g + shifts[r] + rng.normal(0, sd[c])) for r in range(rounds)} for c, g in gaps.items()}


def test_eight_alike_cells_at_two_rounds_pool_their_noise_and_separate_fifteen_percent():
    """With two rounds a pair alone has one degree of freedom (t = 12.7); eight cells whose
    noise is alike give seven. A consistent 15 % gap with 2 % noise is then separated in nearly
    every simulated run, and equal cells are called apart in about 5 % of their pairs."""
    rng = np.random.default_rng(7)
    separated = alone = false = pairs = 0
    for _ in range(200):
        gaps = {f"c{i}": 0.0 for i in range(7)} | {"slow": math.log(0.85)}
        noise = RoundNoise.fit(_run(gaps, 2, 0.02, rng))
        separated += noise.compare("slow", "c0", True).verdict == WORSE
        d = [noise.logs["slow"][r] - noise.logs["c0"][r] for r in (0, 1)]
        alone += abs(np.mean(d)) > t_quantile(1) * np.std(d, ddof=1) / math.sqrt(2)
        for i in range(1, 7):
            pairs += 1
            false += noise.compare(f"c{i}", "c0", True).separated
    assert separated >= 190 and alone < 120
    assert false / pairs < 0.08


def test_a_noisy_cell_keeps_a_wider_interval_than_quiet_cells():
    """One cell 20x noisier than the others: the prior is weak, and its pairs' intervals are
    several times wider than the quiet cells' (with three rounds the cell's own noise is seen)."""
    rng = np.random.default_rng(3)
    noisy_width, quiet_width = [], []
    for _ in range(100):
        gaps = {f"c{i}": 0.0 for i in range(6)} | {"noisy": 0.0}
        noise = RoundNoise.fit(_run(gaps, 3, {**{f"c{i}": 0.01 for i in range(6)}, "noisy": 0.2}, rng))
        wide, narrow = noise.compare("noisy", "c0", True), noise.compare("c1", "c0", True)
        noisy_width.append(math.log(wide.high / wide.low))
        quiet_width.append(math.log(narrow.high / narrow.low))
    assert np.median(noisy_width) > 5 * np.median(quiet_width)


def test_no_cell_is_taken_as_quieter_than_the_noise_its_run_shares():
    """Memory-like values: each repetition lands on one of a few heap steps, so two cells whose two
    repetitions each landed on the same step twice have a variance of about 0. Their comparison
    must not be narrower than the noise the run's cells share; a cell much noisier than the rest
    keeps its own, and the quiet cells are not charged it."""
    steps = [72.0, 73.4, 74.8]
    values = {"same": {0: 73.4, 1: 73.4}, "also same": {0: 74.8, 1: 74.8}}
    rng = np.random.default_rng(5)
    for i in range(6):
        values[f"c{i}"] = {r: float(rng.choice(steps)) for r in (0, 1)}
    values["c0"], values["c1"] = {0: 72.0, 1: 74.8}, {0: 74.8, 1: 72.0}  # some cells do move
    noise = RoundNoise.fit(values)
    shared = noise.cells["c2"].variance
    assert noise.cells["same"].variance >= shared - 1e-15 and noise.cells["also same"].variance >= shared - 1e-15
    assert noise.compare("also same", "same", False).verdict == WITHIN_NOISE  # 1.9 % apart, both quiet by chance
    noisy = RoundNoise.fit(_run({f"c{i}": 0.0 for i in range(6)} | {"noisy": 0.0}, 3,
                                {**{f"c{i}": 0.01 for i in range(6)}, "noisy": 0.2}, np.random.default_rng(3)))
    assert noisy.cells["c1"].variance < noisy.cells["noisy"].variance / 20


def test_comparisons_are_untested_below_two_rounds_and_respect_the_resolution():
    noise = RoundNoise.fit({"a": {0: 110.0}, "b": {0: 100.0}, "c": {0: 90.0, 1: 95.0}})
    once = noise.compare("a", "b", True)
    assert once.verdict == UNTESTED and once.ratio == pytest.approx(1.1) and once.samples == 1
    assert noise.compare("a", "missing", True).verdict == UNTESTED
    steady = {"a": {0: 1000.4, 1: 1000.4, 2: 1000.4}, "b": {0: 1000.0, 1: 1000.0, 2: 1000.0}}
    assert RoundNoise.fit(steady).compare("a", "b", False).verdict == WORSE
    assert RoundNoise.fit(steady).compare("a", "b", False, resolution=0.001).verdict == WITHIN_NOISE
    low = Comparison.of_log_ratio(math.log(1.2), 0.01, 5, 0.95, higher_is_better=False)
    assert low.verdict == WORSE and low.low < 1.2 < low.high
    assert Comparison.of_log_ratio(0.1, math.nan, 0, 0.95, True).verdict == UNTESTED


def test_words_follow_the_metric():
    assert in_words(BETTER, "tokens_per_s") == "faster" and in_words(WORSE, "train_mem_bytes") == "heavier"
    assert in_words(WORSE, "val_loss") == "worse" and in_words(WITHIN_NOISE, "tokens_per_s") == WITHIN_NOISE
    assert is_better("lighter") and is_worse("slower") and not is_better(WITHIN_NOISE) and not is_worse(None)


def test_the_machine_state_adjusts_time_and_leaves_out_slow_repetitions():
    assert state_factor(0.012, 0.012, 0.010) == pytest.approx(1.2)
    assert slowdown(0.011, 0.025, 0.010) == pytest.approx(2.5)
    assert adjust("tokens_per_s", 1000.0, 1.2) == pytest.approx(1200.0)
    assert adjust("step_time_p50_s", 0.12, 1.2) == pytest.approx(0.1)
    assert adjust("peak_mem_bytes", 5.0, 1.2) == 5.0 and adjust("tokens_per_s", 5.0, None) == 5.0
    rows = [{"cell_id": c, "repeat": r, "status": "ok", "tokens_per_s": tok, "probe_before_s": pb,
             "probe_after_s": pa, "probe_best_s": 0.010}
            for c, r, tok, pb, pa in (("a", 0, 1000.0, 0.012, 0.012), ("a", 1, 500.0, 0.011, 0.030),
                                      ("b", 0, 900.0, 0.010, 0.010), ("b", 1, 900.0, 0.010, 0.010))]
    table = by_round(pd.DataFrame(rows), "tokens_per_s")
    values, slow = table.values, table.slow
    assert slow == 1 and 1 not in values["a"] and values["a"][0] == pytest.approx(1200.0)
    assert SLOW_STATE == 2.0
    assert RunVerdicts(pd.DataFrame(rows)).verdict("a", "b", "tokens_per_s") == UNTESTED  # one round left


def test_the_state_factor_is_the_mean_of_every_probe_where_the_record_has_it():
    """A repetition whose probes around the steps were quick but whose steps ran in a slow spell
    (the probes between them say so) is brought to the best state by the mean of all of them;
    the slow-state line stays on the probes around the steps."""
    assert state_factor(0.010, 0.010, 0.010, mean_s=0.013) == pytest.approx(1.3)
    assert state_factor(0.012, 0.012, 0.010, mean_s=None) == pytest.approx(1.2)  # older records
    assert state_factor(0.012, 0.012, None, mean_s=0.013) is None
    # where the record has the probes each step ran between, at the steps' median, they decide
    assert state_factor(0.010, 0.010, 0.010, mean_s=0.013, steps_s=0.011) == pytest.approx(1.1)
    assert state.of({"probe_before_s": 0.010, "probe_after_s": 0.010, "probe_best_s": 0.010,
                     "probe_mean_s": 0.013, "probe_steps_s": 0.011}).factor == pytest.approx(1.1)
    machine = state.of({"probe_before_s": 0.010, "probe_after_s": 0.025, "probe_best_s": 0.010,
                        "probe_mean_s": 0.015})
    assert machine.factor == pytest.approx(1.5) and machine.slowdown == pytest.approx(2.5) and machine.slow
    assert state.of({"probe_before_s": float("nan"), "probe_best_s": 0.01}).factor is None
    assert not state.of({}).slow and state.of({}).factor is None
    rows = [{"cell_id": "a", "repeat": 0, "status": "ok", "tokens_per_s": 1000.0, "probe_before_s": 0.010,
             "probe_after_s": 0.010, "probe_best_s": 0.010, "probe_mean_s": 0.012}]
    table = by_round(pd.DataFrame(rows), "tokens_per_s")
    assert table.slow == 0 and table.values["a"][0] == pytest.approx(1200.0)


def test_two_runs_of_a_cell_carry_the_level_of_a_whole_run():
    noise = RunNoise.two_level([[100.0, 102.0], [101.0, 99.0]], run_prior=0.16)
    assert noise.compare([130.0, 133.0], [100.0, 102.0], True).verdict == WITHIN_NOISE
    assert noise.compare([200.0, 204.0], [100.0, 102.0], True).verdict == BETTER
    alone = RunNoise.measured_only([[100.0, 102.0], [101.0, 99.0]])
    assert alone.compare([130.0, 133.0], [100.0, 102.0], True).verdict == BETTER
    assert RunNoise.measured_only([[100.0], [101.0]]).compare([130.0], [100.0], True).verdict == UNTESTED


def test_a_tie_projects_the_rounds_that_would_separate_it_if_its_gap_and_noise_held():
    """Comparison.rounds_to_separate: the interval shrinks as 1/sqrt(rounds) and its t with the
    degrees of freedom; the projected round count separates the same estimate, one fewer does
    not; a separated, untested or one-round comparison projects nothing."""
    tie = Comparison.of_log_ratio(0.05, 0.03, 4, 0.95, True, samples=2)
    assert tie.verdict == WITHIN_NOISE
    rounds = tie.rounds_to_separate()
    assert rounds is not None and 2 < rounds <= 10
    def at(n):
        return Comparison.of_log_ratio(0.05, 0.03 * math.sqrt(2 / n), 4 * (n - 1), 0.95, True, samples=n)
    assert at(rounds).verdict == BETTER and at(rounds - 1).verdict == WITHIN_NOISE
    assert Comparison.of_log_ratio(0.001, 0.03, 4, 0.95, True, samples=2).rounds_to_separate() is None  # > 10
    assert Comparison.of_log_ratio(0.5, 0.03, 4, 0.95, True, samples=2).rounds_to_separate() is None  # separated
    assert Comparison.of_log_ratio(0.05, math.nan, 0, 0.95, True, samples=2).rounds_to_separate() is None
    assert Comparison.of_log_ratio(0.05, 0.03, 4, 0.95, True, samples=1).rounds_to_separate() is None
