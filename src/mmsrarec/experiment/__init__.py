"""Seeds and ablations: `mmsrarec run` with an `experiment` section.

Each (seed, variant) is an ordinary run with extra overrides. The first seed's main run is
runs/<name>/ itself; the others live in runs/<name>/experiment/<seed>-<variant>/. data.seed stays
pinned to the main run's, so all of them rank the same stored candidate lists, and every run may
link to an identical finished stage of the runs before it (pipeline.Runner's `reuse`), so a
variant that only changes the ranker recomputes nothing upstream of it.

With experiment.redraw_data each seed draws its own lists, shared by its variants; those runs live
in runs/<name>/experiment-redraw/<seed>-<variant>/ and their board in runs/<name>/leaderboard-redraw/,
beside the pinned mode's, not over them (the first seed's main run stays runs/<name>/ where its seed
is the config's `seed`: the same run in both modes). Labels are SEED-VARIANT in both modes.

The merged leaderboard (runs/<name>/leaderboard/) has one row per method and protocol with the
mean and the spread (sample standard deviation) over seeds: the classical baselines and the main
ranker from the main runs, each variant's ranker from its own runs. A metric that some seeds' rows
lack (an older ledger row's pooled auc) is averaged over those that have it and says so.

members.py: which runs an experiment has; scheduling.py: running them; board.py: the merged leaderboard;
pairs.py: each variant paired case by case with its seed's main ranker, best CF model and text baseline.
"""

from __future__ import annotations

from .board import aggregate, board, board_of_finished, merge, paired_deltas, write_board
from .members import Member, board_dir, label, members, runs_folder, select
from .scheduling import PARALLEL_FROM, last_line, not_held, run_experiment

__all__ = ["Member", "PARALLEL_FROM", "aggregate", "board", "board_dir", "board_of_finished", "label", "last_line",
           "members", "merge", "not_held", "paired_deltas", "run_experiment", "runs_folder", "select", "write_board"]
