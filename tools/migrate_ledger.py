"""Carry a ledger's rows over a change of stage layout that moves every fingerprint but no result.

    python tools/migrate_ledger.py fingerprints CONFIG > FILE.json   # each run's fingerprint, this checkout
    python tools/migrate_ledger.py apply CONFIG OLD.json             # rewrite CONFIG's experiment.ledger

Run `fingerprints` in a checkout of the older code (e.g. `git worktree add /tmp/old <commit>` and
PYTHONPATH=/tmp/old/src), then `apply` here: the rows recorded under the older fingerprint of their run get the
present one, with the older one in `migrated_from` (ledger.migrate); no row is dropped. When the change was
only a raised Stage.revision, `fingerprints CONFIG --revision STAGE=N` (its revision before) gives the older
fingerprints from this checkout. `apply ... --rename OLD=NEW` also moves every row's metric OLD to the name NEW
(ledger.rename_metric), for a change that gave OLD's name to another metric:

    # evaluate revision 1: the per-case AUC is `gauc`, `auc` the pooled one (unknown for the rows before)
    python tools/migrate_ledger.py fingerprints configs/ml100k_gpu.yaml --revision evaluate=0 > /tmp/old.json
    python tools/migrate_ledger.py apply configs/ml100k_gpu.yaml /tmp/old.json --rename auc=gauc
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from mmsrarec import ledger
from mmsrarec.config import load_config
from mmsrarec.errors import MmsrarecError
from mmsrarec.experiment import members


def fingerprints(config: str, revisions: dict[str, int] | None = None) -> dict[str, str]:
    """Each run's fingerprint under this checkout, with the stages of `revisions` at those revisions."""
    from mmsrarec import stages

    cfg = load_config(config, [])
    present = stages.STAGES
    unknown = sorted(set(revisions or {}) - set(present))
    if unknown:
        sys.exit(f"--revision: no stage {', '.join(unknown)}")
    stages.STAGES = {name: dataclasses.replace(s, revision=(revisions or {}).get(name, s.revision))
                     for name, s in present.items()}
    try:
        return {m.label: ledger.fingerprint(m.cfg) for m in members(cfg, config, [])}
    finally:
        stages.STAGES = present


def _pair(kind: str, right_is_int: bool = False):
    """An argparse type for KEY=VALUE options: (key, value), or a usage error saying what was expected."""
    def parse(text: str) -> tuple[str, str | int]:
        key, eq, value = text.partition("=")
        if not (eq and key.strip() and value.strip()):
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}")
        if right_is_int:
            try:
                return key.strip(), int(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not {kind}: {value!r} is not a whole number") from None
        return key.strip(), value.strip()
    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prints = sub.add_parser("fingerprints")
    prints.add_argument("config")
    prints.add_argument("--revision", action="append", default=[], metavar="STAGE=N",
                        type=_pair("STAGE=N (a stage name, '=', its revision number, e.g. evaluate=0)", True),
                        help="the stage's revision before the change (when a raised revision was all of it)")
    apply = sub.add_parser("apply")
    apply.add_argument("config")
    apply.add_argument("old", help="the JSON `fingerprints` printed in the older checkout")
    apply.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                       type=_pair("OLD=NEW (two metric names, e.g. auc=gauc)"),
                       help="every row's metric OLD goes to the name NEW, OLD left empty (ledger.rename_metric)")
    args = parser.parse_args(argv)
    if args.command == "fingerprints":
        print(json.dumps(fingerprints(args.config, dict(args.revision)), indent=1, sort_keys=True))
        return
    path = load_config(args.config, []).experiment.ledger
    book = ledger.read(path)
    migrated = ledger.migrate(book, json.loads(open(args.old).read()), fingerprints(args.config))
    moved = int((migrated["fingerprint"] != book["fingerprint"]).sum())
    try:
        for old, new in args.rename:
            migrated = ledger.rename_metric(migrated, old, new, path)
    except MmsrarecError as err:  # nothing written
        sys.exit(f"migrate_ledger: {err}")
    ledger.write(path, migrated)
    print(f"{path}: {moved} of {len(book)} rows carried to the present fingerprints"
          + "".join(f"; every row's {old} now named {new}" for old, new in args.rename), file=sys.stderr)


if __name__ == "__main__":
    main()
