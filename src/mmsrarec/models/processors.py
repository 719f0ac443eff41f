"""Image-only processors for vision-language models whose processor also wants a video processor.

Qwen2-VL and Qwen2.5-VL processors build a video processor on load, and transformers' video
processors need torchvision. This project feeds images only, so without torchvision the same
processor class is built with its image processor (the PIL backend) and tokenizer alone.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


def wants_video_processor(processor_cls: type) -> bool:
    return "video_processor" in inspect.signature(processor_cls.__init__).parameters


@lru_cache(maxsize=None)
def image_only(processor_cls: type) -> type:
    """A subclass of `processor_cls` whose only parts are the image processor and the tokenizer.

    It keeps the parent's class name on purpose: `save_pretrained` writes that name as
    `processor_class`, so a saved folder loads back with the stock class where torchvision exists.
    """
    if not wants_video_processor(processor_cls):
        return processor_cls

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None,
                 chat_template: str | None = None, **kwargs: Any) -> None:
        processor_cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return type(processor_cls.__name__, (processor_cls,), {
        "__init__": __init__, "__module__": __name__, "__doc__": __doc__,
    })
