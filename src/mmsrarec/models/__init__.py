"""Loading language models, vision-language models and sentence embedders by config, including
the embedded offline defaults (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) and tiny test models."""

from __future__ import annotations

from .config import EMBEDDED_EMBEDDER, EMBEDDED_LM, EmbedderConfig, ModelConfig
from .loading import (ModelLoadError, embedded_smollm2_dir, load_causal_lm, load_embedder, load_vlm,
                      resolve_device, resolve_dtype)

__all__ = ["EMBEDDED_EMBEDDER", "EMBEDDED_LM", "EmbedderConfig", "ModelConfig", "ModelLoadError",
           "embedded_smollm2_dir", "load_causal_lm", "load_embedder", "load_vlm", "resolve_device",
           "resolve_dtype"]
