"""Protocols over a hand-made scorer: what competes with the target, and what the stored lists hold."""

import numpy as np
import pytest
import torch

from mmsrarec.cf.base import Cases
from mmsrarec.evaluate.protocols import evaluate_full, evaluate_sampled

N_ITEMS = 6


def scores_by_item(histories):
    # item i scores i: item 6 is always first, then 5, 4, ...
    return torch.arange(N_ITEMS + 1, dtype=torch.float32).repeat(len(histories), 1)


def test_full_ranking_excludes_history_but_never_the_target():
    cases = Cases(users=np.array([0, 1]), histories=[np.array([6, 5]), np.array([6])], targets=np.array([4, 6]))
    per = evaluate_full(scores_by_item, cases, N_ITEMS, ["hr@1", "mrr"], progress=False)
    assert per["hr@1"].tolist() == [1.0, 1.0]  # 6 and 5 are history for user 0; 6 is the target of user 1
    kept = evaluate_full(scores_by_item, cases, N_ITEMS, ["mrr"], progress=False, exclude_history=False)
    assert kept["mrr"].tolist() == pytest.approx([1 / 3, 1.0])  # RecBole's rule for sequential models


def test_sampled_ranks_exactly_the_stored_lists():
    cases = Cases(users=np.array([0]), histories=[np.array([1])], targets=np.array([3]),
                  negatives=np.array([[2, 5]]))
    seen = []

    def scorer(histories, candidates):
        seen.append(candidates.copy())
        return candidates.astype(float)

    per, scores = evaluate_sampled(scorer, cases, ["hr@1", "gauc"], progress=False)
    assert seen[0].tolist() == [[3, 2, 5]] and scores.tolist() == [[3, 2, 5]]
    assert per["hr@1"][0] == 0 and per["gauc"][0] == 0.5


def test_non_finite_scores_are_an_error():
    cases = Cases(users=np.array([0]), histories=[np.array([1])], targets=np.array([3]), negatives=np.array([[2]]))
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_sampled(lambda h, c: np.array([[np.inf, 0.0]]), cases, ["hr@1"], progress=False)


def test_fusion_standardizes_each_case_and_picks_the_smallest_best_weight_on_the_cases_given():
    from mmsrarec.evaluate.fusion import WEIGHTS, fuse, pick_weight, standardize
    from mmsrarec.evaluate.protocols import sampled_metrics

    z = standardize(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [-10.0, 0.0, 10.0]]))
    assert z[0] == pytest.approx(z[2]) and z[1].tolist() == [0, 0, 0]  # scale-free; no spread -> no say
    assert z[0].mean() == pytest.approx(0) and z[0].std() == pytest.approx(1)
    # target (column 0) of 1 + 3: the LLM puts it first in cases 0-1, the CF model in cases 2-3; each puts it
    # second otherwise, and each method's own scale is far from the other's (scale must not matter)
    llm = np.array([[3, 2, 1, 0], [3, 2, 1, 0], [2, 3, 1, 0], [2, 3, 1, 0]], float) * 100
    cf = np.array([[2, 1, 3, 0], [2, 1, 3, 0], [3, 0, 1, 2], [3, 0, 1, 2]], float) / 100
    hr1 = lambda s: sampled_metrics(s, ["hr@1"])["hr@1"].mean()  # noqa: E731
    assert hr1(fuse(llm, cf, 0.0)) == hr1(llm) == 0.5 and hr1(fuse(llm, cf, 1.0)) == hr1(cf) == 0.5
    weight, curve = pick_weight(llm, cf, "hr@1")
    assert sorted(curve) == WEIGHTS.tolist() and 0 < weight < 1 and curve[weight] == 1.0  # the blend beats both
    assert weight == min(w for w, v in curve.items() if v == 1.0)
    assert pick_weight(cf, cf, "ndcg@5")[0] == 0.0  # every weight ties: the LLM's side wins the tie
    with pytest.raises(ValueError, match="shape"):
        fuse(llm, cf[:2], 0.5)
