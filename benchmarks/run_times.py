"""Wall time and peak memory of every finished stage of a run (from the manifests), as a Markdown table.

    python benchmarks/run_times.py runs/demo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run_dir: str) -> None:
    rows = []
    for manifest in Path(run_dir).glob("*/manifest.json"):
        m = json.loads(manifest.read_text())
        rows.append((m.get("started_at", ""), m["stage"], m["wall_time_s"], m["peak_rss_mb"]))
    rows.sort()
    print("| stage | wall s | peak RSS MB |\n|---|---|---|")
    for _, stage, wall, peak in rows:
        print(f"| {stage} | {wall:.0f} | {peak:.0f} |")
    print(f"| total | {sum(r[2] for r in rows):.0f} | {max((r[3] for r in rows), default=0):.0f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
