"""A resumable, append-only store of per-item results.

Each batch of results is one parquet chunk written atomically (temp file + rename). After a kill,
even `kill -9`, every chunk on disk is complete and every item in it is done; a rerun reads the
chunks, skips those items and writes only the rest. `merged()` joins the chunks in item order and
refuses duplicates, so nothing is lost and nothing is written twice.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..artifacts import write_parquet
from ..errors import ArtifactError


class ChunkStore:
    def __init__(self, folder: Path, key: str = "item"):
        self.folder, self.key = Path(folder), key
        self.folder.mkdir(parents=True, exist_ok=True)

    def _chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.parquet"))

    def done(self) -> set[int]:
        out: set[int] = set()
        for path in self._chunks():
            out.update(pd.read_parquet(path, columns=[self.key])[self.key].tolist())
        return out

    def append(self, rows: pd.DataFrame) -> Path:
        index = len(self._chunks())
        return write_parquet(self.folder / f"chunk-{index:06d}.parquet", rows)

    def merged(self) -> pd.DataFrame:
        chunks = self._chunks()
        if not chunks:
            raise ArtifactError(f"no results in {self.folder}")
        frame = pd.concat([pd.read_parquet(p) for p in chunks], ignore_index=True)
        dup = frame[self.key].duplicated()
        if dup.any():
            raise ArtifactError(f"{self.folder}: {int(dup.sum())} {self.key}(s) stored twice, e.g. "
                                f"{frame.loc[dup, self.key].iloc[0]}; delete the folder and rerun")
        return frame.sort_values(self.key).reset_index(drop=True)
