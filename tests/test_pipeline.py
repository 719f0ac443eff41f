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
