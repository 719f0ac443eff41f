"""Running an experiment's runs: one after another, or (experiment.parallel) the rankers side by side in
worker processes; every run may link to an identical finished stage of the runs listed before it
(pipeline.Runner's `reuse`), so a variant that only changes the ranker recomputes nothing upstream of it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import ledger
from ..config import RunConfig
from ..errors import ArtifactError
from .board import board, board_of_finished
from .members import Member, members, select


def run_experiment(cfg: RunConfig, config_path: str | None, overrides: list[str], force: bool = False,
                   stop_before: str | None = None, only: list[str] = ()) -> Path | None:
    """Every member run (or those whose label matches a pattern of `only`), then the merged leaderboard
    (of the runs finished so far, with `only`; none with `stop_before`: the runs are unfinished)."""
    everything = members(cfg, config_path, overrides)
    runs = select(everything, list(only))
    if only:
        print(f"[experiment] --runs: {len(runs)} of {len(everything)} runs: {', '.join(m.label for m in runs)}",
              file=sys.stderr)
    if not force:
        runs = not_held(cfg, runs)
    if not runs:
        done = []
    elif cfg.experiment.parallel > 1 and stop_before is None:
        # the stages before the ranker one run after another, so that each is computed once and linked;
        # then the rankers and their evaluations side by side
        _run_sequential(everything, runs, force=False, stop_before=PARALLEL_FROM)
        done = _run_parallel(everything, runs, cfg.experiment.parallel, force)
    else:
        done = _run_sequential(everything, runs, force, stop_before)
    if stop_before is not None:
        print(f"[experiment] {len(runs)} runs done up to {stop_before}; run again without --stop-before "
              "to finish them", file=sys.stderr)
        return None
    if len(runs) < len(everything):
        return board_of_finished(cfg, config_path, overrides)
    return board(cfg, everything, list(zip(runs, done)))


def not_held(cfg: RunConfig, runs: list[Member]) -> list[Member]:
    """`runs` less those whose rows the ledger holds under their present config (ledger.py): finished on
    another machine or in an earlier checkout, they need not run again (--force runs them)."""
    if not cfg.experiment.ledger:
        return runs
    book = ledger.read(cfg.experiment.ledger)
    found = set(ledger.current(book, {m.label: ledger.fingerprint(m.cfg) for m in runs})["label"])
    held = [m.label for m in runs if m.label in found]
    if held:
        print(f"[experiment] {len(held)} runs are in the ledger {cfg.experiment.ledger} under their present config, "
              f"not run again (--force runs them): {', '.join(held)}", file=sys.stderr)
    return [m for m in runs if m.label not in held]


PARALLEL_FROM = "train-ranker"  # experiment.parallel runs this stage and those after it side by side


def _reuse(everything: list[Member], member: Member) -> list[Path]:
    """The folders of the runs listed before `member`, run now or not: it may link their finished stages."""
    return [m.cfg.run_dir for m in everything[:everything.index(member)]]


def _run_sequential(everything: list[Member], runs: list[Member], force: bool, stop_before: str | None) -> list[Path]:
    from ..stages import Runner

    done: list[Path] = []
    for n, member in enumerate(runs, 1):
        until = f" (up to {stop_before})" if stop_before else ""
        print(f"[experiment] run {n}/{len(runs)}{until}: seed {member.seed}, "
              f"{member.method or 'main'} -> {member.cfg.run_dir}", file=sys.stderr)
        runner = Runner(member.cfg, reuse=_reuse(everything, member))
        runner.run("evaluate", force=force, stop_before=stop_before)
        done.append(runner.run_dir)
    return done


def _run_member(cfg: RunConfig, reuse: list[Path], force: bool, log: Path) -> Path:
    """One member run in a worker process, its output (Python's and native code's) into `log`."""
    import os

    from ..stages import Runner

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
    if cfg.threads:
        import torch
        torch.set_num_threads(cfg.threads)
    runner = Runner(cfg, reuse=reuse)
    runner.run("evaluate", force=force)
    return runner.run_dir


def last_line(log: Path, width: int = 110) -> str:
    """The last non-blank line of a log, progress-bar redraws (carriage returns) included."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 4096))
            tail = fh.read().decode(errors="replace")
    except OSError:
        return "(no log yet)"
    lines = [x.strip() for x in tail.replace("\r", "\n").splitlines() if x.strip()]
    return lines[-1][:width] if lines else "(starting)"


def _run_parallel(everything: list[Member], runs: list[Member], workers: int, force: bool,
                  status_every_s: float = 60.0) -> list[Path]:
    """The member runs, `workers` at a time, each in a fresh (spawned) process, its output in
    <run>/run.log. Each may link the finished stages of the runs listed before it, as in a sequential
    experiment."""
    import multiprocessing
    import time
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    dirs = [m.cfg.run_dir for m in runs]
    logs = [d / "run.log" for d in dirs]
    started = time.perf_counter()
    failed = []
    with ProcessPoolExecutor(min(workers, len(runs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(_run_member, m.cfg, _reuse(everything, m), force, logs[i]): i
                   for i, m in enumerate(runs)}
        print(f"[experiment] {len(runs)} runs, {workers} at a time; logs: <run>/run.log", file=sys.stderr)
        while pending:
            finished, _ = wait(pending, timeout=status_every_s, return_when=FIRST_COMPLETED)
            if not finished:  # progress: where each running run is, from the last line of its log
                for i in sorted(pending.values()):
                    print(f"[experiment] {time.perf_counter() - started:.0f} s, {runs[i].method or 'main'}: "
                          f"{last_line(logs[i])}", file=sys.stderr)
            for future in finished:
                i = pending.pop(future)
                what = f"seed {runs[i].seed}, {runs[i].method or 'main'}"
                if future.exception() is None:
                    print(f"[experiment] done ({len(runs) - len(pending)}/{len(runs)}, "
                          f"{time.perf_counter() - started:.0f} s): {what}", file=sys.stderr)
                else:
                    failed.append(i)
                    tail = logs[i].read_text(errors="replace").splitlines()[-5:] if logs[i].is_file() else []
                    print(f"[experiment] FAILED: {what}: {future.exception()}; log {logs[i]}:\n  " +
                          "\n  ".join(tail), file=sys.stderr)
    if failed:
        raise ArtifactError(f"{len(failed)} of {len(runs)} runs failed (logs: " +
                            ", ".join(str(logs[i]) for i in failed) + "); fix and rerun: finished stages are kept")
    return dirs
