"""Rewards for the keyword summarizer, in TRL's signature `f(prompts, completions, **columns)`.

Each reward is one file with a factory that takes its resources (embedder, reference LM) once and
returns the reward function. A new reward = one new file + one line in REWARDS.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from .common import RewardFn, completion_text
from .discriminability import embed_items, make_disc_reward
from .information import make_info_reward
from .length import make_length_reward
from .reconstruction import make_recon_reward

REWARDS: dict[str, Callable[..., RewardFn]] = {
    "length": make_length_reward,
    "length_norm": partial(make_length_reward, normalize=True),
    "information": make_info_reward,
    "reconstruction": make_recon_reward,
    "discriminability": make_disc_reward,
}

__all__ = ["REWARDS", "RewardFn", "completion_text", "embed_items", "make_disc_reward", "make_info_reward",
           "make_length_reward", "make_recon_reward"]
