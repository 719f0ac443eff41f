"""Carry a ledger's rows over a change of stage layout that moves every fingerprint but no result.

    python benchmarks/migrate_ledger.py fingerprints CONFIG > FILE.json   # each run's fingerprint, this checkout
    python benchmarks/migrate_ledger.py apply CONFIG OLD.json             # rewrite CONFIG's experiment.ledger

Run `fingerprints` in a checkout of the older code (e.g. `git worktree add /tmp/old <commit>` and
PYTHONPATH=/tmp/old/src), then `apply` here: the rows recorded under the older fingerprint of their run get the
present one, with the older one in `migrated_from` (ledger.migrate); no row is dropped.
"""

from __future__ import annotations

import argparse
import json
import sys

from mmsrarec import ledger
from mmsrarec.config import load_config
from mmsrarec.experiment import members


def fingerprints(config: str) -> dict[str, str]:
    cfg = load_config(config, [])
    return {m.label: ledger.fingerprint(m.cfg) for m in members(cfg, config, [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fingerprints").add_argument("config")
    apply = sub.add_parser("apply")
    apply.add_argument("config")
    apply.add_argument("old", help="the JSON `fingerprints` printed in the older checkout")
    args = parser.parse_args()
    if args.command == "fingerprints":
        print(json.dumps(fingerprints(args.config), indent=1, sort_keys=True))
        return
    path = load_config(args.config, []).experiment.ledger
    book = ledger.read(path)
    migrated = ledger.migrate(book, json.loads(open(args.old).read()), fingerprints(args.config))
    moved = int((migrated["fingerprint"] != book["fingerprint"]).sum())
    ledger.write(path, migrated)
    print(f"{path}: {moved} of {len(book)} rows carried to the present fingerprints", file=sys.stderr)


if __name__ == "__main__":
    main()
