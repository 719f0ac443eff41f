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
from .mllmmsr.config import MllmMsrConfig
from .rank.config import RankConfig
from .summarize.config import SummarizeConfig, SummarizerTrainConfig
from .textsim.config import TextConfig


@dataclass
class Variant:
    name: str = field("", help="the variant's method name on the leaderboard, e.g. mmsrarec-no-retrieval")
    set: list[str] = field(default_factory=list, help="its overrides, as --set takes them, e.g. "
                                                      "['rank.use_retrieval=false']")

    def validate(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise InvalidValue("name", f"must be a plain name, got {self.name!r}")
        for item in self.set:
            if "=" not in item:
                raise InvalidValue("set", f"{item!r} is not KEY=VALUE")


@dataclass
class ExperimentConfig:
    """`mmsrarec run` repeats the run per seed and per variant (ablation) and merges the leaderboards.
    By default data.seed stays pinned, so every seed and variant ranks the same candidate lists; with
    redraw_data each seed draws its own (its variants share them). Stages whose config and inputs are
    identical are computed once and shared."""

    seeds: list[int] = field(default_factory=list, help="run seeds to average over (empty = only `seed`)")
    variants: list[Variant] = field(default_factory=list, help="extra rankers: each is the run with its overrides")
    parallel: int = field(1, help="> 1: the stages before train-ranker run one after another (each computed "
                                  "once, then linked), then the rankers and their evaluations this many at a "
                                  "time, each in its own process (log: <run>/run.log); pays on a GPU that a "
                                  "small model leaves idle")
    ledger: str = field("", help="a CSV file kept with the code (relative: to the working directory) that the "
                                 "merged leaderboard writes every finished run's rows to and takes the rows of "
                                 "runs not finished here from, while their config is unchanged (ledger.py): "
                                 "results of other machines and earlier checkouts")
    redraw_data: bool = field(False, neutral=True, help=(
        "false: every seed ranks the main run's split and candidate lists (data.seed pinned: fixed lists for "
        "ablations, but the spread over seeds leaves out the variance of the split, the negatives and the case "
        "subsample); true: each seed's runs draw their own with data.seed = that seed, all variants of a seed "
        "sharing them (needs data.seed -1)"))

    def validate(self) -> None:
        if len(set(self.seeds)) != len(self.seeds):
            raise InvalidValue("seeds", f"has duplicates: {self.seeds}")
        if self.parallel < 1:
            raise InvalidValue("parallel", f"must be >= 1, got {self.parallel}")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise InvalidValue("variants", f"names must be unique, got {names}")


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
    mllm_msr: MllmMsrConfig = field(default_factory=MllmMsrConfig)
    text: TextConfig = field(default_factory=TextConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    @property
    def run_dir(self) -> Path:
        """<runs_dir>/<name>: the run's folder, one subfolder per stage."""
        return Path(self.runs_dir) / self.name

    @property
    def data_seed(self) -> int:
        """The seed of the split and the candidate lists: data.seed, or the run's seed when that is -1."""
        return self.data.seed if self.data.seed >= 0 else self.seed

    def validate(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise InvalidValue("name", f"must be a plain folder name, got {self.name!r}")
        if self.threads < 0:
            raise InvalidValue("threads", f"must be >= 0, got {self.threads}")
        if self.experiment.redraw_data and self.data.seed >= 0:
            raise InvalidValue("experiment.redraw_data", f"is true, which draws each seed's lists with that seed, "
                               f"but data.seed pins them to {self.data.seed}: set data.seed=-1 (the default), "
                               "or experiment.redraw_data=false to keep them pinned (a variant's `set` must not "
                               "change data.seed either)")
        methods = {self.rank.name, self.text.name, self.mllm_msr.name, *self.cf.models}
        clash = [v.name for v in self.experiment.variants if v.name in methods]
        if clash:
            raise InvalidValue("experiment.variants", f"names {clash}, already a method's name ({sorted(methods)}): "
                               "the board would mix the variant's rows with that method's; rename the variant")
        if "rerank" in self.evaluate.protocols and self.evaluate.rerank_cf not in self.cf.models:
            raise InvalidValue("evaluate.rerank_cf", f"is {self.evaluate.rerank_cf!r}, which cf.models does not train "
                               f"(cf.models = {self.cf.models})")
        if self.rank.candidate_cf_rank and self.rank.candidate_cf_rank not in self.cf.models:
            raise InvalidValue("rank.candidate_cf_rank", f"is {self.rank.candidate_cf_rank!r}, which cf.models does "
                               f"not train (cf.models = {self.cf.models})")
        fuse_off = [m for m in self.evaluate.fuse if m not in self.cf.models or m not in self.evaluate.methods]
        if fuse_off or (self.evaluate.fuse and self.rank.name not in self.evaluate.methods):
            raise InvalidValue("evaluate.fuse", f"blends the LLM ranker ({self.rank.name!r}) with CF models; both must "
                               f"be in evaluate.methods (= {self.evaluate.methods}) and the CF models in cf.models "
                               f"(= {self.cf.models}); not: {fuse_off or [self.rank.name]}")
        if self.rank.name in self.cf.models:
            raise InvalidValue("rank.name", f"is {self.rank.name!r}, which also names a CF model of cf.models "
                               f"(= {self.cf.models}); pick another name for the ranker's rows")
        blends = [f"{self.rank.name}+{m}" for m in self.evaluate.fuse]
        from .evaluate.outside import parse_entries
        taken = [f.name for f in parse_entries(self.evaluate.score_files) if f.name in blends]
        if taken:
            raise InvalidValue("evaluate.score_files", f"name(s) {taken}, which evaluate.fuse gives its blends; name "
                               "the files otherwise with 'name=path'")
        others = (self.rank.name, self.mllm_msr.name, self.text.name)
        missing = [m for m in self.evaluate.methods if m not in self.cf.models and m not in others]
        if missing:
            raise InvalidValue("evaluate.methods", f"names {missing}, which neither cf.models trains "
                               f"(cf.models = {self.cf.models}) nor is the LLM ranker (rank.name = "
                               f"{self.rank.name!r}), MLLM-MSR (mllm_msr.name = {self.mllm_msr.name!r}) or the "
                               f"text baseline (text.name = {self.text.name!r}); add them there or remove them here")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    return load(RunConfig, path, list(overrides))
