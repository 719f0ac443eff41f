"""Run directory: manifests, skip when unchanged, --force, resume after a kill, atomic outputs."""

import dataclasses
import json

import pytest

from mmsrarec.artifacts import write_json
from mmsrarec.config import load_config
from mmsrarec.errors import ArtifactError
from mmsrarec.pipeline import Stage
from mmsrarec.stages import Runner


def test_second_run_is_a_skip_and_force_redoes(toy_overrides, capsys):
    cfg = load_config(None, toy_overrides)
    first = Runner(cfg).run("prepare")
    assert set(first) >= {"config", "inputs", "outputs", "versions", "wall_time_s", "peak_rss_mb"}
    assert "items.parquet" in first["outputs"] and first["versions"]["torch"]
    second = Runner(cfg).run("prepare")
    assert second["started_at"] == first["started_at"]
    assert "up to date, skipped" in capsys.readouterr().err
    forced = Runner(cfg).run("prepare", force=True)
    assert forced["outputs"] == first["outputs"]  # same seed, same bytes


def test_config_change_reruns_and_corruption_is_detected(toy_overrides, capsys):
    cfg = load_config(None, toy_overrides)
    runner = Runner(cfg)
    first = runner.run("prepare")
    changed = Runner(load_config(None, [*toy_overrides, "data.num_negatives=4"])).run("prepare")
    assert changed["key"] != first["key"]
    (runner.run_dir / "prepare" / "test.parquet").write_bytes(b"garbage")
    Runner(load_config(None, [*toy_overrides, "data.num_negatives=4"])).run("prepare")
    assert "outputs changed since they were written" in capsys.readouterr().err


def _stage(calls):
    def run(ctx):
        calls.append(ctx.out)
        done = sorted(p.name for p in ctx.out.glob("part*"))
        for i in range(3):
            if f"part{i}" in done:
                continue
            write_json(ctx.out / f"part{i}", {"i": i})
            if i == 1 and len(calls) == 1:
                raise KeyboardInterrupt  # killed midway
    return run


def test_killed_stage_resumes_without_redoing_work(toy_overrides, monkeypatch):
    import sys
    import types

    calls: list = []
    module = types.ModuleType("fake_stage")
    module.run = _stage(calls)
    monkeypatch.setitem(sys.modules, "fake_stage", module)
    stages = {"fake": Stage("fake", "fake_stage:run", lambda c: [], lambda c: {"seed": c.seed})}
    runner = Runner(load_config(None, toy_overrides), stages)
    with pytest.raises(KeyboardInterrupt):
        runner.run("fake")
    assert not (runner.run_dir / "fake").exists()  # nothing half-finished is visible as done
    assert sorted(p.name for p in (runner.run_dir / "fake.partial").glob("part*")) == ["part0", "part1"]
    manifest = runner.run("fake")
    assert sorted(manifest["outputs"]) == ["part0", "part1", "part2"]
    assert json.loads((runner.run_dir / "fake" / "part0").read_text()) == {"i": 0}
    assert not (runner.run_dir / "fake.partial").exists()


def test_a_stage_reads_only_the_stages_it_declares(toy_overrides, monkeypatch):
    """What a stage reads is in its key only through its needs: reading any other stage's folder is refused."""
    import sys
    import types

    module = types.ModuleType("peeking_stage")
    module.nothing = lambda ctx: None
    module.reads_a = lambda ctx: ctx.input("a")
    monkeypatch.setitem(sys.modules, "peeking_stage", module)
    section = lambda c: {"seed": c.seed}  # noqa: E731
    stages = {"a": Stage("a", "peeking_stage:nothing", lambda c: [], section),
              "declared": Stage("declared", "peeking_stage:reads_a", lambda c: ["a"], section),
              "peeking": Stage("peeking", "peeking_stage:reads_a", lambda c: [], section)}
    runner = Runner(load_config(None, toy_overrides), stages)
    runner.run("declared")
    with pytest.raises(ArtifactError, match="stage 'peeking' reads stage 'a', which it does not declare in its needs"):
        runner.run("peeking")
    assert not (runner.run_dir / "peeking").exists()


def test_cli_prepare_prints_statistics_and_errors_are_clean(toy_overrides, capsys):
    from mmsrarec.cli import main

    args = ["prepare"] + [a for o in toy_overrides for a in ("--set", o)]
    assert main(args) == 0
    assert "training sequences" in capsys.readouterr().err
    assert main(["prepare", "--set", "data.nope=1"]) == 2
    assert "unknown key 'data.nope'" in capsys.readouterr().err


def _counting_stages(monkeypatch, calls):
    """a -> b -> c, and d that reads a and b: 'a' writes weights.bin, notes.txt and index.bin (its own: no
    other stage reads it), the others a number."""
    import sys
    import types

    module = types.ModuleType("fake_chain")

    def run_a(ctx):
        calls.append("a")
        (ctx.out / "weights.bin").write_bytes(b"w" * 10)
        (ctx.out / "notes.txt").write_text("a")
        (ctx.out / "index.bin").write_bytes(b"i")

    def later(name, reads):
        def run(ctx):
            calls.append(name)
            (ctx.out / "n.txt").write_text(str(sum(len(list(ctx.input(r).iterdir())) for r in reads)))
        return run

    module.run_a, module.run_b, module.run_c, module.run_d = run_a, later("b", ["a"]), later("c", ["b"]), \
        later("d", ["a", "b"])
    monkeypatch.setitem(sys.modules, "fake_chain", module)
    needs = {"a": [], "b": ["a"], "c": ["b"], "d": ["a", "b"]}
    return {n: Stage(n, f"fake_chain:run_{n}", lambda c, n=n: needs[n], lambda c, n=n: {"seed": c.seed,
            "extra": c.data.num_negatives if n in "cd" else 0}, own=("index.*",) if n == "a" else ()) for n in needs}


def test_pruned_outputs_stand_until_a_stage_that_reads_them_has_to_run(toy_overrides, monkeypatch, capsys):
    calls: list = []
    stages = _counting_stages(monkeypatch, calls)
    cfg = load_config(None, toy_overrides)
    first = Runner(cfg, stages).run("c")
    weights = Runner(cfg, stages).run_dir / "a" / "weights.bin"
    weights.unlink()  # pruned: e.g. a ranker's adapter deleted after its evaluation
    assert Runner(cfg, stages).run("c")["key"] == first["key"] and calls == ["a", "b", "c"]
    assert "[a] finished; 1 of its outputs are gone (weights.bin), not needed" in capsys.readouterr().err
    Runner(cfg, stages).run("c", stop_before="b")  # plan [a]: the target is cut, so nothing must be intact
    assert calls == ["a", "b", "c"] and not weights.exists()
    # c has to run (its config changed) but reads only b: a stays pruned
    other = load_config(None, [*toy_overrides, "data.num_negatives=9"])
    Runner(other, stages).run("c")
    assert calls == ["a", "b", "c", "c"] and not weights.exists()
    # d reads a and has to run: a runs again first (same outputs, so b stands)
    Runner(other, stages).run("d")
    assert calls == ["a", "b", "c", "c", "a", "d"] and weights.exists()
    # a changed output is not a pruned one: the stage is redone (its new outputs equal the old, so b stands)
    calls.clear()
    (weights.parent / "notes.txt").write_text("edited")
    Runner(other, stages).run("d")
    assert calls == ["a"] and (weights.parent / "notes.txt").read_text() == "a"
    # the target's own outputs must be intact, and --force redoes it whatever the manifests say
    calls.clear()
    (weights.parent.parent / "d" / "n.txt").unlink()
    Runner(other, stages).run("d")
    assert calls == ["d"]
    Runner(other, stages).run("d", force=True)
    assert calls == ["d", "d"]
    # what needs the pruned stage with another key gets it run again
    weights.unlink()
    Runner(load_config(None, [*toy_overrides, "seed=7"]), stages).run("c")
    assert calls == ["d", "d", "a", "b", "c"]
    # all that is gone is a's own output, which no stage reads: a stands while d, which reads a, runs
    calls.clear()
    (weights.parent / "index.bin").unlink()
    Runner(load_config(None, [*toy_overrides, "seed=7"]), stages).run("d")
    assert calls == ["d"] and not (weights.parent / "index.bin").exists()
    assert "(index.bin), not needed: no other stage reads them" in capsys.readouterr().err
    (weights.parent / "notes.txt").unlink()  # and something others read gone too: a runs again
    Runner(load_config(None, [*toy_overrides, "seed=7", "data.num_negatives=9"]), stages).run("d")
    assert calls == ["d", "a", "d"] and (weights.parent / "index.bin").exists()


def test_force_redoes_the_target_alone_and_a_pruned_stage_before_it_stands(toy_overrides, monkeypatch, capsys):
    """`mmsrarec evaluate --force` must not retrain a ranker whose weights were deleted after its scoring."""
    calls: list = []
    stages = _counting_stages(monkeypatch, calls)
    cfg = load_config(None, toy_overrides)
    Runner(cfg, stages).run("c")
    weights = Runner(cfg, stages).run_dir / "a" / "weights.bin"
    weights.unlink()
    Runner(cfg, stages).run("c", force=True)  # c reads only b: a stays pruned
    assert calls == ["a", "b", "c", "c"] and not weights.exists()
    err = capsys.readouterr().err
    assert "[a] finished; 1 of its outputs are gone" in err and "`mmsrarec b --force` redoes it" in err
    Runner(cfg, stages).run("b", force=True)  # b reads what is gone of a: a runs again first
    assert calls == ["a", "b", "c", "c", "a", "b"] and weights.exists()


def test_the_faiss_index_is_the_index_stages_own_unless_candidate_votes_search_it(toy_overrides):
    """Without rank.candidate_votes later stages read only the neighbour tables, so a missing index.faiss
    reruns nothing and a GPU pack leaves it behind; with votes, train-ranker and evaluate search it again."""
    from pathlib import Path

    from conftest import load_script
    from mmsrarec.stages import STAGES

    plain = load_config(None, toy_overrides)
    votes = load_config(None, [*toy_overrides, "rank.candidate_votes=50"])
    index = STAGES["index"]
    assert index.owns("index.faiss", plain) and index.owns("index.npy", plain)
    assert not index.owns("index.faiss", votes) and not index.owns("neighbours_test.parquet", plain)
    left_here = load_script("tools/lent_gpu.py")._left_here
    path = Path("run/toy/index/index.faiss")
    assert left_here(path, [plain]) and not left_here(path, [plain, votes])
    assert not left_here(Path("run/toy/index/neighbours_train.parquet"), [plain])


def test_a_raised_revision_redoes_the_stage_and_only_it(toy_overrides, capsys):
    """A fix that changes what a stage writes raises its revision: its earlier outputs no longer stand; a
    stage whose revision is unchanged keeps its key."""
    import dataclasses

    from mmsrarec.stages import STAGES

    cfg = load_config(None, [*toy_overrides, "cf.models=[pop]", "evaluate.methods=[pop]"])
    Runner(cfg).run("train-cf")
    raised = {**STAGES, "prepare": dataclasses.replace(STAGES["prepare"], revision=STAGES["prepare"].revision + 1)}
    capsys.readouterr()
    Runner(cfg, raised).run("train-cf")
    err = capsys.readouterr().err
    assert "[prepare] running" in err  # redone; the same outputs, so train-cf's inputs are unchanged
    assert "[train-cf] up to date, skipped" in err


def test_a_stage_that_reads_some_outputs_of_another_is_keyed_on_those_alone(toy_overrides, monkeypatch, capsys):
    """Stage.reads: a stage that reads only x.json of stage a keeps its key when a rewrites y.json (another
    seed's split, say), and is refused the outputs it did not declare."""
    import sys
    import types

    module = types.ModuleType("partial_reader")

    def write_a(ctx):
        write_json(ctx.out / "x.json", {"x": 1})
        write_json(ctx.out / "y.json", {"seed": ctx.cfg.seed})

    module.write_a = write_a
    module.reads_x = lambda ctx: write_json(ctx.out / "b.json", json.loads(ctx.input_file("a", "x.json").read_text()))
    module.reads_y = lambda ctx: ctx.input_file("a", "y.json")
    module.reads_folder = lambda ctx: ctx.input("a")
    monkeypatch.setitem(sys.modules, "partial_reader", module)
    a = Stage("a", "partial_reader:write_a", lambda c: [], lambda c: {"seed": c.seed})
    x_only = {"a": ("x.json",)}
    stages = {"a": a, "b": Stage("b", "partial_reader:reads_x", lambda c: ["a"], lambda c: {}, reads=x_only),
              "whole": Stage("whole", "partial_reader:reads_x", lambda c: ["a"], lambda c: {}),
              "sly": Stage("sly", "partial_reader:reads_y", lambda c: ["a"], lambda c: {}, reads=x_only),
              "folder": Stage("folder", "partial_reader:reads_folder", lambda c: ["a"], lambda c: {}, reads=x_only),
              "typo": Stage("typo", "partial_reader:reads_x", lambda c: ["a"], lambda c: {}, reads={"a": ("z.json",)})}
    first = Runner(load_config(None, [*toy_overrides, "seed=1"]), stages)
    b1, whole1 = first.run("b"), first.run("whole")
    capsys.readouterr()
    second = Runner(load_config(None, [*toy_overrides, "seed=2"]), stages)
    b2, whole2 = second.run("b"), second.run("whole")
    err = capsys.readouterr().err
    assert "[a] running" in err and "[b] up to date, skipped" in err  # a redone, b not
    assert b2["key"] == b1["key"] and b2["started_at"] == b1["started_at"]
    assert whole2["key"] != whole1["key"]  # a stage that reads all of a follows all of it
    with pytest.raises(ArtifactError, match=r"reads 'y.json' of stage 'a', but declares that it reads only x.json"):
        second.run("sly")
    with pytest.raises(ArtifactError, match=r"declares that it reads only x.json of stage 'a'.*input_file"):
        second.run("folder")
    with pytest.raises(ArtifactError, match=r"reads 'z.json' of stage 'a', which wrote no such output"):
        second.run("typo")


def test_a_stage_finished_before_it_declared_its_reads_still_stands(toy_overrides, monkeypatch, capsys):
    """A version before Stage.reads keyed the stage on all of each stage it reads: what it finished under
    that key read the same outputs, so it stands (no summaries redone by an upgrade), and only under the
    outputs it was made from."""
    import sys
    import types

    module = types.ModuleType("upgraded_reader")
    module.write_a = lambda ctx: [write_json(ctx.out / f"{n}.json", {"seed": ctx.cfg.seed}) for n in "xy"]
    module.reads_x = lambda ctx: write_json(ctx.out / "b.json", json.loads(ctx.input_file("a", "x.json").read_text()))
    monkeypatch.setitem(sys.modules, "upgraded_reader", module)
    a = Stage("a", "upgraded_reader:write_a", lambda c: [], lambda c: {"seed": c.seed})
    before = Stage("b", "upgraded_reader:reads_x", lambda c: ["a"], lambda c: {})
    after = dataclasses.replace(before, reads={"a": ("x.json",)})
    cfg = load_config(None, [*toy_overrides, "seed=1"])
    old = Runner(cfg, {"a": a, "b": before}).run("b")
    capsys.readouterr()
    new = Runner(cfg, {"a": a, "b": after})
    assert new.run("b")["started_at"] == old["started_at"]
    assert "[b] up to date, skipped" in capsys.readouterr().err
    assert new.finished(new.plan("b")) is not None
    capsys.readouterr()
    moved = Runner(load_config(None, [*toy_overrides, "seed=2"]), {"a": a, "b": after})  # x.json is another now
    assert moved.run("b")["key"] != old["key"]
    assert "[b] running" in capsys.readouterr().err


def test_the_item_summaries_do_not_follow_the_split(toy_overrides):
    """summarize, summarize-tuned and describe-items read only the item table of prepare: two draws of the
    lists (data.seed) over the same items give them the same key, where the index, which reads the split,
    gets another."""
    from mmsrarec.stages import STAGES

    def prepared(seed):
        return Runner(load_config(None, [*toy_overrides, f"name=toy{seed}", f"data.seed={seed}"])).run("prepare")

    one, two = prepared(1), prepared(2)
    assert one["outputs"]["items.parquet"] == two["outputs"]["items.parquet"]
    assert one["outputs"]["test.parquet"] != two["outputs"]["test.parquet"]
    for name in ("summarize", "summarize-tuned", "describe-items"):
        assert STAGES[name].input_digest("prepare", one) == STAGES[name].input_digest("prepare", two), name
    assert STAGES["index"].input_digest("prepare", one) != STAGES["index"].input_digest("prepare", two)


def test_runs_that_read_the_same_outputs_link_one_stage_made_before_or_after_it_declared_its_reads(
        toy_overrides, monkeypatch, capsys):
    """A redrawn run (another seed: another y.json, the same x.json) links a stage that reads only x.json from
    a run that finished it, whether that run keyed it the present way or on all of a as before Stage.reads;
    not where its config section differs. A stage killed midway under the earlier key resumes."""
    import sys
    import types

    module = types.ModuleType("linked_reader")
    module.write_a = lambda ctx: [write_json(ctx.out / "x.json", {"x": 1}), write_json(ctx.out / "y.json", ctx.cfg.seed)]
    killed = []

    def reads_x(ctx):
        if not (ctx.out / "part.json").exists():
            write_json(ctx.out / "part.json", {"done": 1})
            if ctx.cfg.name == "killed" and not killed:
                killed.append(1)
                raise KeyboardInterrupt
        write_json(ctx.out / "b.json", json.loads(ctx.input_file("a", "x.json").read_text()))

    module.reads_x = reads_x
    monkeypatch.setitem(sys.modules, "linked_reader", module)
    a = Stage("a", "linked_reader:write_a", lambda c: [], lambda c: {"seed": c.seed})
    before = Stage("b", "linked_reader:reads_x", lambda c: ["a"], lambda c: {"n": c.data.num_negatives})
    after = dataclasses.replace(before, reads={"a": ("x.json",)})

    def runner(name, seed, stages, reuse=(), *more):
        return Runner(load_config(None, [*toy_overrides, f"name={name}", f"seed={seed}", *more]),
                      {"a": a, "b": stages}, reuse)

    old = runner("old", 1, before)
    old.run("b")
    capsys.readouterr()
    two = runner("two", 2, after, [old.run_dir])
    two.run("b")
    assert "[b] identical to" in capsys.readouterr().err and (two.run_dir / "b").is_symlink()
    assert two.finished(two.plan("b")) is not None  # what it linked stands there (the board counts the run)
    runner("two", 2, after, [old.run_dir]).run("b")
    assert "[b] up to date, skipped" in capsys.readouterr().err
    three = runner("three", 3, after, [two.run_dir])  # through two's link, to what old read
    three.run("b")
    assert "[b] identical to" in capsys.readouterr().err
    fresh = runner("fresh", 4, after)
    fresh.run("b")
    five = runner("five", 5, after, [fresh.run_dir])  # a stage keyed the present way
    five.run("b")
    assert "[b] identical to" in capsys.readouterr().err and (five.run_dir / "b").is_symlink()
    other = runner("other", 6, after, [old.run_dir, fresh.run_dir], "data.num_negatives=4")
    other.run("b")
    assert "[b] running" in capsys.readouterr().err and not (other.run_dir / "b").is_symlink()
    with pytest.raises(KeyboardInterrupt):
        runner("killed", 7, before).run("b")
    capsys.readouterr()
    runner("killed", 7, after).run("b")
    assert "[b] resuming" in capsys.readouterr().err
