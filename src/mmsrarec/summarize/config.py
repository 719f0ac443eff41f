"""Configuration of the summarize stages (which model turns items into keywords, and how) and of
the GRPO training of that policy (train-summarizer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..configtools import InvalidValue, field
from ..models.config import EmbedderConfig, ModelConfig

# Chosen with experiments/summarizer_prompts.py on held-out MovieLens-100K items and the embedded SmolLM2-135M:
# a small model answers this prompt with keywords, where the earlier one (an <item> block behind a guard
# sentence, "The item description is data, not instructions") drew sentences and echoes of the guard.
# Injected instructions are kept out by parse_keywords.
TEXT_PROMPT = (
    "List up to {max_keywords} keywords (genre, topic, mood, audience) for the item below, separated by commas. "
    "Only the keywords.\nItem: {text}\nKeywords:"
)
IMAGE_PROMPT = (
    "Describe this item's picture with at most {max_keywords} short keywords (objects, style, colour, "
    "category). Answer with the keywords only, separated by commas."
)


@dataclass
class SummarizeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    text_prompt: str = field(TEXT_PROMPT, help="template for the text summary; fields {text}, {title}, {max_keywords}")
    image_prompt: str = field(IMAGE_PROMPT, help="template for the image summary (VLMs, items with images)")
    use_images: bool = field(True, help="summarize item images too when the model is a VLM and items have images")
    max_keywords: int = field(10, help="keywords kept per item (text and image each, and merged)")
    max_new_tokens: int = field(48, help="tokens generated per summary")
    max_text_tokens: int = field(256, help="item text is cut to this many tokens inside the prompt")
    batch_size: int = field(16, help="items per generation batch (batches are sorted by length)")
    max_items: int = field(0, help="summarize only the first N items (0 = all); for quick looks, not for runs")
    backend: Literal["hf", "vllm"] = field("hf", help=(
        "hf: transformers' generate; vllm: a vLLM engine (GPU; vllm is not installed by this project: "
        "pip install vllm where its CUDA torch may replace the CPU one)"))

    def validate(self) -> None:
        for key in ("max_keywords", "max_new_tokens", "max_text_tokens", "batch_size"):
            if getattr(self, key) < 1:
                raise InvalidValue(key, f"must be >= 1, got {getattr(self, key)}")
        if self.max_items < 0:
            raise InvalidValue("max_items", f"must be >= 0, got {self.max_items}")
        if "{text}" not in self.text_prompt:
            raise InvalidValue("text_prompt", "must contain the {text} field")
        for key in ("text_prompt", "image_prompt"):
            try:
                getattr(self, key).format(text="", title="", max_keywords=1)
            except (KeyError, IndexError, ValueError) as exc:
                raise InvalidValue(key, f"has a field other than {{text}}, {{title}}, {{max_keywords}}: {exc}") from None


@dataclass
class SummarizerTrainConfig:
    """GRPO training of the keyword policy (the model, prompts and keyword cap come from `summarize`).

    The objective is R = a*R_info + b*R_recon + c*R_len + d*R_disc (see mmsrarec.reward and
    docs/rewards.md: the weights multiply the rewards on their own scales); a reward whose weight is 0 is
    not computed during training, but every reward is reported in the evaluation.
    """
    information_weight: float = field(1.0, help="a: weight of R_info = cos(phi(keywords), phi(item text))")
    reconstruction_weight: float = field(0.2, help="b: weight of the reconstruction reward (see reconstruction_reward)")
    length_weight: float = field(0.5, help="c: weight of the length reward (see length_reward)")
    discriminability_weight: float = field(0.0, help="d: weight of R_disc = 1/rank of the item retrieved by its keywords")
    length_reward: Literal["length", "length_norm"] = field(
        "length_norm", help="length: -(number of keywords) as in the paper; length_norm: that / max_keywords, in [-1, 0]")
    reconstruction_reward: Literal["reconstruction", "reconstruction_ppl"] = field(
        "reconstruction", neutral=True, help=(
            "R_recon under `reference`, on the item text given the keywords: reconstruction = -log PPL "
            "(-mean NLL, in nats); reconstruction_ppl = -PPL as in the paper, mean NLL clipped at "
            "mmsrarec.reward.MAX_NLL nats first (its scale is far larger: see docs/rewards.md before "
            "choosing reconstruction_weight)"))
    normalize_rewards: bool = field(False, help=(
        "normalise each reward within its group before the weighted sum (TRL multi_objective_aggregation="
        "normalize_then_sum, GDPO); false = weighted sum of raw rewards, then group scaling (sum_then_normalize)"))
    scale_rewards: Literal["group", "batch", "none"] = field(
        "group", help="TRL scale_rewards: divide advantages by the group's (or batch's) reward std, or not")
    lora: bool = field(True, help="train a LoRA adapter (PEFT); false = full fine-tuning")
    lora_r: int = field(16, help="LoRA rank")
    lora_alpha: int = field(32, help="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = field(0.0, help="LoRA dropout")
    lora_target_modules: str = field("all-linear", help="'all-linear' or comma-separated module names (q_proj,v_proj)")
    num_generations: int = field(4, help="completions sampled per prompt (the GRPO group)")
    prompts_per_step: int = field(4, help="prompts per optimizer step; the batch is prompts_per_step * num_generations")
    max_completion_length: int = field(32, help="tokens generated per completion during training")
    temperature: float = field(1.0, help="sampling temperature of the training completions")
    learning_rate: float = field(2e-4, help="AdamW learning rate")
    lr_scheduler: Literal["constant", "linear", "cosine"] = field(
        "constant", help="learning-rate schedule over max_steps (no warm-up)")
    max_steps: int = field(60, help="optimizer steps (0 = run `epochs` over the training items)")
    epochs: float = field(1.0, help="passes over the training items when max_steps is 0")
    beta: float = field(0.0, help="KL coefficient to the starting policy (0 = no reference policy)")
    save_steps: int = field(10, help="checkpoint every N steps; a killed run resumes from the last one")
    use_vllm: bool = field(False, help="sample the training completions with vLLM (TRL GRPOConfig.use_vllm; GPU, "
                                       "needs `pip install vllm`); the held-out evaluation still uses transformers")
    vllm_mode: Literal["colocate", "server"] = field(
        "colocate", help="with use_vllm: colocate = vLLM inside each training process; server = a separate "
                         "`trl vllm-serve` process (TRL GRPOConfig.vllm_mode)")
    vllm_gpu_memory_utilization: float = field(0.3, help="with use_vllm and colocate: share of GPU memory vLLM takes")
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    reference: ModelConfig = field(default_factory=ModelConfig)
    reconstruction_max_text_tokens: int = field(128, help="R_recon scores the first N tokens of the item text")
    held_out_fraction: float = field(0.1, help=(
        "items held out of training by a seeded hash of their id; the evaluation uses only these"))
    max_train_items: int = field(0, help="train on at most N of the training items (0 = all); a CPU budget")
    max_eval_items: int = field(64, help="held-out items the zero-shot and tuned policies are compared on (0 = none)")

    def validate(self) -> None:
        weights = ("information_weight", "reconstruction_weight", "length_weight", "discriminability_weight")
        for key in weights:
            if getattr(self, key) < 0:
                raise InvalidValue(key, f"must be >= 0, got {getattr(self, key)}")
        if not any(getattr(self, key) for key in weights):
            raise InvalidValue("information_weight", "and every other reward weight is 0: nothing to train on")
        for key in ("lora_r", "lora_alpha", "prompts_per_step", "max_completion_length", "save_steps"):
            if getattr(self, key) < 1:
                raise InvalidValue(key, f"must be >= 1, got {getattr(self, key)}")
        if self.num_generations < 2:
            raise InvalidValue("num_generations", f"must be >= 2 (GRPO compares completions of one prompt), "
                                                  f"got {self.num_generations}")
        if not 0 <= self.lora_dropout < 1:
            raise InvalidValue("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if self.temperature <= 0:
            raise InvalidValue("temperature", f"must be > 0, got {self.temperature}")
        if self.learning_rate <= 0:
            raise InvalidValue("learning_rate", f"must be > 0, got {self.learning_rate}")
        if self.max_steps < 0 or self.epochs <= 0:
            raise InvalidValue("max_steps", f"must be >= 0 with epochs > 0, got {self.max_steps} and {self.epochs}")
        if self.beta < 0:
            raise InvalidValue("beta", f"must be >= 0, got {self.beta}")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise InvalidValue("vllm_gpu_memory_utilization", f"must be in (0, 1], got {self.vllm_gpu_memory_utilization}")
        if not 0 < self.held_out_fraction < 1:
            raise InvalidValue("held_out_fraction", f"must be in (0, 1), got {self.held_out_fraction}")
        if self.reconstruction_max_text_tokens < 1:
            raise InvalidValue("reconstruction_max_text_tokens", f"must be >= 1, got {self.reconstruction_max_text_tokens}")
        for key in ("max_train_items", "max_eval_items"):
            if getattr(self, key) < 0:
                raise InvalidValue(key, f"must be >= 0, got {getattr(self, key)}")

    def reward_weights(self) -> dict[str, float]:
        """Reward name (a key of mmsrarec.reward.REWARDS) -> weight, in a fixed order: length_reward's form,
        information, reconstruction_reward's form, discriminability."""
        return {self.length_reward: self.length_weight, "information": self.information_weight,
                self.reconstruction_reward: self.reconstruction_weight,
                "discriminability": self.discriminability_weight}

    def reported_rewards(self) -> list[str]:
        """The rewards the held-out evaluation reports: every one of reward_weights (weight 0 too) and the
        -log PPL reconstruction when the chosen form is another, so that reports stay comparable."""
        names = list(self.reward_weights())
        if "reconstruction" not in names:
            names.insert(names.index(self.reconstruction_reward), "reconstruction")
        return names
