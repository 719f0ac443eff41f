"""The engine: stages over a run directory. It knows no domain: the stages are declared in stages.py.

Each stage writes under `runs/<name>/<stage>/`. While it runs it writes into `<stage>.partial/`,
which survives a kill so long stages can resume from what they already wrote; when it finishes,
a manifest (config section, hashes of its inputs and outputs, package versions, wall time, peak
memory) is written and the folder is renamed into place. A stage whose config section and inputs
are unchanged is skipped; `force` redoes it.

One process at a time decides and runs a stage of a run: it holds an OS lock on
`runs/<name>/.locks/<stage>.lock` (flock: the kernel releases it when the process ends, kill -9 included,
so nothing is left to clean up); a second process that wants the same stage stops with a message naming
the first. A manifest that cannot be read (truncated, edited by hand) means the stage is not finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import importlib
import json
import os
import socket
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from . import ARTIFACTS_VERSION, distributed
from .artifacts import hash_tree, read_json, sha256_json, write_json
from .configtools import key_dict, to_dict
from .errors import ArtifactError, MmsrarecError
from .profiling import PeakMemory, package_versions

Config = Any  # the run config (mmsrarec.config.RunConfig); the engine reads only its run_dir


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str  # "module:function"; the function takes a StageContext
    needs: Callable[[Config], list[str]]  # the stages whose folders it reads (StageContext.input refuses others)
    section: Callable[[Config], Any]  # every config field it reads: what its key holds
    help: str = ""
    check: Callable[[Config], None] | None = None  # cross-section checks, run before any stage of a plan
    distributed: bool = False  # under `accelerate launch`, runs on every process (else on the main one only)
    # outputs (glob patterns) that no other stage reads (under a config, when a function): gone, they rerun no stage
    own: tuple[str, ...] | Callable[[Config], tuple[str, ...]] = ()
    # raised when a fix changes what the stage writes for the same config and inputs, so that what an
    # earlier version wrote no longer stands (part of the key when > 0; stages never raised keep theirs)
    revision: int = 0
    # a needed stage of which it reads only some outputs -> their names (glob patterns): its key then holds the
    # hashes of those alone, so that a change to the rest (another seed's split, say) does not redo it; it
    # opens them with StageContext.input_file, which refuses the others
    reads: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def input_digest(self, dep: str, manifest: dict) -> str:
        """What the key holds of needed stage `dep`, from its manifest: its outputs_digest, or the hash of
        the outputs this stage reads of it (Stage.reads)."""
        patterns = self.reads.get(dep)
        if patterns is None:
            return manifest["outputs_digest"]
        outputs = manifest["outputs"]
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in outputs):
                raise ArtifactError(f"stage '{self.name}' reads {pattern!r} of stage '{dep}', which wrote no such "
                                    f"output ({', '.join(sorted(outputs)) or 'none'})")
        return sha256_json({"reads": {name: digest for name, digest in sorted(outputs.items())
                                      if any(fnmatch.fnmatchcase(name, p) for p in patterns)}})

    def owns(self, output: str, cfg: Config) -> bool:
        """Whether `output` (a path inside the stage's folder) is one that no other stage reads under cfg."""
        own = self.own(cfg) if callable(self.own) else self.own
        return any(fnmatch.fnmatchcase(output, pattern) for pattern in own)


@dataclass
class StageContext:
    cfg: Config
    stage: str
    run_dir: Path
    out: Path  # write here; it persists across kills until the stage finishes
    summary: dict = field(default_factory=dict)  # small facts to put into the manifest (counts, metrics)
    needs: tuple[str, ...] | None = None  # the stages it declared it reads (None: any, for direct calls)
    reads: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # Stage.reads

    def input(self, stage: str) -> Path:
        """The folder of a finished stage this one declared in its needs: what it reads is in its key."""
        if stage in self.reads:
            raise ArtifactError(f"stage '{self.stage}' declares that it reads only {', '.join(self.reads[stage])} of "
                                f"stage '{stage}' (Stage.reads), so its key holds nothing else of it; open those "
                                f"with input_file")
        return self._folder(stage)

    def input_file(self, stage: str, name: str) -> Path:
        """The path of output `name` of a finished stage this one declared in its needs (and, where it
        declares which of that stage's outputs it reads, one of those)."""
        patterns = self.reads.get(stage)
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"stage '{self.stage}' asks for {name!r} of stage '{stage}': an output is named by its "
                                f"path inside that stage's folder")
        if patterns is not None and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            raise ArtifactError(f"stage '{self.stage}' reads {name!r} of stage '{stage}', but declares that it reads "
                                f"only {', '.join(patterns)} of it (Stage.reads); its key would not hold it")
        return self._folder(stage) / name

    def _folder(self, stage: str) -> Path:
        if self.needs is not None and stage not in self.needs:
            raise ArtifactError(f"stage '{self.stage}' reads stage '{stage}', which it does not declare in its needs "
                                f"({', '.join(self.needs) or 'none'}); its key would not hold what it reads")
        path = self.run_dir / stage
        if not (path / "manifest.json").is_file():
            raise ArtifactError(f"stage '{self.stage}' needs the output of stage '{stage}' at {path}, which is missing;"
                                f" run `mmsrarec {stage} --config ...` first")
        return path

    def log(self, msg: str) -> None:
        where = f" rank {distributed.rank()}" if distributed.launched() else ""
        print(f"[{self.stage}{where}] {msg}", file=sys.stderr, flush=True)


def read_manifest(folder: Path) -> dict | None:
    """The manifest of the stage in `folder`, or None when it has none or one that cannot be read
    (truncated by a full disk, edited by hand): then the stage is not finished and is redone. Says so
    once per file and process."""
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    else:
        if not (isinstance(manifest, dict) and isinstance(manifest.get("key"), str)
                and isinstance(manifest.get("outputs"), dict)):
            why = "not a stage manifest: expected an object with a key and outputs"
        elif manifest.get("outputs_digest") != sha256_json(manifest["outputs"]):
            why = "its outputs_digest does not match its outputs"
        else:
            return manifest
    if str(path) not in _unreadable and distributed.is_main():
        _unreadable.add(str(path))
        print(f"[{folder.name}] warning: {path} cannot be read ({why}); the stage counts as unfinished",
              file=sys.stderr)
    return None


_unreadable: set[str] = set()


@contextlib.contextmanager
def stage_lock(run_dir: Path, name: str, shared: bool = False) -> Iterator[None]:
    """Hold the lock on stage `name` of the run in `run_dir`, or stop with a message naming who holds it.

    Exclusive (to decide and run the stage) or shared (to read it while a stage that needs it runs: no
    one may redo it meanwhile). The lock is flock(2) on <run>/.locks/<stage>.lock: the kernel drops it
    when the holder exits, however it exits, so a killed run leaves no lock behind (the file stays; it is
    only a name). The exclusive holder writes who it is into the file, for the message."""
    folder = run_dir / ".locks"
    path = folder / f"{name}.lock"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides who else may lock it
        except PermissionError:  # a lock file another user made: flock needs no write access
            fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise MmsrarecError(f"cannot open the lock file {path} ({exc.strerror or exc}); make {folder} writable "
                            f"by everyone who runs this run (e.g. a shared group with g+w)") from None
    locked = False
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            holder = path.read_text(encoding="utf-8", errors="replace").strip()
            who = (f"being run by {holder}" if holder else
                   "being read by another process (running a stage that needs it, or checking that it is finished)")
            raise MmsrarecError(f"stage '{name}' of {run_dir} is {who}; wait for it to finish (or stop that "
                                f"process: its lock goes with it), then run this again") from None
        except OSError as exc:  # ENOLCK / ENOTSUP: a file system without flock
            raise MmsrarecError(f"cannot lock {path} ({exc.strerror or exc}): the runs folder is on a file "
                                f"system without flock(2) locks; put runs_dir on a local disk") from None
        if not shared:
            with contextlib.suppress(OSError):  # read-only (another user's file): the message says less
                os.ftruncate(fd, 0)
                started = datetime.now(timezone.utc).isoformat(timespec="seconds")
                os.write(fd, f"process {os.getpid()} on {socket.gethostname()} since {started} "
                             f"({' '.join(sys.argv)})\n".encode())
        yield
    finally:
        if locked and not shared:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock


class Runner:
    """Runs stages into runs/<name>/. `reuse`: other run folders whose finished stages may stand in for
    this run's when their key (config section + inputs) is identical; they are linked, not copied, so
    ablations and seeds share the summaries, GRPO policy and index they have in common."""

    def __init__(self, cfg: Config, stages: dict[str, Stage], reuse: list[Path] = ()):
        self.cfg = cfg
        self.stages = stages
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
        standing, pruned = self.standing(plan, (target,) if target in plan else (), redo=(target,) if force else ())
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
                ctx = self._context(name, Path(partial))
                module, func = stage.entry.split(":")
                getattr(importlib.import_module(module), func)(ctx)
                distributed.barrier()
        distributed.barrier()
        if not distributed.is_main():
            manifest = read_json(self.run_dir / name / "manifest.json")
            self._done[name] = manifest
        return manifest

    def standing(self, plan: list[str], intact: tuple[str, ...] | None = None, redo: tuple[str, ...] = ()
                 ) -> tuple[dict[str, dict], dict[str, list[str]]]:
        """(the manifest of each stage of `plan` that need not run, the outputs gone of those pruned).
        By its manifest, a stage need not run when it has the key that the config gives it now, and its
        outputs are intact, or pruned: some gone, none changed (e.g. a ranker's weights deleted once its
        evaluation was done, or left on the GPU machine that ran it). A pruned stage stands only while no
        stage that reads it has to run, unless all that is gone is its own (Stage.own: outputs that no other
        stage reads, e.g. the FAISS index once the neighbours are written). The stages in `intact` (default:
        the target, plan[-1]) must be intact: `run` passes none when --stop-before cut the target, since
        then no stage was asked for by name. The stages in `redo` (--force's target) have to run. Stages after
        one that has to run are not judged here: `ensure` decides them."""
        intact = (plan[-1],) if intact is None else intact
        done: dict[str, dict] = {}
        pruned: dict[str, list[str]] = {}  # stage -> its outputs that are gone
        for name in plan:
            if name in redo or any(dep not in done for dep in self.stages[name].needs(self.cfg)):
                continue  # asked to be redone, or something it reads has to run first: its key is known only then
            manifest = read_manifest(self.run_dir / name)
            if manifest is None or manifest["key"] not in self._accepted(name, self.run_dir / name, done):
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
            print(f"[{name}] up to date, skipped ({self.run_dir / name}); `mmsrarec {name} --force` redoes it",
                  file=sys.stderr)

    def key(self, name: str, done: dict[str, dict] | None = None) -> tuple[str, dict]:
        """(the stage's key under the config and the finished stages it reads, what it holds of those)."""
        stage = self.stages[name]
        done = self._done if done is None else done
        inputs = {dep: stage.input_digest(dep, done[dep]) for dep in stage.needs(self.cfg)}
        return self._hash_key(stage, inputs), inputs

    def keys(self, name: str, done: dict[str, dict] | None = None) -> tuple[str, ...]:
        """The keys under which a finished stage stands: its key, and for a stage that declares which outputs
        it reads (Stage.reads) the key versions before that gave it, which held all of each stage it reads:
        a stage finished under it read the same outputs (and more), so it still stands."""
        stage = self.stages[name]
        done = self._done if done is None else done
        key, _ = self.key(name, done)
        if not stage.reads:
            return (key,)
        return key, self._hash_key(stage, {dep: done[dep]["outputs_digest"] for dep in stage.needs(self.cfg)})

    def _hash_key(self, stage: Stage, inputs: dict) -> str:
        keyed = {"config": key_dict(stage.section(self.cfg)), "inputs": inputs, "version": ARTIFACTS_VERSION}
        if stage.revision:
            keyed["revision"] = stage.revision
        return sha256_json(keyed)

    def ensure(self, name: str, force: bool = False) -> dict:
        if not force and (manifest := self._confirmed(name)) is not None:
            return manifest
        with stage_lock(self.run_dir, name):  # decided and run by one process at a time
            return self._ensure(name, force)

    def _confirmed(self, name: str, say: bool = True) -> dict | None:
        """_finished under a shared lock: a finished stage is confirmed beside the processes reading it (they
        lock it shared); one being run elsewhere stops this process with the lock's message."""
        with stage_lock(self.run_dir, name, shared=True):
            return self._finished(name, say)[0]

    def _finished(self, name: str, say: bool = True) -> tuple[dict | None, list[str]]:
        """(the stage's manifest if it is finished under one of its keys with its outputs intact, noted as done
        and, with `say`, announced, else None; the outputs changed since it was written)."""
        manifest, changed = self._keyed(self.run_dir / name, self._accepted(name, self.run_dir / name))
        if manifest is None or changed:
            return None, changed
        if say:
            self._say_standing(name, None)
        self._done[name] = manifest
        return manifest, []

    def _ensure(self, name: str, force: bool) -> dict:
        key, inputs = self.key(name)
        if not force:
            manifest, changed = self._finished(name)
            if manifest is not None:
                return manifest
            if changed:
                print(f"[{name}] outputs changed since they were written ({', '.join(changed[:3])}); redoing",
                      file=sys.stderr)
            shared = self._link_shared(name)
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
            if self._confirmed(name, say=False) is not None:
                continue
            with stage_lock(self.run_dir, name):
                if self._finished(name, say=False)[0] is None and self._link_shared(name) is None:
                    missing.append(name)
        return missing

    def _link_shared(self, name: str) -> dict | None:
        """Link `name` to an identical finished stage of a run in self.reuse (a key it is accepted under, see
        _accepted; outputs intact)."""
        final = self.run_dir / name
        for other in self.reuse:
            source = other / name
            if source.resolve() == final.resolve():
                continue
            manifest, changed = self._keyed(source, self._accepted(name, source))
            if manifest is None or changed:
                continue
            remove_stage(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            final.symlink_to(os.path.relpath(source.resolve(), final.parent.resolve()), target_is_directory=True)
            print(f"[{name}] identical to {source}, linked", file=sys.stderr)
            self._done[name] = manifest
            return manifest
        return None

    def _accepted(self, name: str, folder: Path, done: dict[str, dict] | None = None) -> tuple[str, ...]:
        """The keys under which the finished stage in `folder` (this run's, another's, or linked from one)
        stands for `name` here: those of `keys`, and its own where _rekeyed finds it made the present way."""
        keys = self.keys(name, done)
        return (*keys, *self._rekeyed(name, folder, keys[0]))

    def _rekeyed(self, name: str, folder: Path, key: str) -> tuple[str, ...]:
        """(the key of the finished stage in `folder`), where an earlier version keyed it on all of each stage
        it read (Stage.reads), those are still what it read in the run it was made in, and made this version's
        way it is `key`; () otherwise. Its config section must be this config's (its recorded inputs under
        this section give its key)."""
        stage = self.stages[name]
        manifest = read_manifest(folder)
        if not stage.reads or manifest is None or set(manifest["inputs"]) != set(stage.needs(self.cfg)):
            return ()
        if self._hash_key(stage, manifest["inputs"]) != manifest["key"]:
            return ()  # another config section (or a key made the present way: _keyed has judged it)
        inputs = {}
        for dep, digest in manifest["inputs"].items():
            read = read_manifest(folder.resolve().parent / dep)  # the run it was made in, through any link
            if read is None or read["outputs_digest"] != digest:
                return ()  # what it read there is gone or redone since
            inputs[dep] = stage.input_digest(dep, read)
        return (manifest["key"],) if self._hash_key(stage, inputs) == key else ()

    @staticmethod
    def _keyed(folder: Path, keys: tuple[str, ...]) -> tuple[dict | None, list[str]]:
        """(the manifest of the stage in `folder` if it is finished with one of `keys`, else None; its outputs
        that are gone or changed since it was written)."""
        manifest = read_manifest(folder)
        if manifest is None or manifest["key"] not in keys:
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

    def _context(self, name: str, out: Path) -> StageContext:
        return StageContext(cfg=self.cfg, stage=name, run_dir=self.run_dir, out=out,
                            needs=tuple(self.stages[name].needs(self.cfg)), reads=dict(self.stages[name].reads))

    @contextlib.contextmanager
    def _reading(self, name: str, inputs: dict) -> Iterator[None]:
        """Hold shared locks on the stages `name` reads (in the run they are linked from too), so that no
        process redoes one of them meanwhile, and check that they are still what its key was made of."""
        with contextlib.ExitStack() as held:
            for dep, digest in inputs.items():
                source = (self.run_dir / dep).resolve()
                for run_dir in dict.fromkeys([self.run_dir, source.parent]):
                    held.enter_context(stage_lock(run_dir, dep, shared=True))
                manifest = read_manifest(self.run_dir / dep)
                if manifest is None or self.stages[name].input_digest(dep, manifest) != digest:
                    raise ArtifactError(f"stage '{dep}' of {self.run_dir} changed before '{name}' could read it "
                                        f"(another process redid it); run this again")
            yield

    def _execute(self, name: str, key: str, inputs: dict, force: bool) -> dict:
        with self._reading(name, inputs):
            return self._write(name, key, inputs, force)

    def _write(self, name: str, key: str, inputs: dict, force: bool) -> dict:
        stage = self.stages[name]
        final = self.run_dir / name
        partial = self.run_dir / f"{name}.partial"
        marker = partial / ".key"
        if partial.exists() and (force or not marker.is_file() or marker.read_text() not in self.keys(name)):
            shutil.rmtree(partial)  # leftovers of another config (or --force): start clean
        resumed = partial.exists()
        partial.mkdir(parents=True, exist_ok=True)
        marker.write_text(key)
        ctx = self._context(name, partial)
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
            "stage": name, "key": key, "revision": stage.revision, "config": to_dict(stage.section(self.cfg)),
            "inputs": inputs,
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
