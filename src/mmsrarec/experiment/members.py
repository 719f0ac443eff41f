"""An experiment's runs: one per (seed, variant), each an ordinary run with extra overrides.

The first seed's main run is runs/<name>/ itself; the others live in runs/<name>/experiment/<seed>-<variant>/.
By default data.seed stays pinned to the main run's, so all of them rank the same stored candidate lists.
With experiment.redraw_data, each run's data.seed is -1 (= its run seed): each seed draws its own split,
negatives and case subsample, and the variants of a seed share that seed's lists (paired differences stay
paired). Those runs live in runs/<name>/experiment-redraw/<seed>-<variant>/ and their board in
runs/<name>/leaderboard-redraw/, so that the same config run in both modes keeps both: only the first seed's
main run, when that seed is the config's `seed` (then it draws the same lists in both modes: the same run),
stays runs/<name>/ itself and is shared. Labels (SEED-VARIANT: `--runs`, the board, the ledger) are the same
in both modes; the ledger tells a mode's rows apart by their fingerprint (data.seed is in it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
        name (under runs_folder) of every run but the first seed's main one."""
        return label(self.seed, self.variant)


def label(seed: int, variant: Variant | None) -> str:
    return f"{seed}-{variant.name if variant else 'main'}"


def runs_folder(cfg: RunConfig) -> Path:
    """Where the experiment's runs other than runs/<name>/ itself live: runs/<name>/experiment/, or
    runs/<name>/experiment-redraw/ with experiment.redraw_data (the pinned runs' folders are left alone)."""
    return cfg.run_dir / ("experiment-redraw" if cfg.experiment.redraw_data else "experiment")


def board_dir(cfg: RunConfig) -> Path:
    """Where the experiment's merged leaderboard goes: runs/<name>/leaderboard/, or
    runs/<name>/leaderboard-redraw/ with experiment.redraw_data (beside the pinned one, not over it)."""
    return cfg.run_dir / ("leaderboard-redraw" if cfg.experiment.redraw_data else "leaderboard")


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
    redraw = cfg.experiment.redraw_data
    root = runs_folder(cfg)
    out = []
    for i, seed in enumerate(seeds):
        for variant in [None, *cfg.experiment.variants]:
            data_seed = -1 if redraw else cfg.data_seed  # -1: the run's seed
            extra = [f"seed={seed}", f"data.seed={data_seed}", "experiment.seeds=[]", "experiment.variants=[]"]
            # runs/<name>/ itself: the first seed's main run; with redraw_data only where it is the pinned
            # mode's run too (its seed is the config's, so the lists it draws are the pinned ones)
            if i > 0 or variant is not None or (redraw and seed != cfg.seed):
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
