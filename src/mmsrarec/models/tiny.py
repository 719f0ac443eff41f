"""Tiny random-weight models for tests, built from config with no network.

Each builder saves a normal `save_pretrained` folder (model + tokenizer or processor) and returns
its path, so tests load it with `load_causal_lm` / `load_vlm` exactly as a real model is loaded.
Sizes are minimal (hidden 32, 2 layers, ~1k-token vocab): a forward pass takes milliseconds.
The outputs are meaningless; use them to test plumbing (shapes, masks, batching, training steps),
never the quality of a method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

HIDDEN = 32
LAYERS = 2
HEADS = 2

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_VL_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
IDEFICS3_SPECIALS = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]

_CORPUS = """A retrieval augmented sequential recommender summarizes every item into a few keywords.
The red apple is fresh, crunchy and sweet; the blue kettle boils water for tea in two minutes.
Baby products: stroller, car seat, diapers, bottle, toy, blanket. Video games: console, controller,
adventure, shooter, puzzle, racing, role playing. Movies: comedy, drama, thriller, action, romance.
Keywords: kitchen, blender, motor, glass jar, smoothie. Describe the image of the product.
user assistant system You are a helpful assistant. Yes No 0 1 2 3 4 5 6 7 8 9 ( ) [ ] , . ; : ! ?
""" * 4


def _chat_template(image_placeholder: str) -> str:
    """ChatML; message content may be a string or a list of {'type': 'text'|'image'} parts."""
    return (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{ '" + image_placeholder + "' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{ '<|im_end|>\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
    )


def tiny_tokenizer(extra_specials: list[str] = (), image_placeholder: str = "", vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer trained in memory on a small corpus, with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = CHATML_SPECIALS + list(extra_specials)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS.splitlines(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>", extra_special_tokens=list(extra_specials), padding_side="left")
    tokenizer.chat_template = _chat_template(image_placeholder)
    return tokenizer


def _ids(tokenizer: Any) -> dict[str, int]:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def _text_config(tokenizer: Any, model_type: str) -> dict[str, Any]:
    return {"model_type": model_type, "vocab_size": len(tokenizer), "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "num_key_value_heads": 1, "max_position_embeddings": 1024, **_ids(tokenizer)}


def _save(model: Any, preprocessor: Any, out: str | Path) -> Path:
    out = Path(out)
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or _pad_id(preprocessor)
    model.save_pretrained(out)
    preprocessor.save_pretrained(out)
    return out


def _pad_id(preprocessor: Any) -> int:
    return getattr(preprocessor, "tokenizer", preprocessor).pad_token_id


def tiny_causal_lm(out: str | Path, arch: str = "qwen2", seed: int = 0) -> Path:
    """A tiny Qwen2 or Llama causal LM + tokenizer saved to `out`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = AutoConfig.for_model(**_text_config(tokenizer, arch), tie_word_embeddings=True)
    torch.manual_seed(seed)
    return _save(AutoModelForCausalLM.from_config(config), tokenizer, out)


def _qwen_vl_parts(tokenizer: Any) -> dict[str, Any]:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    head_dim = HIDDEN // HEADS  # mrope splits each head's rotary half-dim into (t, h, w) sections
    rope = {"rope_type": "default", "rope_theta": 10000.0,
            "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 2 - head_dim // 4 - head_dim // 8]}
    return {**ids, "rope": rope}


def _qwen_vl(out: str | Path, arch: str, seed: int) -> Path:
    from transformers import AutoConfig, AutoModelForImageTextToText, Qwen2VLImageProcessorPil
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    from .processors import image_only

    tokenizer = tiny_tokenizer(QWEN_VL_SPECIALS, "<|vision_start|><|image_pad|><|vision_end|>")
    parts = _qwen_vl_parts(tokenizer)
    text = {**_text_config(tokenizer, f"{arch}_text"), "rope_parameters": parts.pop("rope")}
    vision: dict[str, Any] = {"depth": LAYERS, "num_heads": HEADS, "patch_size": 14, "spatial_merge_size": 2,
                              "temporal_patch_size": 2}
    if arch == "qwen2_vl":
        vision.update(embed_dim=HIDDEN, hidden_size=HIDDEN, mlp_ratio=2)
    else:
        vision.update(hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, out_hidden_size=HIDDEN,
                      window_size=56, fullatt_block_indexes=[LAYERS - 1])
    config = AutoConfig.for_model(arch, text_config=text, vision_config=vision, **parts)
    # 56x56 .. 112x112 pixels: 4 to 16 image tokens after the 2x2 merge
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    import transformers

    processor_cls = image_only(getattr(transformers, PROCESSOR_MAPPING_NAMES[arch]))
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                              chat_template=tokenizer.chat_template)
    torch.manual_seed(seed)
    return _save(AutoModelForImageTextToText.from_config(config), processor, out)


def tiny_qwen2_vl(out: str | Path, seed: int = 0) -> Path:
    """A tiny Qwen2-VL (image-text-to-text) + image-only processor saved to `out`."""
    return _qwen_vl(out, "qwen2_vl", seed)


def tiny_qwen2_5_vl(out: str | Path, seed: int = 0) -> Path:
    """A tiny Qwen2.5-VL + image-only processor saved to `out`."""
    return _qwen_vl(out, "qwen2_5_vl", seed)


def tiny_idefics3(out: str | Path, seed: int = 0) -> Path:
    """A tiny Idefics3 (the SmolVLM architecture) + processor saved to `out`."""
    from transformers import AutoModelForImageTextToText, Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor

    tokenizer = tiny_tokenizer(IDEFICS3_SPECIALS, "<image>")
    image_size, patch, scale = 32, 8, 2
    vision = {"hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "image_size": image_size, "patch_size": patch}
    config = Idefics3Config(vision_config=vision, text_config=_text_config(tokenizer, "llama"), scale_factor=scale,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), **_ids(tokenizer))
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 2 * image_size},
                                                max_image_size={"longest_edge": image_size})
    processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=(image_size // patch) ** 2 // scale**2,
                                  chat_template=tokenizer.chat_template)
    torch.manual_seed(seed)
    return _save(AutoModelForImageTextToText.from_config(config), processor, out)


def tiny_llava(out: str | Path, seed: int = 0) -> Path:
    """A tiny LLaVA (CLIP vision tower + Llama) + processor saved to `out`."""
    from transformers import AutoModelForImageTextToText, CLIPImageProcessorPil, LlavaConfig, LlavaProcessor

    tokenizer = tiny_tokenizer(["<image>"], "<image>")
    image_size, patch = 32, 8
    vision = {"model_type": "clip_vision_model", "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN,
              "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "image_size": image_size,
              "patch_size": patch, "projection_dim": HIDDEN}
    config = LlavaConfig(vision_config=vision, text_config=_text_config(tokenizer, "llama"),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         image_seq_length=(image_size // patch) ** 2, vision_feature_layer=-1)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor, tokenizer, patch_size=patch, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=tokenizer.chat_template)
    torch.manual_seed(seed)
    return _save(AutoModelForImageTextToText.from_config(config), processor, out)


TINY_VLMS = {"qwen2_vl": tiny_qwen2_vl, "qwen2_5_vl": tiny_qwen2_5_vl, "idefics3": tiny_idefics3, "llava": tiny_llava}
