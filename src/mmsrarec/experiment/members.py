"""An experiment's runs: one per (seed, variant), each an ordinary run with extra overrides.

The first seed's main run is runs/<name>/ itself; the others live in runs/<name>/experiment/<seed>-<variant>/.
By default data.seed stays pinned to the main run's, so all of them rank the same stored candidate lists.
With experiment.redraw_data, each run's data.seed is -1 (= its run seed): each seed draws its own split,
negatives and case subsample, and the variants of a seed share that seed's lists (paired differences stay
paired).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RunConfig, Variant, load_config
from ..configtools import parse_override
from ..errors import MmsrarecError


@dataclass(frozen=True)
class Member:
    seed: int
    variant: Variant | None  # None: the main run
    cfg: RunConfig

    @property
    def method(self) -> str | None:
        return self.variant.name if self.variant else None

    @property
    def own_rows(self) -> set[str]:
        """The methods a variant run adds to the board: its ranker and its evaluate.fuse blends (a main run
        adds all of its rows)."""
        if self.variant is None:
            return set()
        return {self.method, *(f"{self.method}+{m}" for m in self.cfg.evaluate.fuse)}

    @property
    def label(self) -> str:
        """SEED-VARIANT, e.g. 2026-main, 2026-no-rl: what `--runs` matches, the board names, and the folder
        name of every run but the first seed's main one."""
        return label(self.seed, self.variant)


def label(seed: int, variant: Variant | None) -> str:
    return f"{seed}-{variant.name if variant else 'main'}"


def select(runs: list[Member], patterns: list[str]) -> list[Member]:
    """The runs whose label matches one of the shell patterns (all of them for none); a pattern that
    matches no run is an error that lists the labels."""
    from fnmatch import fnmatchcase

    if not patterns:
        return runs
    for pattern in patterns:
        if not any(fnmatchcase(m.label, pattern) for m in runs):
            raise MmsrarecError(f"--runs {pattern!r} matches none of the experiment's runs: "
                                f"{', '.join(m.label for m in runs)}")
    return [m for m in runs if any(fnmatchcase(m.label, p) for p in patterns)]


def members(cfg: RunConfig, config_path: str | None, overrides: list[str]) -> list[Member]:
    """Every run of the experiment, main runs first within each seed."""
    seeds = cfg.experiment.seeds or [cfg.seed]
    root = cfg.run_dir / "experiment"
    out = []
    for i, seed in enumerate(seeds):
        for variant in [None, *cfg.experiment.variants]:
            data_seed = -1 if cfg.experiment.redraw_data else cfg.data_seed  # -1: the run's seed
            extra = [f"seed={seed}", f"data.seed={data_seed}", "experiment.seeds=[]", "experiment.variants=[]"]
            if i > 0 or variant is not None:
                extra += [f"runs_dir={root}", f"name={label(seed, variant)}"]
            if variant is not None:
                # a variant puts its own ranker on the board, and its blends with the CF models its evaluate.fuse
                # names (the base config's, unless the variant sets its own)
                fuse = load_config(config_path, [*overrides, *variant.set]).evaluate.fuse if any(
                    "fuse" in parse_override(s, {}).get("evaluate", {}) for s in variant.set) else cfg.evaluate.fuse
                extra += [*variant.set, f"rank.name={variant.name}",
                          f"evaluate.methods=[{', '.join([variant.name, *fuse])}]"]
            out.append(Member(seed, variant, load_config(config_path, [*overrides, *extra])))
    return out
