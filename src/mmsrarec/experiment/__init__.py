"""Seeds and ablations: `mmsrarec run` with an `experiment` section.

Each (seed, variant) is an ordinary run with extra overrides. The first seed's main run is
runs/<name>/ itself; the others live in runs/<name>/experiment/<seed>-<variant>/. data.seed stays
pinned to the main run's, so all of them rank the same stored candidate lists (with
experiment.redraw_data each seed draws its own, shared by its variants), and every run may
link to an identical finished stage of the runs before it (pipeline.Runner's `reuse`), so a
variant that only changes the ranker recomputes nothing upstream of it.

The merged leaderboard (runs/<name>/leaderboard/) has one row per method and protocol with the
mean and the spread (sample standard deviation) over seeds: the classical baselines and the main
ranker from the main runs, each variant's ranker from its own runs.

members.py: which runs an experiment has; scheduling.py: running them; board.py: the merged leaderboard.
"""

from __future__ import annotations

from .board import aggregate, board, board_of_finished, merge, paired_deltas, write_board
from .members import Member, label, members, select
from .scheduling import PARALLEL_FROM, last_line, not_held, run_experiment

__all__ = ["Member", "PARALLEL_FROM", "aggregate", "board", "board_of_finished", "label", "last_line", "members", "merge",
           "not_held", "paired_deltas", "run_experiment", "select", "write_board"]
