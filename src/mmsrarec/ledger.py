"""The ledger (experiment.ledger): a CSV file, kept with the code, of every finished run's leaderboard rows.

A run folder lives on the machine that made it: a fresh checkout, or the GPU machine a loan lends for a few
minutes, has none of the runs finished before. The ledger has their rows. The merged leaderboard of an
experiment (experiment.board) takes a run's rows from its folder when the run is finished there, else from
the ledger when the ledger holds rows of that run

- under the config the run has now: its fingerprint, every stage's config section (what the stage keys hold,
  less the inputs, which only exist where the stages ran), the package version and the stages' revisions
  (pipeline.Stage.revision: rows made before a fix that changes a stage's outputs are not current); the
  machine, the paths, threads and experiment.parallel are not in it;
- on the same data: the digest of the split's content (training sequences, valid and test histories, targets
  and candidate lists), which does not depend on the parquet writer's version.

The board then writes the finished runs' rows back into the ledger, replacing that run's rows of the same
fingerprint. Rows are never dropped: those of an older config stay in the file, unused.

Each row also records where it came from: `stages`, the key and the outputs digest of every stage its run
read. Two runs whose stage has the same key (config and inputs) but other output bytes got it from machines
that disagree (an LLM's sampled keywords on another CPU type, say) or from other package versions (a parquet
writer's): the board says so (`disagreements`), since their rows may then differ by more than their config.
The prepare stage is left out of that check: its content is compared exactly, by the data digest.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from . import ARTIFACTS_VERSION
from .artifacts import sha256_json
from .configtools import key_dict
from .errors import ArtifactError

KEYS = ["label", "fingerprint", "data", "source", "stages"]  # first, in this order, then seed, method, protocol, metrics
HEAD = [*KEYS, "seed", "method", "protocol"]  # a ledger's first columns


def fingerprint(cfg) -> str:
    """What a run's rows depend on that its config says (see the module doc), as 16 hex digits."""
    from .stages import Runner

    runner = Runner(cfg)
    plan = runner.plan("evaluate")
    sections = {name: key_dict(runner.stages[name].section(cfg)) for name in plan}
    revisions = {name: runner.stages[name].revision for name in plan if runner.stages[name].revision}
    return sha256_json({"sections": sections, "version": ARTIFACTS_VERSION,
                        **({"revisions": revisions} if revisions else {})})[:16]


_DIGESTS: dict[Path, str] = {}


def data_digest(prepare_dir: Path) -> str:
    """The content of a prepare stage's split (see the module doc), as 16 hex digits."""
    from .data.prepare import load_prepared

    key = Path(prepare_dir).resolve()
    if key not in _DIGESTS:
        data = load_prepared(key)
        content = {split: {col: [v.tolist() if hasattr(v, "tolist") else v for v in data[split][col]]
                           for col in data[split].columns}
                   for split in ("train", "valid", "test")}
        _DIGESTS[key] = sha256_json(content)[:16]
    return _DIGESTS[key]


def stages(run_dir: Path, names: list[str]) -> str:
    """'stage=KEY:OUTPUTS;...' (12 hex digits each) of the run's stages `names`, from their manifests."""
    from .artifacts import read_json

    out = []
    for name in names:
        manifest = read_json(Path(run_dir) / name / "manifest.json")
        out.append(f"{name}={manifest['key'][:12]}:{manifest['outputs_digest'][:12]}")
    return ";".join(out)


def disagreements(rows: pd.DataFrame) -> list[str]:
    """One line per stage key that the rows' runs computed with different outputs (see the module doc)."""
    seen: dict[tuple[str, str], dict[str, list[str]]] = {}
    for label, record in rows.drop_duplicates("label")[["label", "stages"]].itertuples(index=False):
        if not isinstance(record, str) or not record:
            continue  # a row from before the ledger recorded its stages
        for item in record.split(";"):
            name, key_out = item.split("=")
            if name == "prepare":
                continue  # the data digest compares its content
            key, outputs = key_out.split(":")
            seen.setdefault((name, key), {}).setdefault(outputs, []).append(label)
    return [f"{name} (key {key}): " + "; ".join(f"outputs {o} in {', '.join(labels)}" for o, labels in outs.items())
            for (name, key), outs in seen.items() if len(outs) > 1]


def current(book: pd.DataFrame, fingerprints: dict[str, str]) -> pd.DataFrame:
    """The ledger's rows of the runs in `fingerprints` (label -> the fingerprint of its present config) that
    were recorded under that fingerprint."""
    return book[book["label"].map(fingerprints) == book["fingerprint"]]


def read(path: str | Path) -> pd.DataFrame:
    """The ledger's rows (none when the file does not exist yet)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=HEAD)
    try:
        book = pd.read_csv(path, dtype={k: str for k in KEYS})
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not a ledger CSV ({exc}); restore it from git") from exc
    lacking = [k for k in HEAD if k not in book.columns and k not in ("source", "stages")]
    if lacking:
        raise ArtifactError(f"{path}: the ledger lacks the column(s) {lacking}; restore it from git")
    return book.reindex(columns=[*KEYS, *(c for c in book.columns if c not in KEYS)])  # source, stages: optional


def update(book: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """`book` with `rows` in place of its rows of the same (label, fingerprint); the others kept."""
    if rows.empty:
        return book
    new = set(zip(rows["label"], rows["fingerprint"]))
    kept = book[[pair not in new for pair in zip(book["label"], book["fingerprint"])]]
    return pd.concat([kept, rows], ignore_index=True).dropna(axis=1, how="all")


def write(path: str | Path, book: pd.DataFrame) -> None:
    """The ledger as CSV: the keys first, then seed, method, protocol and the other columns sorted; scalar
    columns only (a blend's valid curve stays in its run's metrics.json); rows sorted by label."""
    scalar = [c for c in book.columns if not book[c].map(lambda v: isinstance(v, (dict, list, tuple))).any()]
    cols = HEAD + sorted(c for c in scalar if c not in HEAD)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    book.reindex(columns=cols).sort_values(["label", "fingerprint"], kind="stable").to_csv(tmp, index=False)
    tmp.replace(path)


def migrate(book: pd.DataFrame, old: dict[str, str], new: dict[str, str]) -> pd.DataFrame:
    """`book` after a change of stage layout that moved every fingerprint but no result (e.g. scoring moved out
    of evaluate into stages of its own): each row recorded under its run's fingerprint in the older layout
    (old[label]) gets the one the present code gives the same config (new[label]); `migrated_from` keeps the
    older one. Rows of other configs are kept as they are; none is dropped."""
    book = book.copy()
    if "migrated_from" not in book:
        book["migrated_from"] = pd.Series([None] * len(book), dtype=object)
    moved = [old.get(label) == fp and label in new for label, fp in zip(book["label"], book["fingerprint"])]
    book.loc[moved, "migrated_from"] = book.loc[moved, "fingerprint"]
    book.loc[moved, "fingerprint"] = [new[label] for label in book.loc[moved, "label"]]
    return book


def rename_metric(book: pd.DataFrame, old: str, new: str, path: str | Path = "the ledger") -> pd.DataFrame:
    """`book` with every row's values of metric `old` under the name `new` (columns <split>_<old> and their
    <split>_<old>_<suffix> intervals), the `old` columns left empty: for a change that gives a metric's name to
    another metric, whose value the rows recorded before it do not have (evaluate revision 1: the mean of
    per-case AUCs, recorded as `auc`, is `gauc`; `auc` is now the pooled AUC, unknown for those rows). Refuses a
    book that already has values under `new` (renamed once already), naming `path`, the ledger file it was read
    from."""
    pattern = re.compile(rf"(valid|test)_{re.escape(old)}(_\w+)?")
    moved = {c: c.replace(f"_{old}", f"_{new}", 1) for c in book.columns if pattern.fullmatch(c)}
    taken = [n for n in moved.values() if n in book and book[n].notna().any()]
    if taken:
        raise ArtifactError(f"{path}: the ledger already has values under {taken}: its {old!r} was renamed {new!r} "
                            f"before, and renaming again would empty them; leave the rename out (no --rename "
                            f"{old}={new} for tools/migrate_ledger.py), or restore the file from git to redo it")
    book = book.copy()
    for column, renamed in moved.items():
        book[renamed] = book[column]
        book[column] = float("nan")
    return book

