"""End-to-end planted-token test (issue #28): the real stages, tiny models, a toy dataset whose every valid
and test target is an item that nobody has in training and whose title carries a unique token. That token
must reach no text any training reads: no SFT example of the ranker (train-ranker), no retrieved index
context, no GRPO prompt (train-summarizer), no training prompt of MLLM-MSR (its user-summary prompts of
training states and its SFT examples), while it does reach what may see it (the keyword tables, the
test-time prompts), so the test cannot pass vacuously.

Why items that occur only as held-out targets: what must not leak is a held-out *interaction*. An item that
is one user's test target and another user's training item may rightly appear in training text; an item
whose only interactions are held out may not appear there at all, since any appearance can only come from a
valid or test interaction (or from training on the held-out items' text).

What each training reads is captured where it is handed over: the dataset given to TRL's GRPOTrainer
(train_stage.make_trainer), the dataset given to TRL's SFTTrainer (llm.train.trainer_class, shared by both
LLM methods), and what the stages write (examples.jsonl, the index's neighbour tables, summarize-users'
prompts). The summarizer is the tiny LM with its answers prefixed by the item's words (a copying
summarizer): random weights would never write the token, and then a held-out item's keywords reaching a
prompt would go unseen.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_held_out_dataset
from mmsrarec.config import load_config
from mmsrarec.stages import Runner

pytest.importorskip("faiss")

MARK = "zqplantedq"  # one word no tiny model writes by chance and no tokenizer splits off a real word
N_USERS, POOL, TRAIN_LEN = 12, 20, 8


def write_planted_dataset(folder: Path, seed: int = 0) -> Path:
    """Users walk through a shared pool of items in training; each user's valid and test targets are items
    of their own that nobody else touches, with MARK in their title (hence in their text)."""
    return write_held_out_dataset(folder, "planted", N_USERS, POOL, TRAIN_LEN, lambda i: f"Pool item {i}\tgenre{i % 3}",
                                  lambda kind, u: f"Held out {kind} {u} {MARK}\tgenre{u % 3}", ("title", "genre"), seed)


def _text(value) -> str:
    """Everything a row says, as one string (nested messages, numbers, lists)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _leaking(texts) -> list[str]:
    return [t for t in texts if MARK in t]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """Run prepare -> train-cf -> train-summarizer (GRPO) -> summarize-tuned -> index -> train-ranker ->
    score-ranker and describe-items -> summarize-users -> train-mllmmsr -> score-mllmmsr once, capturing what
    the trainers are given and every prompt the scoring stages build."""
    from mmsrarec.llm import train as llm_train
    from mmsrarec.models.tiny import tiny_causal_lm
    from mmsrarec.mllmmsr import recommend as msr_recommend
    from mmsrarec.rank import prompts as rank_prompts
    from mmsrarec.summarize import stage as summarize_stage
    from mmsrarec.summarize import train_stage

    root = tmp_path_factory.mktemp("planted")
    data = write_planted_dataset(root / "data")
    lm = tiny_causal_lm(root / "lm")
    over = [f"runs_dir={root / 'runs'}", "name=planted", "data.source=atomic", f"data.path={data}",
            "data.name=planted", "data.num_negatives=5",
            "cf.models=[sasrec]", "cf.train.epochs=1", "cf.params.sasrec.hidden_size=16",
            "cf.params.sasrec.inner_size=32", "cf.train.max_len=12",
            "evaluate.methods=[sasrec, mmsrarec, mllm-msr]", "evaluate.protocols=[sampled]",
            "evaluate.llm_splits=[test]",
            # the keyword policy: tiny LM, GRPO for 1 step on the length reward alone (no embedder to load)
            f"summarize.model.name_or_path={lm}", "summarize.max_new_tokens=6", "summarize.batch_size=16",
            f"train_summarizer.reference.name_or_path={lm}", "train_summarizer.embedder.device=cpu",
            "train_summarizer.max_steps=1", "train_summarizer.prompts_per_step=2",
            "train_summarizer.num_generations=2", "train_summarizer.max_completion_length=6",
            "train_summarizer.max_eval_items=0", "train_summarizer.information_weight=0",
            "train_summarizer.reconstruction_weight=0", "train_summarizer.length_weight=1",
            # the ranker: every training position, no cap on the examples, one SFT step
            f"rank.model.name_or_path={lm}", "rank.max_examples=0", "rank.examples_per_user=0",
            "rank.sft.max_steps=1", "rank.sft.batch_size=4", "rank.sft.grad_accum=1", "rank.score_batch_size=12",
            # MLLM-MSR: every training position summarized, one SFT step
            f"mllm_msr.model.name_or_path={lm}", f"mllm_msr.recommender.name_or_path={lm}",
            "mllm_msr.items.max_new_tokens=6", "mllm_msr.users.max_new_tokens=6",
            "mllm_msr.users.examples_per_user=0", "mllm_msr.users.max_train_states=0",
            "mllm_msr.sft.max_steps=1", "mllm_msr.sft.batch_size=4", "mllm_msr.sft.grad_accum=1",
            "mllm_msr.scoring.batch_size=12"]

    got: dict = {"grpo": [], "sft": {}, "scored": {"ranker": [], "mllm-msr": []}}

    real_make_trainer = train_stage.make_trainer

    def grpo_trainer(model, processor, dataset, *args, **kwargs):
        got["grpo"].extend(dataset.to_list())
        return real_make_trainer(model, processor, dataset, *args, **kwargs)

    real_trainer_class = llm_train.trainer_class

    def sft_trainer_class(loss, packed=False):
        cls = real_trainer_class(loss, packed)

        def build(*args, train_dataset=None, **kwargs):
            stage = next(s for s in ("train-ranker", "train-mllmmsr") if s in str(kwargs["args"].output_dir))
            got["sft"].setdefault(stage, []).extend(train_dataset.to_list())
            return cls(*args, train_dataset=train_dataset, **kwargs)

        return build

    real_generate = summarize_stage.generate
    item_words = re.compile(r"Item: (.*?)\nKeywords:", re.S)

    def copying_generate(model, processor, prompts, images=None, max_new_tokens=48):
        """The tiny LM's answers, each after the words of its item's text as keywords (MARK first, so that no
        keyword cap drops it)."""
        answers = real_generate(model, processor, prompts, images, max_new_tokens)
        words = [re.findall(r"\w+", m.group(1)) if (m := item_words.search(p)) else [] for p in prompts]
        copied = [", ".join(sorted(w, key=lambda word: word != MARK)) for w in words]
        return [f"{c}\n{a}" for c, a in zip(copied, answers)]

    def recording(module, key):
        real = module.factored_prompt

        def factored(*args, **kwargs):
            prompt = real(*args, **kwargs)
            got["scored"][key].extend(prompt.full(i) for i in range(len(prompt)))
            return prompt

        return factored

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_stage, "make_trainer", grpo_trainer)
        mp.setattr(llm_train, "trainer_class", sft_trainer_class)
        mp.setattr(summarize_stage, "generate", copying_generate)
        mp.setattr(rank_prompts, "factored_prompt", recording(rank_prompts, "ranker"))
        mp.setattr(msr_recommend, "factored_prompt", recording(msr_recommend, "mllm-msr"))
        runner = Runner(load_config(None, over))
        assert runner.plan("score-ranker") == ["prepare", "train-summarizer", "summarize-tuned", "train-cf",
                                               "index", "train-ranker", "score-ranker"]
        runner.run("score-ranker")
        runner.run("score-mllmmsr")

    run_dir = runner.run_dir
    tables = {name: pd.read_parquet(run_dir / "prepare" / f"{name}.parquet")
              for name in ("items", "train", "valid", "test")}
    return {"runner": runner, "run_dir": run_dir, "tables": tables, **got}


def _held_out(planted) -> set[int]:
    tables = planted["tables"]
    return {int(i) for split in ("valid", "test") for i in tables[split]["target"]}


def test_every_held_out_target_is_planted_and_only_held_out(planted):
    """The design the rest relies on: the planted items are exactly the valid and test targets, and no
    training sequence holds one."""
    tables = planted["tables"]
    items = tables["items"]
    planted_items = {int(i) for i, t in zip(items["item"], items["title"]) if MARK in t}
    assert len(planted_items) == 2 * N_USERS
    assert planted_items == _held_out(planted)
    assert all(MARK in str(t) for i, t in zip(items["item"], items["text"]) if int(i) in planted_items)
    in_training = {int(i) for seq in tables["train"]["items"] for i in seq}
    assert in_training and not in_training & planted_items


def test_no_grpo_prompt_holds_a_held_out_item(planted):
    rows = planted["grpo"]
    assert rows  # GRPO got a dataset
    assert not _leaking(_text(r) for r in rows), "a GRPO training row carries a held-out item's text"
    assert not {int(r["item"]) for r in rows} & _held_out(planted)


def test_no_ranker_sft_example_holds_a_held_out_item(planted):
    trained = planted["sft"].get("train-ranker")
    assert trained  # what SFTTrainer was given
    written = (planted["run_dir"] / "train-ranker" / "examples.jsonl").read_text().splitlines()
    assert len(written) >= len(trained)  # every example built (a few may be dropped as too long)
    assert not _leaking(_text(r) for r in trained)
    assert not _leaking(written)
    tasks = {r["task"] for r in trained}
    assert tasks == {"main", "aux_choice", "aux_title", "aux_next_keywords"}  # every task was checked
    assert any("Similar users chose next items" in _text(r) for r in trained)  # with retrieved contexts


def test_no_index_context_holds_a_held_out_item(planted):
    """The neighbour tables name training next items only, and the context text rendered from them (with
    the keywords the ranker reads) never shows the token, in any split."""
    from mmsrarec.index.store import load_neighbours
    from mmsrarec.rank.stage import catalog_for, retrieved_contexts

    run_dir, held = planted["run_dir"], _held_out(planted)
    cfg = planted["runner"].cfg
    catalog = catalog_for(cfg.rank, planted["tables"]["items"], run_dir / "summarize-tuned" / "keywords.parquet")
    words = catalog.context_words()
    assert all(MARK in " ".join(words[i]) for i in held)  # a retrieved held-out item would show the token
    for split in ("train", "valid", "test"):
        table = load_neighbours(run_dir / "index", split)
        assert len(table)
        assert not {int(i) for row in table["next_items"] for i in row} & held, split
        contexts = retrieved_contexts(run_dir / "index", split, catalog, cfg.rank.max_context_keywords)
        assert len(contexts) == len(table) and sum(bool(c) for c in contexts.values()) > len(table) // 2, split
        assert not _leaking(contexts.values()), split


def test_no_mllmmsr_training_prompt_holds_a_held_out_item(planted):
    """The SFT examples of train-mllmmsr, and every summary prompt behind a training user state (its chain
    of blocks), never show the token."""
    from mmsrarec.mllmmsr.users import chain_prefixes

    run_dir = planted["run_dir"]
    trained = planted["sft"].get("train-mllmmsr")
    assert trained
    written = (run_dir / "train-mllmmsr" / "examples.jsonl").read_text().splitlines()
    assert len(written) >= len(trained)
    assert not _leaking(_text(r) for r in trained)
    assert not _leaking(written)

    chains = pd.read_parquet(run_dir / "summarize-users" / "summaries.parquet")
    states = pd.read_parquet(run_dir / "summarize-users" / "states.parquet")
    prompt_of = dict(zip(chains["chain"], chains["prompt"]))
    train_states = states[states["split"] == "train"]
    assert len(train_states) == sum(len(s) - 1 for s in planted["tables"]["train"]["items"])  # every position
    behind = [prompt_of[k] for chain in train_states["chain"] for k in chain_prefixes(chain)]
    assert behind and not _leaking(behind)
    assert not _leaking(train_states["summary"])
    assert not _leaking(chains.loc[chains["split"] == "train", "prompt"])


def test_the_token_reaches_what_may_see_it(planted):
    """Positive controls: the token is in the held-out items' keywords and descriptions' prompts, in the
    summary prompts of the test users (whose history holds their valid item) and in every test-time prompt
    of both methods (the test target is the first candidate)."""
    run_dir, held = planted["run_dir"], _held_out(planted)
    keywords = pd.read_parquet(run_dir / "summarize-tuned" / "keywords.parquet")
    marked = {int(i) for i, kws in zip(keywords["item"], keywords["keywords"]) if MARK in list(kws)}
    assert marked == held

    described = pd.read_parquet(run_dir / "describe-items" / "descriptions.parquet")
    prompted = {int(i) for i, p in zip(described["item"], described["prompt"]) if MARK in p}
    assert prompted == held

    chains = pd.read_parquet(run_dir / "summarize-users" / "summaries.parquet")
    states = pd.read_parquet(run_dir / "summarize-users" / "states.parquet")
    test_chains = states.loc[states["split"] == "test", "chain"]
    prompt_of = dict(zip(chains["chain"], chains["prompt"]))
    assert all(MARK in prompt_of[c] for c in test_chains)  # the last block holds the valid item

    test = planted["tables"]["test"]
    candidates = 1 + len(test["negatives"].iloc[0])
    for method, prompts in planted["scored"].items():
        assert len(prompts) == len(test) * candidates, method
        targets = prompts[::candidates]  # each case's first candidate is its target
        assert all(MARK in p for p in targets), method
