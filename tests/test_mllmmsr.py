"""MLLM-MSR: recurrent summaries in blocks of 3 that carry the previous summary forward, no valid/test
target in any training summary, resume after an interrupted summary run, and the method end to end
with tiny models beside a CF baseline on the same candidate lists."""

from __future__ import annotations

import hashlib
import json
import re

import pandas as pd
import pytest


from mmsrarec.config import load_config
from mmsrarec.errors import ConfigError
from mmsrarec.mllmmsr.users import chain_prefixes
from mmsrarec.stages import Runner

TITLE = re.compile(r"Item number (\d+)")


def fake_answer(prompt: str) -> str:
    """Item prompts -> a description naming the item; block prompts -> a summary unique to the prompt."""
    match = re.search(r"Title: Item number (\d+)", prompt)
    if match:
        return f"A thing called Item number {match.group(1)}."
    return "The user prefers p" + hashlib.sha1(prompt.encode()).hexdigest()[:12]


class FakeLLM:
    """Records every prompt; raises KeyboardInterrupt (a kill) once `fail_after` prompts were answered."""

    is_vlm = False

    def __init__(self, fail_after: int | None = None):
        self.prompts: list[str] = []
        self.fail_after = fail_after

    def __call__(self, prompts, images, max_new_tokens):
        if self.fail_after is not None and len(self.prompts) >= self.fail_after:
            raise KeyboardInterrupt
        self.prompts.extend(prompts)
        return [fake_answer(p) for p in prompts]


@pytest.fixture
def fake(monkeypatch) -> FakeLLM:
    llm = FakeLLM()
    monkeypatch.setattr("mmsrarec.mllmmsr.stage.load_generator", lambda model_cfg: llm)
    return llm


def _summaries(runner: Runner) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = runner.run_dir / "summarize-users"
    return pd.read_parquet(out / "summaries.parquet"), pd.read_parquet(out / "states.parquet")


def test_blocks_of_three_carry_the_previous_summary_forward(toy_overrides, fake):
    runner = Runner(load_config(None, [*toy_overrides, "mllm_msr.users.batch_size=5"]))
    runner.run("summarize-users")
    chains, states = _summaries(runner)
    user_prompts = [p for p in fake.prompts if "Title: Item number" not in p]
    assert len(user_prompts) == len(chains) == chains["chain"].nunique()  # one LLM call per block, none twice
    by_chain = chains.set_index("chain")
    for chain, row in by_chain.iterrows():
        numbered = re.findall(r"^\d+\. ", row["prompt"], flags=re.M)
        assert len(numbered) == len(row["items"]) <= 3
        if row["level"] == 0:
            assert row["previous"] == "" and "so far" not in row["prompt"]
        else:
            previous = by_chain.loc[row["previous"]]
            assert previous["level"] == row["level"] - 1 and chain.startswith(row["previous"] + "|")
            assert previous["summary"] in row["prompt"]  # carried forward
    # every case's history is longer than 9 here: 3 full blocks of its 9 most recent items, oldest first
    data = {s: pd.read_parquet(runner.run_dir / "prepare" / f"{s}.parquet") for s in ("valid", "test")}
    for split, frame in data.items():
        part = states[states["split"] == split].sort_values("key")
        assert len(part) == len(frame) and (part["blocks"] == 3).all()
        for history, window, chain in zip(frame["history"], part["history"], part["chain"]):
            assert list(window) == list(history)[-9:]
            levels = [by_chain.loc[k] for k in chain_prefixes(chain)]
            assert [list(r["items"]) for r in levels] == [list(window[i:i + 3]) for i in (0, 3, 6)]
            third = levels[2]["prompt"]
            assert levels[1]["summary"] in third and len(re.findall(r"^\d+\. ", third, flags=re.M)) == 3
    summary = json.loads((runner.run_dir / "summarize-users" / "summary.json").read_text())
    assert summary["generations"] == len(chains) and summary["test"]["mean_blocks"] == 3


def test_no_valid_or_test_target_reaches_a_training_summary(toy_overrides, fake):
    runner = Runner(load_config(None, [*toy_overrides, "mllm_msr.users.examples_per_user=0",
                                       "mllm_msr.users.max_train_states=0"]))
    runner.run("summarize-users")
    chains, states = _summaries(runner)
    prep = runner.run_dir / "prepare"
    items = pd.read_parquet(prep / "items.parquet")
    number_to_item = {int(TITLE.search(t).group(1)): int(i) for i, t in zip(items["item"], items["title"])}
    frame = pd.read_parquet(prep / "train.parquet")
    train = {int(u): [int(i) for i in s] for u, s in zip(frame["user"], frame["items"])}
    held_out: dict[int, set[int]] = {}
    for split in ("valid", "test"):
        frame = pd.read_parquet(prep / f"{split}.parquet")
        for user, target in zip(frame["user"], frame["target"]):
            held_out.setdefault(int(user), set()).add(int(target))
    prompts = dict(zip(chains["chain"], chains["prompt"]))
    train_states = states[states["split"] == "train"]
    assert len(train_states) == sum(len(s) - 1 for s in train.values())  # every training position
    for user, t, window, chain in zip(train_states["user"], train_states["key"], train_states["history"],
                                      train_states["chain"]):
        assert list(window) == train[user][:t][-9:]
        seen = {number_to_item[int(n)] for k in chain_prefixes(chain) for n in TITLE.findall(prompts[k])}
        assert seen == set(window)  # the summary's inputs name exactly the window's items
        assert not seen & held_out.get(user, set())
        assert train[user][t] not in seen  # nor the state's own target


def test_resume_after_an_interrupted_summary_run(toy_overrides, tmp_path, monkeypatch):
    over = [*toy_overrides, "mllm_msr.users.batch_size=4"]
    first = FakeLLM()
    monkeypatch.setattr("mmsrarec.mllmmsr.stage.load_generator", lambda model_cfg: first)
    runner = Runner(load_config(None, over))
    runner.run("describe-items")
    first.fail_after = len(first.prompts) + 8  # killed at the third batch of 4 summaries
    with pytest.raises(KeyboardInterrupt):
        runner.run("summarize-users")
    partial = runner.run_dir / "summarize-users.partial" / "chunks"
    assert len(list(partial.glob("chunk-*.parquet"))) == 2 and not (runner.run_dir / "summarize-users").exists()
    done_before = {p for p in first.prompts if "Title: Item number" not in p}

    second = FakeLLM()
    monkeypatch.setattr("mmsrarec.mllmmsr.stage.load_generator", lambda model_cfg: second)
    Runner(load_config(None, over)).run("summarize-users")
    assert second.prompts and not done_before & set(second.prompts)  # nothing generated twice
    resumed, _ = _summaries(runner)
    assert len(resumed) == len(done_before) + len(second.prompts)  # nothing lost

    clean = Runner(load_config(None, [*over, f"runs_dir={tmp_path / 'clean'}"]))
    clean.run("summarize-users")
    expected, _ = _summaries(clean)
    columns = ["chain", "summary", "level", "prompt", "previous"]
    pd.testing.assert_frame_equal(resumed[columns], expected[columns])


def test_config_accepts_the_method_and_checks_its_prompts(toy_overrides):
    cfg = load_config(None, [*toy_overrides, "evaluate.methods=[pop, mllm-msr]"])
    assert cfg.mllm_msr.users.blocks(11) == 3 and cfg.mllm_msr.users.blocks(4) == 2
    with pytest.raises(ConfigError, match="mllm_msr.users.update_prompt"):
        load_config(None, [*toy_overrides, "mllm_msr.users.update_prompt=no fields here {items}"])
    with pytest.raises(ConfigError, match="evaluate.methods"):
        load_config(None, [*toy_overrides, "evaluate.methods=[mllm-msr2]"])


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from mmsrarec.models.tiny import tiny_causal_lm
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")


def test_mllm_msr_end_to_end_beside_a_baseline(toy_overrides, tiny_lm, capsys):
    over = [*toy_overrides, "cf.models=[pop]", "evaluate.methods=[pop, mllm-msr]", "evaluate.protocols=[sampled]",
            f"mllm_msr.model.name_or_path={tiny_lm}", f"mllm_msr.recommender.name_or_path={tiny_lm}",
            "mllm_msr.items.max_new_tokens=6", "mllm_msr.users.max_new_tokens=6", "mllm_msr.users.max_train_states=12",
            "mllm_msr.sft.max_steps=2", "mllm_msr.scoring.batch_size=8"]
    runner = Runner(load_config(None, over))
    assert runner.plan("evaluate") == ["prepare", "train-cf", "score-cf", "describe-items", "summarize-users",
                                       "train-mllmmsr", "score-mllmmsr", "evaluate"]
    runner.run("evaluate")
    out = runner.run_dir / "evaluate"
    rows = {(r["method"], r["protocol"]): r for r in json.loads((out / "leaderboard.json").read_text())["rows"]}
    assert {("pop", "sampled"), ("mllm-msr", "sampled")} <= set(rows)
    row = rows[("mllm-msr", "sampled")]
    assert 0 <= row["test_hr@5"] <= 1 and 0 <= row["test_auc"] <= 1
    assert row["llm_calls_per_user"] == 4  # 3 summary blocks (histories of 10-11 items) + 1 scoring pass
    assert row["test_s_per_user"] >= row["test_score_s_per_user"] > 0 and row["test_summary_s_per_user"] > 0
    ours = pd.read_parquet(runner.run_dir / "score-mllmmsr" / "sampled" / "mllm-msr_test.parquet")
    pop = pd.read_parquet(runner.run_dir / "score-cf" / "sampled" / "pop_test.parquet")
    assert ours["candidates"].map(list).tolist() == pop["candidates"].map(list).tolist()  # the same lists
    # SFT examples: 1:1, negatives never among the user's training items
    train = pd.read_parquet(runner.run_dir / "prepare" / "train.parquet")
    seqs = {int(u): set(s) for u, s in zip(train["user"], train["items"])}
    lines = (runner.run_dir / "train-mllmmsr" / "examples.jsonl").read_text().splitlines()
    examples = [json.loads(line) for line in lines]
    answers = [e["completion"][0]["content"] for e in examples]
    assert len(examples) == 24 and answers.count("Yes") == answers.count("No") == 12
    assert all(e["item"] not in seqs[e["user"]] for e, a in zip(examples, answers) if a == "No")
    assert all("The user's preferences, summarized" in e["prompt"][0]["content"] for e in examples)
    described = json.loads((runner.run_dir / "describe-items" / "summary.json").read_text())
    assert described["generations"] == described["items"] and described["generation_s"] > 0
    capsys.readouterr()
    Runner(load_config(None, over)).run("evaluate")
    assert capsys.readouterr().err.count("up to date, skipped") == 8


def test_a_vlm_describes_items_with_their_images_and_the_recommender_sees_them(tmp_path):
    from mmsrarec.data.prepare import load_prepared
    from mmsrarec.mllmmsr.describe import read_descriptions
    from mmsrarec.mllmmsr.prompts import catalog
    from mmsrarec.mllmmsr.recommend import training_examples
    from mmsrarec.mllmmsr.stage import read_states
    from mmsrarec.models.tiny import tiny_qwen2_vl

    from conftest import with_item_images, write_atomic

    folder = with_item_images(write_atomic(tmp_path / "img", name="img", n_users=6, n_items=12, length=6), "img", 12,
                              size=lambda i: (48 + i, 40), color=lambda i: (20 * i, 90, 200 - 10 * i))
    vlm = tiny_qwen2_vl(tmp_path / "vlm")
    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}", "name=v", "data.source=atomic", f"data.path={folder}",
                             "data.name=img", "data.num_negatives=3", f"mllm_msr.model.name_or_path={vlm}",
                             "mllm_msr.model.kind=vlm", "mllm_msr.items.max_new_tokens=4",
                             "mllm_msr.users.max_new_tokens=4", "mllm_msr.items.batch_size=4",
                             f"mllm_msr.recommender.name_or_path={vlm}", "mllm_msr.recommender.kind=vlm"])
    runner = Runner(cfg)
    runner.run("summarize-users")
    table = pd.read_parquet(runner.run_dir / "describe-items" / "descriptions.parquet")
    data = load_prepared(runner.run_dir / "prepare")
    has_image = table["item"].map(data["items"].set_index("item")["image"]) != ""
    assert has_image.sum() >= 4 and (table["with_image"] == has_image).all()
    assert table.loc[has_image, "prompt"].str.contains("picture").all()
    states = read_states(runner.run_dir / "summarize-users", "train")
    items = catalog(data["items"], read_descriptions(runner.run_dir / "describe-items" / "descriptions.parquet"), 10)
    examples = training_examples(states, data["train"], items, cfg.mllm_msr, 9, cfg.seed)
    for item, images, prompt in zip(examples["item"], examples["images"], examples["prompt"]):
        assert len(images) == (1 if items.images[item] else 0)
        assert sum(part["type"] == "image" for part in prompt[0]["content"]) == len(images)
