"""The cold-item protocol (data.split=cold, docs/protocols.md) and what a CF model does with an item it never
saw (cf.base.SeenItemsOnly): no cold item reaches training, a history, the index or the SFT / GRPO examples;
test lists are cold only; the split is seeded; and every CF model is exactly at chance on the cold test lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmsrarec.cf.base import SeenItemsOnly, seen_items, unseen_last
from mmsrarec.config import load_config
from mmsrarec.data.prepare import format_stats, load_prepared
from mmsrarec.data.splits import draw_negatives
from mmsrarec.errors import ConfigError, DataError
from mmsrarec.stages import Runner

N_USERS, N_ITEMS, LENGTH = 40, 50, 14


def write_clock_dataset(folder: Path, seed: int = 0) -> Path:
    """Users pick LENGTH distinct items each at distinct times on one global clock, so items are first seen
    at different moments (what cold_pick=newest reads)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    clock = rng.permutation(N_USERS * LENGTH * 10)[:N_USERS * LENGTH].reshape(N_USERS, LENGTH)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(N_USERS):
        items = rng.choice(N_ITEMS, size=LENGTH, replace=False)
        lines += [f"u{u}\ti{i}\t{t}" for i, t in zip(items, np.sort(clock[u]))]
    (folder / "clock.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = ["item_id:token\ttitle:token_seq"] + [f"i{i}\tItem number {i}" for i in range(N_ITEMS)]
    (folder / "clock.item").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def clock(tmp_path) -> list[str]:
    data = write_clock_dataset(tmp_path / "clock")
    return [f"runs_dir={tmp_path / 'runs'}", "name=cold", "data.source=atomic", f"data.path={data}",
            "data.name=clock", "data.num_negatives=5", "data.split=cold", "data.cold_share=0.3"]


def prepare(overrides, *extra) -> Path:
    runner = Runner(load_config(None, [*overrides, *extra]))
    runner.run("prepare")
    return runner.run_dir / "prepare"


def test_cold_split_keeps_cold_items_out_of_training_and_histories(clock):
    folder = prepare(clock)
    data = load_prepared(folder)
    cold = set(data["cold_items"].tolist())
    n_items = len(data["items"])
    assert len(cold) == round(0.3 * n_items) and json.loads((folder / "cold_items.json").read_text())["items"] \
        == sorted(cold)
    inter = pd.read_parquet(folder / "interactions.parquet")
    seqs = {int(u): s.to_numpy() for u, s in inter.groupby("user")["item"]}
    train = {int(u): list(s) for u, s in zip(data["train"]["user"], data["train"]["items"])}
    valid, test = data["valid"].set_index("user"), data["test"].set_index("user")
    assert len(test) and len(valid)
    for user, s in seqs.items():
        warm = [int(i) for i in s if i not in cold]
        # training: the warm items but the last, which is the valid target (warm leave-one-out)
        assert train[user] == warm[:-1] and valid.at[user, "target"] == warm[-1]
        assert list(valid.at[user, "history"]) == warm[:-1]
        assert not set(valid.at[user, "negatives"]) & (cold | set(s.tolist()))  # warm, unseen negatives
        colds = [t for t, i in enumerate(s) if i in cold]
        if not colds:
            assert user not in test.index  # no cold interaction, no test case
            continue
        last = colds[-1]
        assert test.at[user, "target"] == s[last]
        assert list(test.at[user, "history"]) == [int(i) for i in s[:last] if i not in cold]
        negatives = list(test.at[user, "negatives"])
        assert len(set(negatives)) == 5 and set(negatives) <= cold and not set(negatives) & set(s.tolist())
    for user, items in train.items():
        assert not set(items) & cold
    for frame in (data["valid"], data["test"]):
        assert not {int(i) for h in frame["history"] for i in h} & cold
    stats = data["stats"]
    assert stats["cold"]["items"] == len(cold) and stats["cold"]["pick"] == "random"
    assert stats["cold"]["test_cases"] == stats["test_cases"] == len(test)
    assert stats["cold"]["cold_interactions"] == int(inter["item"].isin(cold).sum())
    assert f"cold items: {len(cold)} (random, share 0.3)" in format_stats(stats)


def test_cold_split_is_seeded(clock):
    first = prepare(clock)
    again = prepare(clock, "name=cold2")
    for name in ("cold_items.json", "train.parquet", "valid.parquet", "test.parquet"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    other = prepare(clock, "name=cold3", "data.seed=11")
    assert load_prepared(other)["cold_items"].tolist() != load_prepared(first)["cold_items"].tolist()


def test_newest_picks_the_items_first_seen_last(clock, tmp_path):
    data = load_prepared(prepare(clock, "data.cold_pick=newest"))
    raw = pd.read_csv(tmp_path / "clock" / "clock.inter", sep="\t", names=["user", "item_id", "t"], skiprows=1)
    first = raw.groupby("item_id")["t"].min()
    index = dict(zip(data["items"]["item_id"], data["items"]["item"]))
    latest = sorted(first.index, key=lambda i: (first[i], index[i]))[-len(data["cold_items"]):]
    assert sorted(index[i] for i in latest) == data["cold_items"].tolist()
    assert data["stats"]["cold"]["pick"] == "newest"


def test_min_history_holds_for_valid_and_test(clock):
    data = load_prepared(prepare(clock, "data.min_history=6"))
    assert all(len(h) >= 6 for split in ("valid", "test") for h in data[split]["history"])
    cold = data["stats"]["cold"]
    assert cold["users_too_short_for_a_test_case"] > 0  # not vacuous
    assert cold["test_cases"] + cold["users_too_short_for_a_test_case"] + \
        cold["users_without_enough_cold_negatives"] == cold["users_with_cold_interaction"]


def test_users_with_too_few_unseen_cold_items_get_no_test_case_and_are_counted(clock):
    data = load_prepared(prepare(clock, "data.cold_share=0.1", "data.num_negatives=4"))  # 5 cold items
    cold, pool = data["stats"]["cold"], set(data["cold_items"].tolist())
    assert len(pool) == 5 and cold["users_without_enough_cold_negatives"] > 0 and cold["test_cases"] > 0
    for target, negatives in data["test"][["target", "negatives"]].itertuples(index=False):
        assert len(negatives) == 4 and set(negatives) <= pool - {target}  # only users with 4 unseen cold items
    assert cold["test_cases"] + cold["users_too_short_for_a_test_case"] + \
        cold["users_without_enough_cold_negatives"] == cold["users_with_cold_interaction"]


def test_a_cold_pool_too_small_for_any_user_says_what_to_do(clock):
    with pytest.raises(DataError, match="raise data.cold_share"):
        prepare(clock, "data.cold_share=0.1", "data.num_negatives=5")  # 5 cold items, every cold user saw one


def test_cold_keys_are_validated(clock):
    with pytest.raises(ConfigError, match="cold_share"):
        load_config(None, [*clock, "data.cold_share=1.0"])
    with pytest.raises(ConfigError, match="split=cold only|applies to data.split=cold"):
        load_config(None, [*clock, "data.split=loo"])
    with pytest.raises(ConfigError, match="cold_pick"):
        load_config(None, [*clock[:-2], "data.cold_pick=newest"])
    with pytest.raises(ConfigError, match="negative_sampling"):
        load_config(None, [*clock, "data.negative_sampling=popularity"])


def test_negatives_come_from_the_pool_and_the_default_draw_is_unchanged():
    seqs = {0: np.array([1, 2, 3]), 1: np.array([4, 5])}
    cases = pd.DataFrame({"user": [0, 1]})
    pool = np.array([2, 4, 6, 7, 8, 9])
    drawn = draw_negatives(cases, seqs, 10, 3, "uniform", np.ones(11), 0, "test", pool)
    assert all(set(d) <= set(pool.tolist()) - set(seqs[u].tolist()) and len(set(d)) == 3
               for u, d in zip(cases["user"], drawn))
    assert draw_negatives(cases, seqs, 10, 3, "uniform", np.ones(11), 0, "test", pool) == drawn
    with pytest.raises(ValueError, match="of the 6 items of the pool"):
        draw_negatives(cases, seqs, 10, 6, "uniform", np.ones(11), 0, "test", pool)
    # pool None is the draw of loo / users as it was: integers over 1..n_items, skipping the user's items
    rng = np.random.default_rng([0, 2, 0])
    expected = [i for i in rng.integers(1, 11, size=6).tolist() if i not in (1, 2, 3)]
    expected = list(dict.fromkeys(expected))[:3]
    assert draw_negatives(cases.head(1), seqs, 10, 3, "uniform", np.ones(11), 0, "test")[0][:len(expected)] \
        == expected


def test_never_seen_items_tie_below_every_seen_item():
    seen = seen_items([[1, 2], [2, 3]], 6)
    assert seen.tolist() == [False, True, True, True, False, False, False]
    scores = torch.tensor([[-np.inf, 0.5, 3.0, -2.0, 9.0, -7.0, 1.0],
                           [-np.inf, 4e9, 5e9, 6e9, 1.0, 2.0, 3.0]])
    out = unseen_last(scores, torch.as_tensor(seen))
    for row, raw in zip(out, scores):
        assert torch.isfinite(row[1:]).all() and row[0] == raw[0]  # padding untouched
        assert torch.equal(row[1:4], raw[1:4])  # seen items keep their scores
        assert len(set(row[4:].tolist())) == 1 and row[4] < row[1:4].min()  # unseen: tied, below
    assert torch.equal(unseen_last(scores, torch.ones(7, dtype=torch.bool)), scores)  # all seen: unchanged

    class Flat:
        n_items, name = 6, "flat"

        def full_scores(self, histories):
            return scores[:len(histories)]

    wrapped = SeenItemsOnly(Flat(), seen)
    assert wrapped.name == "flat"
    got = wrapped.score([np.array([1]), np.array([2])], np.array([[4, 5, 6], [1, 5, 6]]))
    assert got[0].tolist() == [got[0][0]] * 3 and got[1][0] > got[1][1] == got[1][2]


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory) -> dict:
    """prepare -> train-cf (every CF model, tiny) -> score-cf and index on split=cold, once per module."""
    pytest.importorskip("faiss").omp_set_num_threads(1)
    root = tmp_path_factory.mktemp("cold")
    data = write_clock_dataset(root / "clock")
    models = ["pop", "itemknn", "gru4rec", "sasrec"]
    over = [f"runs_dir={root / 'runs'}", "name=cold", "data.source=atomic", f"data.path={data}", "data.name=clock",
            "data.num_negatives=5", "data.split=cold", "data.cold_share=0.3", f"cf.models=[{', '.join(models)}]",
            f"evaluate.methods=[{', '.join(models)}]", "evaluate.protocols=[sampled, full]", "cf.train.epochs=2",
            "cf.params.sasrec.hidden_size=16", "cf.params.sasrec.inner_size=32", "cf.params.gru4rec.hidden_size=16",
            "cf.params.gru4rec.embedding_size=16", "cf.train.max_len=12", "index.cf_model=sasrec"]
    cfg = load_config(None, over)
    runner = Runner(cfg)
    runner.run("score-cf")
    runner.run("index")
    return {"cfg": cfg, "run_dir": runner.run_dir, "models": models}


def test_every_cf_model_is_exactly_at_chance_on_cold_test_lists(cold_run):
    from mmsrarec.evaluate.casefiles import read_cases
    from mmsrarec.evaluate.metrics import per_case

    run_dir = cold_run["run_dir"]
    data = load_prepared(run_dir / "prepare")
    cold = set(data["cold_items"].tolist())
    n_items = len(data["items"])
    test = data["test"]
    for model in cold_run["models"]:
        sampled = read_cases(run_dir / "score-cf", model, "sampled", "test")
        assert (sampled["greater"] == 0).all() and (sampled["ties"] == 5).all(), model  # all six tie
        hr = per_case(["hr@1", "hr@3", "hr@6"], *(sampled[c].to_numpy() for c in ("greater", "ties", "n")))
        assert [v.mean() for v in hr.values()] == [1 / 6, 3 / 6, 1.0], model
        # full: the cold target ties with every other cold item outside the history, below every warm one
        full = read_cases(run_dir / "score-cf", model, "full", "test")
        for hist, greater, ties in zip(test["history"], full["greater"], full["ties"]):
            competing = set(range(1, n_items + 1)) - set(hist.tolist())
            assert ties == len(competing & cold) - 1 and greater == len(competing - cold), model
        valid = read_cases(run_dir / "score-cf", model, "sampled", "valid")
        assert len(valid) == len(data["valid"])


def test_no_cold_item_reaches_the_index_or_the_sft_and_grpo_items(cold_run):
    from mmsrarec.index.store import load_neighbours
    from mmsrarec.rank.config import RankConfig, TaskWeights
    from mmsrarec.rank.prompts import Catalog
    from mmsrarec.rank.tasks import build_examples
    from mmsrarec.summarize.config import SummarizerTrainConfig
    from mmsrarec.summarize.grpo import split_items

    run_dir = cold_run["run_dir"]
    data = load_prepared(run_dir / "prepare")
    cold = set(data["cold_items"].tolist())
    windows = pd.read_parquet(run_dir / "index" / "windows.parquet")
    assert len(windows) and not set(windows["next_item"]) & cold
    for split in ("train", "valid", "test"):
        frame = load_neighbours(run_dir / "index", split)
        assert len(frame) and not {int(i) for row in frame["next_items"] for i in row} & cold, split

    mark = "zzcold"
    items = data["items"].copy()
    items.loc[items["item"].isin(cold), "title"] += " " + mark
    cfg = RankConfig(max_examples=0, examples_per_user=0, neg_per_pos=3,
                     tasks=TaskWeights(main=1, aux_choice=1, aux_title=1, aux_next_keywords=1))
    examples = build_examples(data, Catalog.build(items, None, False), cfg, seed=3).to_list()
    assert examples and mark not in json.dumps(examples)
    assert not {r["item"] for r in examples if r.get("item") is not None} & cold

    # train-summarizer's GRPO items: those of training interactions (summarize/train_stage.py)
    in_training = {int(i) for seq in pd.read_parquet(run_dir / "prepare" / "train.parquet")["items"] for i in seq}
    trained, _ = split_items(data["items"], SummarizerTrainConfig(held_out_fraction=0.2), 0, trainable=in_training)
    assert len(trained) and not set(trained["item"]) & cold


def test_a_user_with_too_few_unseen_warm_items_has_no_valid_case_and_trains_on_all_its_warm_items():
    from mmsrarec.data.splits import split_cold

    seqs = {1: np.array([1, 2, 3, 4, 5]), 2: np.array([1, 2, 5, 6])}  # cold 5, 6, 7; warm pool 1, 2, 3, 4, 8
    train, cases, short, facts = split_cold(seqs, np.array([5, 6, 7]), 8, min_history=1, num_negatives=2)
    assert cases["valid"]["user"].tolist() == [2]  # user 1 has seen 4 of the 5 warm items: 1 left, 2 needed
    assert facts["users_without_enough_warm_negatives"] == 1 and short == 0
    assert dict(zip(train["user"], train["items"]))[1] == [1, 2, 3, 4]  # every warm item trains
    assert cases["test"]["user"].tolist() == [1]  # user 2 has seen 2 of the 3 cold items: 1 left, 2 needed
    assert facts["users_without_enough_cold_negatives"] == 1
