"""Settings both LLM methods' LoRA SFT share (rank.lora / rank.sft, mllm_msr.lora / mllm_msr.sft)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..configtools import InvalidValue, field


@dataclass
class LoraSettings:
    r: int = field(16, help="LoRA rank")
    alpha: int = field(32, help="LoRA alpha (scaling = alpha / r)")
    dropout: float = field(0.05, help="dropout on the LoRA input")
    target_modules: str = field("all-linear", help=(
        "'all-linear' (every linear layer but the output head) or comma-separated module names, "
        "e.g. q_proj,k_proj,v_proj,o_proj"))
    exclude_vision: bool = field(False, neutral=True, help=(
        "VLM only: put LoRA on the language model alone (its linear layers of target_modules), none on the "
        "vision tower or the vision-language projector; false: PEFT's 'all-linear' reaches both"))
    init: Literal["default", "gaussian"] = field("default", neutral=True, help=(
        "initialization of the LoRA A matrices: 'default' (PEFT's Kaiming-uniform) or 'gaussian' (normal, "
        "std 1/r; B starts at zero either way)"))

    def validate(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise InvalidValue("r" if self.r < 1 else "alpha", "must be >= 1")
        if not 0 <= self.dropout < 1:
            raise InvalidValue("dropout", f"must be in [0, 1), got {self.dropout}")
        if not self.target_modules.strip():
            raise InvalidValue("target_modules", "must be 'all-linear' or module names such as q_proj,v_proj")

    def init_weights(self) -> bool | str:
        """peft.LoraConfig's init_lora_weights."""
        return True if self.init == "default" else self.init

    def modules(self) -> str | list[str]:
        if self.target_modules.strip() == "all-linear":
            return "all-linear"
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]


SAMPLINGS = ("random", "group_by_length")  # transformers' train_sampling_strategy
LOSSES = ("token", "example")  # llm.train.example_mean_nll


@dataclass
class SFTSettings:
    epochs: float = field(1.0, help="passes over the SFT examples")
    max_steps: int = field(-1, help="stop after this many optimizer steps (-1 = epochs decide)")
    lr: float = field(2e-4, help="AdamW learning rate of the LoRA weights")
    batch_size: int = field(2, help="examples per device batch (with pack: the packed rows of about that many; "
                                    "memory grows with it: the full-vocabulary logits of every position are kept; "
                                    "see docs/results_log.md)")
    grad_accum: int = field(4, help="batches accumulated per optimizer step (effective batch = batch_size x grad_accum)")
    max_seq_len: int = field(640, help="longest example in tokens (as if unpacked: a packed row may be longer); "
                                       "longer examples are dropped (and counted), never truncated, since "
                                       "truncation would cut off the answer")
    save_steps: int = field(50, help="write a checkpoint every this many optimizer steps (a killed run resumes "
                                     "from the last one)")
    warmup_ratio: float = field(0.03, help="share of steps with linear learning-rate warm-up (0 = none)")
    activation_checkpointing: bool = field(False, help="recompute activations in backward (less memory, slower)")
    sampling: str = field("random", help="order of the examples: 'random', or 'group_by_length' (shuffled chunks "
                                         "of up to 50 batches, each sorted by length: less padding, so fewer tokens "
                                         "per epoch; see docs/results_log.md)")
    pack: bool = field(True, help=(
        "train a training case's examples (the positive, its negatives and any aux example of the "
        "same case) as one row: their shared prompt prefix once, each example's own tokens as a block that "
        "attends to the prefix and to itself (the same losses and gradients as unpacked with lora.dropout 0, "
        "fewer tokens); a batch holds the rows of about batch_size examples, at least one case. On a Qwen2-VL "
        "family VLM the examples of a case pack when their image is in the shared prefix (history_image), not "
        "when each has its own (candidate_image); other VLMs train unpacked (llm/packing.py)"))
    loss: str = field("token", help="how answer tokens are averaged: 'token' (TRL's loss: every answer token of a "
                                    "step weighs the same, so the long answers of the next-keywords and title tasks "
                                    "weigh more than the short Yes/No answers of the main task) or 'example' (each "
                                    "example's mean over its own answer tokens, averaged over examples: every "
                                    "example weighs the same); see docs/method.md")

    def validate(self) -> None:
        for key in ("batch_size", "grad_accum", "max_seq_len", "save_steps"):
            if getattr(self, key) < 1:
                raise InvalidValue(key, f"must be >= 1, got {getattr(self, key)}")
        if self.epochs <= 0:
            raise InvalidValue("epochs", f"must be > 0, got {self.epochs}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise InvalidValue("max_steps", f"must be -1 (off) or >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise InvalidValue("lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise InvalidValue("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.sampling not in SAMPLINGS:
            raise InvalidValue("sampling", f"must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if self.loss not in LOSSES:
            raise InvalidValue("loss", f"must be one of {', '.join(LOSSES)}, got {self.loss!r}")
