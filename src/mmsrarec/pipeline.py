"""Stage orchestration over a run directory.

Each stage writes under `runs/<name>/<stage>/`. While it runs it writes into `<stage>.partial/`,
which survives a kill so long stages can resume from what they already wrote; when it finishes,
a manifest (config section, hashes of its inputs and outputs, package versions, wall time, peak
memory) is written and the folder is renamed into place. A stage whose config section and inputs
are unchanged is skipped; `force` redoes it.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .artifacts import hash_tree, read_json, sha256_json, write_json
from .config import RunConfig
from . import distributed
from .configtools import key_dict, to_dict
from .errors import ArtifactError, ConfigError, MmsrarecError
from .evaluate.outside import check_score_files, score_file_digests
from .mllmmsr import config as msr
from .rank.config import ranker_needs
from .summarize.vllm_backend import check_grpo_vllm, check_summarize_backend

PACKAGES = ("torch", "numpy", "pandas", "transformers", "trl", "peft", "sentence-transformers", "faiss-cpu",
            "datasets", "accelerate")


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str  # "module:function"; the function takes a StageContext
    needs: Callable[[RunConfig], list[str]]
    section: Callable[[RunConfig], Any]  # the part of the config this stage's output depends on
    help: str = ""
    check: Callable[[RunConfig], None] | None = None  # cross-section checks, run before any stage of a plan
    distributed: bool = False  # under `accelerate launch`, runs on every process (else on the main one only)
    # outputs (glob patterns) that no other stage reads (under a config, when a function): gone, they rerun no stage
    own: tuple[str, ...] | Callable[[RunConfig], tuple[str, ...]] = ()

    def owns(self, output: str, cfg: RunConfig) -> bool:
        """Whether `output` (a path inside the stage's folder) is one that no other stage reads under cfg."""
        own = self.own(cfg) if callable(self.own) else self.own
        return any(fnmatch.fnmatchcase(output, pattern) for pattern in own)


def _check_index(cfg: RunConfig) -> None:
    if cfg.index.cf_model not in cfg.cf.models:
        raise ConfigError(f"index.cf_model is {cfg.index.cf_model!r}, which cf.models does not train "
                          f"(cf.models = {cfg.cf.models}); add it there or pick one of those")


def _index_own(cfg: RunConfig) -> tuple[str, ...]:
    """The later stages read the neighbours tables; the index itself only with rank.candidate_votes,
    which searches it again."""
    return () if cfg.rank.candidate_votes else ("index.faiss", "index.npy")


def _ranks(cfg: RunConfig) -> bool:
    return cfg.rank.name in cfg.evaluate.methods


def _evaluate_needs(cfg: RunConfig) -> list[str]:
    return ["prepare", "train-cf", *(["train-ranker"] if _ranks(cfg) else []),
            *(["train-mllmmsr"] if msr.evaluated(cfg) else [])]


def _prepare_section(cfg: RunConfig) -> dict:
    """data.* with the effective seed: data.seed -1 under run seed 5 is the same split as data.seed 5."""
    data = {k: v for k, v in key_dict(cfg.data).items() if k != "seed"}
    return {"data": data, "seed": cfg.data_seed}


def _stages() -> dict[str, Stage]:
    return {s.name: s for s in [
        Stage("prepare", "mmsrarec.data.prepare:run", lambda c: [], _prepare_section,
              "read the dataset, filter, remap IDs, split, draw candidate lists"),
        Stage("train-cf", "mmsrarec.cf.stage:run", lambda c: ["prepare"],
              lambda c: {"cf": c.cf, "seed": c.seed}, "train the ID-based models (Pop, ItemKNN, GRU4Rec, SASRec...)"),
        Stage("index", "mmsrarec.index.stage:run", lambda c: ["prepare", "train-cf"],
              lambda c: {"index": c.index, "seed": c.seed},
              "build the FAISS index over training users and retrieve neighbours for every case", _check_index,
              own=_index_own),
        Stage("summarize", "mmsrarec.summarize.stage:run", lambda c: ["prepare"],
              lambda c: {"summarize": c.summarize}, "summarize every item into keywords with the zero-shot policy",
              check_summarize_backend, distributed=True),
        Stage("train-summarizer", "mmsrarec.summarize.train_stage:run", lambda c: ["prepare"],
              lambda c: {"train_summarizer": c.train_summarizer, "summarize": c.summarize, "seed": c.seed},
              "tune the keyword policy with GRPO", check_grpo_vllm, distributed=True),
        Stage("summarize-tuned", "mmsrarec.summarize.stage:run_tuned", lambda c: ["prepare", "train-summarizer"],
              lambda c: {"summarize": c.summarize}, "summarize every item with the GRPO-tuned policy",
              check_summarize_backend, distributed=True),
        Stage("train-ranker", "mmsrarec.rank.stage:run", lambda c: ranker_needs(c),
              lambda c: {"rank": c.rank, "seed": c.seed}, "multitask LoRA SFT of the Yes/No ranker (TRL + PEFT)",
              distributed=True),
        Stage("describe-items", "mmsrarec.mllmmsr.stage:describe_items", lambda c: ["prepare"], msr.describe_section,
              "MLLM-MSR: describe every item (text, and image with a VLM) in a short paragraph"),
        Stage("summarize-users", "mmsrarec.mllmmsr.stage:summarize_users", lambda c: ["prepare", "describe-items"],
              msr.users_section, "MLLM-MSR: recurrent user-preference summaries, one LLM call per block of 3 items"),
        Stage("train-mllmmsr", "mmsrarec.mllmmsr.stage:train", lambda c: ["prepare", "describe-items",
              "summarize-users"], msr.train_section, "MLLM-MSR: LoRA SFT of the Yes/No recommender on user summaries",
              msr.check_names),
        Stage("evaluate", "mmsrarec.evaluate.stage:run", _evaluate_needs,
              lambda c: {"evaluate": c.evaluate, **({"rank_scoring": c.rank.scoring} if _ranks(c) else {}),
                         **({"mllm_msr_scoring": c.mllm_msr.scoring} if msr.evaluated(c) else {}),
                         **score_file_digests(c)},  # an outside score file's content is an input too
              "score every method on both protocols, write the leaderboard", check_score_files,
              distributed=True),  # under a launcher every process scores a share of the LLM's cases
    ]}


STAGES = _stages()


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "mmsrarec": __version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class PeakMemory:
    """Peak resident memory of this process while a block runs (Linux: resets VmHWM via clear_refs)."""

    def __enter__(self) -> "PeakMemory":
        self._reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            pass
        self.peak_mb = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak_mb = current_peak_mb()


def current_peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class StageContext:
    cfg: RunConfig
    stage: str
    run_dir: Path
    out: Path  # write here; it persists across kills until the stage finishes
    summary: dict = field(default_factory=dict)  # small facts to put into the manifest (counts, metrics)

    def input(self, stage: str) -> Path:
        path = self.run_dir / stage
        if not (path / "manifest.json").is_file():
            raise ArtifactError(f"stage '{self.stage}' needs the output of stage '{stage}' at {path}, which is missing;"
                                f" run `mmsrarec {stage} --config ...` first")
        return path

    def log(self, msg: str) -> None:
        where = f" rank {distributed.rank()}" if distributed.launched() else ""
        print(f"[{self.stage}{where}] {msg}", file=sys.stderr, flush=True)


class Runner:
    """Runs stages into runs/<name>/. `reuse`: other run folders whose finished stages may stand in for
    this run's when their key (config section + inputs) is identical; they are linked, not copied, so
    ablations and seeds share the summaries, GRPO policy and index they have in common."""

    def __init__(self, cfg: RunConfig, stages: dict[str, Stage] | None = None, reuse: list[Path] = ()):
        self.cfg = cfg
        self.stages = stages or STAGES
        self.run_dir = cfg.run_dir
        self.reuse = [Path(p) for p in reuse]
        self._done: dict[str, dict] = {}

    def plan(self, target: str) -> list[str]:
        """The target and everything it needs, in dependency order."""
        order: list[str] = []

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name not in self.stages:
                raise MmsrarecError(f"unknown stage {name!r}; stages are: {', '.join(self.stages)}")
            if name in chain:
                raise MmsrarecError(f"stage dependency cycle: {' -> '.join((*chain, name))}")
            for dep in self.stages[name].needs(self.cfg):
                visit(dep, (*chain, name))
            if name not in order:
                order.append(name)

        visit(target, ())
        for name in order:  # fail before any work starts
            if self.stages[name].check is not None:
                self.stages[name].check(self.cfg)
        return order

    def run(self, target: str, force: bool = False, stop_before: str | None = None) -> dict:
        """Run `target` and the stages it needs; `force` redoes the target even if it is up to date.
        `stop_before`: leave out that stage and every planned stage that needs it, directly or not
        (e.g. run the CPU-cheap stages on one machine and the LLM ranker on another)."""
        manifest: dict = {}
        ensure = self._ensure_launched if distributed.join() else self.ensure
        plan = self.plan(target)
        if stop_before is not None:
            plan = self._before(plan, stop_before)
        standing, pruned = ({}, {}) if force else self.standing(plan, (target,) if target in plan else ())
        distributed.barrier()  # every process has decided before any stage runs
        for name in plan:
            if name in standing:
                manifest = self._done[name] = standing[name]
                self._say_standing(name, pruned.get(name))
            else:
                manifest = ensure(name, force=force and name == target)
        return manifest

    def _before(self, plan: list[str], stop: str) -> list[str]:
        if stop not in self.stages:
            raise MmsrarecError(f"--stop-before: unknown stage {stop!r}; stages are: {', '.join(self.stages)}")
        cut = {stop}
        for name in plan:  # plan is in dependency order, so a stage's needs come before it
            if any(dep in cut for dep in self.stages[name].needs(self.cfg)):
                cut.add(name)
        return [name for name in plan if name not in cut]

    def _ensure_launched(self, name: str, force: bool = False) -> dict:
        """`ensure` under `accelerate launch`: the main process decides, runs and writes the manifest as
        `ensure` does alone; the others wait, except that they join a distributed stage that must run
        (in the same <stage>.partial folder, told by the main process), then read its manifest."""
        stage = self.stages[name]
        if distributed.is_main():
            self._joined = False
            manifest = self.ensure(name, force)
            if stage.distributed and not self._joined:
                distributed.broadcast(("skip", ""))  # up to date: nothing to join
        elif stage.distributed:
            what, partial = distributed.broadcast(None)
            if what == "run":
                ctx = StageContext(cfg=self.cfg, stage=name, run_dir=self.run_dir, out=Path(partial))
                module, func = stage.entry.split(":")
                getattr(importlib.import_module(module), func)(ctx)
                distributed.barrier()
        distributed.barrier()
        if not distributed.is_main():
            manifest = read_json(self.run_dir / name / "manifest.json")
            self._done[name] = manifest
        return manifest

    def standing(self, plan: list[str], intact: tuple[str, ...] | None = None
                 ) -> tuple[dict[str, dict], dict[str, list[str]]]:
        """(the manifest of each stage of `plan` that need not run, the outputs gone of those pruned).
        By its manifest, a stage need not run when it has the key that the config gives it now, and its
        outputs are intact, or pruned: some gone, none changed (e.g. a ranker's weights deleted once its
        evaluation was done, or left on the GPU machine that ran it). A pruned stage stands only while no
        stage that reads it has to run, unless all that is gone is its own (Stage.own: outputs that no other
        stage reads, e.g. the FAISS index once the neighbours are written). The stages in `intact` (default:
        the target, plan[-1]) must be intact: `run` passes none when --stop-before cut the target, since
        then no stage was asked for by name. Stages after one that has to run are not judged here:
        `ensure` decides them."""
        intact = (plan[-1],) if intact is None else intact
        done: dict[str, dict] = {}
        pruned: dict[str, list[str]] = {}  # stage -> its outputs that are gone
        for name in plan:
            if any(dep not in done for dep in self.stages[name].needs(self.cfg)):
                continue  # something it reads has to run first: its key is known only then
            path = self.run_dir / name / "manifest.json"
            if not path.is_file():
                continue
            manifest = read_json(path)
            if manifest.get("key") != self.key(name, done)[0]:
                continue
            missing, changed = self._output_diff(self.run_dir / name, manifest)
            if changed or (missing and name in intact):
                continue
            if missing:
                pruned[name] = missing
            done[name] = manifest
        readers = {p: [n for n in plan if p in self.stages[n].needs(self.cfg)] for p in plan}
        read = [p for p, gone in pruned.items() if not all(self.stages[p].owns(g, self.cfg) for g in gone)]
        # a stage pruned of what others read runs again if one of them has to run, and so do the stages after it
        while stack := [p for p in read if p in done and any(r not in done for r in readers[p])]:
            while stack:
                name = stack.pop()
                if done.pop(name, None) is not None:
                    stack += readers[name]
        return done, {p: gone for p, gone in pruned.items() if p in done}

    def finished(self, plan: list[str]) -> dict | None:
        """The target's manifest if no stage of `plan` has to run (see `standing`), else None."""
        standing, _ = self.standing(plan)
        return standing[plan[-1]] if len(standing) == len(plan) else None

    def _say_standing(self, name: str, gone: list[str] | None) -> None:
        if not distributed.is_main():
            return
        if gone:
            why = ("no other stage reads them" if all(self.stages[name].owns(g, self.cfg) for g in gone)
                   else "no stage that reads it has to run")
            print(f"[{name}] finished; {len(gone)} of its outputs are gone ({', '.join(gone[:2])}"
                  f"{', ...' if len(gone) > 2 else ''}), not needed: {why}", file=sys.stderr)
        else:
            print(f"[{name}] up to date, skipped ({self.run_dir / name}); use --force to redo it", file=sys.stderr)

    def key(self, name: str, done: dict[str, dict] | None = None) -> tuple[str, dict]:
        stage = self.stages[name]
        done = self._done if done is None else done
        inputs = {dep: done[dep]["outputs_digest"] for dep in stage.needs(self.cfg)}
        config = key_dict(stage.section(self.cfg))
        return sha256_json({"config": config, "inputs": inputs, "version": __version__}), inputs

    def ensure(self, name: str, force: bool = False) -> dict:
        key, inputs = self.key(name)
        if not force:
            manifest, changed = self._keyed(self.run_dir / name, key)
            if manifest is not None and not changed:
                self._say_standing(name, None)
                self._done[name] = manifest
                return manifest
            if changed:
                print(f"[{name}] outputs changed since they were written ({', '.join(changed[:3])}); redoing",
                      file=sys.stderr)
            shared = self._link_shared(name, key)
            if shared is not None:
                return shared
        return self._execute(name, key, inputs, force)

    def link(self, target: str) -> list[str]:
        """Compute nothing: each stage of plan(target) that this run lacks (or holds with another key) is
        linked from self.reuse where an identical one is finished there. Returns the stages still missing,
        with those after them whose keys need them first."""
        missing = []
        for name in self.plan(target):
            if any(dep not in self._done for dep in self.stages[name].needs(self.cfg)):
                missing.append(name)
                continue
            key, _ = self.key(name)
            manifest, changed = self._keyed(self.run_dir / name, key)
            if manifest is not None and not changed:
                self._done[name] = manifest
            elif self._link_shared(name, key) is None:
                missing.append(name)
        return missing

    def _link_shared(self, name: str, key: str) -> dict | None:
        """Link `name` to an identical finished stage of a run in self.reuse (same key, outputs intact)."""
        final = self.run_dir / name
        for other in self.reuse:
            source = other / name
            if source.resolve() == final.resolve():
                continue
            manifest, changed = self._keyed(source, key)
            if manifest is None or changed:
                continue
            remove_stage(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            final.symlink_to(os.path.relpath(source.resolve(), final.parent.resolve()), target_is_directory=True)
            print(f"[{name}] identical to {source}, linked", file=sys.stderr)
            self._done[name] = manifest
            return manifest
        return None

    @staticmethod
    def _keyed(folder: Path, key: str) -> tuple[dict | None, list[str]]:
        """(the manifest of the stage in `folder` if it is finished with `key`, else None; its outputs that
        are gone or changed since it was written)."""
        path = folder / "manifest.json"
        manifest = read_json(path) if path.is_file() else {}
        if manifest.get("key") != key:
            return None, []
        return manifest, Runner._changed_outputs(folder, manifest)

    @staticmethod
    def _changed_outputs(folder: Path, manifest: dict) -> list[str]:
        missing, changed = Runner._output_diff(folder, manifest)
        return sorted(missing + changed)

    @staticmethod
    def _output_diff(folder: Path, manifest: dict) -> tuple[list[str], list[str]]:
        """(outputs the manifest lists that are gone, outputs that are new or differ)."""
        actual = hash_tree(folder)
        expected = manifest.get("outputs", {})
        missing = sorted(k for k in expected if k not in actual)
        changed = sorted(k for k in actual if actual[k] != expected.get(k))
        return missing, changed

    def _execute(self, name: str, key: str, inputs: dict, force: bool) -> dict:
        stage = self.stages[name]
        final = self.run_dir / name
        partial = self.run_dir / f"{name}.partial"
        marker = partial / ".key"
        if partial.exists() and (force or not marker.is_file() or marker.read_text() != key):
            shutil.rmtree(partial)  # leftovers of another config (or --force): start clean
        resumed = partial.exists()
        partial.mkdir(parents=True, exist_ok=True)
        marker.write_text(key)
        ctx = StageContext(cfg=self.cfg, stage=name, run_dir=self.run_dir, out=partial)
        ctx.log(("resuming" if resumed else "running") + f" -> {final}")
        module, func = stage.entry.split(":")
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        with PeakMemory() as mem:
            if stage.distributed and distributed.launched():  # the main process; the others join here
                distributed.broadcast(("run", str(partial)))
                self._joined = True
            getattr(importlib.import_module(module), func)(ctx)
            if stage.distributed:
                distributed.barrier()
        wall = time.perf_counter() - t0
        marker.unlink()
        outputs = hash_tree(partial)
        manifest = {
            "stage": name, "key": key, "config": to_dict(stage.section(self.cfg)), "inputs": inputs,
            "outputs": outputs, "outputs_digest": sha256_json(outputs), "versions": package_versions(),
            "wall_time_s": round(wall, 3), "peak_rss_mb": round(mem.peak_mb, 1),
            "started_at": started.isoformat(timespec="seconds"), "summary": ctx.summary,
        }
        write_json(partial / "manifest.json", manifest)
        remove_stage(final)
        partial.rename(final)
        ctx.log(f"done in {wall:.1f} s, peak memory {mem.peak_mb:.0f} MB")
        self._done[name] = manifest
        return manifest


def remove_stage(path: Path) -> None:
    """Remove a finished stage folder, or only the link if it is shared from another run."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        trash = path.parent / f".{path.name}.old"
        shutil.rmtree(trash, ignore_errors=True)
        path.rename(trash)
        shutil.rmtree(trash)
