"""Summaries over seeds against textbook values."""

import math

import pytest

from c2ftrain.stats import ci95, std, summary, t_quantile


@pytest.mark.parametrize("df, value", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (29, 2.045)])
def test_t_quantile_matches_tables(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-3)


def test_t_quantile_tends_to_the_normal():
    assert t_quantile(0.975, 10_000) == pytest.approx(1.960, abs=1e-3)
    assert t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-9)


def test_ci95_by_hand():
    values = [0.20, 0.24, 0.22]
    m, s = 0.22, 0.02  # sample std of (-0.02, 0.02, 0)
    assert std(values) == pytest.approx(s)
    half = 4.302653 * s / math.sqrt(3)
    assert ci95(values) == pytest.approx([m - half, m + half], abs=1e-6)
    assert ci95([0.3]) == [0.3, 0.3] and std([0.3]) == 0.0
    assert summary(values)["n"] == 3


def test_t_quantile_rejects_nonsense():
    with pytest.raises(ValueError):
        t_quantile(0.3, 2)


def test_median_matches_the_standard_library():
    import random
    import statistics

    from c2ftrain.stats import median

    rng = random.Random(0)
    for n in (1, 2, 3, 8, 9):
        values = [rng.uniform(-3, 3) for _ in range(n)]
        assert median(values) == statistics.median(values)
