"""Put the rows of runs that finished on a lent GPU before the ledger existed into the ledger, from the key lines
of their logs (what `lent_gpu.py finish` prints: "== <run folder>", then "[evaluate] <method> <protocol> ...
test k=v ..."), at the 4 decimals that the log has. Rows of a run that finished since then come back with the
run (`lent_gpu.py unpack`) and go into the ledger at full precision; this is for the runs whose folders are gone.

    python tools/ledger_from_log.py --config configs/ml100k_gpu.yaml \
        --log experiments/results/ml100k_gpu_h200_loan2_log.txt --unlabeled 2025-mmsrarec-no-aux-tasks

A run's rows are kept as `mmsrarec board` keeps them (a variant's own rows only), with the fingerprint of the
config the run has now and the digest of the data prepared here (`mmsrarec run --stop-before train-cf` first):
so this says that the run finished under today's config, on today's candidate lists. Check that before.
`--row 'LABEL|METHOD|PROTOCOL|k=v k=v|SOURCE'` adds a row that no log holds (its source says where it is from).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mmsrarec import ledger  # noqa: E402
from mmsrarec.config import load_config  # noqa: E402
from mmsrarec.experiment import members  # noqa: E402

LINE = re.compile(r"^\[evaluate\] (?P<method>\S+)\s+(?P<protocol>sampled|full|rerank)\s+(?P<rest>.*?)\s*test "
                  r"(?P<metrics>(?:\S+=\S+\s*)+)(?P<tail>.*)$")


def _metrics(text: str, logged: bool = False) -> dict[str, float]:
    """'hr@5=0.6417  auc=0.7944  gauc=0.7950' -> {'test_hr@5': 0.6417, 'test_auc': 0.7944, 'test_gauc': 0.795}.
    logged: from an [evaluate] line, where one with `auc` and no `gauc` is of an evaluate stage from before the
    pooled `auc` (stages.py: evaluate revision 1), which printed the mean of per-case AUCs as `auc`: that value
    is the row's test_gauc, and its pooled AUC unknown."""
    values = {k: float(v) for k, v in (kv.split("=") for kv in text.split())}
    if logged and "auc" in values and "gauc" not in values:
        values["gauc"] = values.pop("auc")
    return {f"test_{k}": v for k, v in values.items()}


def parse(log: Path, unlabeled: str | None, first: str) -> list[dict]:
    """Rows (label, method, protocol, test metrics, fuse_weight, retrieval_hit_rate) of the log's runs."""
    rows, label = [], None
    for n, line in enumerate(log.read_text().splitlines(), 1):
        if line.startswith("#### "):  # a new device call: its runs name themselves again
            label = None
        elif line.startswith("== "):
            folder = Path(line[3:].strip())
            label = folder.name if folder.parent.name == "experiment" else first
        elif m := LINE.match(line):
            if label is None and unlabeled is None:
                sys.exit(f"{log}, line {n}: an [evaluate] line of no run (no '== <run folder>' before it in its "
                         "device call); name its run with --unlabeled LABEL")
            row = {"label": label or unlabeled, "method": m["method"], "protocol": m["protocol"],
                   "source": f"{log.relative_to(ROOT) if log.is_relative_to(ROOT) else log}, line {n} (4 decimals)"}
            row.update(_metrics(m["metrics"], logged=True))
            if w := re.search(r"weight (\d+\.\d+)", m["rest"]):
                row["fuse_weight"] = float(w[1])
            if h := re.search(r"hit rate (\d+\.\d+)", m["tail"]):
                row["retrieval_hit_rate"] = float(h[1])
            rows.append(row)
    return rows


def extra(spec: str) -> dict:
    try:
        label, method, protocol, metrics, source = spec.split("|")
        return {"label": label, "method": method, "protocol": protocol, "source": source,
                **_metrics(metrics)}
    except ValueError:
        sys.exit(f"--row {spec!r}: expected 'LABEL|METHOD|PROTOCOL|k=v k=v|SOURCE'")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--log", required=True, type=Path)
    ap.add_argument("--unlabeled", help="the run of [evaluate] lines with no '== <run folder>' in their call")
    ap.add_argument("--row", action="append", default=[], help="LABEL|METHOD|PROTOCOL|k=v k=v|SOURCE")
    args = ap.parse_args()
    cfg = load_config(args.config, args.set)
    if not cfg.experiment.ledger:
        sys.exit(f"{args.config}: no experiment.ledger to write to")
    runs = {m.label: m for m in members(cfg, args.config, args.set)}
    prepared = cfg.run_dir / "prepare"
    if not (prepared / "manifest.json").is_file():
        sys.exit(f"{prepared}: not prepared here; `mmsrarec run --config {args.config} --stop-before train-cf` first")
    rows = [*parse(args.log.resolve(), args.unlabeled, next(iter(runs))), *map(extra, args.row)]
    kept = []
    for row in rows:
        member = runs.get(row["label"])
        if member is None:
            sys.exit(f"{args.log}: run {row['label']!r} is not one of the experiment's: {', '.join(runs)}")
        if member.variant is not None and row["method"] not in member.own_rows:
            continue  # a variant's baselines are its main run's
        kept.append({**row, "fingerprint": ledger.fingerprint(member.cfg), "data": ledger.data_digest(prepared),
                     "seed": member.seed})
    frame = pd.DataFrame(kept)
    book = ledger.update(ledger.read(cfg.experiment.ledger), frame)
    ledger.write(cfg.experiment.ledger, book)
    print(f"{len(frame)} rows of {frame['label'].nunique()} runs ({', '.join(frame['label'].unique())}) "
          f"-> {cfg.experiment.ledger} ({len(book)} rows in all)")


if __name__ == "__main__":
    main()
