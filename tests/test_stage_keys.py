"""A finished stage must never stand for a config it would not produce: every config field a stage reads
while it runs is in its key, and the evaluate stage follows every scoring-time setting.

The first tests record, during a tiny end-to-end run of every stage, which config fields each stage's
entry function reads (a recording __getattribute__ on the config dataclasses), then change each read field
and check that the stage's key changes with it. The last one walks every scoring-time key of the ranker:
after changing it, `evaluate` in the same run folder gives the numbers of a fresh run."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import defaultdict

import pytest

from mmsrarec import pipeline
from mmsrarec.config import RunConfig, load_config
from mmsrarec.configtools import key_dict
from mmsrarec.stages import STAGES, Runner

# where a run's files go and how many threads it uses: no result depends on them
NOT_RESULTS = {"name", "runs_dir", "threads"}
# fields a section itself reads and checks (the score files' digests): a made-up value makes it raise
SECTION_CHECKS = {"evaluate.score_files"}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from mmsrarec.models.tiny import tiny_causal_lm
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")


class Reads:
    """Which config fields (dotted paths) each stage's entry function reads while it runs."""

    def __init__(self, cfg: RunConfig, monkeypatch):
        self.stage: str | None = None
        self.by_stage: dict[str, set[str]] = defaultdict(set)
        self.paths: dict[int, str] = {}
        self._walk(cfg, "")
        for cls in {type(obj) for obj in self.objects}:
            monkeypatch.setattr(cls, "__getattribute__", self._recording(cls))
        original = pipeline.Runner._execute

        def execute(runner, name, *args, **kwargs):
            self.stage = name
            try:
                return original(runner, name, *args, **kwargs)
            finally:
                self.stage = None

        monkeypatch.setattr(pipeline.Runner, "_execute", execute)

    def _walk(self, obj, prefix: str) -> None:
        self.objects = getattr(self, "objects", [])
        self.objects.append(obj)  # kept alive, so no id is reused
        self.paths[id(obj)] = prefix
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                self._walk(value, f"{prefix}{f.name}.")

    def _recording(self, cls):
        fields = {f.name for f in dataclasses.fields(cls)}
        reads = self

        def getattribute(obj, name):
            value = object.__getattribute__(obj, name)
            if reads.stage is not None and name in fields and not dataclasses.is_dataclass(value):
                prefix = reads.paths.get(id(obj))
                if prefix is not None:
                    reads.by_stage[reads.stage].add(prefix + name)
            return value

        return getattribute


def changed(value):
    """Another value of the same kind (only the key is computed from it, so it need not be valid)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, list):
        return [*value, value[0] if value else "x"]
    if isinstance(value, dict):
        return {**value, "changed": 1}
    return "changed"


def unkeyed_reads(stages: dict, cfg: RunConfig, reads: dict[str, set[str]]) -> dict[str, list[str]]:
    """Per stage, the fields it read whose change leaves its config section (what its key holds) unchanged."""
    out = {}
    for name, paths in reads.items():
        section = stages[name].section
        before = json.dumps(key_dict(section(cfg)), sort_keys=True, default=str)
        missing = []
        for path in sorted(paths - NOT_RESULTS):
            other = copy.deepcopy(cfg)
            *parents, leaf = path.split(".")
            obj = other
            for part in parents:
                obj = getattr(obj, part)
            setattr(obj, leaf, changed(getattr(obj, leaf)))
            try:
                after = json.dumps(key_dict(section(other)), sort_keys=True, default=str)
            except Exception:  # the section reads the field and refuses the made-up value: only these may
                if path in SECTION_CHECKS:
                    continue
                raise

            if after == before:
                missing.append(path)
        if missing:
            out[name] = missing
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_lm):
    """A tiny run of every stage (GRPO, the ranker with retrieval and candidate notes, MLLM-MSR, the text
    baseline and its blend, all three protocols, a blend) with the reads of each stage recorded."""
    from conftest import write_atomic

    tmp = tmp_path_factory.mktemp("keys")
    data = write_atomic(tmp / "toy")
    over = [f"runs_dir={tmp / 'runs'}", "name=keys", "data.source=atomic", f"data.path={data}", "data.name=toy",
            "data.num_negatives=5", "cf.models=[pop, sasrec]", "cf.train.epochs=2",
            "evaluate.methods=[pop, sasrec, mmsrarec, mllm-msr, text]", "evaluate.protocols=[sampled, full, rerank]",
            "evaluate.rerank_top=6", "evaluate.fuse=[sasrec]", "evaluate.report_users=2",
            f"summarize.model.name_or_path={tiny_lm}", "summarize.max_new_tokens=6", "summarize.batch_size=8",
            f"train_summarizer.reference.name_or_path={tiny_lm}", "train_summarizer.max_steps=1",
            "train_summarizer.save_steps=1", "train_summarizer.prompts_per_step=2", "train_summarizer.num_generations=2",
            "train_summarizer.max_completion_length=6", "train_summarizer.max_eval_items=2",
            "train_summarizer.embedder.device=cpu",
            f"rank.model.name_or_path={tiny_lm}", "rank.sft.max_steps=1", "rank.max_examples=8",
            "rank.score_batch_size=8", "rank.candidate_cf_rank=sasrec", "rank.candidate_votes=3",
            f"mllm_msr.model.name_or_path={tiny_lm}", f"mllm_msr.recommender.name_or_path={tiny_lm}",
            "mllm_msr.items.max_new_tokens=4", "mllm_msr.users.max_new_tokens=4", "mllm_msr.users.max_train_states=4",
            "mllm_msr.sft.max_steps=1", "mllm_msr.scoring.batch_size=8", "text.embedder.device=cpu"]
    cfg = load_config(None, over)
    with pytest.MonkeyPatch.context() as mp:
        reads = Reads(cfg, mp)
        runner = Runner(cfg)
        runner.run("evaluate")
    return cfg, dict(reads.by_stage), runner


@pytest.fixture(scope="module")
def recorded_baselines(tmp_path_factory):
    """A run without any LLM: what evaluate and its report read then (no ranker settings in its key)."""
    from conftest import write_atomic

    tmp = tmp_path_factory.mktemp("keys-baselines")
    over = [f"runs_dir={tmp / 'runs'}", "name=base", "data.source=atomic", f"data.path={write_atomic(tmp / 'toy')}",
            "data.name=toy", "data.num_negatives=5", "cf.models=[pop, itemknn]", "evaluate.methods=[pop, itemknn]",
            "evaluate.report_users=2"]
    cfg = load_config(None, over)
    with pytest.MonkeyPatch.context() as mp:
        reads = Reads(cfg, mp)
        Runner(cfg).run("evaluate")
    return cfg, dict(reads.by_stage)


def test_a_run_without_llm_reads_only_what_its_keys_hold(recorded_baselines):
    cfg, reads = recorded_baselines
    assert set(reads) == {"prepare", "train-cf", "score-cf", "evaluate"}
    assert unkeyed_reads(STAGES, cfg, reads) == {}


def test_every_stage_ran_and_read_its_config(recorded):
    cfg, reads, runner = recorded
    assert set(runner.plan("evaluate")) == set(STAGES) - {"summarize"}  # the tuned policy's keywords only
    assert set(reads) == set(runner.plan("evaluate"))
    assert {"rank.history_len", "rank.scoring", "evaluate.llm_splits"} <= reads["score-ranker"]
    assert "evaluate.rerank_top" in reads["rerank-ranker"] and "evaluate.ks" in reads["evaluate"]


def test_every_field_a_stage_reads_is_in_its_key(recorded):
    cfg, reads, _ = recorded
    assert unkeyed_reads(STAGES, cfg, reads) == {}


def test_the_check_catches_a_key_that_drops_a_field_it_reads(recorded):
    cfg, reads, _ = recorded
    stage = STAGES["score-ranker"]

    def section(c):  # the ranker's section less one scoring-time field
        full = key_dict(stage.section(c))
        del full["rank"]["history_len"]
        return full

    broken = {**STAGES, "score-ranker": dataclasses.replace(stage, section=section)}
    assert unkeyed_reads(broken, cfg, reads) == {"score-ranker": ["rank.history_len"]}


# ----------------------------------------------------------------------------- the command, every key

# a scoring-time key of the ranker -> another valid value (with the zero-shot ranker on keywords and retrieval)
SCORING_KEYS = {
    "rank.history_len": 1, "rank.max_keywords": 2, "rank.history_keywords": 1, "rank.max_context_keywords": 3,
    "rank.raw_text_words": 3, "rank.use_keywords": False, "rank.use_retrieval": False, "rank.scoring": "naive",
    "rank.score_batch_size": 3, "rank.candidate_votes": 2, "rank.candidate_cf_rank": "pop",
}


def test_evaluate_follows_every_scoring_time_key(toy_overrides, tiny_lm, tmp_path):
    base = [*toy_overrides, "data.max_cases=8", "cf.models=[pop, sasrec]", "cf.train.epochs=1",
            "evaluate.methods=[pop, mmsrarec]", "evaluate.protocols=[sampled]", "evaluate.llm_splits=[test]",
            "evaluate.report_users=0", "rank.zero_shot=true", "rank.keywords_from=summarize",
            f"summarize.model.name_or_path={tiny_lm}", "summarize.max_new_tokens=6",
            f"rank.model.name_or_path={tiny_lm}", "rank.score_batch_size=8"]

    def llm_row(over: list[str]) -> dict:
        runner = Runner(load_config(None, over))
        runner.run("evaluate")
        rows = json.loads((runner.run_dir / "evaluate" / "leaderboard.json").read_text())["rows"]
        return {k: v for k, v in next(r for r in rows if r["method"] == "mmsrarec").items()
                if k.startswith("test_") and not k.endswith(("_s", "_s_per_user", "_median", "time_s"))}

    first = llm_row(base)
    for key, value in SCORING_KEYS.items():
        setting = f"{key}={str(value).lower() if isinstance(value, bool) else value}"
        same_folder = llm_row([*base, setting])
        fresh = llm_row([*base, setting, f"name=fresh-{key.split('.')[-1]}"])
        assert same_folder == pytest.approx(fresh), key
    assert llm_row(base) == pytest.approx(first)  # and back


def test_the_walk_covers_every_scoring_time_field(recorded):
    """A new field that scoring reads and training does not must join SCORING_KEYS above."""
    _, reads, _ = recorded
    scoring_only = {p for p in reads["score-ranker"] - reads["train-ranker"] if p.startswith("rank.")}
    assert scoring_only <= set(SCORING_KEYS), scoring_only - set(SCORING_KEYS)
