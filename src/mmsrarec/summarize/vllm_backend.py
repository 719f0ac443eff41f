"""vLLM for the keyword policy: `summarize.backend: vllm` generates the summaries with vLLM instead of
transformers' generate, and `train_summarizer.use_vllm` lets TRL's GRPOTrainer sample its completions
with vLLM.

vLLM is optional and this project never installs it (`pip install vllm` brings its own CUDA build of
torch). Asking for it where it cannot be imported stops at plan time, before any stage runs, with
what to install (`check_summarize_backend`, `check_grpo_vllm`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import RunConfig
    from .config import SummarizeConfig

INSTALL = ("install it on a CUDA machine with `pip install vllm` (it brings its own CUDA build of torch, "
           "so use a separate environment from a CPU install)")


def require_vllm(key: str, default: str) -> None:
    """ConfigError naming `key` unless vllm imports."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # ImportError, or a vllm whose compiled parts do not load on this machine
        raise ConfigError(f"{key} asks for vLLM, which cannot be imported here ({type(exc).__name__}: {exc}); "
                          f"{INSTALL}, or set {key}: {default}") from None


def check_summarize_backend(cfg: RunConfig) -> None:
    if cfg.summarize.backend == "vllm":
        require_vllm("summarize.backend", "hf")


def check_grpo_vllm(cfg: RunConfig) -> None:
    if cfg.train_summarizer.use_vllm:
        require_vllm("train_summarizer.use_vllm", "false")


class VllmPolicy:
    """A vLLM engine that stands in for the HF model in summarize.generate.generate: greedy decoding of
    already chat-templated prompts, optionally with the GRPO LoRA adapter and, for a VLM, one image per
    prompt."""

    is_vllm = True  # generate() hands the batch to generate_batch instead of model.generate

    def __init__(self, cfg: SummarizeConfig, adapter: str = "", model_path: str = ""):
        from vllm import LLM

        from ..models.loading import resolve_model_path

        path = model_path or resolve_model_path(cfg.model.name_or_path)
        kwargs: dict[str, Any] = {"model": path, "seed": 0, "trust_remote_code": cfg.model.trust_remote_code}
        if cfg.model.dtype != "auto":
            kwargs["dtype"] = cfg.model.dtype
        self.lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            rank = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 16)
            kwargs.update(enable_lora=True, max_lora_rank=max(8, int(rank)))
            self.lora = LoRARequest("policy", 1, adapter)
        if cfg.model.kind == "vlm":
            kwargs["limit_mm_per_prompt"] = {"image": 1}
        self.llm = LLM(**kwargs)

    def generate_batch(self, prompts: list[str], images: list[Any] | None, max_new_tokens: int) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        inputs: list[Any] = [{"prompt": p} for p in prompts]
        for row, pics in zip(inputs, images or []):
            if pics:
                row["multi_modal_data"] = {"image": pics[0]}
        outputs = self.llm.generate(inputs, params, lora_request=self.lora, use_tqdm=False)
        return [out.outputs[0].text for out in outputs]


def load_vllm_policy(cfg: SummarizeConfig, adapter: str = "", model_path: str = "") -> tuple[Any, Any, bool]:
    """(VllmPolicy, HF tokenizer or processor for the chat template, is_vlm), as load_policy returns."""
    from ..models.loading import load_processor, resolve_model_path

    path = model_path or resolve_model_path(cfg.model.name_or_path)
    if cfg.model.kind == "vlm":
        processor = load_processor(path, cfg.model.trust_remote_code)
    else:
        from transformers import AutoTokenizer

        processor = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    return VllmPolicy(cfg, adapter, model_path), processor, cfg.model.kind == "vlm"
