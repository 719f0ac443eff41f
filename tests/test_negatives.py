"""SFT negatives (llm.examples.sample_negatives, rank.negatives, mllm_msr.negatives): `popularity` draws
unseen training items in proportion to their training interaction count, so a negative is as popular as a
positive and popularity alone does not separate them; `uniform` is the draw of before, unchanged."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from mmsrarec.llm.examples import item_counts, sample_negatives
from mmsrarec.rank.config import RankConfig, TaskWeights
from mmsrarec.rank.prompts import Catalog
from mmsrarec.rank.tasks import build_examples

N_ITEMS, N_USERS = 150, 150


def skewed_data() -> dict[str, pd.DataFrame]:
    """150 users of 6 distinct items each, drawn with Zipf-like popularity (item 1 the most popular)."""
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, N_ITEMS + 1)
    train = pd.DataFrame({"user": np.arange(N_USERS),
                          "items": [list(rng.choice(np.arange(1, N_ITEMS + 1), 6, replace=False, p=p / p.sum()))
                                    for _ in range(N_USERS)]})
    return {"train": train}


def catalog() -> Catalog:
    items = pd.DataFrame({"item": range(1, N_ITEMS + 1), "title": [f"Item {i}" for i in range(1, N_ITEMS + 1)],
                          "text": [f"text {i}" for i in range(1, N_ITEMS + 1)], "image": [""] * N_ITEMS})
    return Catalog.build(items, {i: [f"kw{i}"] for i in range(1, N_ITEMS + 1)}, use_keywords=True)


def config(negatives: str) -> RankConfig:
    return RankConfig(max_examples=0, examples_per_user=0, neg_per_pos=1, choice_candidates=4, negatives=negatives,
                      tasks=TaskWeights(main=1, aux_choice=0.5, aux_title=0, aux_next_keywords=0))


def test_popularity_picks_in_proportion_to_the_counts():
    pool, weights = np.array([1, 2, 3]), np.array([90, 10, 0])  # item 1: count 90, item 2: 10, item 3: never
    picks = Counter(sample_negatives(pool, set(), 1, np.random.default_rng([s, 1]), weights)[0] for s in range(4000))
    assert set(picks) == {1, 2}
    assert 0.87 <= picks[1] / 4000 <= 0.93
    # the same when the user has seen most of the weight (the exact draw among what is left, not rejection)
    pool, weights = np.arange(1, 13), np.array([500] * 10 + [9, 1])
    picks = Counter(sample_negatives(pool, set(range(1, 11)), 1, np.random.default_rng([s, 2]), weights)[0]
                    for s in range(4000))
    assert set(picks) == {11, 12} and 0.87 <= picks[11] / 4000 <= 0.93


def test_popularity_never_picks_seen_or_zero_count_items_and_caps_at_what_is_left():
    rng = np.random.default_rng(3)
    pool = np.arange(5, 105)
    weights = rng.integers(0, 40, len(pool)) * (rng.random(len(pool)) < 0.8)
    for k in range(300):
        seen = set(rng.choice(np.arange(1, 110), int(rng.integers(0, 100)), replace=False).tolist())
        n = int(rng.integers(1, 30))
        allowed = {int(i) for i, w in zip(pool, weights) if w > 0 and int(i) not in seen}
        picked = sample_negatives(pool, seen, n, np.random.default_rng([k]), weights)
        assert len(picked) == len(set(picked)) == min(n, len(allowed))
        assert set(picked) <= allowed
    # fewer than n left: all of them; none left: nothing
    assert sorted(sample_negatives(pool, set(range(1, 100)), 10, np.random.default_rng(0), np.ones(100))) == \
        [100, 101, 102, 103, 104]
    assert sample_negatives(pool, set(range(1, 105)), 3, np.random.default_rng(0), np.ones(100)) == []
    assert sample_negatives(pool, set(), 3, np.random.default_rng(0), np.zeros(100)) == []
    with pytest.raises(ValueError, match="one per pool item"):
        sample_negatives(pool, set(), 1, np.random.default_rng(0), np.ones(99))


def test_draws_are_deterministic_given_the_seed():
    pool, weights = np.arange(1, 200), np.arange(1, 200) % 7
    draw = lambda seed, w: sample_negatives(pool, {3, 4, 5}, 6, np.random.default_rng([seed, 1]), w)  # noqa: E731
    assert draw(1, weights) == draw(1, weights) and draw(1, None) == draw(1, None)
    assert len({tuple(draw(s, weights)) for s in range(20)}) > 15
    data = skewed_data()
    a = build_examples(data, catalog(), config("popularity"), seed=4).to_list()
    assert a == build_examples(data, catalog(), config("popularity"), seed=4).to_list()


def test_uniform_draws_what_the_code_drew_before_the_option():
    """Pinned from the code before rank.negatives existed (same seeds, same data): the default path of
    sample_negatives and the examples built under rank.negatives = uniform are unchanged."""
    assert sample_negatives(np.arange(1, 40), {1, 2, 3, 10}, 5, np.random.default_rng(7)) == [37, 25, 27, 35, 23]
    assert sample_negatives(np.arange(1, 40), set(range(1, 37)), 3, np.random.default_rng(7)) == [37, 39, 38]
    rows = build_examples(skewed_data(), catalog(), config("uniform"), seed=11).to_list()
    drawn = [[r["task"], r["user"], r["position"], r["item"], r["completion"][0]["content"]] for r in rows]
    assert hashlib.sha256(json.dumps(drawn).encode()).hexdigest() == \
        "6fd1a977ae589333c095e6e54829a25f13b44f25918c809c855716cee0171647"


def _mean_count(items, counts: dict[int, int]) -> float:
    return float(np.mean([counts[int(i)] for i in items]))


@pytest.mark.parametrize("negatives, low, high", [("popularity", 0.7, 1.4), ("uniform", 0.0, 0.6)])
def test_popularity_negatives_are_as_popular_as_the_positives(negatives, low, high):
    """The shortcut at the example level: the mean training count of the main task's negatives over that
    of its positives, and of aux_choice's distractors over its answers."""
    data = skewed_data()
    pool, interactions = item_counts(data["train"]["items"])
    counts = dict(zip(pool.tolist(), interactions.tolist()))
    assert max(counts.values()) >= 10 * min(counts.values())  # skewed
    rows = build_examples(data, catalog(), config(negatives), seed=2).to_list()
    main = [r for r in rows if r["task"] == "main"]
    positives = [r["item"] for r in main if r["completion"][0]["content"] == "Yes"]
    negatives_ = [r["item"] for r in main if r["completion"][0]["content"] == "No"]
    assert len(positives) == len(negatives_) > 400
    assert low <= _mean_count(negatives_, counts) / _mean_count(positives, counts) <= high
    distractors, answers = [], []
    for row in (r for r in rows if r["task"] == "aux_choice"):
        options = re.findall(r"^[A-Z]\. Item (\d+):", row["prompt"][0]["content"], flags=re.M)
        assert len(options) == 4 and int(options[ord(row["completion"][0]["content"]) - ord("A")]) == row["item"]
        answers.append(row["item"])
        distractors.extend(int(i) for i in options if int(i) != row["item"])
    assert len(answers) > 200
    assert low <= _mean_count(distractors, counts) / _mean_count(answers, counts) <= high


def test_mllm_msr_recommender_draws_its_negatives_as_configured():
    """mllm_msr.negatives: uniform (the default) keeps the draw of before; popularity draws by training count."""
    from mmsrarec.mllmmsr.config import MllmMsrConfig
    from mmsrarec.mllmmsr.prompts import catalog as msr_catalog
    from mmsrarec.mllmmsr.recommend import training_examples

    data = skewed_data()
    states = pd.DataFrame([{"user": int(u), "key": t, "history": [int(i) for i in seq[:t]][-9:], "summary": "likes"}
                           for u, seq in zip(data["train"]["user"], data["train"]["items"])
                           for t in range(1, len(seq))])
    items = pd.DataFrame({"item": range(1, N_ITEMS + 1), "title": [f"Item {i}" for i in range(1, N_ITEMS + 1)],
                          "image": [""] * N_ITEMS})
    pool, interactions = item_counts(data["train"]["items"])
    counts = dict(zip(pool.tolist(), interactions.tolist()))
    ratios = {}
    for negatives in ("uniform", "popularity"):
        cfg = MllmMsrConfig(negatives=negatives)
        rows = training_examples(states, data["train"], msr_catalog(items, {}, 0), cfg, 9, seed=1).to_list()
        if negatives == "uniform":  # the draw of before: sample_negatives without weights, seeded as it was
            sequences = dict(zip(data["train"]["user"], data["train"]["items"]))
            for row in rows:
                if row["completion"][0]["content"] == "No":
                    seq = np.asarray(sequences[row["user"]], dtype=np.int64)
                    rng = np.random.default_rng([1, row["user"], row["position"], 1])
                    assert [row["item"]] == sample_negatives(pool, set(seq.tolist()), 1, rng)
        by = {answer: [r["item"] for r in rows if r["completion"][0]["content"] == answer] for answer in ("Yes", "No")}
        ratios[negatives] = _mean_count(by["No"], counts) / _mean_count(by["Yes"], counts)
    assert ratios["uniform"] < 0.6 and 0.7 <= ratios["popularity"] <= 1.4


@pytest.mark.parametrize("negatives", ["uniform", "popularity"])
def test_stand_in_cold_items_are_shown_only_among_themselves(negatives):
    """rank.stand_in_cold: the stand-ins never appear in a history or the title task; an example whose
    positive is a stand-in has only stand-ins as negatives / distractors, and no other example shows one."""
    from dataclasses import replace

    from mmsrarec.rank.tasks import stand_in_items

    data = skewed_data()
    cfg = replace(config(negatives), stand_in_cold=0.3,
                  tasks=TaskWeights(main=1, aux_choice=0.5, aux_title=0.2, aux_next_keywords=0.2))
    pool, _ = item_counts(data["train"]["items"])
    stand_ins = set(stand_in_items(pool, 0.3, 7).tolist())
    assert len(stand_ins) == round(0.3 * len(pool))
    assert stand_ins == set(stand_in_items(pool, 0.3, 7).tolist()) != set(stand_in_items(pool, 0.3, 8).tolist())
    rows = build_examples(data, catalog(), cfg, seed=7).to_list()
    assert rows == build_examples(data, catalog(), cfg, seed=7).to_list()
    groups: dict[tuple[int, int], list[dict]] = {}
    for row in rows:
        text = row["prompt"][0]["content"]
        history = re.findall(r"^- Item (\d+):", text, flags=re.M)
        assert history or row["task"] == "aux_title"
        assert not stand_ins & {int(i) for i in history}, row
        if row["task"] == "main":
            groups.setdefault((row["user"], row["position"]), []).append(row)
        elif row["task"] == "aux_choice":
            options = {int(i) for i in re.findall(r"^[A-Z]\. Item (\d+):", text, flags=re.M)}
            assert len(options) == 4
            assert options <= stand_ins if row["item"] in stand_ins else not options & stand_ins, row
        elif row["task"] == "aux_title":
            assert row["item"] not in stand_ins
    cold_groups = 0
    for group in groups.values():
        positive = next(r["item"] for r in group if r["completion"][0]["content"] == "Yes")
        shown = {r["item"] for r in group}
        assert len(shown) == 2
        if positive in stand_ins:
            cold_groups += 1
            assert shown <= stand_ins
        else:
            assert not shown & stand_ins
    assert cold_groups > 20  # the stand-ins' own examples exist
    with pytest.raises(Exception, match="stand_in_cold"):
        replace(config(negatives), stand_in_cold=0.2, candidate_votes=5).validate()
    with pytest.raises(Exception, match="stand_in_cold"):
        replace(config(negatives), stand_in_cold=1.0).validate()
