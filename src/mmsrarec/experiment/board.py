"""The merged leaderboard of an experiment (runs/<name>/leaderboard/, or with experiment.redraw_data
runs/<name>/leaderboard-redraw/: members.board_dir): one row per method and protocol with the mean and the
spread (sample standard deviation) over seeds, from the runs finished here and, with experiment.ledger, the
ledger's rows of the others (ledger.py); each variant paired with the main ranker. The slices of the runs
finished here (each run's evaluate/slices.json; the ledger keeps none) are merged the same way: every method's
test metric per slice, mean ± std over seeds, and each variant minus the main ranker per slice, paired by seed.
Each variant is also paired case by case with its seed's main ranker, best CF model and text baseline (pairs.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .. import ledger
from ..artifacts import read_json, write_json, write_text
from ..config import RunConfig
from ..errors import ArtifactError
from ..evaluate.leaderboard import AUC_LINES, method_cell, sureness
from ..evaluate.slices import WHAT, read_slices, shown_metric
from .members import Member, board_dir, members
from .pairs import case_pairs, pairs_lines


def board_of_finished(cfg: RunConfig, config_path: str | None, overrides: list[str]) -> Path:
    """The merged leaderboard over the runs that are finished now (evaluate up to date for the config,
    see pipeline.Runner.finished) and, with experiment.ledger, the ledger's rows of the others, running
    nothing; it names the runs left out."""
    from ..stages import Runner

    everything = members(cfg, config_path, overrides)
    done = []
    for member in everything:
        runner = Runner(member.cfg)
        if runner.finished(runner.plan("evaluate")) is not None:
            done.append((member, runner.run_dir))
    return board(cfg, everything, done)


def board(cfg: RunConfig, everything: list[Member], done: list[tuple[Member, Path]]) -> Path:
    """The merged leaderboard in members.board_dir (runs/<name>/leaderboard/, leaderboard-redraw/ with
    experiment.redraw_data) of the runs finished here (`done`) and, with
    experiment.ledger, of the ledger's rows of the other runs under their present config (ledger.py); the
    ledger then gets the rows of the runs finished here."""
    per_seed = cfg.experiment.redraw_data
    here = merge(done, per_seed) if done else pd.DataFrame(columns=ledger.HEAD)
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
        _same_data(rows, f"the runs finished here and those of the ledger {path}", per_seed)
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
    out = board_dir(cfg)
    pairs = case_pairs(done, here, cfg.rank.name, cfg.text.name, METRIC_COLUMNS) \
        if cfg.experiment.variants and done else None
    write_board(rows, out, cfg, len(cfg.experiment.seeds or [cfg.seed]), missing, from_ledger,
                merge_slices(done, [m.label for m in everything]), pairs)
    print(f"[experiment] leaderboard: {out / 'leaderboard.md'}", file=sys.stderr)
    return out


def merge(runs: list[tuple[Member, Path]], per_seed: bool = False) -> pd.DataFrame:
    """Rows of every run's evaluate stage: all of a main run's rows, only its own ranker's rows (and their
    evaluate.fuse blends, '<ranker>+<cf>') from a variant run; each with the run's label, its config's
    fingerprint, its data digest and its source (the keys of ledger.py). Refuses runs whose candidate lists
    differ: any two runs, or with per_seed (experiment.redraw_data) two runs of the same seed."""
    from ..stages import Runner

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
    _same_data(frame, "the runs of this experiment", per_seed)
    return frame


def _same_data(rows: pd.DataFrame, what: str, per_seed: bool = False) -> None:
    """All rows on the same data digest, or with per_seed (lists redrawn per seed) all rows of each seed."""
    for seed, group in (rows.groupby("seed") if per_seed and len(rows) else [(None, rows)]):
        if len(group) and group["data"].nunique() > 1:
            firsts = group.drop_duplicates("label")
            raise ArtifactError(f"{what}{'' if seed is None else f' of seed {seed}'} ranked different candidate "
                                "lists (their prepare stages differ): " +
                                ", ".join(f"{r.label}: {r.data}" for r in firsts.itertuples()) +
                                ("; keep data.* identical across the variants of a seed" if per_seed else
                                 "; keep data.* identical across variants and seeds"))


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of every numeric column, per method and protocol
    (the deviation is NaN, and shown as no spread, for a single seed). `seeds` counts the method's seeds;
    a column that some of them lack (an older ledger row has no pooled `test_auc`) is averaged over the
    seeds that have it, and where some row has it on some but not all of its seeds, the column
    `<column>_seeds` gives that count on every row: no mean passes for one over more seeds than it has."""
    numeric = [c for c in rows.columns if c not in ("method", "protocol", "seed")
               and pd.api.types.is_numeric_dtype(rows[c])]
    out, counts = [], []
    for (method, protocol), group in rows.groupby(["method", "protocol"], sort=False):
        row = {"method": method, "protocol": protocol, "seeds": int(group["seed"].nunique())}
        if "vs_cf" in group and group["vs_cf"].notna().any():  # the seeds may pair with different CF models
            row["vs_cf"] = " / ".join(sorted(set(group["vs_cf"].dropna().astype(str))))
        count = {}
        for col in numeric:
            values = group[col].dropna().to_numpy(dtype=float)
            count[col] = int(group.loc[group[col].notna(), "seed"].nunique())
            if len(values):
                row[col] = float(values.mean())
                row[f"{col}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")  # no spread of 1
        out.append(row)
        counts.append(count)
    board = pd.DataFrame(out)
    for col in numeric:  # after its mean and spread, where some row's mean is over fewer seeds than its row's
        if col in board and any(0 < c[col] < r["seeds"] for c, r in zip(counts, out)):
            at = board.columns.get_loc(f"{col}_std") + 1 if f"{col}_std" in board else board.columns.get_loc(col) + 1
            board.insert(at, f"{col}_seeds", [c[col] for c in counts])
    return board


# sampled: `auc` pooled over all test rows as in the papers, `gauc` the mean of per-case AUCs (evaluate/metrics.py)
METRIC_COLUMNS = {"sampled": ["hr@5", "ndcg@5", "auc", "gauc"], "full": ["hr@10", "ndcg@10"],
                  "rerank": ["hr@10", "ndcg@10"]}


def write_board(rows: pd.DataFrame, out: Path, cfg: RunConfig, n_seeds: int, missing: list[str] = (),
                from_ledger: list[str] = (), slices: tuple[pd.DataFrame, dict[str, list[str]]] | None = None,
                pairs: tuple[pd.DataFrame, list[str]] | None = None) -> None:
    """leaderboard.{md,csv,json}, runs.csv, ablations.csv (with variants), given `pairs` (pairs.case_pairs)
    variant_pairs.csv and, given `slices` (merge_slices), slices.csv and the md's "Slices" section."""
    out.mkdir(parents=True, exist_ok=True)
    board = aggregate(rows)
    rows.to_csv(out / "runs.csv", index=False)
    board.to_csv(out / "leaderboard.csv", index=False)
    write_json(out / "leaderboard.json", board.to_dict(orient="records"))
    lines = [f"# {cfg.name}: mean ± std over {n_seeds} seed(s), test split", "", _lists_line(cfg), ""]
    if any(f"test_{m}" in board for m in ("auc", "gauc")):
        lines += [*AUC_LINES, "A row recorded before both were reported (an older ledger row) has `gauc` only: its "
                  "pooled `auc` is unknown (–).", ""]
    for protocol, group in board.groupby("protocol", sort=False):
        metrics = [m for m in METRIC_COLUMNS.get(protocol, []) if f"test_{m}" in group]
        lines += [f"## {protocol}", "", "| method | seeds | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for _, r in group.iterrows():
            cells = [_cell(r, f"test_{m}") for m in metrics]
            lines.append(f"| {method_cell(r)} | {r['seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
        sure = sureness(group)
        if any(_of_seeds(r.get(f"test_{m}_seeds"), r["seeds"]) for _, r in group.iterrows() for m in metrics):
            lines += ["A mean marked (k of n seeds) is over only the k seeds whose rows have that metric (a ledger "
                      "row recorded before the pooled `auc` lacks it), with its spread over those k"
                      + (" and its intervals below averaged over them too" if sure else "") + ".", ""]
        if sure and n_seeds > 1:
            sure[0] = (f"Each seed's own {sure[0][0].lower()}{sure[0][1:-1]}, averaged over the seeds (bounds too; "
                       "the spread over seeds is in the table above).")
        lines += sure
    deltas = paired_deltas(rows, cfg.rank.name, [v.name for v in cfg.experiment.variants])
    if len(deltas):
        deltas.to_csv(out / "ablations.csv", index=False)
        cols = [c for c in deltas.columns
                if c.startswith(("sampled ", "rerank ")) and not c.endswith((" std", " seeds"))]
        lines += [f"## Variants against {cfg.rank.name}, paired by seed", "",
                  f"Variant minus {cfg.rank.name} on the same seed (and the same lists), mean ± std over the seeds "
                  "that have both; negative: the variant is worse.", "",
                  "| variant | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        for _, r in deltas.iterrows():
            cells = ["–" if pd.isna(r[c]) else f"{r[c]:+.4f}"
                     + ("" if pd.isna(r[f"{c} std"]) else f" ± {r[f'{c} std']:.4f}")
                     + _of_seeds(r.get(f"{c} seeds"), r["seeds"]) for c in cols]
            lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
    (out / "variant_pairs.csv").unlink(missing_ok=True)  # none from an earlier board where there are none now
    if pairs is not None:
        if len(pairs[0]):
            pairs[0].to_csv(out / "variant_pairs.csv", index=False)
        lines += pairs_lines(*pairs)
    if slices is not None and len(slices[0]):
        lines += slices_section(*slices, cfg.rank.name, [v.name for v in cfg.experiment.variants], out,
                                bool(from_ledger), n_seeds)
    elif from_ledger:
        lines += ["No slices: the ledger keeps none (they are in each run's own evaluate folder).", ""]
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
                    row[f"{protocol} {metric} seeds"] = len(diff)
        if seeds:
            out.append({**row, "seeds": len(seeds)})
    frame = pd.DataFrame(out)
    for col in [c for c in frame.columns if c.endswith(" seeds")]:  # kept where a delta is over fewer of its seeds
        have = frame[col].fillna(0).astype(int)
        if ((have > 0) & (have < frame["seeds"])).any():
            frame[col] = have
        else:
            frame = frame.drop(columns=col)
    return frame


def merge_slices(runs: list[tuple[Member, Path]], order: list[str]) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """(the test records of every run's evaluate/slices.json, with its seed and label: all of a main run's
    methods, a variant run's own rows only, as merge does; each slicing's labels in bucket order). Runs are
    taken in `order` (the experiment's labels), so methods appear as on the board."""
    rank = {label: i for i, label in enumerate(order)}
    frames, labels = [], {}
    for member, run_dir in sorted(runs, key=lambda run: rank.get(run[0].label, len(rank))):
        if not (run_dir / "evaluate" / "slices.json").is_file():
            continue
        table, doc = read_slices(run_dir / "evaluate")
        table = table[table["split"] == "test"]
        if member.variant is not None:
            table = table[table["method"].isin(member.own_rows)]
        frames.append(table.assign(seed=member.seed, label=member.label))
        for name, info in doc["slicings"].items():
            if labels.setdefault(name, info["labels"]) != info["labels"]:
                print(f"[experiment] WARNING: {member.label} slices {name} into {info['labels']}, the runs before "
                      f"it into {labels[name]}: the board shows the first's slices and pairs only equal labels",
                      file=sys.stderr)
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), labels


def aggregate_slices(table: pd.DataFrame) -> pd.DataFrame:
    """Per method, protocol, slicing, slice and metric: mean and sample std over seeds of the slice's value,
    its seeds, and its cases per seed (the smallest and the largest: redrawn lists have their own)."""
    keys = ["method", "protocol", "slicing", "slice", "metric"]
    return (table.dropna(subset=["value"]).groupby(keys, sort=False)  # std: sample std, NaN for one seed
            .agg(seeds=("seed", "nunique"), value=("value", "mean"), std=("value", "std"),
                 cases_min=("cases", "min"), cases_max=("cases", "max")).reset_index())


def slice_deltas(table: pd.DataFrame, main: str, variants: list[str]) -> pd.DataFrame:
    """Per variant, protocol, slicing, slice and metric: (variant - main) of the slice's value on each seed that
    has both, as mean and sample std over those seeds (paired_deltas, per slice)."""
    keys = ["protocol", "slicing", "slice", "metric", "seed"]
    base = table[table["method"] == main].set_index(keys)["value"]
    out = []
    for variant in variants:
        diff = (table[table["method"] == variant].set_index(keys)["value"] - base).dropna()
        if len(diff):  # one row per slice: over its seeds, std the sample std (NaN for one seed)
            out.append(diff.groupby(level=keys[:-1], sort=False).agg(seeds="count", diff="mean", std="std")
                       .reset_index().assign(variant=variant)[["variant", *keys[:-1], "seeds", "diff", "std"]])
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def slices_section(table: pd.DataFrame, labels: dict[str, list[str]], main: str, variants: list[str], out: Path,
                   ledger_too: bool, n_seeds: int) -> list[str]:
    """slices.csv (aggregate_slices, every metric) and slice_deltas.csv; the md lines: per protocol and slicing,
    the shown metric (slices.shown_metric) per slice and method, mean ± std over seeds (marked where over fewer
    than the board's n_seeds), then each variant minus the main ranker per slice."""
    board, deltas = aggregate_slices(table), slice_deltas(table, main, variants)
    if board.empty:
        return []
    board.to_csv(out / "slices.csv", index=False)
    if len(deltas):
        deltas.to_csv(out / "slice_deltas.csv", index=False)
    lines = ["## Slices", "",
             "One test metric per protocol (HR@5 sampled, HR@10 full) per slice of the test cases "
             "(evaluate.popularity_buckets, evaluate.history_buckets), mean ± std over the seeds; `cases` is the "
             "slice's test cases in one run (a range where seeds or methods differ). Each run's own intervals and "
             "paired differences to the best CF model are in its evaluate/leaderboard.md; every metric is in "
             "slices.csv, the variants' differences in slice_deltas.csv."
             + (" Runs taken from the ledger have no slices here." if ledger_too else ""), ""]
    for protocol in dict.fromkeys(board["protocol"]):
        metric = shown_metric(table, protocol)
        for slicing in [name for name in WHAT if name in labels]:  # popularity first
            order = labels[slicing]
            part = board[(board["protocol"] == protocol) & (board["slicing"] == slicing) & (board["metric"] == metric)]
            shown = [label for label in order if label in set(part["slice"])]
            if not shown:
                continue
            methods = list(dict.fromkeys(part["method"]))
            cell = {(r["slice"], r["method"]): r for r in part.to_dict(orient="records")}
            lines += [f"### {protocol}: test {metric} by {WHAT[slicing]}", "",
                      "| slice | cases | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 2)]
            for label in shown:
                have = [cell[(label, m)] for m in methods if (label, m) in cell]
                low, high = min(r["cases_min"] for r in have), max(r["cases_max"] for r in have)
                lines.append(f"| {label} | {low if low == high else f'{low}-{high}'} | "
                             + " | ".join(_spread(cell.get((label, m)), n_seeds) for m in methods) + " |")
            mine = deltas[(deltas["protocol"] == protocol) & (deltas["slicing"] == slicing)
                          & (deltas["metric"] == metric)] if len(deltas) else deltas
            if len(mine):
                names = list(dict.fromkeys(mine["variant"]))
                diff = {(r["slice"], r["variant"]): r for r in mine.to_dict(orient="records")}
                lines += ["", f"Variant minus {main} per slice, on the same seed (and lists), mean ± std over "
                          "the seeds that have both; negative: the variant is worse.", "",
                          "| slice | " + " | ".join(f"{v} minus {main}" for v in names) + " |",
                          "|" + "---|" * (len(names) + 1)]
                lines += [f"| {label} | " + " | ".join(_spread(diff.get((label, v)), n_seeds, "diff", "+")
                                                      for v in names) + " |" for label in shown]
            lines.append("")
    return lines


def _spread(r: dict | None, n_seeds: int, key: str = "value", sign: str = "") -> str:
    """mean ± std (no spread for one seed), and '(k of n seeds)' where over fewer than the board's n."""
    if r is None:
        return "–"
    std = "" if np.isnan(r["std"]) else f" ± {r['std']:.4f}"
    return f"{r[key] + 0.0:{sign}.4f}{std}" + _of_seeds(r["seeds"], n_seeds)


def _lists_line(cfg: RunConfig) -> str:
    if cfg.experiment.redraw_data:
        return ("Candidate lists redrawn per seed (experiment.redraw_data): each seed ranks its own split, negatives "
                "and case subsample, which the spread over seeds includes; the variants of a seed share its lists.")
    return (f"Candidate lists pinned (data.seed {cfg.data_seed} for every seed): every run ranks the same split, "
            "negatives and case subsample, so the spread over seeds leaves out their variance.")


def _cell(row: pd.Series, col: str) -> str:
    """mean ± std, and '(k of n seeds)' where only k of the row's n seeds have the metric (aggregate)."""
    value = row.get(col)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    std = row.get(f"{col}_std")
    text = f"{value:.4f} ± {std:.4f}" if std is not None and not np.isnan(std) else f"{value:.4f}"
    return text + _of_seeds(row.get(f"{col}_seeds"), row["seeds"])


def _of_seeds(have, seeds) -> str:
    """' (k of n seeds)' where a mean is over k < n seeds, else ''."""
    if have is None or pd.isna(have) or int(have) == int(seeds):
        return ""
    return f" ({int(have)} of {int(seeds)} seed{'s' if int(seeds) > 1 else ''})"
