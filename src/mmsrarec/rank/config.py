"""Configuration of the train-ranker stage: which (M)LLM ranks, its LoRA, the multitask SFT mix,
what a prompt shows, and how candidates are scored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..configtools import InvalidValue, field
from ..llm.config import LoraSettings, SFTSettings
from ..models.config import ModelConfig

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass
class TaskWeights:
    """Shares of the SFT examples per task (normalised; 0 turns a task off)."""

    main: float = field(1.0, help="main task: history + retrieved keywords + one candidate -> Yes/No")
    aux_choice: float = field(0.2, help="pick the next item from a lettered candidate list -> letter")
    aux_title: float = field(0.1, help="item keywords -> item title")
    aux_next_keywords: float = field(0.1, help="history -> keywords of the next item")

    def validate(self) -> None:
        for key in ("main", "aux_choice", "aux_title", "aux_next_keywords"):
            if getattr(self, key) < 0:
                raise InvalidValue(key, f"must be >= 0, got {getattr(self, key)}")
        if self.main <= 0:
            raise InvalidValue("main", "must be > 0: the main task is what the ranker scores with")

    def shares(self) -> dict[str, float]:
        weights = {"main": self.main, "aux_choice": self.aux_choice, "aux_title": self.aux_title,
                   "aux_next_keywords": self.aux_next_keywords}
        total = sum(weights.values())
        return {k: v / total for k, v in weights.items()}


@dataclass
class RankConfig:
    name: str = field("mmsrarec", help="the ranker's method name on the leaderboard (list it in evaluate.methods); "
                                       "ablation runs name themselves, e.g. mmsrarec-no-retrieval")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    tasks: TaskWeights = field(default_factory=TaskWeights)
    sft: SFTSettings = field(default_factory=SFTSettings)
    neg_per_pos: int = field(1, help="main task: negatives (unseen training items) per positive")
    negatives: Literal["uniform", "popularity"] = field("uniform", neutral=True, help=(
        "how the main task's negatives and aux_choice's distractors are drawn from the training items the user "
        "never interacted with: popularity = in proportion to each item's number of training interactions, as the "
        "positives (training interactions) are, so an item's popularity alone does not tell a positive from a "
        "negative; uniform = every such item equally likely (negatives are then mostly less popular than "
        "positives, a shortcut SFT can learn). docs/ranker_training.md"))
    stand_in_cold: float = field(0.0, neutral=True, help=(
        "a share in [0, 1): that seeded share of the training items stands in for cold items in the SFT "
        "examples: they leave every history and the title task, an example whose positive is one of them draws "
        "its negatives among them, no other example shows them; 0 = off. For the cold-item protocol "
        "(data.split: cold), whose test candidates no SFT example shows. rank/tasks.py, docs/ranker_training.md"))
    max_examples: int = field(1000, help="SFT examples in all (all tasks; 0 = no cap); keeps CPU runs affordable")
    examples_per_user: int = field(8, help="training positions sampled per user (0 = all)")
    history_len: int = field(10, help="most recent history items shown in a prompt")
    max_keywords: int = field(8, help="keywords shown per candidate item")
    history_keywords: int = field(5, help="keywords shown per history item (keeps the user prefix short)")
    raw_text_words: int = field(30, help="use_keywords=false: words of the item text shown instead of keywords")
    max_context_keywords: int = field(20, help="retrieved keywords shown per prompt")
    choice_candidates: int = field(4, help="aux_choice: lettered candidates per question (1 positive)")
    use_retrieval: bool = field(True, help="show the keywords of similar users' next items (index stage)")
    candidate_votes: int = field(
        0, help="k > 0: end each candidate's line with how many of the case's k most similar training users "
                "chose it next ('(chosen next by 3 of 500 similar users)'), the index searched again at this k; "
                "0 = off (the paper). Training windows only, never the case's own user. See docs/method.md")
    candidate_cf_rank: str = field(
        "", help="a model of cf.models (e.g. sasrec): end each candidate's line with its rank when that model, "
                 "trained on the training split, ranks every item for the case's history ('sasrec ranks it 4'; "
                 "the history's own items do not compete); '' = off (the paper)")
    candidate_cf_rank_as: Literal["number", "level"] = field(
        "number", neutral=True,
        help="how candidate_cf_rank shows the rank: number ('sasrec ranks it 4') or level, one of five words by "
             "the share of the catalogue at or above it ('sasrec rates it very high': top 1%; high: 3%; medium: "
             "10%; low: 30%; very low), which a small LLM maps to Yes/No more easily than digits")
    candidate_cf_rank_folds: int = field(
        0, neutral=True,
        help="k >= 2: the SFT examples' candidate_cf_rank comes from k models of that kind, each trained without "
             "one seeded fold of the users, a user's examples ranked by the model that never saw the user "
             "(rank/teachers.py); 0 = the train-cf model, which was trained on the examples' own targets and so "
             "ranks them better than it ranks valid or test (see docs/method.md). Valid and test "
             "prompts always use the train-cf model")
    use_keywords: bool = field(True, help="describe items by their summarized keywords; false = by the raw item "
                                          "text (the 'no summarization' ablation)")
    keywords_from: Literal["auto", "summarize", "summarize-tuned"] = field(
        "auto", help="keyword table: auto = summarize-tuned (the GRPO-tuned policy) when the pipeline has that "
                     "stage, else summarize; summarize = the zero-shot policy (the 'no RL' ablation)")
    candidate_image: bool = field(False, help="VLM only: show the candidate's image (scoring then runs full "
                                              "prompts, since the candidate part is no longer text)")
    history_image: bool = field(False, help="VLM only: show the image of the user's last history item (in the "
                                            "shared prefix)")
    zero_shot: bool = field(False, help="no SFT: rank with the untrained model (the 'zero-shot LLM' row); "
                                        "train-ranker then only records that")
    score_batch_size: int = field(32, help="candidate rows per forward pass when scoring; with shared_prefix, "
                                           "several users share a pass when it holds all their candidates "
                                           "(score_batch_size // candidates users; 1 with the default 32 and 1+20)")
    scoring: Literal["shared_prefix", "batched", "naive"] = field(
        "shared_prefix", help="shared_prefix: the user's prompt prefix runs once, candidates share its KV cache; "
                              "batched: full prompts in one batch; naive: one full forward per candidate")

    def validate(self) -> None:
        for key in ("neg_per_pos", "history_len", "max_keywords", "history_keywords", "raw_text_words",
                    "score_batch_size"):
            if getattr(self, key) < 1:
                raise InvalidValue(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("max_examples", "examples_per_user", "max_context_keywords", "candidate_votes"):
            if getattr(self, key) < 0:
                raise InvalidValue(key, f"must be >= 0, got {getattr(self, key)}")
        if not 2 <= self.choice_candidates <= 26:
            raise InvalidValue("choice_candidates", f"must be in 2..26 (letters A-Z), got {self.choice_candidates}")
        if self.candidate_cf_rank_as != "number" and not self.candidate_cf_rank:
            raise InvalidValue("candidate_cf_rank_as", "shows the rank of rank.candidate_cf_rank, which is off: name "
                               "a model of cf.models there (e.g. sasrec)")
        if self.candidate_cf_rank_folds and (self.candidate_cf_rank_folds < 2 or not self.candidate_cf_rank):
            raise InvalidValue("candidate_cf_rank_folds", f"must be 0 or >= 2 with rank.candidate_cf_rank on, got "
                               f"{self.candidate_cf_rank_folds} with candidate_cf_rank {self.candidate_cf_rank!r}")
        if not 0 <= self.stand_in_cold < 1:
            raise InvalidValue("stand_in_cold", f"must be in [0, 1), got {self.stand_in_cold}")
        if self.stand_in_cold and (self.candidate_votes or self.candidate_cf_rank):
            raise InvalidValue("stand_in_cold", "hides items from the SFT histories, which the candidate notes "
                               "(candidate_votes, candidate_cf_rank) are computed from: turn those off")
        if (self.candidate_image or self.history_image) and self.model.kind != "vlm":
            key = "candidate_image" if self.candidate_image else "history_image"
            raise InvalidValue(key, "needs a vision-language model (rank.model.kind: vlm)")


def keyword_stage(cfg: RunConfig) -> str:
    """Which stage's keywords the ranker reads: rank.keywords_from, where 'auto' means the GRPO-tuned
    policy's (summarize-tuned)."""
    return "summarize-tuned" if cfg.rank.keywords_from == "auto" else cfg.rank.keywords_from


def ranker_needs(cfg: RunConfig) -> list[str]:
    """The stages train-ranker reads: prepare, the keyword stage (not in the no-summarization
    ablation), the index (with retrieval or candidate votes) and the CF models (with candidate votes,
    whose model searches the index again, or candidate CF ranks)."""
    return ["prepare", *([keyword_stage(cfg)] if cfg.rank.use_keywords else []),
            *(["train-cf"] if cfg.rank.candidate_votes or cfg.rank.candidate_cf_rank else []),
            *(["index"] if cfg.rank.use_retrieval or cfg.rank.candidate_votes else [])]
