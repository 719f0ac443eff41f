"""Configuration of the ID-based sequential models (the `train-cf` stage)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..configtools import InvalidValue, field
from ..errors import ConfigError


@dataclass
class CFTrainConfig:
    epochs: int = field(200, help="maximum training epochs")
    batch_size: int = field(64, help="training windows per batch")
    lr: float = field(1e-3, help="Adam learning rate")
    weight_decay: float = field(0.0, help="Adam weight decay")
    patience: int = field(10, help="stop after this many evaluations without a better validation metric")
    eval_every: int = field(1, help="evaluate on validation every this many epochs")
    valid_metric: str = field("ndcg@10", help="validation metric for early stopping (full ranking)")
    valid_exclude_history: bool = field(
        True, help="early stopping ranks all items except the case's history (false: keep them, RecBole's rule; "
                   "set it like evaluate.full_exclude_history)")
    max_len: int = field(50, help="longest history a model sees")
    device: str = field("auto", help="auto | cpu | cuda | cuda:N")

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "eval_every", "max_len"):
            if getattr(self, key) < 1:
                raise InvalidValue(key, f"must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise InvalidValue("lr", f"must be > 0, got {self.lr}")
        if self.patience < 0:
            raise InvalidValue("patience", f"must be >= 0, got {self.patience}")
        name, _, k = self.valid_metric.partition("@")
        if name not in ("ndcg", "hr", "mrr") or not k.isdigit():
            raise InvalidValue("valid_metric", f"must look like ndcg@10, hr@10 or mrr@10, got {self.valid_metric!r}")


@dataclass
class CFConfig:
    models: list[str] = field(default_factory=lambda: ["pop", "itemknn", "gru4rec", "sasrec"],
                              help="models to train; see mmsrarec.cf.MODELS")
    train: CFTrainConfig = field(default_factory=CFTrainConfig)
    params: dict[str, dict[str, Any]] = field(
        default_factory=dict, help="per-model hyperparameters, e.g. params.sasrec.hidden_size: 64")

    def validate(self) -> None:
        from . import MODELS, model_config  # the registry

        for name in self.models:
            if name not in MODELS:
                raise InvalidValue("models", f"names unknown model {name!r}; models are: {', '.join(MODELS)}")
        for name, values in self.params.items():
            if name not in MODELS:
                raise InvalidValue(f"params.{name}", f"is not a model; models are: {', '.join(MODELS)}")
            try:
                model_config(name, values)
            except ConfigError as exc:
                raise InvalidValue(f"params.{name}", f"is invalid: {exc}") from None
