"""Fault injection (issue #28): kill -9 each long stage at a few of its save points (by a step counter,
mmsrarec.faults), rerun it, and its outputs equal an uninterrupted run's.

Each run is the CLI (`mmsrarec.cli.main`) in a child process forked from a small server that imported
torch, transformers and TRL once: a fresh `python -m mmsrarec` spends ~10 s importing them, and there are
~30 runs. A child is an ordinary process: MMSRAREC_KILL_AT makes it SIGKILL itself, its files stay as a
crash leaves them, and its exit status is read as subprocess reads one (-9). Two run at a time.

The uninterrupted reference runs once (module fixture); each case starts from a copy of the reference's
finished stages before its target, so only the target runs, killed and rerun. Outputs are compared by the
manifests' sha256 of each file. A few files record how long something took (seconds, peak memory) or what
this particular run did (items generated now, the checkpoint it resumed from); those fields differ between
any two runs, killed or not, so they are left out of the comparison (TIMED), and the rest of those files
is compared exactly. Everything else is byte-identical.

Not covered: a kill in the middle of a split of score-ranker. Its store (rank/sharded.py) writes a chunk
every 64 cases or 60 s and the toy splits have 30 cases, so its kill points are between splits; resuming
within a split is the ChunkStore that summarize, describe-items and summarize-users resume here. (Where a
split takes several chunks, the 60 s rule makes llm_scores/'s chunk files differ between any two runs.)
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_atomic
from mmsrarec.faults import VAR, parse

# Imported once by the server, so that no run pays for them.
_PRELOAD = """
import torch, transformers, peft, datasets, faiss, matplotlib.pyplot, sentence_transformers
from trl import SFTConfig, SFTTrainer, GRPOConfig, GRPOTrainer
import mmsrarec.cli, mmsrarec.stages, mmsrarec.llm.train, mmsrarec.llm.score, mmsrarec.summarize.grpo
"""

# A fork server. Requests come on stdin, one JSON line each: {id, argv, env, log}. For each it forks a
# child that runs the CLI with its output in `log` and exits with its return code; when a child ends, the
# server answers {id, status} on stdout (status as subprocess gives it: -9 for SIGKILL).
_SERVER = r"""
import json, os, select, sys, traceback
exec(sys.argv[1])
from mmsrarec import cli

def child(request):
    code = 99
    try:
        os.environ.pop(request["var"], None)
        os.environ.update(request["env"])
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = cli.main(request["argv"])
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

running, buffer, open_ = {}, b"", True
while open_ or running:
    if open_ and select.select([0], [], [], 0.02)[0]:
        data = os.read(0, 65536)
        open_ = bool(data)
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                child(request)
            running[pid] = request["id"]
    elif not open_:
        select.select([], [], [], 0.02)
    for pid in list(running):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            answer = {"id": running.pop(pid), "status": os.waitstatus_to_exitcode(status)}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
"""


class Cli:
    """`mmsrarec ARGV` in a child forked by the server: submit(...) -> a Future of its exit status
    (-9: killed by SIGKILL); several run at once."""

    def __init__(self):
        self.server = subprocess.Popen([sys.executable, "-c", _SERVER, _PRELOAD], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent)
        self.pending: dict[int, Future] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count()
        threading.Thread(target=self._answers, daemon=True).start()

    def _answers(self) -> None:
        for line in self.server.stdout:
            answer = json.loads(line)
            with self.lock:
                future = self.pending.pop(answer["id"])
            future.set_result(answer["status"])
        with self.lock:  # the server is gone: nothing more will come
            for future in self.pending.values():
                future.set_exception(RuntimeError(f"the fork server ended (exit {self.server.wait()})"))

    def submit(self, argv: list[str], log: Path, kill_at: str | None = None) -> Future:
        future, env = Future(), ({VAR: kill_at} if kill_at else {})
        with self.lock:
            number = next(self.ids)
            self.pending[number] = future
            self.server.stdin.write(json.dumps({"id": number, "argv": argv, "env": env, "log": str(log),
                                                "var": VAR}) + "\n")
            self.server.stdin.flush()
        return future

    def run(self, argv: list[str], log: Path, kill_at: str | None = None) -> int:
        return self.submit(argv, log, kill_at).result(timeout=300)

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


def overrides(toy: Path, lm: Path, runs: Path) -> list[str]:
    """A toy run with the tiny LM everywhere, every long stage cut into a few pieces: 2 CF models, 5 chunks
    of keywords and of item descriptions (39 items, batches of 8), ~15 of user summaries, 3 SFT steps with
    a checkpoint each, 4 GRPO steps with a checkpoint every 2, 2 scored splits. The user summaries are sampled
    (mllm_msr.users.do_sample), so a resumed run must also draw each batch's samples as the uninterrupted run did."""
    sets = {
        "runs_dir": runs, "name": "toy", "threads": 1, "data.source": "atomic", "data.path": toy, "data.name": "toy",
        "data.num_negatives": 5, "cf.models": "[pop, sasrec]", "cf.train.epochs": 2,
        "evaluate.methods": "[pop, sasrec, mmsrarec, mllm-msr]", "evaluate.llm_splits": "[valid, test]",
        "summarize.model.name_or_path": lm, "summarize.max_new_tokens": 6, "summarize.batch_size": 8,
        "rank.keywords_from": "summarize", "rank.model.name_or_path": lm, "rank.max_examples": 16,
        "rank.sft.max_steps": 3, "rank.sft.save_steps": 1, "rank.score_batch_size": 8,
        "train_summarizer.reference.name_or_path": lm, "train_summarizer.embedder.device": "cpu",
        "train_summarizer.max_steps": 4, "train_summarizer.save_steps": 2, "train_summarizer.prompts_per_step": 2,
        "train_summarizer.num_generations": 2, "train_summarizer.max_completion_length": 8,
        "train_summarizer.max_eval_items": 2,
        "mllm_msr.model.name_or_path": lm, "mllm_msr.recommender.name_or_path": lm,
        "mllm_msr.items.max_new_tokens": 6, "mllm_msr.items.batch_size": 8, "mllm_msr.users.max_new_tokens": 6,
        "mllm_msr.users.max_train_states": 12, "mllm_msr.sft.max_steps": 3, "mllm_msr.sft.save_steps": 1,
        "mllm_msr.users.do_sample": "true", "mllm_msr.users.temperature": 0.7,  # sampled: each batch under its seed
    }
    return [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]


# Reference targets: together they run every stage below once.
REFERENCE = ["score-ranker", "train-summarizer", "train-mllmmsr"]

# Fields that record time or memory, or what a particular run did, per output file (a pattern): JSON keys
# (matched at any depth, shell patterns) or parquet columns. The rest of these files is compared exactly.
TIMED = {
    "train-cf": {"*.json": ["train_time_s", "train_cpu_s", "peak_rss_mb"]},
    "index": {"index_manifest.json": ["embed_time_s", "build_time_s"]},
    "summarize": {"summary.json": ["items_generated", "generation_s", "items_per_s"]},
    "train-ranker": {"ranker.json": ["train_time_s", "resumed_from"]},
    "score-ranker": {"methods.json": ["*_eval_time_s", "*_s_per_user", "*_s_per_scored_user_median"],
                     "llm_scores/*.parquet": ["seconds"]},
    "train-summarizer": {"reward_curves.csv": ["step_seconds"]},
    "describe-items": {"descriptions.parquet": ["seconds"],
                       "summary.json": ["generation_s", "generated_this_run"]},
    "summarize-users": {"summaries.parquet": ["seconds"], "states.parquet": ["summary_s"],
                        "summary.json": ["generation_s", "generated_this_run", "mean_summary_s"]},
    "train-mllmmsr": {"mllmmsr.json": ["train_time_s", "resumed_from"]},
}

# (stage, the kill point of each killed run in turn[, the chunk made unreadable before the last run]): every
# run but the last is killed at its n-th save point; a rerun counts again from 1, so (1, 2) is killed after its
# 1st piece, then, resumed, after its 2nd. A damaged chunk is removed by the store (ChunkStore._repair) and its
# keys are done again; that case's id is '<stage>-repaired'.
CASES = [  # the longest first: they run two at a time
    # checkpoint-2; resumed, checkpoint-4 (the last); from the start (4 is passed over), checkpoints 2 and 4 and
    # the adapter (the checkpoints not yet removed)
    ("train-summarizer", (1, 1, 3)),
    ("train-ranker", (1, 3)),  # checkpoint-1; resumed, checkpoints 2 and 3 and the adapter (not ranker.json)
    ("train-mllmmsr", (2, 2)),  # checkpoint-2; resumed, checkpoint-3 and the adapter (not mllmmsr.json)
    ("score-ranker", (1, 2)),  # valid scored; resumed, test scored (no case file written yet)
    ("summarize-users", (3, 5)),  # 3 chunks; resumed, 5 more
    ("summarize-users", (3, 5), 1),  # and then the 2nd of the 8 chunks unreadable: that batch is sampled again
    ("describe-items", (2, 2)),  # 2 of 5 chunks; resumed, 2 more
    ("summarize", (2, 3)),  # 2 of 5 chunks; resumed, the other 3 (all stored, not merged)
    ("train-cf", (1, 2)),  # pop.pt written (no pop.json), then pop redone and sasrec.pt written (no sasrec.json)
    ("index", (1, 2)),  # the index written; resumed, the train and valid tables written (not test)
]


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    """stage -> a Future of its case (run_case): the uninterrupted reference runs first, then the cases run
    two at a time (the runs are CPU-bound, one thread each). Only the cases this session selected run."""
    from mmsrarec.models.tiny import tiny_causal_lm

    cli = Cli()  # imports while the data and model are built
    try:
        root = tmp_path_factory.mktemp("faults")
        toy, lm = write_atomic(root / "toy"), tiny_causal_lm(root / "lm")
        runs = root / "reference"
        assert cli.run(["prepare", *overrides(toy, lm, runs)], root / "prepare.log") == 0, _tail(root / "prepare.log")
        # after prepare, the three share no stage: they run at once
        codes = {target: cli.submit([target, *overrides(toy, lm, runs)], root / f"reference-{target}.log")
                 for target in REFERENCE}
        for target, code in codes.items():
            assert code.result(timeout=600) == 0, _tail(root / f"reference-{target}.log")
        chosen = {item.callspec.id for item in request.session.items
                  if item.module is request.module and hasattr(item, "callspec")}
        with ThreadPoolExecutor(2) as pool:
            futures = {_id(case): pool.submit(run_case, cli, root, toy, lm, *case)
                       for case in CASES if _id(case) in chosen}
            yield futures
    finally:
        cli.close()


def _id(case: tuple) -> str:
    return case[0] + ("-repaired" if len(case) > 2 else "")


def run_case(cli: Cli, root: Path, toy: Path, lm: Path, stage: str, kills: tuple[int, ...],
             damage: int | None = None) -> tuple[Path, Path]:
    """Kill `stage` at each count of `kills` in turn (each run resumes the last), make its chunk number
    `damage` (in name order) unreadable, rerun it to the end; returns (the reference's stage folder, the
    resumed one)."""
    from mmsrarec.config import load_config
    from mmsrarec.stages import Runner

    case, reference = root / (stage + ("-repaired" if damage is not None else "")), root / "reference" / "toy"
    argv = [stage, *overrides(toy, lm, case / "runs")]
    for name in Runner(load_config(None, _sets(argv))).plan(stage)[:-1]:  # what it reads, as the reference left it
        shutil.copytree(reference / name, case / "runs" / "toy" / name, symlinks=True)
    run_dir, log = case / "runs" / "toy", case / "cli.log"
    for n in kills:
        code = cli.run(argv, log, kill_at=f"{stage}:{n}")
        assert code == -9, f"expected a kill at {stage}:{n}, exit status {code}\n{_tail(log)}"
        assert (run_dir / f"{stage}.partial").is_dir() and not (run_dir / stage).exists()
    if damage is not None:
        chunks = sorted((run_dir / f"{stage}.partial" / "chunks").glob("chunk-*.parquet"))
        assert 0 < damage < len(chunks) - 1, f"chunk {damage} is not in the middle of {len(chunks)}"
        chunks[damage].write_bytes(b"not parquet")
    start = log.stat().st_size
    code = cli.run(argv, log)
    assert code == 0, _tail(log)
    rerun = log.read_bytes()[start:].decode(errors="replace")
    assert f"[{stage}] resuming" in rerun, "the rerun did not resume from the killed run's files"
    assert damage is None or "cannot be read" in rerun, "the store did not remove the damaged chunk"
    assert not (run_dir / f"{stage}.partial").exists()
    return reference / stage, run_dir / stage


@pytest.mark.parametrize("stage,kills", [case[:2] for case in CASES], ids=[_id(case) for case in CASES])
def test_killed_stage_resumes_to_the_uninterrupted_outputs(outcomes, request, stage, kills):
    expected, got = outcomes[request.node.callspec.id].result(timeout=600)
    assert_same_outputs(expected, got, TIMED.get(stage, {}))


def assert_same_outputs(expected: Path, got: Path, timed: dict[str, list[str]]) -> None:
    """The two finished stage folders hold the same files with the same bytes, except the fields of `timed`."""
    want, have = (json.loads((d / "manifest.json").read_text())["outputs"] for d in (expected, got))
    assert sorted(have) == sorted(want), f"files differ: only in the resumed run {sorted(set(have) - set(want))}, " \
                                         f"only in the uninterrupted one {sorted(set(want) - set(have))}"
    differ = []
    for path in sorted(p for p in want if want[p] != have[p]):
        fields = next((f for pattern, f in timed.items() if fnmatch.fnmatchcase(path, pattern)), None)
        if fields is None or _without(expected / path, fields) != _without(got / path, fields):
            differ.append(path)
    assert not differ, f"outputs differ from the uninterrupted run's: {differ}"


def _without(path: Path, fields: list[str]):
    """The content of a JSON, CSV or parquet file without the given keys / columns (shell patterns)."""
    def drop(value):
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if not any(fnmatch.fnmatchcase(k, f) for f in fields)}
        if isinstance(value, list):
            return [drop(v) for v in value]
        return value

    if path.suffix == ".json":
        return drop(json.loads(path.read_text()))
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    frame = frame.drop(columns=[c for c in frame if any(fnmatch.fnmatchcase(c, f) for f in fields)])
    return frame.to_json(orient="split", double_precision=15)


def _sets(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else "(no log)"


def test_the_hook_kills_at_its_count_and_costs_nothing_unset(tmp_path):
    assert parse(None) is None and parse("") is None and parse("train-cf:3") == ("train-cf", 3)
    for bad in ("train-cf", "train-cf:0", ":2", "train-cf:x"):
        with pytest.raises(ValueError, match=VAR):
            parse(bad)
    code = ("from mmsrarec import faults\n"
            "for i in range(1, 6):\n"
            "    faults.step('other'); faults.step('here')\n"
            "    print(i, flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != VAR}
    done = subprocess.run([sys.executable, "-c", code], env={**env, VAR: "here:3"}, capture_output=True, text=True)
    assert done.returncode == -9 and done.stdout.split() == ["1", "2"]
    done = subprocess.run([sys.executable, "-c", code + "print(faults.callbacks('here'))"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["1", "2", "3", "4", "5", "[]"]
