"""Run directory: manifests, skip when unchanged, --force, resume after a kill, atomic outputs."""

import json

import pytest

from mmsrarec.artifacts import write_json
from mmsrarec.config import load_config
from mmsrarec.pipeline import Runner, Stage


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


def test_cli_prepare_prints_statistics_and_errors_are_clean(toy_overrides, capsys):
    from mmsrarec.cli import main

    args = ["prepare"] + [a for o in toy_overrides for a in ("--set", o)]
    assert main(args) == 0
    assert "training sequences" in capsys.readouterr().err
    assert main(["prepare", "--set", "data.nope=1"]) == 2
    assert "unknown key 'data.nope'" in capsys.readouterr().err


def _counting_stages(monkeypatch, calls):
    """a -> b: 'a' writes weights.bin and notes.txt, 'b' writes a metric from them."""
    import sys
    import types

    module = types.ModuleType("fake_pair")

    def run_a(ctx):
        calls.append("a")
        (ctx.out / "weights.bin").write_bytes(b"w" * 10)
        (ctx.out / "notes.txt").write_text("a")

    def run_b(ctx):
        calls.append("b")
        (ctx.out / "metric.json").write_text(str(len((ctx.input("a") / "weights.bin").read_bytes())))

    module.run_a, module.run_b = run_a, run_b
    monkeypatch.setitem(sys.modules, "fake_pair", module)
    return {"a": Stage("a", "fake_pair:run_a", lambda c: [], lambda c: {"seed": c.seed}),
            "b": Stage("b", "fake_pair:run_b", lambda c: ["a"], lambda c: {"seed": c.seed})}


def test_pruned_outputs_before_a_finished_target_do_not_rerun_it_but_changed_ones_do(toy_overrides, monkeypatch,
                                                                                     capsys):
    calls: list = []
    stages = _counting_stages(monkeypatch, calls)
    cfg = load_config(None, toy_overrides)
    first = Runner(cfg, stages).run("b")
    weights = Runner(cfg, stages).run_dir / "a" / "weights.bin"
    weights.unlink()  # pruned: e.g. a ranker's adapter deleted after its evaluation
    assert Runner(cfg, stages).run("b")["key"] == first["key"] and calls == ["a", "b"]
    err = capsys.readouterr().err
    assert "[a] finished; 1 of its outputs are gone (weights.bin), not needed: b is up to date" in err
    # what needs the pruned stage to run again gets it back
    Runner(load_config(None, [*toy_overrides, "seed=7"]), stages).run("b")
    assert calls == ["a", "b", "a", "b"]
    # a changed output is not a pruned one: the stage is redone (its new outputs equal the old, so b stands)
    Runner(cfg, stages).run("b")
    calls.clear()
    (weights.parent / "notes.txt").write_text("edited")
    Runner(cfg, stages).run("b")
    assert calls == ["a"] and (weights.parent / "notes.txt").read_text() == "a"
    # the target's own outputs must be intact, and --force redoes it whatever the manifests say
    calls.clear()
    (weights.parent.parent / "b" / "metric.json").unlink()
    Runner(cfg, stages).run("b")
    assert calls == ["b"]
    Runner(cfg, stages).run("b", force=True)
    assert calls == ["b", "b"]
