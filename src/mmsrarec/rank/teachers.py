"""Held-out CF teachers for the SFT examples' candidate ranks (rank.candidate_cf_rank_folds).

rank.candidate_cf_rank puts a CF model's rank of each candidate into the prompt. The train-cf model was
trained on the very sequences the SFT examples come from, so at an SFT position it ranks a target it was
trained to predict, and at valid / test one it never saw: the next item's median SASRec rank on ML-100K is
26 at SFT positions against 46.5 at test (experiments/cf_rank_shift.py), so the ranker learns to trust the
rank more than it deserves. With K folds, the users are split into K seeded groups and K models of the
same kind and settings are trained, each on the training sequences of the other groups' users (early
stopping on their valid cases); a user's SFT examples get their ranks from the model that never saw that
user. Valid and test prompts keep the train-cf model, trained on every user's training sequence. Nothing
of valid or test is trained on: the valid cases only stop training, as in train-cf. Items a fold model
never saw (in none of its training sequences) rank last, tied (cf.base.SeenItemsOnly), as with train-cf's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..artifacts import write_json
from ..cf import build_model
from ..cf.base import Cases, SeenItemsOnly, seen_items
from ..device import resolve_device


def user_folds(users: np.ndarray, k: int, seed: int) -> dict[int, int]:
    """user -> fold (0..k-1): a seeded permutation of the users cut into k groups of near-equal size."""
    order = np.random.default_rng([seed, 41]).permutation(np.sort(np.asarray(users, dtype=np.int64)))
    return {int(u): int(i * k // len(order)) for i, u in enumerate(order)}


def fold_teachers(data: dict[str, pd.DataFrame], run_cfg: Any, folder: Path,
                  log: Callable[[str], None]) -> Callable[[int], Any]:
    """The model to rank a user's SFT candidates with: the fold model that was not trained on the user.
    Trained models are kept in `folder` (<model>-fold<i>-of-<k>.pt, and .json: what fit reported, e.g. the
    best valid metric), so a resumed stage trains only the missing ones."""
    name, k, seed = run_cfg.rank.candidate_cf_rank, run_cfg.rank.candidate_cf_rank_folds, run_cfg.seed
    train, valid = data["train"], data["valid"]
    n_items = len(data["items"])
    fold_of = user_folds(train["user"].to_numpy(), k, seed)
    folder.mkdir(parents=True, exist_ok=True)
    models = []
    for fold in range(k):
        model = build_model(name, n_items, run_cfg.cf.params.get(name), run_cfg.cf.train, seed + 1 + fold,
                            resolve_device("cpu"))
        path = folder / f"{name}-fold{fold}-of-{k}.pt"
        trained_on = train["user"].map(lambda u: fold_of[int(u)] != fold).to_numpy()
        sequences = [np.asarray(s, dtype=np.int64) for s in train.loc[trained_on, "items"]]
        seen = seen_items(sequences, n_items)
        if path.is_file():
            models.append(SeenItemsOnly(model.load(path), seen))
            continue
        stop_on = Cases.from_frame(valid[valid["user"].map(lambda u: fold_of.get(int(u), -1) != fold)])
        t0 = time.perf_counter()
        log(f"candidate CF rank teacher {fold + 1}/{k}: {name} on the {len(sequences):,} training sequences of "
            f"the users outside fold {fold}")
        info = {**model.fit(sequences, stop_on, log), "sequences": len(sequences), "valid_cases": len(stop_on),
                "train_time_s": round(time.perf_counter() - t0, 3)}
        model.save(path)
        write_json(path.with_suffix(".json"), info)
        log(f"candidate CF rank teacher {fold + 1}/{k}: {info}")
        models.append(SeenItemsOnly(model, seen))
    return lambda user: models[fold_of[int(user)]]
