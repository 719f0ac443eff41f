"""Command line: `mmsrarec <stage> --config FILE [--set key=value ...] [--force]`.

Each stage command runs the stages it needs first, skipping those that are up to date.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import distributed
from .errors import ConfigError, MmsrarecError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (keys not given keep their defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set cf.train.epochs=5 (repeatable)")


def _common(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--force", action="store_true", help="redo this stage even if it is up to date")


def build_parser() -> argparse.ArgumentParser:
    from .stages import STAGES

    parser = argparse.ArgumentParser(prog="mmsrarec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, stage in STAGES.items():
        _common(sub.add_parser(name, help=stage.help, description=stage.help))
    run = sub.add_parser("run", help="run every stage the config's evaluate section needs, in order; with an "
                                      "experiment section, once per seed and variant, then merge the leaderboards")
    _common(run)
    for name in [*STAGES, "run"]:
        sub.choices[name].add_argument(
            "--stop-before", metavar="STAGE", default=None,
            help="leave out STAGE and every stage that needs it (e.g. --stop-before train-ranker: everything but "
                 "the LLM ranker, to finish on another machine)")
    run.add_argument("--runs", action="append", default=[], metavar="PATTERN",
                     help="with an experiment section: only the runs whose label SEED-VARIANT matches the shell "
                          "pattern (e.g. 2026-*, *-no-rl, 2025-main; repeatable); the others are left as they are, "
                          "and the leaderboard merges the runs finished so far")
    for name in ("evaluate", "run"):
        sub.choices[name].add_argument(
            "--scores", action="append", default=[], metavar="[NAME=]FILE",
            help="an outside model's score file (CSV/parquet: user, item, score[, split]) to add as a leaderboard row; "
                 "appends to evaluate.score_files (repeatable)")
    export = sub.add_parser("export-candidates", help="write the stored candidate lists and the training "
                                                      "interactions, for scoring a model outside mmsrarec")
    _config_args(export)
    export.add_argument("--out", help="output folder (default: <runs_dir>/<name>/export)")
    board = sub.add_parser("board", help="merge the leaderboard of an experiment's runs finished so far, running "
                                          "nothing; names the runs left out")
    _config_args(board)
    keys = sub.add_parser("keys", help="list every config key with its default and help")
    keys.add_argument("prefix", nargs="?", default="", help="only keys starting with this, e.g. data.")
    check = sub.add_parser("check-config", help="load and validate a config, print it, do nothing else")
    _common(check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except MmsrarecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        distributed.leave()


def _dispatch(args: argparse.Namespace) -> int:
    from .config import RunConfig, load_config
    from .configtools import help_rows, to_dict

    if args.command == "keys":
        for key, default, text in help_rows(RunConfig):
            if key.startswith(args.prefix):
                print(f"{key:40s} {default:28s} {text}")
        return 0
    if getattr(args, "scores", None):  # --scores appends to evaluate.score_files, as an override so it travels
        from .evaluate.outside import scores_override
        args.overrides.append(scores_override(load_config(args.config, args.overrides), args.scores))
    cfg = load_config(args.config, args.overrides)
    if args.command == "check-config":
        import yaml
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    if cfg.threads:
        import torch
        torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .stages import Runner

    if args.command == "export-candidates":
        from .evaluate.export import export_candidates
        print(export_candidates(cfg, args.out))
        return 0
    if args.command == "board":
        from .experiment import board_of_finished

        board_of_finished(cfg, args.config, args.overrides)
        return 0
    if args.command == "run" and (cfg.experiment.seeds or cfg.experiment.variants):
        from .experiment import run_experiment

        run_experiment(cfg, args.config, args.overrides, force=args.force, stop_before=args.stop_before,
                       only=args.runs)
        return 0
    if getattr(args, "runs", None):
        raise ConfigError("--runs picks runs of an experiment, and this config has no experiment.seeds or "
                          "experiment.variants")
    runner = Runner(cfg)
    target = "evaluate" if args.command == "run" else args.command
    runner.run(target, force=args.force, stop_before=args.stop_before)
    if args.command == "run" and not args.stop_before:
        from .evaluate.stage import VERDICT

        verdict = cfg.run_dir / "evaluate" / VERDICT
        if verdict.is_file():  # where the LLM methods stand, from the run's own numbers
            print(verdict.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
