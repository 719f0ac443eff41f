"""Configuration of MLLM-MSR (Ye et al., AAAI 2025), the second method: item descriptions
(describe-items), recurrent user-preference summaries (summarize-users), and the LoRA-tuned Yes/No
recommender (train-mllmmsr), which score-mllmmsr scores.

Each stage's config section is only the part its output depends on (`*_section` below), so tuning
the recommender never regenerates summaries, and a scoring setting never retrains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..configtools import InvalidValue, field
from ..models.config import ModelConfig
from ..llm.config import LoraSettings, SFTSettings

if TYPE_CHECKING:
    from ..config import RunConfig

# The official code asks LLaVA for "one continuous paragraph" on an item's cover and Llama-3 for the
# user's preferences "in one continuous paragraph", given the previous preference for every block
# after the first; these prompts say the same for any item type.
ITEM_TEXT_PROMPT = (
    "Describe the item below in one short paragraph: what it is, its main features and who would like it.\n"
    "Title: {title}\nDetails: {text}\nParagraph:"
)
ITEM_IMAGE_PROMPT = (
    "Describe this item in one short paragraph, using its picture and its text: what it is, what the picture "
    "shows (objects, colours, style, any text), its main features and who would like it.\n"
    "Title: {title}\nDetails: {text}"
)
USER_FIRST_PROMPT = (
    "A user interacted with these items, oldest first:\n{items}\n"
    "Summarize the user's preferences in one short paragraph. Describe the preferences, not the items one by "
    "one. Start with 'The user prefers'."
)
USER_UPDATE_PROMPT = (
    "What we know of a user's preferences so far:\n{previous}\n"
    "The user then interacted with these items, oldest first:\n{items}\n"
    "Update the summary of the user's preferences with these items, in one short paragraph. Describe the "
    "preferences, not the items one by one. Start with 'The user prefers'."
)


def _check_format(key: str, template: str, fields: dict[str, str], required: tuple[str, ...]) -> None:
    for name in required:
        if "{" + name + "}" not in template:
            raise InvalidValue(key, f"must contain the {{{name}}} field")
    try:
        template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        allowed = ", ".join("{" + f + "}" for f in fields)
        raise InvalidValue(key, f"has a field other than {allowed}: {exc}") from None


@dataclass
class ItemSettings:
    """describe-items: one short paragraph per item from its text (and image, with a VLM)."""

    text_prompt: str = field(ITEM_TEXT_PROMPT, help="prompt for an item without a usable image; fields {title}, {text}")
    image_prompt: str = field(ITEM_IMAGE_PROMPT, help="prompt sent with the item's image (VLM); fields {title}, {text}")
    use_images: bool = field(True, help="show the item's image when the model is a VLM and the item has one")
    max_new_tokens: int = field(200, help="tokens generated per description (the official code: 200)")
    max_text_words: int = field(200, help="item text is cut to this many words inside the prompt")
    batch_size: int = field(16, help="items per generation batch (batches are sorted by prompt length)")

    def validate(self) -> None:
        for key in ("max_new_tokens", "max_text_words", "batch_size"):
            if getattr(self, key) < 1:
                raise InvalidValue(key, f"must be >= 1, got {getattr(self, key)}")
        _check_format("text_prompt", self.text_prompt, {"title": "", "text": ""}, ("text",))
        _check_format("image_prompt", self.image_prompt, {"title": "", "text": ""}, ())


@dataclass
class UserSettings:
    """summarize-users: recurrent preference summaries over blocks of the user's recent history."""

    history_items: int = field(9, help="history items summarized per user state (9 = 3 blocks of 3)")
    history: Literal["recent", "frequent"] = field("recent", neutral=True, help=(
        "which history_items items of a state's history are summarized: 'recent' (the last ones) or 'frequent' "
        "(those with the most training interactions, counted in train.parquet alone; ties: the more recent "
        "first), kept in time order either way. The state's target and candidates do not change"))
    block_size: int = field(3, help="items per block; each block is one LLM call that also sees the previous "
                                    "block's summary")
    first_prompt: str = field(USER_FIRST_PROMPT, help="prompt of a user's first block; field {items}")
    update_prompt: str = field(USER_UPDATE_PROMPT, help="prompt of every later block; fields {previous} (the "
                                                        "summary so far) and {items}")
    description_words: int = field(40, help="words of each item's description shown in a block's item list")
    item_format: str = field("", neutral=True, help=(
        "how an item appears in a block's numbered list; fields {title} and {description} (its first "
        "description_words words); '' = 'title: description' (the title alone without a description)"))
    max_new_tokens: int = field(200, help="tokens generated per summary")
    do_sample: bool = field(False, neutral=True, help=(
        "sample the summaries with temperature, top_p and top_k and no repetition penalty (these replace the "
        "model's generation_config defaults, some of which make sampling greedy) instead of greedy decoding; "
        "each batch is seeded from the run's seed and its blocks, so a rerun (or a resumed run) draws the "
        "same samples on CPU"))
    temperature: float = field(1.0, neutral=True, help="sampling temperature (with do_sample)")
    top_p: float = field(1.0, neutral=True, help="nucleus sampling: the smallest set of tokens whose probability "
                                                 "reaches top_p (with do_sample; 1.0 = all tokens)")
    top_k: int = field(50, neutral=True, help="sample among the top_k most probable tokens (with do_sample; 0 = "
                                              "all; 50 is transformers' default when a model sets none)")
    batch_size: int = field(16, help="summaries per generation batch (batches are sorted by prompt length)")
    examples_per_user: int = field(2, help="training positions (user states) per training user (0 = all)")
    train_positions: Literal["sampled", "last"] = field("sampled", neutral=True, help=(
        "which positions of a training sequence become user states: 'sampled' (examples_per_user random ones) "
        "or 'last' (its examples_per_user last ones; 1 = one state per training user, its last training item "
        "as the target)"))
    max_train_states: int = field(1000, help="training user states summarized in all (0 = no cap); each becomes "
                                             "one positive and neg_per_pos negative SFT examples")

    def validate(self) -> None:
        for key in ("history_items", "block_size", "description_words", "max_new_tokens", "batch_size"):
            if getattr(self, key) < 1:
                raise InvalidValue(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("examples_per_user", "max_train_states"):
            if getattr(self, key) < 0:
                raise InvalidValue(key, f"must be >= 0, got {getattr(self, key)}")
        _check_format("first_prompt", self.first_prompt, {"items": ""}, ("items",))
        _check_format("update_prompt", self.update_prompt, {"items": "", "previous": ""}, ("items", "previous"))
        if self.item_format:
            _check_format("item_format", self.item_format, {"title": "", "description": ""}, ("title",))
        if not self.temperature > 0:
            raise InvalidValue("temperature", f"must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidValue("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidValue("top_k", f"must be >= 0, got {self.top_k}")
        if not self.do_sample:
            for key, default in (("temperature", 1.0), ("top_p", 1.0), ("top_k", 50)):
                if getattr(self, key) != default:
                    raise InvalidValue(key, f"is {getattr(self, key)} but do_sample is false (greedy decoding "
                                            f"ignores it): set do_sample: true, or leave it at {default}")

    def sampling(self) -> dict:
        """generate()'s sampling arguments ({} = greedy)."""
        if not self.do_sample:
            return {}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "repetition_penalty": 1.0}

    def blocks(self, n_history: int) -> int:
        """LLM calls that summarize a history of n_history items."""
        n = min(n_history, self.history_items)
        return -(-n // self.block_size)


@dataclass
class ScoringSettings:
    method: Literal["shared_prefix", "batched", "naive"] = field(
        "shared_prefix", help="shared_prefix: the user-summary prefix runs once per case and its KV cache is "
                              "shared by all candidates (candidate images force batched full prompts)")
    batch_size: int = field(32, help="candidates per forward pass")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise InvalidValue("batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass
class MllmMsrConfig:
    name: str = field("mllm-msr", help="the method's name on the leaderboard (list it in evaluate.methods)")
    model: ModelConfig = field(default_factory=ModelConfig, help="the zero-shot (M)LLM that writes item "
                               "descriptions and user summaries")
    items: ItemSettings = field(default_factory=ItemSettings)
    users: UserSettings = field(default_factory=UserSettings)
    recommender: ModelConfig = field(default_factory=ModelConfig, help="the (M)LLM LoRA-tuned to answer Yes/No")
    lora: LoraSettings = field(default_factory=LoraSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    neg_per_pos: int = field(1, help="negatives (random items the user never interacted with in training) per "
                                     "positive; the paper uses 1:1")
    negatives: Literal["uniform", "popularity"] = field(
        "uniform", neutral=True,
        help="how the negatives are drawn from the training items the user never interacted with in training: "
             "uniform = every such item equally likely (the official code); popularity = in proportion to each "
             "item's number of training interactions, as the positives are, so popularity alone does not tell "
             "them apart (as rank.negatives; docs/ranker_training.md)")
    candidate_description_words: int = field(40, help="words of the candidate's description shown after its "
                                                      "title (0 = title only, as the official VLM prompt)")
    candidate_image: bool = field(True, help="show the candidate's image when the recommender is a VLM and the "
                                             "item has one (the paper's setting)")
    recommender_prompt: str = field("", neutral=True, help=(
        "the recommender's whole user turn, with fields {summary} (the user's preference summary) and then "
        "{candidate} (the candidate's title and candidate_description_words words of its description); a "
        "candidate image goes before the text. '' = the built-in prompt (summary, question, then the candidate)"))
    scoring: ScoringSettings = field(default_factory=ScoringSettings)

    def validate(self) -> None:
        if not self.name.strip() or "/" in self.name:
            raise InvalidValue("name", f"must be a plain method name, got {self.name!r}")
        if self.neg_per_pos < 1:
            raise InvalidValue("neg_per_pos", f"must be >= 1, got {self.neg_per_pos}")
        if self.candidate_description_words < 0:
            raise InvalidValue("candidate_description_words", f"must be >= 0, got {self.candidate_description_words}")
        if self.recommender_prompt:
            _check_format("recommender_prompt", self.recommender_prompt, {"summary": "", "candidate": ""},
                          ("summary", "candidate"))
            text = self.recommender_prompt
            if text.count("{summary}") != 1 or text.count("{candidate}") != 1 or \
                    text.index("{summary}") > text.index("{candidate}"):
                raise InvalidValue("recommender_prompt", "must contain {summary} once and, after it, {candidate} once "
                                                         "(the candidate's part of the prompt comes last)")


# ----------------------------------------------------------------------------- pipeline wiring

def describe_section(cfg: RunConfig) -> dict:
    return {"model": cfg.mllm_msr.model, "items": cfg.mllm_msr.items}


def users_section(cfg: RunConfig) -> dict:
    return {"model": cfg.mllm_msr.model, "users": cfg.mllm_msr.users, "seed": cfg.seed}


def _set_neutral(obj, name: str) -> dict:
    """{name: value} when obj's neutral field `name` is not at its default, else {} (as key_dict keeps it);
    reads that field alone."""
    default = next(f.default for f in dataclasses.fields(obj) if f.name == name)
    value = getattr(obj, name)
    return {} if value == default else {name: value}


def train_section(cfg: RunConfig) -> dict:
    m = cfg.mllm_msr
    set_here = {**_set_neutral(m, "recommender_prompt"), **_set_neutral(m.users, "history"),
                **_set_neutral(m, "negatives")}
    return {"recommender": m.recommender, "lora": m.lora, "sft": m.sft, "neg_per_pos": m.neg_per_pos,
            "candidate_description_words": m.candidate_description_words, "candidate_image": m.candidate_image,
            "history_items": m.users.history_items, "seed": cfg.seed, **set_here}


def evaluated(cfg: RunConfig) -> bool:
    return cfg.mllm_msr.name in cfg.evaluate.methods


def check_names(cfg: RunConfig) -> None:
    """The method name must not collide with a CF model or the MMSRARec ranker on the leaderboard."""
    from ..errors import ConfigError

    if cfg.mllm_msr.name == cfg.rank.name or cfg.mllm_msr.name in cfg.cf.models:
        raise ConfigError(f"mllm_msr.name is {cfg.mllm_msr.name!r}, which already names another method "
                          f"(rank.name = {cfg.rank.name!r}, cf.models = {cfg.cf.models}); pick another name")
