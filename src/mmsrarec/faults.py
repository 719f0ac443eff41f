"""Fault injection, a testing aid: kill -9 a long stage at one of its save points, by a step counter.

With the environment variable MMSRAREC_KILL_AT=<point>:<n> (e.g. `train-cf:2`), the n-th call of
`step("<point>")` in a process kills that process with SIGKILL, exactly as `kill -9` would: no
exception, no `finally`, no flush, so whatever the stage wrote so far stays in `<stage>.partial/` as
after a real crash. tests/test_faults.py kills each long stage this way, reruns it without the variable
and checks that its outputs equal those of an uninterrupted run. Counting calls, not seconds, puts the
kill at the same place on any machine.

Unset (always, outside those tests), `step` reads the variable once per process and then returns at
once, and `callbacks` gives an empty list.

The points, named after the stage whose code they are in (summarize-tuned runs summarize's code, so it
counts summarize's point), one call per save point:

  train-cf          a model's weights are written, its <model>.json (what marks it done) is not yet
  index             the index is written; then each neighbours table
  summarize         each chunk of keywords stored
  train-summarizer  each GRPO checkpoint saved; then the tuned policy saved (checkpoints still there)
  train-ranker      each SFT checkpoint saved; then the adapter and log saved (checkpoints still there)
  score-ranker      the scores of a split all stored (llm_scores/), before its case files are written
  describe-items    each chunk of item descriptions stored
  summarize-users   each chunk of user summaries stored
  train-mllmmsr     as train-ranker
"""

from __future__ import annotations

import os
import signal
import sys

VAR = "MMSRAREC_KILL_AT"

_UNREAD = object()
_target: object = _UNREAD  # (point, n) once the variable is read; None when it is unset
_counts: dict[str, int] = {}


def parse(value: str | None) -> tuple[str, int] | None:
    """'<point>:<n>' -> (point, n); '' or None -> None."""
    if not value:
        return None
    point, sep, count = value.rpartition(":")
    if not sep or not point or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{VAR}={value!r}: expected <point>:<n> with n >= 1, e.g. train-cf:2")
    return point, int(count)


def _armed() -> tuple[str, int] | None:
    global _target
    if _target is _UNREAD:
        _target = parse(os.environ.get(VAR))
    return _target  # type: ignore[return-value]


def step(point: str) -> None:
    """A save point of `point` was passed: the n-th one kills this process if MMSRAREC_KILL_AT says so."""
    target = _armed()
    if target is None or target[0] != point:
        return
    _counts[point] = done = _counts.get(point, 0) + 1
    if done == target[1]:
        print(f"[faults] {VAR}={point}:{done}: killing process {os.getpid()} with SIGKILL", file=sys.stderr,
              flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def callbacks(point: str) -> list:
    """Trainer callbacks that call step(point) after each checkpoint is saved (transformers calls on_save once
    the checkpoint folder is complete); [] when MMSRAREC_KILL_AT is unset or names another point."""
    target = _armed()
    if target is None or target[0] != point:
        return []
    from transformers import TrainerCallback

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            step(point)

    return [KillAfterSave()]
