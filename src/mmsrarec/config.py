"""The run configuration: one typed section per stage, defaults in code.

YAML files in configs/ state only what differs; `--set a.b=value` overrides them.
See `mmsrarec keys` for every key with its default and help text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .cf.config import CFConfig
from .configtools import InvalidValue, field, load
from .data.config import DataConfig
from .evaluate.config import EvaluateConfig
from .index.config import IndexConfig
from .rank.config import RankConfig
from .summarize.config import SummarizeConfig, SummarizerTrainConfig


@dataclass
class RunConfig:
    name: str = field("demo", help="run name: artifacts go to <runs_dir>/<name>/<stage>/")
    runs_dir: str = field("runs", help="folder holding all runs")
    seed: int = field(2025, help="seed for splits, negatives, training and sampling")
    threads: int = field(0, help="torch CPU threads (0 = leave torch's default)")
    data: DataConfig = field(default_factory=DataConfig)
    cf: CFConfig = field(default_factory=CFConfig)
    summarize: SummarizeConfig = field(default_factory=SummarizeConfig)
    train_summarizer: SummarizerTrainConfig = field(default_factory=SummarizerTrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def validate(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise InvalidValue("name", f"must be a plain folder name, got {self.name!r}")
        if self.threads < 0:
            raise InvalidValue("threads", f"must be >= 0, got {self.threads}")
        missing = [m for m in self.evaluate.methods if m not in self.cf.models and m != self.rank.name]
        if missing:
            raise InvalidValue("evaluate.methods", f"names {missing}, which neither cf.models trains "
                               f"(cf.models = {self.cf.models}) nor is the LLM ranker (rank.name = "
                               f"{self.rank.name!r}); add them there or remove them here")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    return load(RunConfig, path, list(overrides))
