"""Rewards for the keyword summarizer, in TRL's signature `f(prompts, completions, **columns)`.

Each reward is one file with a factory that takes its resources (embedder, reference LM) once and
returns the reward function. A new reward = one new file + one line in REWARDS. A reward with two
forms has one entry per form (length / length_norm, reconstruction / reconstruction_ppl); the names are
what eval.json and the reward curves call them, so a name keeps its meaning (docs/rewards.md).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from .common import RewardFn, completion_text
from .discriminability import embed_items, make_disc_reward
from .information import make_info_reward
from .length import make_length_reward
from .reconstruction import MAX_NLL, make_recon_reward

REWARDS: dict[str, Callable[..., RewardFn]] = {
    "length": make_length_reward,
    "length_norm": partial(make_length_reward, normalize=True),
    "information": make_info_reward,
    "reconstruction": make_recon_reward,  # -log PPL (-mean NLL)
    "reconstruction_ppl": partial(make_recon_reward, log=False),  # -PPL, the paper's form
    "discriminability": make_disc_reward,
}

__all__ = ["MAX_NLL", "REWARDS", "RewardFn", "completion_text", "embed_items", "make_disc_reward", "make_info_reward",
           "make_length_reward", "make_recon_reward"]
