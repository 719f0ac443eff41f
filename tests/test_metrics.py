"""Known-answer tests for the ranking metrics, ties included."""

import math

import numpy as np
import pytest
import torch

from mmsrarec.evaluate.metrics import count_ranks, per_case


def metrics(pos, others, names, mask=None):
    g, t, n = count_ranks(torch.tensor(pos, dtype=torch.float64), torch.tensor(others, dtype=torch.float64),
                          None if mask is None else torch.tensor(mask))
    return per_case(names, g, t, n)


def test_clear_ranks():
    # positive ranked 1st, 2nd and 4th among 5 candidates
    m = metrics([0.9, 0.5, 0.1], [[0.1, 0.2, 0.3, 0.4], [0.6, 0.4, 0.3, 0.0], [0.5, 0.3, 0.2, 0.0]],
                ["hr@1", "hr@3", "ndcg@3", "mrr", "auc"])
    assert m["hr@1"].tolist() == [1, 0, 0]
    assert m["hr@3"].tolist() == [1, 1, 0]
    assert np.allclose(m["ndcg@3"], [1, 1 / math.log2(3), 0])
    assert np.allclose(m["mrr"], [1, 1 / 2, 1 / 4])
    assert np.allclose(m["auc"], [1, 3 / 4, 1 / 4])


def test_all_equal_scores_are_random_guessing_not_a_hit():
    n_others = 20
    m = metrics([0.0], [[0.0] * n_others], ["hr@1", "hr@5", "ndcg@5", "mrr", "auc"])
    assert m["hr@1"][0] == pytest.approx(1 / 21)
    assert m["hr@5"][0] == pytest.approx(5 / 21)
    assert m["ndcg@5"][0] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 6)) / 21)
    assert m["mrr"][0] == pytest.approx(sum(1 / r for r in range(1, 22)) / 21)
    assert m["auc"][0] == pytest.approx(0.5)


def test_partial_tie():
    # one item above, two tied with the positive: rank uniform over {2, 3, 4}
    m = metrics([0.5], [[0.9, 0.5, 0.5, 0.1]], ["hr@1", "hr@2", "hr@3", "ndcg@3", "auc"])
    assert m["hr@1"][0] == 0
    assert m["hr@2"][0] == pytest.approx(1 / 3)
    assert m["hr@3"][0] == pytest.approx(2 / 3)
    assert m["ndcg@3"][0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    assert m["auc"][0] == pytest.approx((1 + 0.5 * 2) / 4)


def test_mask_removes_items_from_the_competition():
    m = metrics([0.5], [[0.9, 0.8, 0.1]], ["hr@1", "auc"], mask=[[False, False, True]])
    assert m["hr@1"][0] == 1 and m["auc"][0] == 1


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        metrics([float("nan")], [[0.1]], ["hr@1"])


def test_random_scores_average_to_chance():
    rng = np.random.default_rng(0)
    s = rng.random((20000, 21))
    m = metrics(s[:, 0], s[:, 1:], ["hr@5", "auc"])
    assert m["hr@5"].mean() == pytest.approx(5 / 21, abs=0.01)
    assert m["auc"].mean() == pytest.approx(0.5, abs=0.01)
