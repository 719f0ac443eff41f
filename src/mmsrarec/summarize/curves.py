"""Reward curves of a GRPO run: each reward's batch mean at every step, as CSV and PNG.

The rows come from the trainer's `log_history`, which checkpoints store and a resumed run restores,
so after a kill and resume the curve has every step exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..artifacts import write_text

# TRL metric -> column; rewards/<function name>/mean are added per reward.
_METRICS = {"reward": "combined", "reward_std": "combined_std", "completions/mean_length": "completion_tokens",
            "kl": "kl", "loss": "loss", "learning_rate": "learning_rate", "entropy": "entropy",
            "completions/clipped_ratio": "truncated_share", "frac_reward_zero_std": "groups_all_equal",
            "step_time": "step_seconds"}


def curve_table(log_history: list[dict[str, Any]], reward_names: dict[str, str]) -> pd.DataFrame:
    """One row per logged training step. `reward_names` maps a TRL reward function name (r_info)
    to the column it gets (information)."""
    metrics = {**{f"rewards/{fn}/mean": col for fn, col in reward_names.items()}, **_METRICS}
    rows = []
    for entry in log_history:
        if "step" not in entry or "reward" not in entry:
            continue  # the final train summary, eval entries
        row = {"step": int(entry["step"])}
        row.update({col: entry[key] for key, col in metrics.items() if key in entry})
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.drop_duplicates("step", keep="last").sort_values("step") if rows else table


def plot_curves(table: pd.DataFrame, rewards: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [c for c in ["combined", *rewards] if c in table]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for ax, column in zip(axes[0], panels):
        ax.plot(table["step"], table[column], lw=0.8, alpha=0.5)
        window = max(1, len(table) // 10)
        ax.plot(table["step"], table[column].rolling(window, min_periods=1).mean(), lw=1.6)
        ax.set_title(column, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)


def write_curves(log_history: list[dict[str, Any]], reward_names: dict[str, str], out: Path) -> pd.DataFrame:
    """reward_curves.csv and reward_curves.png in `out`."""
    table = curve_table(log_history, reward_names)
    write_text(out / "reward_curves.csv", table.to_csv(index=False))
    if len(table):
        plot_curves(table, list(reward_names.values()), out / "reward_curves.png")
    return table


def curves_callback(reward_names: dict[str, str], out: Path) -> Any:
    """A transformers TrainerCallback that rewrites the curves after every log, so a long run can be watched."""
    from transformers import TrainerCallback

    class RewardCurves(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                write_text(out / "reward_curves.csv", curve_table(state.log_history, reward_names).to_csv(index=False))

    return RewardCurves()
