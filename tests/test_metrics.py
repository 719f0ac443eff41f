"""Known-answer tests for the ranking metrics, ties included."""

import math

import numpy as np
import pytest
import torch

from mmsrarec.evaluate.intervals import case_bootstrap, paired_bootstrap
from mmsrarec.evaluate.metrics import PooledAUC, count_ranks, per_case, pooled_auc


def metrics(pos, others, names, mask=None):
    g, t, n = count_ranks(torch.tensor(pos, dtype=torch.float64), torch.tensor(others, dtype=torch.float64),
                          None if mask is None else torch.tensor(mask))
    return per_case(names, g, t, n)


def test_clear_ranks():
    # positive ranked 1st, 2nd and 4th among 5 candidates
    m = metrics([0.9, 0.5, 0.1], [[0.1, 0.2, 0.3, 0.4], [0.6, 0.4, 0.3, 0.0], [0.5, 0.3, 0.2, 0.0]],
                ["hr@1", "hr@3", "ndcg@3", "mrr", "gauc"])
    assert m["hr@1"].tolist() == [1, 0, 0]
    assert m["hr@3"].tolist() == [1, 1, 0]
    assert np.allclose(m["ndcg@3"], [1, 1 / math.log2(3), 0])
    assert np.allclose(m["mrr"], [1, 1 / 2, 1 / 4])
    assert np.allclose(m["gauc"], [1, 3 / 4, 1 / 4])


def test_all_equal_scores_are_random_guessing_not_a_hit():
    n_others = 20
    m = metrics([0.0], [[0.0] * n_others], ["hr@1", "hr@5", "ndcg@5", "mrr", "gauc"])
    assert m["hr@1"][0] == pytest.approx(1 / 21)
    assert m["hr@5"][0] == pytest.approx(5 / 21)
    assert m["ndcg@5"][0] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 6)) / 21)
    assert m["mrr"][0] == pytest.approx(sum(1 / r for r in range(1, 22)) / 21)
    assert m["gauc"][0] == pytest.approx(0.5)


def test_partial_tie():
    # one item above, two tied with the positive: rank uniform over {2, 3, 4}
    m = metrics([0.5], [[0.9, 0.5, 0.5, 0.1]], ["hr@1", "hr@2", "hr@3", "ndcg@3", "gauc"])
    assert m["hr@1"][0] == 0
    assert m["hr@2"][0] == pytest.approx(1 / 3)
    assert m["hr@3"][0] == pytest.approx(2 / 3)
    assert m["ndcg@3"][0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    assert m["gauc"][0] == pytest.approx((1 + 0.5 * 2) / 4)


def test_mask_removes_items_from_the_competition():
    m = metrics([0.5], [[0.9, 0.8, 0.1]], ["hr@1", "gauc"], mask=[[False, False, True]])
    assert m["hr@1"][0] == 1 and m["gauc"][0] == 1


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        metrics([float("nan")], [[0.1]], ["hr@1"])


def test_random_scores_average_to_chance():
    rng = np.random.default_rng(0)
    s = rng.random((20000, 21))
    m = metrics(s[:, 0], s[:, 1:], ["hr@5", "gauc"])
    assert m["hr@5"].mean() == pytest.approx(5 / 21, abs=0.01)
    assert m["gauc"].mean() == pytest.approx(0.5, abs=0.01)
    assert pooled_auc(s) == pytest.approx(0.5, abs=0.01)


# ----------------------------------------------------------------------------- the pooled AUC of the sampled lists

def brute_auc(scores: np.ndarray) -> float:
    """Every (positive, negative) pair of all cases pooled: 1 if the positive is higher, 1/2 if tied."""
    pos, neg = scores[:, 0], scores[:, 1:].ravel()
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("levels", [3, 7, None])  # few score levels: many ties within and across cases
def test_pooled_auc_is_the_pair_count_over_all_rows(levels):
    rng = np.random.default_rng(levels or 0)
    for n_cases, width in [(1, 2), (5, 4), (40, 21), (200, 6)]:
        scores = rng.integers(0, levels, (n_cases, width)).astype(float) if levels else rng.random((n_cases, width))
        scores[:, 0] += 0.3 * rng.random(n_cases) if levels is None else 0
        assert pooled_auc(scores) == pytest.approx(brute_auc(scores), abs=1e-12)
    sklearn = pytest.importorskip("sklearn.metrics")
    labels = np.zeros_like(scores)
    labels[:, 0] = 1
    assert pooled_auc(scores) == pytest.approx(sklearn.roc_auc_score(labels.ravel(), scores.ravel()), abs=1e-12)


def test_pooled_auc_differs_from_the_mean_of_per_case_aucs():
    # each target above its own negatives (every case AUC 1), but case 0's scores all lie below case 1's
    scores = np.array([[0.2, 0.1, 0.0], [0.9, 0.8, 0.7]])
    g, t, n = count_ranks(torch.tensor(scores[:, 0]), torch.tensor(scores[:, 1:]))
    assert per_case(["gauc"], g, t, n)["gauc"].mean() == 1.0
    # pairs: case 0's target beats its own 2 negatives, not case 1's; case 1's beats all 4: 6 of 8
    assert pooled_auc(scores) == 0.75 == brute_auc(scores)
    with pytest.raises(ValueError, match="pooled.*gauc"):
        per_case(["auc"], g, t, n)


def test_resampled_pooled_auc_is_the_auc_of_the_sample_itself():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 6, (30, 5)).astype(float)
    picks = rng.integers(0, 30, (40, 30))
    counts = np.stack([np.bincount(p, minlength=30) for p in picks])
    want = [brute_auc(scores[p]) for p in picks]
    stat = PooledAUC(scores)
    assert stat._table is None  # the value alone builds no resampling table
    assert stat.resampled(counts) == pytest.approx(want, abs=1e-12)
    # counts so large that float32 no longer holds every partial sum exactly: the float64 path, the same AUCs
    assert np.array_equal(stat.resampled(counts * 1_000_000), stat.resampled(counts))
    assert stat.resampled(np.ones((1, 30), int))[0] == stat.value
    # a paired difference subtracts the exact numerators, the same as each AUC on its own to rounding
    other = rng.integers(0, 6, (30, 5)).astype(float)
    assert stat.minus(PooledAUC(other)).resampled(counts) == pytest.approx(
        np.array(want) - [brute_auc(other[p]) for p in picks], abs=1e-12)


def test_pooled_auc_interval_holds_its_value_is_deterministic_and_fast():
    import time

    rng = np.random.default_rng(1)
    scores = rng.random((943, 21))
    scores[:, 0] += 0.25
    stat = PooledAUC(scores)
    per = {"auc": stat, "gauc": np.asarray(per_case(["gauc"], *count_ranks(
        torch.tensor(scores[:, 0]), torch.tensor(scores[:, 1:])))["gauc"])}
    t0 = time.perf_counter()
    got = case_bootstrap(per, np.random.default_rng([7, 1009]), draws=1000)
    assert time.perf_counter() - t0 < 3  # ~0.05 s: a sparse product per block of draws
    value, lo, hi = got["auc"]
    assert value == round(stat.value, 4) and lo < value < hi and hi - lo < 0.05
    assert got == case_bootstrap(per, np.random.default_rng([7, 1009]), draws=1000)
    # the per-case metrics see the same draws with or without the pooled one beside them
    assert got["gauc"] == case_bootstrap({"gauc": per["gauc"]}, np.random.default_rng([7, 1009]), draws=1000)["gauc"]
    # paired with a weaker model on the same cases: the difference is the difference of the pooled AUCs
    weaker = scores.copy()
    weaker[:, 0] -= 0.2
    diff, dlo, dhi = paired_bootstrap({"auc": stat}, {"auc": PooledAUC(weaker)}, np.random.default_rng(3),
                                      draws=500)["auc"]
    assert diff == round(stat.value - pooled_auc(weaker), 4) and 0 < dlo < diff < dhi
    from mmsrarec.evaluate.intervals import Difference

    joint, apart = Difference(stat, PooledAUC(weaker)), Difference(stat, PooledAUC(weaker))
    apart._joint = None  # each AUC on its own, then the difference
    counts = np.stack([np.bincount(p, minlength=943) for p in rng.integers(0, 943, (20, 943))])
    assert joint.resampled(counts) == pytest.approx(apart.resampled(counts), abs=1e-12)


def test_the_fusion_weight_is_never_picked_by_the_pooled_auc():
    """A blend of per-case z-scores is on no common scale across cases: its pooled auc picks nothing (gauc does)."""
    from mmsrarec.evaluate.fusion import pick_weight

    rng = np.random.default_rng(2)
    llm, cf = rng.random((20, 6)), rng.random((20, 6))
    with pytest.raises(ValueError, match="pooled 'auc'.*'gauc'"):
        pick_weight(llm, cf, "auc")
    assert 0.0 <= pick_weight(llm, cf, "gauc")[0] <= 1.0
