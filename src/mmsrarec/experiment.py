"""Seeds and ablations: `mmsrarec run` with an `experiment` section.

Each (seed, variant) is an ordinary run with extra overrides. The first seed's main run is
runs/<name>/ itself; the others live in runs/<name>/experiment/<seed>-<variant>/. data.seed stays
pinned to the main run's, so all of them rank the same stored candidate lists, and every run may
link to an identical finished stage of the runs before it (pipeline.Runner's `reuse`), so a
variant that only changes the ranker recomputes nothing upstream of it.

The merged leaderboard (runs/<name>/leaderboard/) has one row per method and protocol with the
mean and the spread (sample standard deviation) over seeds: the classical baselines and the main
ranker from the main runs, each variant's ranker from its own runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import ledger
from .artifacts import read_json, write_json, write_text
from .config import RunConfig, Variant, load_config
from .configtools import parse_override
from .errors import ArtifactError, MmsrarecError
from .evaluate.leaderboard import method_cell


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
            extra = [f"seed={seed}", f"data.seed={cfg.data_seed}", "experiment.seeds=[]", "experiment.variants=[]"]
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


def board_of_finished(cfg: RunConfig, config_path: str | None, overrides: list[str]) -> Path:
    """The merged leaderboard over the runs that are finished now (evaluate up to date for the config,
    see pipeline.Runner.finished) and, with experiment.ledger, the ledger's rows of the others, running
    nothing; it names the runs left out."""
    from .stages import Runner

    everything = members(cfg, config_path, overrides)
    done = []
    for member in everything:
        runner = Runner(member.cfg)
        if runner.finished(runner.plan("evaluate")) is not None:
            done.append((member, runner.run_dir))
    return board(cfg, everything, done)


def board(cfg: RunConfig, everything: list[Member], done: list[tuple[Member, Path]]) -> Path:
    """The merged leaderboard in runs/<name>/leaderboard/ of the runs finished here (`done`) and, with
    experiment.ledger, of the ledger's rows of the other runs under their present config (ledger.py); the
    ledger then gets the rows of the runs finished here."""
    here = merge(done) if done else pd.DataFrame(columns=ledger.HEAD)
    rows, from_ledger = here, []
    if cfg.experiment.ledger:
        path = cfg.experiment.ledger
        book = ledger.read(path)
        finished = {m.label for m, _ in done}
        wanted = {m.label: ledger.fingerprint(m.cfg) for m in everything if m.label not in finished}
        taken = ledger.current(book, wanted)
        from_ledger = sorted(set(taken["label"]))
        stale = sorted(set(book.loc[book["label"].isin(wanted), "label"]) - set(from_ledger))
        if stale:
            print(f"[experiment] ledger {path}: its rows of {', '.join(stale)} are for another config "
                  "(fingerprint; ledger.py), left out", file=sys.stderr)
        if len(taken):
            print(f"[experiment] ledger {path}: rows of {taken['label'].nunique()} runs not finished here",
                  file=sys.stderr)
            rows = pd.concat([here, taken], ignore_index=True) if len(here) else taken.reset_index(drop=True)
        _same_data(rows, f"the runs finished here and those of the ledger {path}")
        if len(here):
            ledger.write(path, ledger.update(book, here))
            print(f"[experiment] ledger {path}: rows of the {here['label'].nunique()} runs finished here "
                  "written", file=sys.stderr)
    order = {m.label: i for i, m in enumerate(everything)}  # the experiment's order, wherever a row came from
    rows = rows.sort_values("label", key=lambda labels: labels.map(order), kind="stable").reset_index(drop=True)
    for line in ledger.disagreements(rows):
        print(f"[experiment] WARNING: runs on this board read the same stage with other output bytes, {line}: "
              "from machines that disagree or from other package versions; their rows may differ by more than "
              "their config", file=sys.stderr)
    on_board = set(rows["label"])
    missing = [m.label for m in everything if m.label not in on_board]
    print(f"[experiment] {len(on_board)} of {len(everything)} runs finished ({len(done)} here)"
          + (f"; not finished: {', '.join(missing)}" if missing else ""), file=sys.stderr)
    if rows.empty:
        raise ArtifactError(f"no run of experiment {cfg.name!r} has finished; `mmsrarec run --config ...` runs them")
    out = cfg.run_dir / "leaderboard"
    write_board(rows, out, cfg, len(cfg.experiment.seeds or [cfg.seed]), missing, from_ledger)
    print(f"[experiment] leaderboard: {out / 'leaderboard.md'}", file=sys.stderr)
    return out


PARALLEL_FROM = "train-ranker"  # experiment.parallel runs this stage and those after it side by side


def _reuse(everything: list[Member], member: Member) -> list[Path]:
    """The folders of the runs listed before `member`, run now or not: it may link their finished stages."""
    return [m.cfg.run_dir for m in everything[:everything.index(member)]]


def _run_sequential(everything: list[Member], runs: list[Member], force: bool, stop_before: str | None) -> list[Path]:
    from .stages import Runner

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

    from .stages import Runner

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


def merge(runs: list[tuple[Member, Path]]) -> pd.DataFrame:
    """Rows of every run's evaluate stage: all of a main run's rows, only its own ranker's rows (and their
    evaluate.fuse blends, '<ranker>+<cf>') from a variant run; each with the run's label, its config's
    fingerprint, its data digest and its source (the keys of ledger.py). Refuses runs whose candidate lists
    differ."""
    from .stages import Runner

    rows = []
    for member, run_dir in runs:
        started = read_json(run_dir / "evaluate" / "manifest.json").get("started_at", "?")
        read = Runner(member.cfg).plan("evaluate")[:-1]
        keys = {"label": member.label, "fingerprint": ledger.fingerprint(member.cfg),
                "data": ledger.data_digest(run_dir / "prepare"), "source": f"run folder, evaluate of {started}",
                "stages": ledger.stages(run_dir, read)}
        for row in read_json(run_dir / "evaluate" / "metrics.json"):
            if member.variant is None or row["method"] in member.own_rows:
                rows.append({**keys, **row, "seed": member.seed})
    frame = pd.DataFrame(rows)
    _same_data(frame, "the runs of this experiment")
    return frame


def _same_data(rows: pd.DataFrame, what: str) -> None:
    if len(rows) and rows["data"].nunique() > 1:
        firsts = rows.drop_duplicates("label")
        raise ArtifactError(f"{what} ranked different candidate lists (their prepare stages differ): " +
                            ", ".join(f"{r.label}: {r.data}" for r in firsts.itertuples()) +
                            "; keep data.* identical across variants and seeds")


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of every numeric column, per method and protocol
    (the deviation is NaN, and shown as no spread, for a single seed)."""
    numeric = [c for c in rows.columns if c not in ("method", "protocol", "seed")
               and pd.api.types.is_numeric_dtype(rows[c])]
    out = []
    for (method, protocol), group in rows.groupby(["method", "protocol"], sort=False):
        row = {"method": method, "protocol": protocol, "seeds": int(group["seed"].nunique())}
        for col in numeric:
            values = group[col].dropna().to_numpy(dtype=float)
            if len(values):
                row[col] = float(values.mean())
                row[f"{col}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")  # no spread of 1
        out.append(row)
    return pd.DataFrame(out)


METRIC_COLUMNS = {"sampled": ["hr@5", "ndcg@5", "auc"], "full": ["hr@10", "ndcg@10"], "rerank": ["hr@10", "ndcg@10"]}


def write_board(rows: pd.DataFrame, out: Path, cfg: RunConfig, n_seeds: int, missing: list[str] = (),
                from_ledger: list[str] = ()) -> None:
    out.mkdir(parents=True, exist_ok=True)
    board = aggregate(rows)
    rows.to_csv(out / "runs.csv", index=False)
    board.to_csv(out / "leaderboard.csv", index=False)
    write_json(out / "leaderboard.json", board.to_dict(orient="records"))
    lines = [f"# {cfg.name}: mean ± std over {n_seeds} seed(s), test split", ""]
    for protocol, group in board.groupby("protocol", sort=False):
        metrics = [m for m in METRIC_COLUMNS.get(protocol, []) if f"test_{m}" in group]
        lines += [f"## {protocol}", "", "| method | seeds | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for _, r in group.iterrows():
            cells = [_cell(r, f"test_{m}") for m in metrics]
            lines.append(f"| {method_cell(r)} | {r['seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
    deltas = paired_deltas(rows, cfg.rank.name, [v.name for v in cfg.experiment.variants])
    if len(deltas):
        deltas.to_csv(out / "ablations.csv", index=False)
        cols = [c for c in deltas.columns if c.startswith(("sampled ", "rerank ")) and not c.endswith(" std")]
        lines += [f"## Variants against {cfg.rank.name}, paired by seed", "",
                  f"Variant minus {cfg.rank.name} on the same seed (and the same lists), mean ± std over the seeds "
                  "that have both; negative: the variant is worse.", "",
                  "| variant | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        for _, r in deltas.iterrows():
            cells = ["–" if pd.isna(r[c]) else f"{r[c]:+.4f}"
                     + ("" if pd.isna(r[f"{c} std"]) else f" ± {r[f'{c} std']:.4f}") for c in cols]
            lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
    if missing:
        lines += [f"Not finished, left out: {', '.join(missing)}.", ""]
    if from_ledger:
        lines += [f"From the ledger {cfg.experiment.ledger} (finished on another machine or in an earlier checkout; "
                  f"each row's source is in runs.csv): {', '.join(from_ledger)}.", ""]
    write_text(out / "leaderboard.md", "\n".join(lines))


def paired_deltas(rows: pd.DataFrame, main: str, variants: list[str]) -> pd.DataFrame:
    """Per variant: (variant - main) on each seed that has both rows, per protocol and metric of METRIC_COLUMNS
    (sampled and rerank, the LLM rankers' protocols), as mean and sample std over those seeds. A paired difference
    leaves out what the seed changes for both (the CF models, the GRPO policy), which the board's spread has."""
    out = []
    for variant in variants:
        row, seeds = {"variant": variant}, set()
        for protocol in ("sampled", "rerank"):
            for metric in METRIC_COLUMNS[protocol]:
                col = f"test_{metric}"
                if col not in rows:
                    continue
                part = rows[rows["protocol"] == protocol]
                a = part[part["method"] == variant].groupby("seed")[col].mean()
                b = part[part["method"] == main].groupby("seed")[col].mean()
                diff = (a - b).dropna()
                if len(diff):
                    seeds |= set(diff.index)
                    row[f"{protocol} {metric}"] = float(diff.mean())
                    row[f"{protocol} {metric} std"] = float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
        if seeds:
            out.append({**row, "seeds": len(seeds)})
    return pd.DataFrame(out)


def _cell(row: pd.Series, col: str) -> str:
    value = row.get(col)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    std = row.get(f"{col}_std")
    return f"{value:.4f} ± {std:.4f}" if std is not None and not np.isnan(std) else f"{value:.4f}"
