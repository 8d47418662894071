"""The verdict engine (L1): every "faster", "lighter", "better", "within noise", PASS and FAIL
txsuite prints is decided here, so that one statistic, one set of words and one set of noise
figures serve the run report, `compare`, the quality verdicts, `guard` and `ab`.

    distributions   Student's t and the inverse trigamma (scipy.special only)
    moderated       a prior fitted to many groups' variances; each moderated towards it (limma)
    rounds          two cells of one run, paired by round, with the run's pooled noise
    detectable      whether a run's rounds so far can detect a gap against its reference
    seeds           two cells' final losses, paired by seed, with the run's training noise
    runs            one cell in two runs: repetitions and the level of a whole run
    run_noise       how much a whole run moves, and where that figure comes from
    words           the verdicts and each metric's words for them

What a metric needs (its direction, kind and resolution) is read from the metric registry,
txsuite/config/metrics.py.
"""
from txsuite.verdict.comparison import Comparison
from txsuite.verdict.rounds import RoundNoise
from txsuite.verdict.words import BETTER, UNTESTED, WITHIN_NOISE, WORSE, in_words

__all__ = ["BETTER", "WORSE", "WITHIN_NOISE", "UNTESTED", "Comparison", "RoundNoise", "in_words"]
