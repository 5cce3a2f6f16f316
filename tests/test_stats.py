"""The confidence intervals checks and gates print, against values worked out by hand."""

import pytest

from engine.evaluate.stats import Interval, mean_interval, paired_difference, score_interval, wilson_interval


def test_wilson_interval_of_8_in_10():
    # Wilson: centre (0.8 + 1.96²/20) / (1 + 1.96²/10) = 0.7167, half-width 0.2266
    interval = wilson_interval(8, 10)
    assert (interval.estimate, interval.n) == (0.8, 10)
    assert interval.low == pytest.approx(0.4902, abs=1e-4) and interval.high == pytest.approx(0.9433, abs=1e-4)
    assert interval.describe() == "95% CI 0.4902..0.9433, n=10"
    assert interval.bounds() == [0.4902, 0.9433]


def test_wilson_interval_stays_in_zero_one_and_is_wide_for_one_pair():
    assert wilson_interval(1, 1).bounds() == [0.2065, 1.0]  # "accuracy 1.00" from one pair says little
    assert wilson_interval(0, 5).bounds() == [0.0, 0.4345]
    assert wilson_interval(41, 82).bounds() == [0.3942, 0.6058]


@pytest.mark.parametrize("successes, n", [(0, 0), (3, 2), (-1, 4)])
def test_wilson_interval_refuses_impossible_counts(successes, n):
    with pytest.raises(ValueError, match=f"got {successes} of {n}"):
        wilson_interval(successes, n)


def test_mean_interval_is_the_normal_approximation():
    # mean 2.5, s = 1.2910, half-width 1.96 * 1.2910 / 2 = 1.2652
    interval = mean_interval([1, 2, 3, 4])
    assert interval.estimate == 2.5 and interval.bounds() == [1.2348, 3.7652]
    assert mean_interval([3.0]) == Interval(3.0, None, None, 1)
    assert mean_interval([3.0]).describe() == "n=1, too few for an interval"
    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])


def test_score_interval_is_wilson_for_right_or_wrong_and_normal_for_partial_credit():
    assert score_interval([1.0] * 8 + [0.0] * 2) == wilson_interval(8, 10)
    assert score_interval([0.5, 1.0, 0.0, 0.5]) == mean_interval([0.5, 1.0, 0.0, 0.5])


def test_pairing_takes_each_questions_difficulty_out_of_the_spread():
    before = [0.1, 0.9, 2.0, 3.1, 4.2, 5.0]  # questions of very different difficulty
    after = [b + d for b, d in zip(before, [0.2, 0.3, 0.1, 0.2, 0.3, 0.1], strict=True)]  # each a little better
    paired = paired_difference(after, before)
    assert paired.estimate == pytest.approx(0.2) and paired.low > 0  # the gain is seen
    unpaired_half = mean_interval(after).high - mean_interval(after).estimate
    assert unpaired_half > 1.0 > paired.high - paired.low  # two separate intervals would overlap entirely
    # differences mean 0.2, s = sqrt(0.04 / 5) = 0.0894, half-width 1.96 * 0.0894 / sqrt(6) = 0.0716
    assert paired.describe(signed=True) == "95% CI +0.1284..+0.2716, n=6"
    with pytest.raises(ValueError, match="same examples: 2 values against 3"):
        paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])


def test_a_paired_change_in_right_or_wrong_answers_has_an_interval_even_when_nothing_changed():
    # Bonett-Price with no discordant question among 128: p12 = p21 = 1/130, half-width 1.96 * sqrt(2/130/130)
    unchanged = paired_difference([0.0] * 128, [0.0] * 128)
    assert unchanged.estimate == 0.0 and unchanged.describe(signed=True) == "95% CI -0.0213..+0.0213, n=128"
    # 3 questions gained, 1 lost of 20: estimate 2/20; p12 = 4/22, p21 = 2/22, centre 2/22 = 0.0909,
    # half-width 1.96 * sqrt((6/22 - (2/22)²) / 22) = 0.2149
    before = [1.0] * 5 + [0.0] * 15
    after = [1.0] * 4 + [0.0] + [1.0] * 3 + [0.0] * 12
    changed = paired_difference(after, before)
    assert changed.estimate == pytest.approx(0.1) and changed.bounds() == [-0.124, 0.3058]
