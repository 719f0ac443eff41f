"""The CF models: known-answer learning on a synthetic sequential pattern, determinism, save/load,
early stopping on validation only, and the training-window construction."""

from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest
import torch

from mmsrarec.cf import MODELS, build_model, model_class
from mmsrarec.cf.base import Cases
from mmsrarec.cf.config import CFTrainConfig
from mmsrarec.cf.train import left_pad, training_windows
from mmsrarec.errors import ConfigError
from mmsrarec.evaluate.protocols import evaluate_full, summarize

torch.set_num_threads(1)

N_ITEMS = 30
SMALL = {"gru4rec": {"embedding_size": 16, "hidden_size": 32},
         "sasrec": {"hidden_size": 16, "inner_size": 32},
         "bert4rec": {"hidden_size": 16, "inner_size": 32}}
CPU = torch.device("cpu")
NO_CASES = Cases(np.zeros(0, np.int64), [], np.zeros(0, np.int64))


def cycle_data(n_users: int = 60, seed: int = 0) -> tuple[list[np.ndarray], Cases, Cases]:
    """Every user walks the cycle 1 -> 2 -> ... -> 30 -> 1 from a random start (10-20 steps, so a target
    is never in its own history); leave-one-out: last item = test, second-to-last = valid."""
    rng = np.random.default_rng(seed)
    seqs = [(rng.integers(N_ITEMS) + np.arange(rng.integers(10, 21))) % N_ITEMS + 1 for _ in range(n_users)]
    users = np.arange(n_users)
    valid = Cases(users, [s[:-2] for s in seqs], np.array([s[-2] for s in seqs]))
    test = Cases(users, [s[:-1] for s in seqs], np.array([s[-1] for s in seqs]))
    return [s[:-2] for s in seqs], valid, test


def train_cfg(**overrides) -> CFTrainConfig:
    values = dict(epochs=40, batch_size=16, lr=5e-3, patience=5, max_len=10, device="cpu")
    return CFTrainConfig(**{**values, **overrides})


def fitted(name: str, cfg: CFTrainConfig | None = None, seed: int = 0, **params):
    train, valid, _ = cycle_data()
    model = build_model(name, N_ITEMS, {**SMALL.get(name, {}), **params}, cfg or train_cfg(), seed, CPU)
    facts = model.fit(train, valid, log=lambda line: None)
    return model, facts


@functools.cache
def trained(name: str) -> tuple:
    """Each sequential model fitted once on the cycle data, shared by the tests that read it.

    BERT4Rec's cloze task gives ~6x fewer targets per window than next-item training, so on this tiny
    data it gets more epochs and no dropout to learn the rule within seconds.
    """
    if name == "bert4rec":
        return fitted(name, train_cfg(epochs=80, patience=10), dropout=0.0)
    return fitted(name)


def test_training_windows_make_every_item_but_the_first_a_target_once():
    windows = training_windows([np.arange(1, 9)], size=4)
    assert windows.tolist() == [[5, 6, 7, 8], [2, 3, 4, 5], [0, 0, 1, 2]]
    targets = windows[:, 1:][windows[:, :-1] > 0]
    assert sorted(targets.tolist()) == list(range(2, 9))


def test_left_pad_right_aligns_the_most_recent_items():
    assert left_pad([np.array([1, 2, 3]), np.array([7])], 2).tolist() == [[2, 3], [0, 7]]


@pytest.mark.parametrize("name", ["gru4rec", "sasrec", "bert4rec"])
def test_sequential_models_learn_the_next_item(name):
    model, facts = trained(name)
    _, valid, test = cycle_data()
    per = summarize(evaluate_full(model.full_scores, test, N_ITEMS, ["hr@1", "ndcg@10"], progress=False))
    # random guessing gets HR@1 ~ 1/15 here; the rule "next = last + 1" gets 1.0
    assert per["hr@1"] > 0.8, per
    assert facts["best_valid"] > 0.8 and 1 <= facts["best_epoch"] <= facts["epochs_run"]


def test_full_scores_mask_padding():
    model, _ = trained("sasrec")
    scores = model.full_scores([np.array([3, 4]), np.array([], dtype=np.int64)])
    assert scores.shape == (2, N_ITEMS + 1) and torch.isneginf(scores[:, 0]).all()
    assert torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize("name,dim", [("gru4rec", 16), ("sasrec", 16), ("bert4rec", 16)])
def test_user_vectors_are_the_vectors_that_score_items(name, dim):
    model, _ = trained(name)
    histories = [np.array([1, 2, 3]), np.array([9]), np.array([5, 6])]
    vectors = model.user_vectors(histories)
    assert vectors.shape == (3, dim) and vectors.dtype == np.float32
    logits = model.item_logits(torch.from_numpy(vectors))
    assert torch.allclose(logits, model.full_scores(histories)[:, 1:], atol=1e-5)


@pytest.mark.parametrize("name", ["pop", "itemknn"])
def test_non_sequential_models_have_no_user_vectors(name):
    model, _ = fitted(name)
    with pytest.raises(NotImplementedError):
        model.user_vectors([np.array([1])])


def test_pop_ranks_the_most_frequent_item_first():
    model = build_model("pop", 5, {}, train_cfg(), 0, CPU)
    model.fit([np.array([1, 3, 3]), np.array([3, 2, 2])], NO_CASES, print)
    scores = model.full_scores([np.array([1]), np.array([4, 5])])
    assert scores[:, 1:].argmax(1).tolist() == [2, 2]  # item 3 (column index 2 after dropping padding)
    assert torch.equal(scores[0], scores[1])


def test_itemknn_scores_co_occurring_items_above_others():
    train = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([5, 6])]
    model = build_model("itemknn", 6, {"k": 3}, train_cfg(), 0, CPU)
    model.fit(train, NO_CASES, print)
    s = model.full_scores([np.array([1])])[0]
    assert s[2] > s[3] > 0 and s[3] == s[4]       # 2 co-occurs with 1 twice, 3 and 4 once
    assert s[5] == 0 and s[6] == 0 and s[1] == 0  # never with 1; an item is not its own neighbour
    assert sorted(model.neighbours[1].tolist()) == [2, 3, 4]
    nearest = build_model("itemknn", 6, {"k": 1}, train_cfg(), 0, CPU)
    nearest.fit(train, NO_CASES, print)
    assert nearest.neighbours[1].tolist() == [2] and nearest.full_scores([np.array([1])])[0, 3] == 0


def test_same_seed_same_weights_different_seed_different():
    cfg = train_cfg(epochs=2)
    a, b, c = (fitted("sasrec", cfg, seed)[0] for seed in (1, 1, 2))
    history = [np.array([4, 5, 6])]
    assert torch.equal(a.full_scores(history), b.full_scores(history))
    assert not torch.equal(a.full_scores(history), c.full_scores(history))


@pytest.mark.parametrize("name", list(MODELS))
def test_save_load_round_trip(tmp_path, name):
    model, _ = fitted(name, train_cfg(epochs=2))
    model.save(tmp_path / "model.pt")
    fresh = build_model(name, N_ITEMS, SMALL.get(name, {}), train_cfg(), seed=99, device=CPU)
    fresh.load(tmp_path / "model.pt")
    histories = [np.array([1, 2, 3]), np.array([30])]
    assert torch.equal(model.full_scores(histories), fresh.full_scores(histories))


def test_early_stopping_stops_on_a_plateau_and_keeps_the_best_epoch():
    model, facts = fitted("gru4rec", train_cfg(epochs=200, patience=3))
    # valid NDCG@10 saturates at 1.0 within a few epochs; 3 more evaluations without improvement stop it
    assert facts["epochs_run"] == facts["best_epoch"] + 3 < 200
    _, valid, _ = cycle_data()
    value = summarize(evaluate_full(model.full_scores, valid, N_ITEMS, ["ndcg@10"], progress=False))["ndcg@10"]
    assert value == pytest.approx(facts["best_valid"])


def test_without_validation_cases_all_epochs_run_and_the_last_weights_stay():
    train, _, _ = cycle_data()
    model = build_model("sasrec", N_ITEMS, SMALL["sasrec"], train_cfg(epochs=3), 0, CPU)
    facts = model.fit(train, NO_CASES, log=lambda line: None)
    assert (facts["epochs_run"], facts["best_epoch"], facts["best_valid"]) == (3, 3, None)


@pytest.mark.parametrize("name", list(MODELS))
def test_fit_sees_training_sequences_and_validation_cases_only(name):
    assert list(inspect.signature(model_class(name).fit).parameters) == ["self", "sequences", "valid", "log"]


def test_impossible_hyperparameters_name_the_key():
    with pytest.raises(ConfigError, match="n_heads"):
        build_model("sasrec", N_ITEMS, {"hidden_size": 64, "n_heads": 3}, train_cfg(), 0, CPU)
    with pytest.raises(ConfigError, match="mask_prob"):
        build_model("bert4rec", N_ITEMS, {"mask_prob": 0.0}, train_cfg(), 0, CPU)
