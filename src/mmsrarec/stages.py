"""The composition root: every stage of mmsrarec declared once, with what it reads and what keys it.

A stage's `needs` name every stage whose folder it reads (StageContext.input refuses any other), and its
`section` holds every config field it reads (tests/test_stage_keys.py records the reads of a whole run
and checks that each one changes the key). Data flows one way:

    prepare -> train-cf / summarize -> index -> train -> score -> evaluate

GPU work is exactly the training and scoring stages; evaluate only reads per-case scores.
This is the only module that knows every domain; the engine (pipeline.py) knows none.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from pathlib import Path

from . import pipeline
from .config import RunConfig
from .configtools import key_dict
from .errors import ConfigError
from .evaluate.outside import check_score_files, score_file_digests
from .mllmmsr import config as msr
from .pipeline import Stage
from .rank.config import keyword_stage, ranker_needs
from .summarize.vllm_backend import check_grpo_vllm, check_summarize_backend


def _check_index(cfg: RunConfig) -> None:
    if cfg.index.cf_model not in cfg.cf.models:
        raise ConfigError(f"index.cf_model is {cfg.index.cf_model!r}, which cf.models does not train "
                          f"(cf.models = {cfg.cf.models}); add it there or pick one of those")


def _index_own(cfg: RunConfig) -> tuple[str, ...]:
    """The later stages read the neighbours tables; the index itself only with rank.candidate_votes,
    which searches it again."""
    return () if cfg.rank.candidate_votes else ("index.faiss", "index.npy")


def ranks(cfg: RunConfig) -> bool:
    """Whether the MMSRARec ranker is on the leaderboard."""
    return cfg.rank.name in cfg.evaluate.methods


def cf_methods(cfg: RunConfig) -> list[str]:
    """The CF models on the leaderboard, in evaluate.methods' order."""
    return [m for m in cfg.evaluate.methods if m in cfg.cf.models]


def _prepare_section(cfg: RunConfig) -> dict:
    """data.* with the effective seed: data.seed -1 under run seed 5 is the same split as data.seed 5."""
    data = {k: v for k, v in key_dict(cfg.data).items() if k != "seed"}
    return {"data": data, "seed": cfg.data_seed}


def _notes_section(cfg: RunConfig) -> dict:
    """What the ranker's prompts read beyond rank.*: the CF models behind candidate notes, the index's
    settings behind candidate votes (the index searched again)."""
    rank = cfg.rank
    return {**({"cf": cfg.cf} if rank.candidate_votes or rank.candidate_cf_rank else {}),
            **({"index": cfg.index} if rank.candidate_votes else {}),
            # CF-rank notes rank never-seen items last (cf.base.SeenItemsOnly), which the notes of before did not
            **({"cf_notes_revision": 1} if rank.candidate_cf_rank else {})}


def _train_ranker_section(cfg: RunConfig) -> dict:
    return {"rank": cfg.rank, "seed": cfg.seed, **_notes_section(cfg)}


def _score_ranker_section(cfg: RunConfig) -> dict:
    return {"rank": cfg.rank, "seed": cfg.seed, "llm_splits": cfg.evaluate.llm_splits, **_notes_section(cfg)}


def _rerank_ranker_section(cfg: RunConfig) -> dict:
    ev = cfg.evaluate
    return {"rank": cfg.rank, "seed": cfg.seed, **_notes_section(cfg), "cf": cfg.cf, "rerank_cf": ev.rerank_cf,
            "rerank_top": ev.rerank_top, "full_exclude_history": ev.full_exclude_history}


def _score_ranker_needs(cfg: RunConfig) -> list[str]:
    return [*ranker_needs(cfg), "train-ranker"]


def _rerank_ranker_needs(cfg: RunConfig) -> list[str]:
    needs = _score_ranker_needs(cfg)
    return needs if "train-cf" in needs else [*needs, "train-cf"]


def texts(cfg: RunConfig) -> bool:
    """Whether the text-embedding baseline (text.name) is on the leaderboard."""
    return cfg.text.name in cfg.evaluate.methods


def _text_name_key(cfg: RunConfig) -> dict:
    """What evaluate's key holds of text.name, which its needs read (texts): the name when it is not the
    default, else nothing, so the keys of evaluations from before the text baseline stand."""
    default = next(f.default for f in dataclasses.fields(cfg.text) if f.name == "name")
    return {} if cfg.text.name == default else {"text_name": cfg.text.name}


def _text_fuses(cfg: RunConfig) -> bool:
    """Whether score-text blends its sampled scores with text.fuse_cf's, which score-cf scores (_check_text:
    that CF model is on the leaderboard). Reads no more than the stage's key holds."""
    return bool(cfg.text.fuse_cf) and "sampled" in cfg.evaluate.protocols


def _score_text_needs(cfg: RunConfig) -> list[str]:
    return ["prepare", *(["score-cf"] if _text_fuses(cfg) else [])]


def _score_text_section(cfg: RunConfig) -> dict:
    ev = cfg.evaluate
    return {"text": cfg.text, "protocols": ev.protocols, "full_exclude_history": ev.full_exclude_history,
            **({"fuse_metric": ev.fuse_metric} if _text_fuses(cfg) else {})}


def _check_text(cfg: RunConfig) -> None:
    """The text baseline's rows must not take another method's name; its blend needs a CF model and a
    per-case metric to pick the weight by."""
    text = cfg.text
    if text.name in cfg.cf.models or text.name in (cfg.rank.name, cfg.mllm_msr.name):
        raise ConfigError(f"text.name is {text.name!r}, which already names another method (cf.models = "
                          f"{cfg.cf.models}, rank.name = {cfg.rank.name!r}, mllm_msr.name = {cfg.mllm_msr.name!r}); "
                          "pick another name for the text baseline's rows")
    if not text.fuse_cf:
        return
    if text.fuse_cf not in cfg.cf.models:
        raise ConfigError(f"text.fuse_cf is {text.fuse_cf!r}, which cf.models does not train (cf.models = "
                          f"{cfg.cf.models}); name one of those, or set it empty (text.fuse_cf=) for no blended row")
    if _text_fuses(cfg) and text.fuse_cf not in cfg.evaluate.methods:
        raise ConfigError(f"text.fuse_cf is {text.fuse_cf!r}, which evaluate.methods (= {cfg.evaluate.methods}) does "
                          f"not score: the blend '{text.fused_name}' reads its sampled scores; add it there, or set "
                          "text.fuse_cf empty (text.fuse_cf=) for no blended row")
    from .evaluate.outside import parse_entries
    if any(f.name == text.fused_name for f in parse_entries(cfg.evaluate.score_files)):
        raise ConfigError(f"evaluate.score_files names a file {text.fused_name!r}, the name of the text baseline's "
                          "blend (text.name + '+' + text.fuse_cf); name the file otherwise with 'name=path'")
    if _text_fuses(cfg):
        from .evaluate.metrics import POOLED, parse_metric
        try:
            pooled = parse_metric(cfg.evaluate.fuse_metric)[0] in POOLED
        except ValueError as err:
            raise ConfigError(f"evaluate.fuse_metric (which picks text.fuse_cf's blend weight): {err}") from None
        if pooled:
            raise ConfigError(f"evaluate.fuse_metric is {cfg.evaluate.fuse_metric!r}, the pooled ROC AUC, which cannot "
                              "pick the weight of a blend of per-case z-scores (text.fuse_cf); use 'gauc' or an "
                              "hr/ndcg/mrr metric")


def _score_cf_section(cfg: RunConfig) -> dict:
    ev = cfg.evaluate
    return {"cf": cfg.cf, "seed": cfg.seed, "methods": cf_methods(cfg), "protocols": ev.protocols,
            "batch_size": ev.batch_size, "full_exclude_history": ev.full_exclude_history}


def _report_needs(cfg: RunConfig) -> list[str]:
    """The report shows the ranker's keywords and, when they come from the tuned policy, its reward curves."""
    if not (ranks(cfg) and cfg.rank.use_keywords):
        return []
    stage = keyword_stage(cfg)
    return [stage, *(["train-summarizer"] if stage == "summarize-tuned" else [])]


def _evaluate_needs(cfg: RunConfig) -> list[str]:
    protocols = cfg.evaluate.protocols
    return ["prepare", *(["score-cf"] if cf_methods(cfg) and set(protocols) - {"rerank"} else []),
            *(["score-ranker"] if ranks(cfg) and "sampled" in protocols else []),
            *(["rerank-ranker"] if ranks(cfg) and "rerank" in protocols else []),
            *(["score-mllmmsr"] if msr.evaluated(cfg) and "sampled" in protocols else []),
            *(["score-text"] if texts(cfg) and {"sampled", "full"} & set(protocols) else []),
            *_report_needs(cfg)]


def _evaluate_section(cfg: RunConfig) -> dict:
    return {"evaluate": cfg.evaluate, "seed": cfg.seed, "cf_models": cfg.cf.models, "rank_name": cfg.rank.name,
            "mllm_msr_name": cfg.mllm_msr.name, **_text_name_key(cfg), "images": cfg.data.images,
            "split": cfg.data.split,
            **({"rank": cfg.rank} if ranks(cfg) else {}),  # the report shows what the ranker's prompts showed
            **score_file_digests(cfg)}  # an outside score file's content is an input too


# The stages that read only the item table of `prepare` (what each item is, not who interacted with it):
# their keys hold its hash alone, so runs that draw other splits or lists of the same items (seeds under
# experiment.redraw_data, another split) share them instead of summarizing the same items again.
ITEMS_ONLY = MappingProxyType({"prepare": ("items.parquet",)})


def _stages() -> dict[str, Stage]:
    # revision 1: datasets refuse image paths out of their folder and non-finite numbers (prepare); text
    # reaches prompts only as mmsrarec.untrusted allows (every LLM stage); GRPO trains on items of training
    # interactions only (train-summarizer). Finished stages of earlier versions are redone.
    # evaluate, revision 1: the sampled protocol's `auc` is the papers' ROC AUC pooled over all test rows; the
    # per-case AUC it was before is `gauc` (evaluate/metrics.py), so leaderboards of earlier versions are redone.
    return {s.name: s for s in [
        Stage("prepare", "mmsrarec.data.prepare:run", lambda c: [], _prepare_section,
              "read the dataset, filter, remap IDs, split, draw candidate lists", revision=1),
        Stage("train-cf", "mmsrarec.cf.stage:run", lambda c: ["prepare"],
              lambda c: {"cf": c.cf, "seed": c.seed}, "train the ID-based models (Pop, ItemKNN, GRU4Rec, SASRec...)"),
        Stage("index", "mmsrarec.index.stage:run", lambda c: ["prepare", "train-cf"],
              lambda c: {"index": c.index, "cf": c.cf, "seed": c.seed},
              "build the FAISS index over training users and retrieve neighbours for every case", _check_index,
              own=_index_own),
        Stage("summarize", "mmsrarec.summarize.stage:run", lambda c: ["prepare"],
              lambda c: {"summarize": c.summarize}, "summarize every item into keywords with the zero-shot policy",
              check_summarize_backend, distributed=True, revision=1, reads=ITEMS_ONLY),
        Stage("train-summarizer", "mmsrarec.summarize.train_stage:run", lambda c: ["prepare"],
              lambda c: {"train_summarizer": c.train_summarizer, "summarize": c.summarize, "seed": c.seed},
              "tune the keyword policy with GRPO", check_grpo_vllm, distributed=True, revision=1),
        Stage("summarize-tuned", "mmsrarec.summarize.stage:run_tuned", lambda c: ["prepare", "train-summarizer"],
              lambda c: {"summarize": c.summarize}, "summarize every item with the GRPO-tuned policy",
              check_summarize_backend, distributed=True, revision=1, reads=ITEMS_ONLY),
        Stage("train-ranker", "mmsrarec.rank.stage:run", ranker_needs, _train_ranker_section,
              "multitask LoRA SFT of the Yes/No ranker (TRL + PEFT)", distributed=True, revision=1),
        Stage("describe-items", "mmsrarec.mllmmsr.stage:describe_items", lambda c: ["prepare"], msr.describe_section,
              "MLLM-MSR: describe every item (text, and image with a VLM) in a short paragraph", revision=1,
              reads=ITEMS_ONLY),
        Stage("summarize-users", "mmsrarec.mllmmsr.stage:summarize_users", lambda c: ["prepare", "describe-items"],
              msr.users_section, "MLLM-MSR: recurrent user-preference summaries, one LLM call per block of 3 items", revision=1),
        Stage("train-mllmmsr", "mmsrarec.mllmmsr.stage:train", lambda c: ["prepare", "describe-items",
              "summarize-users"], msr.train_section, "MLLM-MSR: LoRA SFT of the Yes/No recommender on user summaries",
              msr.check_names, revision=1),
        Stage("score-cf", "mmsrarec.cf.score_stage:run", lambda c: ["prepare", "train-cf"], _score_cf_section,
              "score the stored lists (sampled) and rank every item (full) with each CF model of evaluate.methods",
              revision=1),  # items no training sequence holds score last, tied (cf.base.SeenItemsOnly)
        Stage("score-ranker", "mmsrarec.rank.score_stage:run", _score_ranker_needs, _score_ranker_section,
              "score the stored candidate lists of evaluate.llm_splits with the trained ranker",
              distributed=True, revision=1),  # under a launcher every process scores a share of the cases
        Stage("rerank-ranker", "mmsrarec.rank.score_stage:run_rerank", _rerank_ranker_needs, _rerank_ranker_section,
              "rerank protocol: the ranker reorders evaluate.rerank_cf's top evaluate.rerank_top items (test)",
              distributed=True, revision=2),  # 2: the CF lists rank never-seen items last (cf.base.SeenItemsOnly)
        Stage("score-mllmmsr", "mmsrarec.mllmmsr.score_stage:run",
              lambda c: ["prepare", "describe-items", "summarize-users", "train-mllmmsr"],
              lambda c: {"mllm_msr": c.mllm_msr, "seed": c.seed, "llm_splits": c.evaluate.llm_splits},
              "MLLM-MSR: score the stored candidate lists of evaluate.llm_splits", msr.check_names, revision=1),
        Stage("score-text", "mmsrarec.textsim.stage:run", _score_text_needs, _score_text_section,
              "training-free content baseline: cosine of each candidate's text embedding to the recency-weighted "
              "history", _check_text),
        Stage("evaluate", "mmsrarec.evaluate.stage:run", _evaluate_needs, _evaluate_section,
              "read every method's per-case scores, write the leaderboard and report (no model code)",
              check_score_files, revision=1),  # slices and verdict.md were added without a revision: the
    ]}                                   # numbers of before still stand; `mmsrarec evaluate --force` adds them


STAGES = _stages()


class Runner(pipeline.Runner):
    """The engine's Runner over mmsrarec's stages (STAGES unless others are given)."""

    def __init__(self, cfg: RunConfig, stages: dict[str, Stage] | None = None, reuse: list[Path] = ()):
        super().__init__(cfg, stages or STAGES, reuse)
