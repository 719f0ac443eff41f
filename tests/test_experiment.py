"""Seeds and ablations (experiment.py), stage sharing between runs, and the rerank protocol."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from mmsrarec.config import load_config
from mmsrarec.errors import ConfigError, MmsrarecError
from mmsrarec.evaluate.rerank import cf_top, rerank_cases, rerank_metrics, rerank_names
from mmsrarec.experiment import aggregate, board_of_finished, members, run_experiment

from conftest import load_script


class FixedScores:
    """A CF model stand-in whose full ranking prefers higher item ids."""

    def __init__(self, n_items: int):
        self.n_items = n_items

    def full_scores(self, histories):
        return torch.arange(self.n_items + 1, dtype=torch.float32).repeat(len(histories), 1)


def test_cf_top_ranks_everything_but_the_history_and_keeps_the_target():
    frame = pd.DataFrame({"user": [0, 1], "history": [[10, 9], [3]], "target": [8, 2]})
    top = cf_top(FixedScores(10), frame, n_items=10, top=4)
    assert top.tolist() == [[8, 7, 6, 5], [10, 9, 8, 7]]  # case 0: 10 and 9 are history


def test_rerank_misses_score_zero_and_hits_use_the_llm_rank():
    frame = pd.DataFrame({"user": [0, 1, 2], "history": [[1], [1], [1]], "target": [5, 6, 9]},
                         index=[10, 11, 12])
    retrieved = np.array([[4, 5, 7], [6, 2, 3], [2, 3, 4]])
    hits, hit = rerank_cases(frame, retrieved)
    assert hit.tolist() == [True, True, False]
    assert hits.index.tolist() == [10, 11]  # case numbers kept: they key the retrieved context
    assert hits["negatives"].tolist() == [[4, 7], [2, 3]]
    llm = np.array([[0.9, 0.1, 0.2],    # case 10: target scored highest -> rank 1
                    [0.1, 0.5, 0.3]])   # case 11: target last of 3 -> rank 3
    names = rerank_names([1, 2, 3, 5], top=3)
    assert names == ["hr@1", "hr@2", "ndcg@1", "ndcg@2", "mrr@1", "mrr@2"]  # k >= top would count misses
    per = rerank_metrics(hit, llm, 3, names)
    assert per["hr@1"].tolist() == [1, 0, 0]
    assert per["hr@2"].tolist() == [1, 0, 0]
    assert per["mrr@2"].tolist() == [1, 0, 0]


def test_rerank_needs_a_trained_cf_model(toy_overrides):
    with pytest.raises(ConfigError, match="rerank_cf"):
        load_config(None, [*toy_overrides, "cf.models=[pop]", "evaluate.methods=[pop]",
                           "evaluate.protocols=[sampled, rerank]", "evaluate.rerank_cf=sasrec"])


def test_aggregate_gives_mean_and_sample_spread():
    rows = pd.DataFrame([{"method": "a", "protocol": "sampled", "seed": s, "test_hr@5": v}
                         for s, v in [(1, 0.2), (2, 0.4), (3, 0.6)]])
    board = aggregate(rows)
    assert board.loc[0, "seeds"] == 3
    assert board.loc[0, "test_hr@5"] == pytest.approx(0.4)
    assert board.loc[0, "test_hr@5_std"] == pytest.approx(0.2)


def test_boards_show_the_blend_weight_of_a_fused_row(tmp_path):
    from mmsrarec.evaluate.leaderboard import to_markdown
    from mmsrarec.experiment import write_board

    rows = pd.DataFrame([{"method": m, "protocol": "sampled", "seed": s, "test_cases": 3, "test_hr@5": 0.5,
                          "fuse_weight": w} for s, w in [(1, 0.9), (2, 1.0)] for m in ("sasrec", "mmsrarec+sasrec")])
    rows.loc[rows["method"] == "sasrec", "fuse_weight"] = np.nan
    write_board(rows, tmp_path, load_config(None, []), n_seeds=2)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| mmsrarec+sasrec (weight 0.95 ± 0.07) | 2 |" in md and "| sasrec | 2 |" in md
    one = to_markdown(rows[rows["seed"] == 1].drop(columns="seed"), "t")
    assert "| mmsrarec+sasrec (weight 0.90) |" in one and "| sasrec |" in one


def test_variant_runs_keep_the_candidate_lists_and_name_their_folders(toy_overrides):
    over = [*toy_overrides, "experiment.seeds=[3, 4]",
            "experiment.variants=[{name: no-retrieval, set: [rank.use_retrieval=false]}]"]
    cfg = load_config(None, over)
    runs = members(cfg, None, over)
    assert [(m.seed, m.method) for m in runs] == [(3, None), (3, "no-retrieval"), (4, None), (4, "no-retrieval")]
    assert runs[0].cfg.name == cfg.name and runs[0].cfg.runs_dir == cfg.runs_dir  # the main run is the run itself
    assert {m.cfg.data_seed for m in runs} == {cfg.data_seed}
    assert runs[1].cfg.rank.use_retrieval is False and runs[1].cfg.evaluate.methods == ["no-retrieval"]
    assert runs[3].cfg.name == "4-no-retrieval"
    # evaluate.fuse: a variant scores the CF model too, for its own blend, and only its rows join the board
    over += ["evaluate.methods=[pop, sasrec, mmsrarec]", "evaluate.fuse=[sasrec]", "experiment.variants=["
             "{name: no-retrieval, set: [rank.use_retrieval=false]}, "
             "{name: no-rl, set: [rank.keywords_from=summarize, 'evaluate.fuse = []', 'evaluate.llm_splits=[test]']}]"]
    fused = members(load_config(None, over), None, over)
    assert fused[1].cfg.evaluate.methods == ["no-retrieval", "sasrec"]
    assert fused[1].own_rows == {"no-retrieval", "no-retrieval+sasrec"}
    assert fused[2].cfg.evaluate.methods == ["no-rl"] and fused[2].own_rows == {"no-rl"}  # opted out


def test_redraw_data_gives_each_seed_its_own_lists_shared_by_its_variants(toy_overrides):
    over = [*toy_overrides, "seed=9", "experiment.seeds=[3, 4]",
            "experiment.variants=[{name: no-retrieval, set: [rank.use_retrieval=false]}]"]
    pinned = members(load_config(None, over), None, over)
    assert {m.cfg.data_seed for m in pinned} == {9}  # the default: every seed ranks the main run's lists
    redraw = [*over, "experiment.redraw_data=true"]
    runs = members(load_config(None, redraw), None, redraw)
    assert [(m.label, m.cfg.data_seed) for m in runs] == [("3-main", 3), ("3-no-retrieval", 3),
                                                         ("4-main", 4), ("4-no-retrieval", 4)]
    from mmsrarec import ledger
    from mmsrarec.stages import Runner
    keys = [Runner(m.cfg).key("prepare") for m in runs]
    assert keys[0] == keys[1] != keys[2] == keys[3]  # a seed's variants share its prepare stage
    prints = [ledger.fingerprint(m.cfg) for m in runs]
    assert len(set(prints)) == 4 and prints[2] != ledger.fingerprint(pinned[2].cfg)  # no shared ledger rows
    # the key is neutral: at its default the fingerprints are those of before it
    off = [*over, "experiment.redraw_data=false"]
    assert [ledger.fingerprint(m.cfg) for m in members(load_config(None, off), None, off)] == [
        ledger.fingerprint(m.cfg) for m in pinned]
    with pytest.raises(ConfigError, match=r"experiment\.redraw_data.*data\.seed pins them to 5.*data\.seed=-1"):
        load_config(None, [*redraw, "data.seed=5"])


def test_a_board_over_redrawn_lists_checks_them_within_each_seed(toy_overrides, capsys):
    from pathlib import Path

    from mmsrarec.errors import ArtifactError
    from mmsrarec.experiment.board import _same_data

    over = [*toy_overrides, "experiment.seeds=[3, 4]", "evaluate.methods=[pop]", "cf.models=[pop]",
            "evaluate.protocols=[sampled]", "evaluate.report_users=0", "experiment.redraw_data=true",
            f"experiment.ledger={Path(toy_overrides[0].split('=', 1)[1]).parent / 'ledger.csv'}"]
    cfg = load_config(None, over)
    out = run_experiment(cfg, None, over)
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["seed"]) == {3, 4} and runs.groupby("seed")["data"].nunique().max() == 1
    assert runs["data"].nunique() == 2  # each seed ranked its own lists
    assert "Candidate lists redrawn per seed" in (out / "leaderboard.md").read_text()
    assert pd.read_csv(out / "leaderboard.csv").loc[0, "seeds"] == 2
    # seed 3 is not the config's seed: its main run is not the pinned mode's runs/toy/ either
    assert out == cfg.run_dir / "leaderboard-redraw" and (cfg.run_dir / "experiment-redraw" / "3-main").is_dir()
    assert not (cfg.run_dir / "prepare").exists() and not (cfg.run_dir / "experiment").exists()
    board_of_finished(cfg, None, over)  # again, with the ledger's rows: still checked per seed only
    # the check itself: per seed in redraw mode, across everything when pinned
    rows = pd.DataFrame({"label": ["3-main", "3-v", "4-main"], "seed": [3, 3, 4], "data": ["x", "x", "y"]})
    _same_data(rows, "these", per_seed=True)
    with pytest.raises(ArtifactError, match="keep data.* identical across variants and seeds"):
        _same_data(rows, "these")
    rows.loc[1, "data"] = "z"
    with pytest.raises(ArtifactError, match="these of seed 3 ranked different.*3-v: z.*variants of a seed"):
        _same_data(rows, "these", per_seed=True)
    pinned = [o for o in over if o != "experiment.redraw_data=true"]
    # pinned, the same runs rank other lists: neither the run folders nor the ledger's rows count for them
    with pytest.raises(MmsrarecError, match="no run of experiment 'toy' has finished"):
        board_of_finished(load_config(None, pinned), None, pinned)


def test_redraw_after_pinned_leaves_the_pinned_runs_and_board_alone(toy_overrides):
    import hashlib
    from pathlib import Path

    from mmsrarec import ledger
    from mmsrarec.cli import main

    book = Path(toy_overrides[0].split("=", 1)[1]).parent / "ledger.csv"
    pinned = [*toy_overrides, "experiment.seeds=[2025, 4]", "evaluate.methods=[pop]", "cf.models=[pop]",
              "evaluate.protocols=[sampled]", "evaluate.report_users=0", f"experiment.ledger={book}"]
    redraw = [*pinned, "experiment.redraw_data=true"]
    cfg_p, cfg_r = load_config(None, pinned), load_config(None, redraw)
    root = cfg_p.run_dir
    assert [m.cfg.run_dir for m in members(cfg_r, None, redraw)] == [root, root / "experiment-redraw" / "4-main"]
    out_p = run_experiment(cfg_p, None, pinned)
    assert out_p == root / "leaderboard"

    def state():  # every file of the pinned mode: its runs (runs/toy/ and experiment/) and its board
        files = sorted(f for f in root.rglob("*") if f.is_file() and not f.is_symlink()
                       and not f.relative_to(root).parts[0].endswith("-redraw"))
        return {str(f.relative_to(root)): (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
                for f in files}

    before = state()
    assert "experiment/4-main/train-cf/manifest.json" in before and "leaderboard/leaderboard.md" in before
    assert (root / "experiment" / "4-main" / "prepare").is_symlink()  # pinned: runs/toy/prepare's lists
    out_r = run_experiment(cfg_r, None, redraw)
    assert out_r == root / "leaderboard-redraw" and (out_r / "leaderboard.md").is_file()
    assert state() == before  # nothing of the pinned mode redone, rewritten or overwritten
    assert (root / "experiment-redraw" / "4-main" / "prepare" / "manifest.json").is_file()
    assert not (root / "experiment-redraw" / "2025-main").exists()  # the shared run: runs/toy/ itself
    assert "Candidate lists pinned" in (out_p / "leaderboard.md").read_text()
    assert "Candidate lists redrawn per seed" in (out_r / "leaderboard.md").read_text()
    runs_p, runs_r = (pd.read_csv(o / "runs.csv").drop_duplicates("label").set_index("label") for o in (out_p, out_r))
    assert runs_p.loc["2025-main", "data"] == runs_r.loc["2025-main", "data"]  # the same run
    assert runs_p.loc["4-main", "data"] != runs_r.loc["4-main", "data"]  # its own lists in redraw mode
    assert runs_p.loc["2025-main", "fingerprint"] == runs_r.loc["2025-main", "fingerprint"]
    # the ledger keeps both modes' rows of 4-main apart by fingerprint; labels and --runs are the same
    kept = ledger.read(book).drop_duplicates(["label", "fingerprint"])
    assert sorted(kept["label"]) == ["2025-main", "4-main", "4-main"]
    run_experiment(cfg_r, None, redraw, only=["4-*"])  # finished: nothing runs, the redraw board is merged again
    args = [a for o in redraw for a in ("--set", o)]
    assert main(["board", *args]) == 0
    assert state() == before
    # a fresh checkout: the redraw board from the ledger's rows of its own mode, not the pinned ones
    shutil.rmtree(root / "experiment-redraw")
    board_of_finished(cfg_r, None, redraw)
    assert pd.read_csv(out_r / "runs.csv").drop_duplicates("label").set_index("label").loc["4-main", "data"] \
        == runs_r.loc["4-main", "data"]
    assert main(["board", *[a for o in pinned for a in ("--set", o)]]) == 0
    assert pd.read_csv(out_p / "runs.csv").drop_duplicates("label").set_index("label").loc["4-main", "data"] \
        == runs_p.loc["4-main", "data"]


def test_runs_pick_members_by_label_and_link_what_the_runs_before_them_finished(toy_overrides):
    from pathlib import Path

    from mmsrarec.cli import main
    from mmsrarec.experiment import select

    over = [*toy_overrides, "experiment.seeds=[3, 4]", "evaluate.methods=[pop]", "cf.models=[pop]",
            "experiment.variants=[{name: no-retrieval, set: [rank.use_retrieval=false, rank.use_keywords=false]}]"]
    cfg = load_config(None, over)
    runs = members(cfg, None, over)
    assert [m.label for m in runs] == ["3-main", "3-no-retrieval", "4-main", "4-no-retrieval"]
    assert [m.label for m in select(runs, ["4-*"])] == ["4-main", "4-no-retrieval"]
    assert [m.label for m in select(runs, ["*-no-retrieval", "3-main"])] == ["3-main", "3-no-retrieval",
                                                                            "4-no-retrieval"]
    assert select(runs, []) == runs
    with pytest.raises(MmsrarecError, match=r"'5-\*' matches none of the experiment's runs: 3-main, 3-no-retrieval"):
        select(runs, ["5-*"])
    main_dir = Path(cfg.runs_dir) / cfg.name
    run_experiment(cfg, None, over, stop_before="train-ranker", only=["4-no-retrieval"])
    picked = main_dir / "experiment" / "4-no-retrieval"
    assert (picked / "prepare" / "manifest.json").is_file()
    assert not (main_dir / "prepare").exists() and not (main_dir / "experiment" / "4-main").exists()
    run_experiment(cfg, None, over, stop_before="train-ranker", only=["3-main"])
    # a run listed earlier finished later: the picked run keeps its own (identical) prepare stage
    assert not (picked / "prepare").is_symlink() and (main_dir / "prepare" / "manifest.json").is_file()
    run_experiment(cfg, None, over, stop_before="train-ranker", only=["3-no-*"])
    assert (main_dir / "experiment" / "3-no-retrieval" / "prepare").is_symlink()  # linked to 3-main's
    args = [a for o in over for a in ("--set", o)]
    assert main(["run", *args, "--stop-before", "train-ranker", "--runs", "9-*"]) == 2
    plain = [a for o in toy_overrides for a in ("--set", o)]
    assert main(["run", *plain, "--stop-before", "train-ranker", "--runs", "3-*"]) == 2


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from mmsrarec.models.tiny import tiny_causal_lm
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "lm")


def test_ablations_and_seeds_share_upstream_stages_and_merge(toy_overrides, tiny_lm, monkeypatch):
    over = [*toy_overrides, "cf.models=[pop, sasrec]", "cf.train.epochs=2", "evaluate.methods=[pop, sasrec, mmsrarec]",
            "evaluate.protocols=[sampled, rerank]", "evaluate.rerank_top=10", "evaluate.report_users=0",
            "evaluate.llm_splits=[test]",
            f"summarize.model.name_or_path={tiny_lm}", "summarize.max_new_tokens=6", "rank.keywords_from=summarize",
            f"rank.model.name_or_path={tiny_lm}", "rank.sft.max_steps=2", "rank.max_examples=16",
            "rank.score_batch_size=8", "experiment.seeds=[5, 6]",
            "experiment.variants=[{name: zero-shot, set: [rank.zero_shot=true]}, "
            "{name: no-retrieval, set: [rank.use_retrieval=false]}]"]
    cfg = load_config(None, over)
    import mmsrarec.rank.score_stage as score_stage
    loads = []  # (model, device) of every CF model the ranker's scoring stages load

    def load_trained(folder, name, cfg, n_items, device=None):
        loads.append((name, device or cfg.cf.train.device))
        return real_load(folder, name, cfg, n_items, device)

    real_load = score_stage.load_trained
    monkeypatch.setattr(score_stage, "load_trained", load_trained)
    out = run_experiment(cfg, None, over)
    # the rerank lists (an input of every LLM row) come from the CPU, whatever device the CF models use
    assert loads.count(("sasrec", "cpu")) == 6  # one per LLM rerank row: 2 seeds x 3 rankers
    board = pd.read_csv(out / "leaderboard.csv")
    got = {(r.method, r.protocol): r.seeds for r in board.itertuples()}
    assert got == {(m, p): 2 for m, p in [("pop", "sampled"), ("sasrec", "sampled"), ("mmsrarec", "sampled"),
                                          ("mmsrarec", "rerank"), ("zero-shot", "sampled"), ("zero-shot", "rerank"),
                                          ("no-retrieval", "sampled"), ("no-retrieval", "rerank")]}
    assert "± " in (out / "leaderboard.md").read_text()
    # the slices of every run, merged: the variants' own rows beside the main run's, paired per slice
    slices = pd.read_csv(out / "slices.csv")
    assert {"pop", "sasrec", "mmsrarec", "zero-shot", "no-retrieval"} <= set(slices["method"])
    assert (slices["seeds"] == 2).all()
    assert set(pd.read_csv(out / "slice_deltas.csv")["variant"]) == {"zero-shot", "no-retrieval"}
    assert "zero-shot minus mmsrarec" in (out / "leaderboard.md").read_text()
    main = out.parent
    variant = main / "experiment" / "5-no-retrieval"
    for stage in ("prepare", "train-cf", "summarize"):  # identical: linked, not recomputed
        assert (variant / stage).is_symlink() and (variant / stage).resolve() == (main / stage).resolve()
    assert not (variant / "index").exists()  # no retrieval, no index
    assert not (variant / "train-ranker").is_symlink()
    second = main / "experiment" / "6-main"
    assert (second / "prepare").is_symlink()            # data.seed pinned: the same candidate lists
    assert not (second / "train-cf").is_symlink()       # the run seed changes training
    llm, cf = main / "score-ranker" / "sampled", main / "score-cf" / "sampled"
    assert (llm / "mmsrarec_test.parquet").is_file() and not (llm / "mmsrarec_valid.parquet").exists()
    assert (cf / "sasrec_valid.parquet").is_file()  # llm_splits limits the LLM rows only
    zero = main / "experiment" / "5-zero-shot" / "train-ranker"
    assert not (zero / "adapter").exists()
    runs = pd.read_csv(out / "runs.csv")
    hit_rates = runs.loc[runs["protocol"] == "rerank", "retrieval_hit_rate"]
    assert ((hit_rates >= 0) & (hit_rates <= 1)).all()
    # each variant paired case by case with its seed's main ranker and best CF model (experiment/pairs.py): the
    # mean of the per-case differences is the difference of the two runs' rows on that seed
    pairs = pd.read_csv(out / "variant_pairs.csv")
    assert set(pairs["variant"]) == {"zero-shot", "no-retrieval"} and set(pairs["seed"]) == {5, 6}
    assert set(pairs["role"]) == {"main ranker", "best CF"} and set(pairs["protocol"]) == {"sampled", "rerank"}
    rate = runs.set_index(["label", "method", "protocol"])["test_hr@5"]
    mine = pairs[(pairs["role"] == "main ranker") & (pairs["metric"] == "hr@5")]
    assert len(mine) == 8  # 2 variants x 2 seeds x 2 protocols (rerank: no hr@10 when reranking the top 10)
    for r in mine.itertuples():
        want = rate[(f"{r.seed}-{r.variant}", r.variant, r.protocol)] - rate[(f"{r.seed}-main", "mmsrarec", r.protocol)]
        assert r.diff == pytest.approx(want, abs=1e-4) and r.lo <= r.diff <= r.hi
    assert "### Variants case by case" in (out / "leaderboard.md").read_text()


def test_a_pinned_data_seed_equal_to_the_run_seed_is_the_same_prepare_stage(toy_overrides):
    from mmsrarec.stages import Runner

    plain = Runner(load_config(None, [*toy_overrides, "seed=7"]))
    pinned = Runner(load_config(None, [*toy_overrides, "seed=7", "data.seed=7"]))
    other = Runner(load_config(None, [*toy_overrides, "seed=7", "data.seed=8"]))
    assert plain.key("prepare") == pinned.key("prepare") != other.key("prepare")


def test_stop_before_then_parallel_runs_finish_the_experiment(toy_overrides, tiny_lm):
    from pathlib import Path

    from mmsrarec.stages import Runner

    over = [*toy_overrides, "cf.models=[pop, sasrec]", "cf.train.epochs=1", "evaluate.methods=[pop, mmsrarec]",
            "evaluate.report_users=0",
            "evaluate.protocols=[sampled]", f"summarize.model.name_or_path={tiny_lm}", "summarize.max_new_tokens=6",
            "rank.keywords_from=summarize", f"rank.model.name_or_path={tiny_lm}",
            "rank.sft.max_steps=1", "rank.max_examples=8", "rank.score_batch_size=8", "experiment.parallel=2",
            "experiment.variants=[{name: zero-shot, set: [rank.zero_shot=true]}, "
            "{name: no-retrieval, set: [rank.use_retrieval=false]}]"]
    cfg = load_config(None, over)
    runner = Runner(cfg)
    plan = runner._before(runner.plan("evaluate"), "train-ranker")
    assert "train-ranker" not in plan and "evaluate" not in plan and "index" in plan
    assert run_experiment(cfg, None, over, stop_before="train-ranker") is None  # e.g. the CPU part
    with pytest.raises(MmsrarecError, match="no run of experiment"):
        board_of_finished(cfg, None, over)
    here = Path(cfg.runs_dir).parent / "here" / "runs"  # the CPU machine's copy, before the rankers ran
    shutil.copytree(cfg.runs_dir, here, symlinks=True)
    main_dir = Path(cfg.runs_dir) / cfg.name
    variant = main_dir / "experiment" / f"{cfg.seed}-no-retrieval"
    assert (main_dir / "index" / "manifest.json").is_file()
    assert not (main_dir / "train-ranker").exists() and not (main_dir / "evaluate").exists()
    assert (variant / "summarize").is_symlink() and not (variant / "train-ranker").exists()
    out = run_experiment(cfg, None, over)  # the rankers, two processes at a time
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board["method"]) == {"pop", "mmsrarec", "zero-shot", "no-retrieval"}
    assert "[train-ranker]" in (variant / "run.log").read_text()
    assert (variant / "train-ranker" / "manifest.json").is_file() and not (variant / "train-ranker").is_symlink()
    # what comes back from a GPU machine (tools/lent_gpu.py): the ranker and evaluate folders without
    # weights, in parts; put into the CPU machine's run, every run there is finished and merged
    lent_gpu = load_script("tools/lent_gpu.py")
    parts = lent_gpu.results(main_dir, Path(cfg.runs_dir).parent / "back" / "results.tgz", chunk=20_000)
    assert len(parts) > 1 and not any(".safetensors" in n for p in parts for n in _names(parts))
    here_over = [*over, f"runs_dir={here}"]
    lent_gpu.unpack(argparse.Namespace(folder=str(parts[0].parent), config=None, set=here_over))
    here_board = pd.read_csv(here / cfg.name / "leaderboard" / "leaderboard.csv")
    assert here_board.equals(board)
    # a loan for one run packs only what that run needs: its own folders and those its links point to
    links, folders, manifests = lent_gpu.needed(cfg, lent_gpu.picked(cfg, None, over, [f"{cfg.seed}-no-retrieval"]))
    rel = f"experiment/{cfg.seed}-no-retrieval"
    assert f"{rel}/prepare" in links and f"{rel}/summarize" in links
    assert {"prepare", "summarize", f"{rel}/train-ranker", f"{rel}/evaluate"} <= set(folders)
    assert "index" not in folders and "train-ranker" not in folders  # the main run's, which it does not read
    assert f"{rel}/prepare/manifest.json" in manifests
    assert len(lent_gpu.needed(cfg, lent_gpu.picked(cfg, None, over, []))[1]) > len(folders)
    # `finish` refuses runs the payload was not packed for (their CPU stages did not travel)
    assert [m.label for m in lent_gpu.picked(cfg, None, over, [f"{cfg.seed}-no-*"])] == [f"{cfg.seed}-no-retrieval"]
    marker = Path(cfg.runs_dir).parent / "unpacked-marker"
    marker.write_text(f"{cfg.seed}-no-retrieval\n")
    assert lent_gpu.not_packed([f"{cfg.seed}-main", f"{cfg.seed}-no-retrieval"], marker) == [f"{cfg.seed}-main"]
    marker.write_text("")  # a payload from before the list: nothing to check against
    assert lent_gpu.not_packed([f"{cfg.seed}-main"], marker) == []
    # a ranker trained, its scoring cut off: it comes back whole, and here only its scoring and evaluation run
    key = json.loads((variant / "score-ranker" / "manifest.json").read_text())["key"]
    (variant / "score-ranker" / "manifest.json").unlink()
    (variant / "score-ranker").rename(variant / "score-ranker.partial")
    (variant / "score-ranker.partial" / ".key").write_text(key)  # as pipeline.Runner leaves a stage it runs
    back = lent_gpu.results(main_dir, Path(cfg.runs_dir).parent / "back2" / "results.tgz")
    names = _names(back)
    assert f"{cfg.name}/{rel}/train-ranker/adapter/adapter_model.safetensors" in names
    assert f"{cfg.name}/{rel}/score-ranker.partial/.key" in names
    assert f"{cfg.name}/train-ranker/adapter/adapter_model.safetensors" not in names  # finished: no weights
    assert not [n for n in _names(lent_gpu.results(main_dir, back[0].parent / "none.tgz", resume_bytes=1000))
                if n.endswith(".safetensors")]  # over the budget: back without weights, as before
    here_variant = here / cfg.name / rel
    shutil.rmtree(here_variant / "score-ranker")  # as if it had never finished here either
    lent_gpu.unpack(argparse.Namespace(folder=str(back[0].parent), config=None, set=here_over))
    assert (here_variant / "score-ranker.partial" / ".key").is_file()
    trained_here = (here_variant / "train-ranker" / "manifest.json").read_text()
    run_experiment(load_config(None, here_over), None, here_over, only=[f"{cfg.seed}-no-retrieval"])
    assert (here_variant / "train-ranker" / "manifest.json").read_text() == trained_here  # not retrained
    assert "[score-ranker] resuming" in (here_variant / "run.log").read_text()
    assert (here_variant / "evaluate" / "manifest.json").is_file()
    metrics = ["method", "protocol", "test_hr@5", "test_ndcg@5", "test_auc"]  # the timings differ
    assert pd.read_csv(here / cfg.name / "leaderboard" / "leaderboard.csv")[metrics].equals(board[metrics])
    (variant / "score-ranker.partial" / ".key").unlink()
    (variant / "score-ranker.partial").rename(variant / "score-ranker")  # as it was, for what follows
    run_experiment(cfg, None, over)
    # the rankers' weights pruned (as results come back from a GPU machine): the finished runs stay finished
    trained = (variant / "train-ranker" / "manifest.json").read_text()
    pruned = sorted(set(main_dir.rglob("adapter_model.safetensors")))
    assert len(pruned) == 2  # the main ranker's and no-retrieval's (zero-shot trains none)
    for weights in pruned:
        weights.unlink()
    run_experiment(cfg, None, over)
    assert (variant / "train-ranker" / "manifest.json").read_text() == trained  # not retrained
    (variant / "evaluate" / "metrics.json").unlink()
    board_of_finished(cfg, None, over)
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board["method"]) == {"pop", "mmsrarec", "zero-shot"}
    assert f"Not finished, left out: {cfg.seed}-no-retrieval." in (out / "leaderboard.md").read_text()
    from mmsrarec.cli import main
    assert main(["board", *[a for o in over for a in ("--set", o)]]) == 0
    with pytest.raises(MmsrarecError, match="unknown stage"):
        runner._before(plan, "no-such-stage")


def _names(parts) -> list[str]:
    import io
    import tarfile

    joined = b"".join(p.read_bytes() for p in parts)
    with tarfile.open(fileobj=io.BytesIO(joined), mode="r:gz") as tar:
        return tar.getnames()


def test_last_line_of_a_log_reads_through_progress_bar_redraws(tmp_path):
    from mmsrarec.experiment import last_line

    log = tmp_path / "run.log"
    assert last_line(log) == "(no log yet)"
    log.write_text("x" * 5000 + "\n[train-ranker] SFT on 10 examples\n 10%|#  | 1/10\r 20%|##  | 2/10\r\n\n")
    assert last_line(log) == "20%|##  | 2/10"


def test_variants_are_compared_with_the_main_ranker_paired_by_seed():
    from mmsrarec.experiment import paired_deltas

    rows = pd.DataFrame([
        {"seed": s, "method": m, "protocol": "sampled", "test_hr@5": v}
        for s, m, v in [(1, "llm", 0.60), (2, "llm", 0.70), (3, "llm", 0.65), (1, "no-rl", 0.50), (2, "no-rl", 0.64),
                        (1, "pop", 0.9), (3, "one-seed", 0.75)]])
    rows = pd.concat([rows, pd.DataFrame([{"seed": 1, "method": "no-rl", "protocol": "rerank", "test_hr@10": 0.1},
                                          {"seed": 1, "method": "llm", "protocol": "rerank", "test_hr@10": 0.3}])])
    got = paired_deltas(rows, "llm", ["no-rl", "one-seed", "never-ran"]).set_index("variant")
    assert got.loc["no-rl", "seeds"] == 2
    assert got.loc["no-rl", "sampled hr@5"] == pytest.approx(-0.08)        # (-0.10 - 0.06) / 2: seed 3 has no no-rl
    assert got.loc["no-rl", "sampled hr@5 std"] == pytest.approx(np.std([-0.10, -0.06], ddof=1))
    assert got.loc["no-rl", "rerank hr@10"] == pytest.approx(-0.2)
    assert got.loc["one-seed", "sampled hr@5"] == pytest.approx(0.10)
    assert np.isnan(got.loc["one-seed", "sampled hr@5 std"])  # one seed: no spread
    assert "never-ran" not in got.index


def test_the_board_shows_the_pooled_auc_and_the_per_case_gauc_over_seeds(tmp_path):
    from mmsrarec.experiment import write_board

    rows = pd.DataFrame([{"method": "sasrec", "protocol": "sampled", "seed": s, "test_cases": 3, "test_hr@5": 0.5,
                          "test_ndcg@5": 0.4, "test_auc": a, "test_gauc": g}
                         for s, a, g in [(1, 0.80, 0.90), (2, 0.84, 0.92), (3, np.nan, 0.94)]])  # 3: an older row
    write_board(rows, tmp_path, load_config(None, []), n_seeds=3)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| method | seeds | hr@5 | ndcg@5 | auc | gauc |" in md
    # auc: the mean of the 2 seeds that have it, and says so; the others are over all 3
    assert f"| sasrec | 3 | 0.5000 ± 0.0000 | 0.4000 ± 0.0000 | 0.8200 ± {np.std([0.8, 0.84], ddof=1):.4f} " \
           "(2 of 3 seeds) | 0.9200 ± 0.0200 |" in md
    assert "A mean marked (k of n seeds) is over only the k seeds" in md
    assert "`auc` is one ROC AUC pooled over all test rows" in md and "`gauc` is the mean of per-case AUCs" in md
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert {"test_auc", "test_auc_std", "test_gauc", "test_gauc_std"} <= set(board.columns)
    assert board.loc[0, "seeds"] == 3 and board.loc[0, "test_auc_seeds"] == 2  # the CSV says it too
    assert "test_gauc_seeds" not in board and "test_hr@5_seeds" not in board  # all seeds have them
    assert json.loads((tmp_path / "leaderboard.json").read_text())[0]["test_auc_seeds"] == 2
    # one seed of three: no spread, and not a 3-seed mean either
    one = rows.assign(test_auc=[0.80, np.nan, np.nan])
    write_board(one, tmp_path / "one", load_config(None, []), n_seeds=3)
    assert "| 0.8000 (1 of 3 seeds) | 0.9200 ± 0.0200 |" in (tmp_path / "one" / "leaderboard.md").read_text()
    # all seeds have it (a fresh board): no count, no note
    full = rows.assign(test_auc=[0.80, 0.84, 0.82])
    write_board(full, tmp_path / "full", load_config(None, []), n_seeds=3)
    md = (tmp_path / "full" / "leaderboard.md").read_text()
    assert "| 0.8200 ± 0.0200 | 0.9200 ± 0.0200 |" in md and "of 3 seeds" not in md and "k of n" not in md
    assert "test_auc_seeds" not in pd.read_csv(tmp_path / "full" / "leaderboard.csv")


def test_a_variant_delta_over_fewer_seeds_says_so():
    from mmsrarec.experiment import paired_deltas

    rows = pd.DataFrame([{"seed": s, "method": m, "protocol": "sampled", "test_hr@5": 0.5, "test_auc": a}
                         for s, a in [(1, 0.8), (2, np.nan)] for m in ("llm", "no-rl")])
    got = paired_deltas(rows, "llm", ["no-rl"]).set_index("variant")
    assert got.loc["no-rl", "seeds"] == 2 and got.loc["no-rl", "sampled auc seeds"] == 1
    assert "sampled hr@5 seeds" not in got  # both seeds: no count



def test_the_board_merges_slices_over_seeds_and_pairs_variants_per_slice(tmp_path):
    from mmsrarec.experiment.board import aggregate_slices, slice_deltas, slices_section

    def records(method, seed, values, cases=(3, 5)):
        return [{"method": method, "protocol": "sampled", "slicing": "popularity", "slice": label, "split": "test",
                 "cases": n, "metric": "hr@5", "value": v, "seed": seed}
                for label, v, n in zip(["0", "1-4"], values, cases)]

    table = pd.DataFrame(records("sasrec", 1, [0.0, 0.8]) + records("sasrec", 2, [0.0, 0.6], (4, 5))
                         + records("mmsrarec", 1, [0.5, 0.2]) + records("mmsrarec", 2, [0.3, 0.4], (4, 5))
                         + records("cold", 1, [0.6, 0.1]) + records("cold", 2, [0.6, 0.1], (4, 5)))
    board = aggregate_slices(table).set_index(["method", "slice"])
    assert board.loc[("sasrec", "1-4"), "value"] == pytest.approx(0.7)
    assert board.loc[("sasrec", "1-4"), "std"] == pytest.approx(0.1414214)  # sample std of 0.8, 0.6
    assert board.loc[("mmsrarec", "0"), ["cases_min", "cases_max", "seeds"]].tolist() == [3, 4, 2]
    deltas = slice_deltas(table, "mmsrarec", ["cold"]).set_index("slice")
    assert deltas.loc["0", "diff"] == pytest.approx(0.2)      # (0.6 - 0.5 + 0.6 - 0.3) / 2
    assert deltas.loc["0", "std"] == pytest.approx(0.1414214)  # of 0.1 and 0.3
    assert deltas.loc["1-4", "diff"] == pytest.approx(-0.2)    # (-0.1 - 0.3) / 2
    lines = slices_section(table, {"popularity": ["0", "1-4", "5+"]}, "mmsrarec", ["cold"], tmp_path, False, 2)
    text = "\n".join(lines)
    assert "| 0 | 3-4 | 0.0000 ± 0.0000 | 0.4000 ± 0.1414 | 0.6000 ± 0.0000 |" in text
    assert "| 1-4 | -0.2000 ± 0.1414 |" in text and "| 5+ |" not in text  # a slice without cases is left out
    assert (tmp_path / "slices.csv").is_file() and (tmp_path / "slice_deltas.csv").is_file()
    # a board of 3 seeds whose slices come from 2 of them says so in every cell
    text = "\n".join(slices_section(table, {"popularity": ["0", "1-4"]}, "mmsrarec", ["cold"], tmp_path, False, 3))
    assert "| 1-4 | -0.2000 ± 0.1414 (2 of 3 seeds) |" in text


def test_a_variant_cannot_take_a_methods_name(toy_overrides):
    for name in ("mmsrarec", "pop", "text"):
        with pytest.raises(ConfigError, match="already a method's name"):
            load_config(None, [*toy_overrides, f"experiment.variants=[{{name: {name}, set: [rank.zero_shot=true]}}]"])


def test_each_variant_is_paired_case_by_case_with_its_seeds_main_ranker_best_cf_and_text(tmp_path, capsys):
    """experiment/pairs.py on hand-made evaluate/cases.parquet files: the difference and interval are those of the
    per-case differences, matched by user where the order differs; a rerank row pairs with the CF model's full
    rows at the largest k both have; runs without cases are named, other users refused."""
    from mmsrarec.config import Variant
    from mmsrarec.evaluate.intervals import paired_bootstrap
    from mmsrarec.experiment import Member
    from mmsrarec.experiment.pairs import case_pairs, pairs_lines

    cfg, variant = load_config(None, []), Variant(name="big")

    def run(name, methods, users=(1, 2, 3, 4), protocol="sampled", ks=(5,)):
        folder = tmp_path / name / "evaluate"
        folder.mkdir(parents=True, exist_ok=True)
        frames = [pd.DataFrame({"method": m, "protocol": protocol, "split": split, "user": list(users),
                                **{f"hr@{k}": [float(v) for v in hits] for k in ks},
                                **{f"ndcg@{k}": [v / 2 for v in hits] for k in ks}})
                  for m, hits in methods.items() for split in ("valid", "test")]
        old = pd.read_parquet(folder / "cases.parquet") if (folder / "cases.parquet").is_file() else None
        pd.concat([old, *frames]).to_parquet(folder / "cases.parquet")
        return tmp_path / name

    main = run("1-main", {"mmsrarec": [1, 0, 1, 0], "sasrec": [1, 1, 1, 1], "text": [0, 0, 0, 1]})
    run("1-main", {"mmsrarec": [0, 0, 1, 1]}, protocol="rerank", ks=(1, 5))
    run("1-main", {"sasrec": [1, 0, 0, 1]}, protocol="full", ks=(5, 10))
    # the variant's cases in another order: users 4, 3, 2, 1 with hits 0, 1, 1, 1 are users 1-4 with 1, 1, 1, 0
    big = run("1-big", {"big": [0, 1, 1, 1]}, users=(4, 3, 2, 1))
    run("1-big", {"big": [1, 1, 0, 0]}, users=(4, 3, 2, 1), protocol="rerank", ks=(1, 5))
    other = run("2-big", {"big": [1, 1, 1, 1]}, users=(5, 6, 7, 8))  # seed 2's main run has other cases
    main2 = run("2-main", {"mmsrarec": [0, 0, 0, 0]})
    old = tmp_path / "3-big"
    (old / "evaluate").mkdir(parents=True)  # evaluated before cases.parquet
    alone = run("4-big", {"big": [1, 1, 1, 1]})  # its main run is not finished here
    rows = pd.DataFrame([{"label": "1-main", "seed": 1, "method": "mmsrarec", "protocol": "sampled", "vs_cf": "sasrec"},
                         {"label": "1-main", "seed": 1, "method": "mmsrarec", "protocol": "rerank", "vs_cf": "sasrec"},
                         {"label": "2-main", "seed": 2, "method": "mmsrarec", "protocol": "sampled", "vs_cf": None}])
    done = [(Member(1, None, cfg), main), (Member(1, variant, cfg), big), (Member(2, None, cfg), main2),
            (Member(2, variant, cfg), other), (Member(3, variant, cfg), old), (Member(4, variant, cfg), alone)]
    pairs, unpaired = case_pairs(done, rows, "mmsrarec", "text",
                                 {"sampled": ["hr@5", "ndcg@5", "auc"], "rerank": ["hr@10", "ndcg@10"]})
    assert [u.split(" ")[0] for u in unpaired] == ["3-big", "4-big"] and "not finished here" in unpaired[1]
    got = pairs.set_index(["seed", "protocol", "minus", "metric"])
    assert set(got.index) == {(1, "sampled", p, m) for p in ("mmsrarec", "sasrec", "text") for m in ("hr@5", "ndcg@5")} \
        | {(1, "rerank", p, m) for p in ("mmsrarec", "sasrec") for m in ("hr@5", "ndcg@5")}  # no hr@10 on rerank
    big_hits = np.array([1, 1, 1, 0.0])  # users 1-4, in the partner's order
    for minus, hits in [("mmsrarec", [1, 0, 1, 0]), ("sasrec", [1, 1, 1, 1]), ("text", [0, 0, 0, 1])]:
        want = paired_bootstrap({"hr@5": big_hits}, {"hr@5": np.array(hits, float)}, np.random.default_rng([1, 1013]))
        assert got.loc[(1, "sampled", minus, "hr@5"), ["diff", "lo", "hi"]].tolist() == pytest.approx(want["hr@5"])
    assert got.loc[(1, "sampled", "mmsrarec", "hr@5"), "diff"] == pytest.approx(0.25)  # (3 - 2) / 4
    assert got.loc[(1, "sampled", "mmsrarec", "hr@5"), "lo"] >= 0  # the variant hits every case mmsrarec hits
    assert got.loc[(1, "sampled", "text", "hr@5"), "lo"] < 0       # text hits user 4, which the variant misses
    assert got.loc[(1, "rerank", "mmsrarec", "hr@5"), "diff"] == pytest.approx(0.0)  # 0,0,1,1 against 0,0,1,1
    assert got.loc[(1, "rerank", "sasrec", "ndcg@5"), "diff"] == pytest.approx(0.0)  # (2 - 2) / 4 / 2
    assert (got["cases"] == 4).all()
    assert "2-big: its sampled test cases are not those of mmsrarec" in capsys.readouterr().err
    text = "\n".join(pairs_lines(pairs, unpaired))
    assert "| big | 1 | 4 | sasrec (best CF) | -0.2500 [" in text and "| big | 1 | 4 | text | +0.5000 [" in text
    assert "rerank:" in text and "Not paired case by case: 3-big (evaluated before" in text
