"""Model loading: the embedded SmolLM2 conversion cache, tiny VLMs through load_vlm, LoRA adapters."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmsrarec.configtools import from_dict
from mmsrarec.errors import ConfigError
from mmsrarec.errors import ConfigError
from mmsrarec.models import (EmbedderConfig, ModelConfig, ModelLoadError, embedded_smollm2_dir, load_causal_lm,
                             load_embedder, load_vlm, resolve_device)
from mmsrarec.models import loading
from mmsrarec.models.tiny import TINY_VLMS, tiny_causal_lm

torch.set_num_threads(1)


def test_config_rejects_impossible_values() -> None:
    with pytest.raises(ConfigError, match="device"):
        from_dict(ModelConfig, {"device": "gpu"})
    with pytest.raises(ConfigError, match="text-only"):
        from_dict(ModelConfig, {"kind": "vlm"})  # the embedded default has no vision tower
    with pytest.raises(ConfigError, match="batch_size"):
        from_dict(EmbedderConfig, {"batch_size": 0})
    assert from_dict(ModelConfig, {"name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct", "kind": "vlm"}).kind == "vlm"


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")


def test_embedded_smollm2_converts_once_loads_fast_and_chats() -> None:
    load_causal_lm(ModelConfig(device="cpu"))  # converts the GGUF if this machine has no cache yet
    folder = embedded_smollm2_dir()
    stamp = (folder / "model.safetensors").stat().st_mtime
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(ModelConfig(device="cpu"))
    seconds = time.perf_counter() - start
    print(f"\nembedded SmolLM2 load from cache: {seconds:.2f} s")
    assert seconds < 10, f"loading the cached conversion took {seconds:.1f} s"
    assert (folder / "model.safetensors").stat().st_mtime == stamp, "the cache was converted again"
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"

    prompts = [[{"role": "user", "content": "Give three keywords for: a red apple."}],
               [{"role": "user", "content": "Say hello."}]]
    batch = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, return_tensors="pt",
                                          padding=True, return_dict=True)
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(t.strip() for t in texts), texts


def test_conversion_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSRAREC_CACHE", str(tmp_path))
    target = tmp_path / loading.SMOLLM2_CACHE_NAME

    def killed(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # like Ctrl-C in the middle of writing

    monkeypatch.setattr(loading, "_convert_gguf", killed)
    with pytest.raises(KeyboardInterrupt):
        embedded_smollm2_dir()
    assert not target.exists() and not list(tmp_path.iterdir())

    stale = tmp_path / f".tmp-{target.name}-old"  # what a SIGKILL leaves behind
    stale.mkdir()
    os.utime(stale, (0, 0))
    monkeypatch.setattr(loading, "_convert_gguf", lambda gguf, out: (out / "config.json").write_text("{}"))
    assert embedded_smollm2_dir() == target and (target / "config.json").is_file()
    assert not stale.exists()


def test_tiny_causal_lm_batched_generation(tmp_path: Path) -> None:
    model, tokenizer = load_causal_lm(ModelConfig(name_or_path=str(tiny_causal_lm(tmp_path / "lm")), device="cpu"))
    batch = tokenizer(["red apple", "a much longer prompt about a blue kettle"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 4)
    assert batch["attention_mask"][0, 0] == 0, "prompts must be padded on the left for generation"


def _photo() -> Image.Image:
    """A real RGB image (gradient + noise), not a blank one, of an odd size to exercise resizing."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:61, 0:83]
    pixels = np.stack([x * 3, y * 4, (x + y) * 2], axis=-1) % 256 + rng.integers(0, 20, (61, 83, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype("uint8"))


@pytest.mark.parametrize("arch", sorted(TINY_VLMS))
def test_tiny_vlm_loads_and_runs_on_an_image(arch: str, tmp_path: Path) -> None:
    path = TINY_VLMS[arch](tmp_path / arch)
    model, processor = load_vlm(ModelConfig(name_or_path=str(path), kind="vlm", device="cpu"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Keywords for this item?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[[_photo()], [_photo()]], text=[prompt, prompt + " Be brief."],
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    assert processor.tokenizer.padding_side == "left"


def test_lora_adapter_loads(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base_path = tiny_causal_lm(tmp_path / "base")
    base, tokenizer = load_causal_lm(ModelConfig(name_or_path=str(base_path), device="cpu"))
    ids = tokenizer(["red apple"], return_tensors="pt")
    with torch.no_grad():
        base_logits = base(**ids).logits
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.5)  # LoRA starts as a no-op (B = 0); make it change the outputs
        tuned_logits = peft_model(**ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")

    model, _ = load_causal_lm(ModelConfig(name_or_path=str(base_path), adapter=str(tmp_path / "adapter"), device="cpu"))
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.allclose(logits, tuned_logits, atol=1e-5)
    assert not torch.allclose(logits, base_logits, atol=1e-3)


def test_missing_adapter_says_what_to_do(tmp_path: Path) -> None:
    path = tiny_causal_lm(tmp_path / "base")
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_causal_lm(ModelConfig(name_or_path=str(path), adapter=str(tmp_path), device="cpu"))


def test_unknown_model_error_names_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load_causal_lm(ModelConfig(name_or_path="no-such-org/no-such-model", device="cpu"))


def test_embedded_embedder_encodes() -> None:
    embedder = load_embedder(EmbedderConfig(device="cpu"))
    vectors = embedder.encode(["red apple", "blue kettle"], normalize_embeddings=True)
    assert vectors.shape == (2, 384)
