"""The text-embedding baseline (score-text): scores by hand on toy embeddings, the history window, the full
protocol's exclusions, the blend with a CF model, its rows on a tiny run's leaderboard and its config checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mmsrarec.cf.base import Cases
from mmsrarec.config import load_config
from mmsrarec.errors import ConfigError
from mmsrarec.evaluate.casefiles import read_cases, read_scores
from mmsrarec.evaluate.fusion import fuse, pick_weight
from mmsrarec.evaluate.protocols import full_counts
from mmsrarec.stages import Runner
from mmsrarec.textsim.stage import EMBEDDINGS_FILE, TextScorer, embed_items, item_texts, profiles

# items 1, 2, 3 (row 0 is padding): two orthogonal items and one between them
TOY = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])


class BagOfLetters:
    """A stand-in sentence embedder: letter counts, normalized; records what it was asked to encode."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.training = True

    def eval(self):
        self.training = False
        return self

    def get_sentence_embedding_dimension(self) -> int:
        return 26

    def encode(self, texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False):
        self.calls.append(list(texts))
        out = torch.zeros(len(texts), 26)
        for i, text in enumerate(texts):
            for ch in text.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return torch.nn.functional.normalize(out, dim=1) if normalize_embeddings else out


def test_scores_are_the_cosine_to_the_recency_weighted_mean():
    # history [1, 2]: item 2 is the most recent (weight 1), item 1 before it (weight decay)
    scorer = TextScorer(TOY, history_len=50, decay=0.5)
    scores = scorer.score([np.array([1, 2])], np.array([[1, 2, 3]]))[0]
    # mean = (0.5 * [1, 0] + 1 * [0, 1]) / 1.5 = [1/3, 2/3], direction [1, 2] / sqrt(5)
    assert scores == pytest.approx([1 / math.sqrt(5), 2 / math.sqrt(5), 2.2 / math.sqrt(5)])
    plain = TextScorer(TOY, history_len=50, decay=1.0).score([np.array([1, 2])], np.array([[1, 2, 3]]))[0]
    assert plain == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2), 1.4 / math.sqrt(2)])  # decay 1: plain mean
    # a cosine: the scale of the embeddings does not matter
    assert TextScorer(3 * TOY, 50, 0.5).score([np.array([1, 2])], np.array([[1, 2, 3]]))[0] == pytest.approx(
        scores * 3)  # candidates 3x longer, the profile a unit vector
    assert torch.linalg.norm(profiles(TOY, [np.array([1, 2])], 50, 0.5)[0]).item() == pytest.approx(1.0)


def test_history_len_keeps_the_most_recent_items():
    full = TextScorer(TOY, history_len=3, decay=0.5).score([np.array([3, 1, 2])], np.array([[1, 2, 3]]))
    cut = TextScorer(TOY, history_len=2, decay=0.5).score([np.array([3, 1, 2])], np.array([[1, 2, 3]]))
    assert cut == pytest.approx(TextScorer(TOY, 50, 0.5).score([np.array([1, 2])], np.array([[1, 2, 3]])))
    assert not np.allclose(full, cut)
    one = TextScorer(TOY, history_len=1, decay=0.5).score([np.array([3, 1, 2])], np.array([[1, 2, 3]]))
    assert one[0] == pytest.approx([0.0, 1.0, 0.8])  # only item 2


def test_items_without_text_score_zero_and_padding_is_zero():
    items = pd.DataFrame({"item": [2, 1, 3], "title": ["Bee", "Apple", ""], "text": ["", "apple pie", ""]})
    assert item_texts(items) == ["apple pie", "Bee", ""]  # item order; the title when there is no text
    embedder = BagOfLetters()
    emb = embed_items(embedder, item_texts(items), batch_size=2, progress=False)
    assert not embedder.training and emb.shape == (4, 26)
    assert torch.count_nonzero(emb[0]) == 0 and torch.count_nonzero(emb[3]) == 0
    assert torch.linalg.norm(emb[1:3], dim=1) == pytest.approx(torch.ones(2))
    assert embedder.calls == [["apple pie", "Bee"]]  # an empty text is not encoded
    scorer = TextScorer(emb, 50, 0.9)
    assert scorer.score([np.array([1])], np.array([[3, 2]]))[0][0] == 0.0
    assert scorer.score([np.array([3])], np.array([[1, 2]]))[0] == pytest.approx([0.0, 0.0])  # no profile


def test_full_protocol_ranks_every_item_but_the_history():
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.6, 0.8], [0.0, 1.0]])
    emb = torch.nn.functional.normalize(emb, dim=1)
    emb[0] = 0
    scorer = TextScorer(emb, 50, 0.9)
    cases = Cases(users=np.array([0]), histories=[np.array([1, 2])], targets=np.array([3]))
    # the profile points near items 1 and 2; item 3 beats item 4
    greater, ties, n = full_counts(scorer.full_scores, cases, n_items=4, progress=False)
    assert (greater[0], ties[0], n[0]) == (0, 0, 1)  # target 3 against item 4 alone
    greater, ties, n = full_counts(scorer.full_scores, cases, n_items=4, progress=False, exclude_history=False)
    assert (greater[0], ties[0], n[0]) == (2, 0, 3)  # items 1 and 2 rank above it
    assert scorer.full_scores(cases.histories).shape == (1, 5)


# ----------------------------------------------------------------------------- a tiny run, the real MiniLM

@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    from conftest import write_atomic

    tmp = tmp_path_factory.mktemp("text")
    over = [f"runs_dir={tmp / 'runs'}", "name=text", "data.source=atomic", f"data.path={write_atomic(tmp / 'toy')}",
            "data.name=toy", "data.num_negatives=5", "cf.models=[pop, sasrec]", "cf.train.epochs=1",
            "evaluate.methods=[pop, sasrec, text]", "evaluate.report_users=0", "text.embedder.device=cpu",
            "text.history_len=5", "text.batch_size=7"]
    runner = Runner(load_config(None, over))
    assert runner.plan("evaluate") == ["prepare", "train-cf", "score-cf", "score-text", "evaluate"]
    runner.run("evaluate")
    return runner, over


def test_the_text_rows_join_the_leaderboard(text_run):
    runner, _ = text_run
    rows = {(r["method"], r["protocol"]): r
            for r in json.loads((runner.run_dir / "evaluate" / "leaderboard.json").read_text())["rows"]}
    assert {("text", "sampled"), ("text", "full"), ("text+sasrec", "sampled")} <= set(rows)
    text = rows[("text", "sampled")]
    assert text["embedder"] == "embedded:minilm" and text["items_embedded"] > 0 and text["embed_time_s"] >= 0
    assert 0 <= text["test_ndcg@5"] <= 1 and text["test_eval_time_s"] >= 0
    assert "text+sasrec (weight" in (runner.run_dir / "evaluate" / "leaderboard.md").read_text()

    # the stored lists are the CF models', scored with the saved embeddings exactly as TextScorer scores them
    out = runner.run_dir / "score-text"
    emb = np.load(out / EMBEDDINGS_FILE, allow_pickle=False)
    assert emb.shape == (len(pd.read_parquet(runner.run_dir / "prepare" / "items.parquet")) + 1, 384)
    assert not emb[0].any() and np.linalg.norm(emb[1:], axis=1) == pytest.approx(1.0, abs=1e-5)
    frame, scores = read_scores(out, "text", "test")
    pop = read_cases(runner.run_dir / "score-cf", "pop", "sampled", "test")
    assert frame["candidates"].map(list).tolist() == pop["candidates"].map(list).tolist()
    test = pd.read_parquet(runner.run_dir / "prepare" / "test.parquet")
    cases = Cases.from_frame(test)
    assert scores == pytest.approx(TextScorer(torch.from_numpy(emb), 5, 0.9).score(cases.histories, cases.candidates()))


def test_the_blend_weight_is_picked_on_valid(text_run):
    runner, _ = text_run
    out, cf = runner.run_dir / "score-text", runner.run_dir / "score-cf"
    facts = json.loads((out / "methods.json").read_text())["text+sasrec"]["sampled"]
    weight, curve = pick_weight(read_scores(out, "text", "valid")[1], read_scores(cf, "sasrec", "valid")[1], "ndcg@5")
    assert facts["fuse_weight"] == weight and facts["fuse_cf"] == "sasrec" and facts["fuse_metric"] == "ndcg@5"
    assert facts["fuse_valid_curve"][f"{weight:.2f}"] == pytest.approx(curve[weight])
    assert read_scores(out, "text+sasrec", "test")[1] == pytest.approx(
        fuse(read_scores(out, "text", "test")[1], read_scores(cf, "sasrec", "test")[1], weight))


def test_scores_are_deterministic(text_run):
    runner, over = text_run
    out = runner.run_dir / "score-text"
    before = {f.name: pd.read_parquet(f) for f in sorted((out / "sampled").glob("*.parquet"))}
    before_full = {f.name: pd.read_parquet(f) for f in sorted((out / "full").glob("*.parquet"))}
    Runner(load_config(None, over)).run("score-text", force=True)
    for name, frame in before.items():
        assert pd.read_parquet(out / "sampled" / name)["scores"].map(list).tolist() == \
            frame["scores"].map(list).tolist(), name
    for name, frame in before_full.items():
        pd.testing.assert_frame_equal(pd.read_parquet(out / "full" / name), frame)


# ----------------------------------------------------------------------------- needs and config checks

def test_needs_follow_the_blend(toy_overrides):
    def needs(*settings):
        cfg = load_config(None, [*toy_overrides, "cf.models=[pop, sasrec]", *settings])
        return Runner(cfg).stages["score-text"].needs(cfg), Runner(cfg).plan("evaluate")

    assert needs("evaluate.methods=[sasrec, text]") == (
        ["prepare", "score-cf"], ["prepare", "train-cf", "score-cf", "score-text", "evaluate"])
    assert needs("evaluate.methods=[pop, text]", "text.fuse_cf=")[0] == ["prepare"]  # no blend
    assert needs("evaluate.methods=[sasrec, text]", "text.fuse_cf=")[0] == ["prepare"]
    assert needs("evaluate.methods=[sasrec, text]", "evaluate.protocols=[full]")[0] == ["prepare"]
    assert "score-text" not in needs("evaluate.methods=[pop, sasrec]")[1]  # not on the leaderboard
    assert "score-text" not in needs("evaluate.methods=[sasrec, text]", "evaluate.protocols=[rerank]")[1]


@pytest.mark.parametrize("setting, match", [
    ("text.decay=0", "text.decay"), ("text.decay=1.5", "text.decay"), ("text.history_len=0", "text.history_len"),
    ("text.batch_size=0", "text.batch_size"), ("text.name=a/b", "text.name"), ("text.name=a+b", "text.name"),
    ("evaluate.methods=[pop, words]", "evaluate.methods"),  # not text.name
])
def test_config_refuses(toy_overrides, setting, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [*toy_overrides, setting])


@pytest.mark.parametrize("settings, match", [
    (["text.name=sasrec", "evaluate.methods=[pop, sasrec]"], "text.name"),  # a CF model's name
    (["text.name=mmsrarec", "evaluate.methods=[pop, mmsrarec]"], "text.name"),  # the ranker's
    (["text.name=mllm-msr", "evaluate.methods=[pop, mllm-msr]"], "text.name"),  # MLLM-MSR's
    (["text.fuse_cf=bert4rec", "evaluate.methods=[pop, text]"], "text.fuse_cf.*cf.models"),
    (["evaluate.methods=[pop, text]"], "text.fuse_cf.*evaluate.methods"),  # sasrec is not scored
    (["evaluate.methods=[sasrec, text]", "evaluate.fuse_metric=auc"], "fuse_metric"),
])
def test_plan_refuses(toy_overrides, settings, match):
    cfg = load_config(None, [*toy_overrides, "cf.models=[pop, sasrec]", *settings])
    with pytest.raises(ConfigError, match=match):
        Runner(cfg).plan("evaluate")
