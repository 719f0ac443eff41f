"""ID-based sequential recommenders with one interface (see base.CFModel).

Adding a model = one new file with a CFModel subclass + one line in MODELS.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..configtools import from_dict

MODELS: dict[str, str] = {
    "pop": "mmsrarec.cf.pop:Pop",
    "itemknn": "mmsrarec.cf.itemknn:ItemKNN",
    "gru4rec": "mmsrarec.cf.gru4rec:GRU4Rec",
    "sasrec": "mmsrarec.cf.sasrec:SASRec",
    "bert4rec": "mmsrarec.cf.bert4rec:BERT4Rec",
}


def model_class(name: str):
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def model_config(name: str, values: dict[str, Any] | None = None):
    """The model's hyperparameter dataclass filled from `values` (validated like any config section)."""
    return from_dict(model_class(name).Params, values or {})


def build_model(name: str, n_items: int, params: dict[str, Any] | None, train_cfg, seed: int, device):
    return model_class(name)(n_items, model_config(name, params), train_cfg, seed, device)
