"""A resumable, append-only store of per-key results (items, or ranked cases), shared by processes.

Each batch of results is one parquet chunk written atomically (temp file + rename). After a kill,
even `kill -9`, every chunk on disk is complete and every key in it is done; a rerun reads the
chunks, skips those keys and writes only the rest. `merged()` joins the chunks in key order and
refuses duplicates, so nothing is lost and nothing is written twice.

Several processes may write into one folder at once (sharded summarization and scoring): each names
its chunks `chunk-<writer>-<n>.parquet` with its own writer tag (its rank), so names never collide,
and each takes a disjoint share of the keys (see mmsrarec.sharding), so no key is written twice.
Should a key be stored twice all the same (two runs of one stage that got past its lock, a folder
copied over another), a store repairs itself when it is opened: the later chunks that repeat keys
are removed, with a warning, and their keys are done again. No folder ever needs a hand delete.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from ..artifacts import write_parquet
from ..errors import ArtifactError


class ChunkStore:
    def __init__(self, folder: Path, key: str = "item", writer: str = "r000"):
        if not re.fullmatch(r"[A-Za-z0-9_]+", writer):
            raise ValueError(f"writer tag {writer!r} must be letters, digits or _ (it is part of file names)")
        self.folder, self.key, self.writer = Path(folder), key, writer
        self.folder.mkdir(parents=True, exist_ok=True)
        self._keys: dict[str, list] = {}  # chunk name -> its keys; chunks never change once written
        self._next: int | None = None
        self._repair()

    def _repair(self) -> None:
        """Remove the chunks that repeat a key of an earlier chunk (in name order), so that their keys are
        done again. Every process that opens the store at the start of a run removes the same ones."""
        seen: set = set()
        for path in self._chunks():
            try:
                keys = pd.read_parquet(path, columns=[self.key])[self.key].tolist()
            except FileNotFoundError:  # another process of this run removed it just now
                continue
            except Exception as exc:  # noqa: BLE001 - chunks are written atomically: this one was altered
                keys, why = [], f"cannot be read ({type(exc).__name__})"
            else:
                if seen.isdisjoint(keys) and len(set(keys)) == len(keys):
                    seen.update(keys)
                    self._keys[path.name] = keys
                    continue
                why = f"repeats {self.key}s stored before it (two writers in one folder?)"
            path.unlink(missing_ok=True)
            print(f"warning: {path} {why}; removed, its {self.key}s will be done again", file=sys.stderr)

    def _chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.parquet"))

    def done(self) -> set:
        """Every key stored so far, by any writer."""
        out: set = set()
        for path in self._chunks():
            if path.name not in self._keys:
                self._keys[path.name] = pd.read_parquet(path, columns=[self.key])[self.key].tolist()
            out.update(self._keys[path.name])
        return out

    def append(self, rows: pd.DataFrame) -> Path:
        if self._next is None:  # continue after this writer's chunks of an earlier (killed) run
            own = [int(p.stem.rsplit("-", 1)[1]) for p in self.folder.glob(f"chunk-{self.writer}-*.parquet")]
            self._next = max(own, default=-1) + 1
        path = write_parquet(self.folder / f"chunk-{self.writer}-{self._next:06d}.parquet", rows)
        self._keys[path.name] = rows[self.key].tolist()
        self._next += 1
        return path

    def rows_per_writer(self) -> dict[str, int]:
        """Keys stored per writer tag (chunks of the single-writer format count as writer '-')."""
        self.done()
        out: dict[str, int] = {}
        for name, keys in self._keys.items():
            parts = name[len("chunk-"):-len(".parquet")].split("-")
            writer = parts[0] if len(parts) == 2 else "-"
            out[writer] = out.get(writer, 0) + len(keys)
        return dict(sorted(out.items()))

    def merged(self) -> pd.DataFrame:
        chunks = self._chunks()
        if not chunks:
            raise ArtifactError(f"no results in {self.folder}")
        frame = pd.concat([pd.read_parquet(p) for p in chunks], ignore_index=True)
        dup = frame[self.key].duplicated()
        if dup.any():
            raise ArtifactError(f"{self.folder}: {int(dup.sum())} {self.key}(s) stored twice, e.g. "
                                f"{frame.loc[dup, self.key].iloc[0]}, written while this run was merging; run the stage again "
                                f"(the store removes the repeats when it is opened)")
        return frame.sort_values(self.key).reset_index(drop=True)
