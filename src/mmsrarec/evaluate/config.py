"""Configuration of the evaluate stage: which methods go on the leaderboard, under which protocols."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..configtools import InvalidValue, field


@dataclass
class EvaluateConfig:
    methods: list[str] = field(default_factory=lambda: ["pop", "itemknn", "gru4rec", "sasrec", "text"],
                               help="methods on the leaderboard (trained CF models; later stages add more)")
    protocols: list[Literal["sampled", "full", "rerank"]] = field(
        default_factory=lambda: ["sampled", "full"],
        help="sampled: the stored 1+N candidate lists; full: rank all items except the case's history (CF models); "
             "rerank: LLM rankers rerank the top rerank_top items of the CF model rerank_cf (leave-one-out, test)")
    llm_splits: list[Literal["valid", "test"]] = field(
        default_factory=lambda: ["valid", "test"],
        help="splits the LLM rankers score on the sampled protocol (nothing is selected on valid here; "
             "['test'] halves their cost)")
    rerank_cf: str = field("sasrec", help="rerank protocol: the CF model (in cf.models) whose top items the LLM reranks")
    rerank_top: int = field(50, help="rerank protocol: items retrieved by rerank_cf per case")
    full_exclude_history: bool = field(
        True, help="full protocol: drop the case's history items from the ranking (false = keep them, as RecBole "
                   "1.2.1 does for sequential models)")
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20], help="cut-offs for HR/NDCG/MRR")
    batch_size: int = field(256, help="cases scored per batch")
    report_users: int = field(5, help="report.html: test cases shown with history, keywords, retrieved context and "
                                      "every method's ranking (drawn with seed; 0 = leaderboard only)")
    popularity_buckets: list[int] = field(
        default_factory=lambda: [1, 5, 20, 100], neutral=True,
        help="slices of the held-out cases by the target's training popularity (times it occurs in the training "
             "sequences): each bucket's smallest value after the first, so [1, 5, 20, 100] gives 0 (never in "
             "training), 1-4, 5-19, 20-99 and 100+; every leaderboard row is also reported per slice "
             "(slices.csv/.json/.png, leaderboard.md, report.html; see evaluate/slices.py)")
    history_buckets: list[int] = field(
        default_factory=lambda: [5, 20, 50], neutral=True,
        help="slices of the held-out cases by history length, as popularity_buckets: [5, 20, 50] gives 1-4, "
             "5-19, 20-49 and 50+")
    fuse: list[str] = field(
        default_factory=list,
        help="not in the paper: CF models (in methods) whose per-case scores are blended with the LLM ranker's on "
             "the sampled protocol, one row '<rank.name>+<model>' each, the weight picked on valid (needs 'valid' in "
             "llm_splits; see evaluate/fusion.py): does the LLM add anything to the CF model?")
    fuse_metric: str = field("ndcg@5", help="fuse: the valid metric the blend weight maximizes (a mean of per-case "
                                            "values: hr@K, ndcg@K, mrr@K, mrr or gauc; not the pooled auc)")
    score_files: list[str] = field(
        default_factory=list,
        help="outside models' score files (CSV or parquet: user, item, score[, split]) of the stored candidate lists "
             "(see `mmsrarec export-candidates`); one sampled row each, named by the file stem or 'name=path'; "
             "`mmsrarec evaluate --scores` appends here")

    def validate(self) -> None:
        if not self.protocols:
            raise InvalidValue("protocols", "must name at least one protocol")
        if any(k < 1 for k in self.ks):
            raise InvalidValue("ks", f"must be positive, got {self.ks}")
        if not self.llm_splits or len(set(self.llm_splits)) != len(self.llm_splits):
            raise InvalidValue("llm_splits", f"must name valid and/or test once each, got {self.llm_splits}")
        if self.rerank_top < 2:
            raise InvalidValue("rerank_top", f"must be >= 2, got {self.rerank_top}")
        if self.batch_size < 1:
            raise InvalidValue("batch_size", f"must be >= 1, got {self.batch_size}")
        for name in ("popularity_buckets", "history_buckets"):
            edges = getattr(self, name)
            if not edges or any(e < 1 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
                raise InvalidValue(name, f"must be strictly increasing positive integers (the smallest value of "
                                   f"each bucket after the first), got {edges}")
        if self.report_users < 0:
            raise InvalidValue("report_users", f"must be >= 0, got {self.report_users}")
        if self.fuse:
            from .metrics import POOLED, metric_names
            if self.fuse_metric in POOLED:
                raise InvalidValue("fuse_metric", f"is {self.fuse_metric!r}, the ROC AUC of all cases' rows pooled: a "
                                   "blend of per-case z-scores is on no common scale across cases, so it cannot pick "
                                   "the weight; use 'gauc' (the mean per-case AUC, what 'auc' meant before) or an "
                                   "hr/ndcg/mrr metric")
            if self.fuse_metric not in metric_names(self.ks, "sampled"):
                raise InvalidValue("fuse_metric", f"is {self.fuse_metric!r}, not a sampled metric of ks={self.ks} "
                                   f"(one of {metric_names(self.ks, 'sampled')})")
            if "sampled" not in self.protocols or set(self.llm_splits) != {"valid", "test"}:
                raise InvalidValue("fuse", "blends scores of the stored lists, picks its weight on valid and reports "
                                   "test: needs 'sampled' in protocols and both 'valid' and 'test' in llm_splits")
            if len(set(self.fuse)) != len(self.fuse):
                raise InvalidValue("fuse", f"has duplicates: {self.fuse}")
        from .outside import parse_entries  # names, formats and clashes of the outside score files
        parse_entries(self.score_files, taken=self.methods)
        if self.score_files and "sampled" not in self.protocols:
            raise InvalidValue("score_files", "are scored on the stored candidate lists: add 'sampled' to protocols")
