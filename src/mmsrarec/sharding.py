"""Which share of the work this process takes, when several processes summarize items or score
users into one resumable store (summarize.store.ChunkStore).

Process `rank` of `world` owns the keys k with k % world == rank (item ids, case numbers): a fixed
rule that needs no communication, gives every process a near-equal share of contiguous ids, and
never hands a key to two processes. Each process skips the keys of its share already in the store,
whoever wrote them, so a rerun after a kill (with the same or another number of processes) does
only what is missing. Completion is read off the store too: the keys are all there.

rank / world are mmsrarec.distributed's: the RANK / WORLD_SIZE environment variables that torchrun
and accelerate launch set (0 / 1 without a launcher).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ConfigError(f"process rank {self.rank} of world size {self.world} is impossible "
                              "(need 0 <= RANK < WORLD_SIZE); check the RANK / WORLD_SIZE environment variables")

    @property
    def tag(self) -> str:
        """This process's writer tag in a ChunkStore (part of its chunk file names)."""
        return f"r{self.rank:03d}"

    def owns(self, keys: Iterable[int]) -> np.ndarray:
        """Boolean mask: which of `keys` (non-negative ints) are this process's share."""
        keys = np.asarray(list(keys) if not isinstance(keys, np.ndarray) else keys, dtype=np.int64)
        return keys % self.world == self.rank


def current_shard() -> Shard:
    """This process's (rank, world) under torchrun / accelerate launch; (0, 1) without a launcher."""
    from . import distributed

    try:
        return Shard(distributed.rank(), distributed.world_size())
    except ValueError:
        raise ConfigError(f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} "
                          "must be integers") from None


def wait_until_stored(store, keys: Iterable, log: Callable[[str], None] = print, poll_s: float = 2.0,
                      report_s: float = 60.0) -> None:
    """Block until every key is in `store` (the other processes' shares included).

    A process that died leaves its keys missing; the log names them every `report_s` seconds, and a
    rerun of that process (same rank and world) writes them. Under torchrun a dead worker stops the
    whole job instead, and rerunning the job resumes every share."""
    wanted = set(keys)
    last_report = time.monotonic()
    while missing := wanted - store.done():
        if time.monotonic() - last_report >= report_s:
            log(f"waiting for {len(missing):,} {store.key}(s) from other processes, e.g. {sorted(missing)[:5]}; "
                "if a process died, rerun it with the same RANK and WORLD_SIZE")
            last_report = time.monotonic()
        time.sleep(poll_s)
