"""The index stage: training-only windows, exact vs approximate search, self-exclusion, leakage-free
context, checksummed and config-checked persistence, item mode, keyword ranking."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmsrarec.config import load_config
from mmsrarec.errors import ArtifactError, ConfigError
from mmsrarec.index.backends import TorchIndex, build_index, normalise
from mmsrarec.index.context import context_keywords, context_string
from mmsrarec.index.neighbours import UserIndex
from mmsrarec.index.store import load_index, load_neighbours
from mmsrarec.index.windows import training_windows
from mmsrarec.stages import Runner

from conftest import load_script, write_held_out_dataset

faiss = pytest.importorskip("faiss")
faiss.omp_set_num_threads(1)  # 2 shared cores: OpenMP threads spinning against each other only slow the tests

N_USERS, POOL, TRAIN_LEN = 24, 30, 10


def write_leaky_dataset(folder: Path, seed: int = 0) -> Path:
    """Users walk through a shared pool of items in training; every user's valid and test items are
    unique items nobody else ever touches, each carrying a planted keyword in its title."""
    return write_held_out_dataset(folder, "leaky", N_USERS, POOL, TRAIN_LEN, lambda i: f"shared{i % 7}",
                                  lambda kind, u: f"PLANTED{kind}{u}", seed=seed)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """prepare -> train-cf (real SASRec, 2 epochs) -> index on the leaky dataset, once per module."""
    root = tmp_path_factory.mktemp("index")
    data = write_leaky_dataset(root / "leaky")
    overrides = [f"runs_dir={root / 'runs'}", "name=leaky", "data.source=atomic", f"data.path={data}",
                 "data.name=leaky", "data.num_negatives=5", "cf.models=[sasrec]", "evaluate.methods=[sasrec]",
                 "cf.train.epochs=2", "cf.params.sasrec.hidden_size=16", "cf.params.sasrec.inner_size=32",
                 "cf.train.max_len=12"]
    cfg = load_config(None, overrides)
    Runner(cfg).run("index")
    run_dir = root / "runs" / "leaky"
    return {"cfg": cfg, "overrides": overrides, "root": root, "run_dir": run_dir, "index": run_dir / "index",
            "model_file": run_dir / "train-cf" / "sasrec.pt"}


def _prepared(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(run_dir / "prepare" / f"{name}.parquet") for name in ("items", "train", "valid", "test")}


def test_no_valid_or_test_interaction_reaches_any_context(built):
    tables = _prepared(built["run_dir"])
    items = tables["items"]
    # the caller decides what describes an item: here the title is its keyword (the no-summary ablation)
    keywords = {int(i): [t] for i, t in zip(items["item"], items["title"])}
    planted = {t for t in items["title"] if t.startswith("PLANTED")}
    assert len(planted) == 2 * N_USERS  # the test is not vacuous: every held-out item is planted...
    held_out = set(tables["valid"]["target"]) | set(tables["test"]["target"])
    assert {keywords[i][0] for i in held_out} == planted  # ...and is a valid or test target

    train_seqs = {int(u): list(s) for u, s in zip(tables["train"]["user"], tables["train"]["items"])}
    windows = pd.read_parquet(built["index"] / "windows.parquet")
    expected = [(u, t, s[t + 1]) for u, s in train_seqs.items() for t in range(len(s) - 1)]
    assert sorted(map(tuple, windows[["user", "position", "next_item"]].to_numpy().tolist())) == sorted(expected)

    for split in ("train", "valid", "test"):
        frame = load_neighbours(built["index"], split)
        assert len(frame) == {"train": len(expected), "valid": len(tables["valid"]),
                              "test": len(tables["test"])}[split]
        for row in frame.itertuples():
            assert row.user not in list(row.neighbours)  # never the query user itself
            assert len(set(row.neighbours)) == len(row.neighbours) == 3
            for v, t, item in zip(row.neighbours, row.neighbour_positions, row.next_items):
                assert train_seqs[v][t + 1] == item  # every next item is a training interaction
            text = context_string(row.next_items, row.similarities, keywords, cap=20)
            assert text and not any(p in text for p in planted), (split, row)


def test_reloaded_index_reproduces_the_stored_neighbours(built):
    from mmsrarec.cf.stage import load_trained
    from mmsrarec.index.neighbours import similar_users

    cfg = built["cfg"]
    index = load_index(built["index"], cfg.index, built["model_file"])
    model, _ = load_trained(built["run_dir"] / "train-cf", "sasrec", cfg, len(_prepared(built["run_dir"])["items"]))
    test = _prepared(built["run_dir"])["test"]
    found = similar_users(index, model, list(test["history"]), test["user"].to_numpy(), cfg.index)
    stored = load_neighbours(built["index"], "test")
    assert found.columns()["neighbours"] == [list(v) for v in stored["neighbours"]]
    np.testing.assert_allclose(np.array(found.columns()["similarities"]),
                               np.array(stored["similarities"].tolist()), rtol=1e-5)


def test_candidate_votes_count_training_choices_of_other_users_only(built):
    """rank.candidate_votes searches the stored index again at a larger k: a valid / test item (unique to
    its user) never gets a vote, at any k, and at index.k the votes are the stored neighbours' next items."""
    from collections import Counter

    from mmsrarec.index.store import load_retriever
    from mmsrarec.rank.stage import similar_users_votes

    tables = _prepared(built["run_dir"])
    retriever = load_retriever(built["index"], built["run_dir"] / "train-cf", built["cfg"], len(tables["items"]))
    for split in ("valid", "test"):
        cases = tables[split]
        stored = load_neighbours(built["index"], split)
        at_k = similar_users_votes(retriever, cases["history"], cases["user"], built["cfg"].index.k)
        assert [v.votes for v in at_k] == [Counter(items) for items in stored["next_items"]]
        for k in (10, N_USERS - 1):
            votes = similar_users_votes(retriever, cases["history"], cases["user"], k)
            assert all(sum(v.votes.values()) == k and v.k == k for v in votes)  # one vote per other user
            assert all(v.votes.get(int(t), 0) == 0 for v, t in zip(votes, cases["target"])), (split, k)
            held_out = set(tables["valid"]["target"]) | set(tables["test"]["target"])
            assert not held_out & {i for v in votes for i in v.votes}
    found = retriever.search(tables["train"]["items"], tables["train"]["user"], N_USERS - 1)
    assert not (found.users == tables["train"]["user"].to_numpy()[:, None]).any()  # never the user itself


def test_corrupted_index_files_are_refused(built, tmp_path):
    cfg = built["cfg"].index
    for name in ("index.faiss", "windows.parquet"):
        folder = tmp_path / name
        shutil.copytree(built["index"], folder)
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / name).write_bytes(bytes(data))
        with pytest.raises(ArtifactError, match=f"{name} is corrupted"):
            load_index(folder, cfg, built["model_file"])
    folder = tmp_path / "no-manifest"
    shutil.copytree(built["index"], folder)
    (folder / "index_manifest.json").unlink()
    with pytest.raises(ArtifactError, match="index_manifest.json is missing"):
        load_index(folder, cfg, built["model_file"])


def test_mismatched_config_or_cf_model_is_refused(built, tmp_path):
    cfg = built["cfg"].index
    with pytest.raises(ArtifactError, match="k: index has 3, now 4"):
        load_index(built["index"], dataclasses.replace(cfg, k=4), built["model_file"])
    with pytest.raises(ArtifactError, match="factory: index has 'Flat', now 'HNSW32'"):
        load_index(built["index"], dataclasses.replace(cfg, factory="HNSW32"), built["model_file"])
    other_model = tmp_path / "sasrec.pt"
    other_model.write_bytes(built["model_file"].read_bytes() + b"retrained")
    with pytest.raises(ArtifactError, match="cf_model_sha256"):
        load_index(built["index"], cfg, other_model)


def test_item_mode_finds_users_who_had_the_same_last_item(built, tmp_path):
    cfg, run_dir = _copy_run(built, tmp_path, "index.mode=item")
    Runner(cfg).run("index")
    tables = _prepared(run_dir)
    train_seqs = {int(u): list(s) for u, s in zip(tables["train"]["user"], tables["train"]["items"])}
    stored = load_neighbours(run_dir / "index", "valid")
    checked = 0
    for row, history in zip(stored.itertuples(), tables["valid"]["history"]):
        last = history[-1]
        others = [u for u, s in train_seqs.items() if u != row.user and last in s[:-1]]
        assert row.user not in list(row.neighbours)
        if others:  # the best neighbours are users whose matched window ends with the same item
            v, t = row.neighbours[0], row.neighbour_positions[0]
            assert train_seqs[v][t] == last and row.similarities[0] == pytest.approx(1.0, abs=1e-5)
            checked += 1
    assert checked > len(stored) // 2


def _copy_run(built, tmp_path: Path, *extra: str):
    """The module's run copied to tmp_path without its index, and a config pointing there."""
    shutil.copytree(built["run_dir"], tmp_path / "runs" / "leaky", ignore=shutil.ignore_patterns("index"))
    overrides = [o for o in built["overrides"] if not o.startswith("runs_dir=")]
    return load_config(None, [*overrides, f"runs_dir={tmp_path / 'runs'}", *extra]), tmp_path / "runs" / "leaky"


def test_killed_index_stage_resumes_without_rebuilding(built, tmp_path, monkeypatch, capsys):
    import mmsrarec.index.stage as stage

    cfg, run_dir = _copy_run(built, tmp_path)
    real_add_table = stage.add_table

    def killed_at_valid(folder, split, frame):
        if split == "valid":
            raise KeyboardInterrupt
        real_add_table(folder, split, frame)

    monkeypatch.setattr(stage, "add_table", killed_at_valid)
    with pytest.raises(KeyboardInterrupt):
        Runner(cfg).run("index")
    built_once = (run_dir / "index.partial" / "index.faiss").stat().st_mtime_ns
    monkeypatch.setattr(stage, "add_table", real_add_table)
    capsys.readouterr()
    manifest = Runner(cfg).run("index")
    assert "index already built" in capsys.readouterr().err
    assert (run_dir / "index" / "index.faiss").stat().st_mtime_ns == built_once
    assert {"neighbours_train.parquet", "neighbours_valid.parquet", "neighbours_test.parquet"} <= set(manifest["outputs"])
    for split in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(load_neighbours(run_dir / "index", split), load_neighbours(built["index"], split))


def test_torch_backend_stage_matches_faiss_flat(built, tmp_path):
    cfg, run_dir = _copy_run(built, tmp_path, "index.backend=torch")
    Runner(cfg).run("index")
    assert (run_dir / "index" / "index.npy").is_file() and not (run_dir / "index" / "index.faiss").exists()
    load_index(run_dir / "index", cfg.index, run_dir / "train-cf" / "sasrec.pt")
    for split in ("train", "valid", "test"):
        ours, flat = load_neighbours(run_dir / "index", split), load_neighbours(built["index"], split)
        # the walks make many windows identical (ties at similarity 1), so compare similarities
        np.testing.assert_allclose(np.array(ours["similarities"].tolist()), np.array(flat["similarities"].tolist()),
                                   atol=1e-5)


def _clustered(n: int, d: int, clusters: int, seed: int, spread: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d))
    return (centers[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_faiss_and_torch_fallback_agree(metric):
    data = normalise(_clustered(1400, 16, 20, seed=1), metric)
    vectors, queries = data[:1200], data[1200:]
    windows = pd.DataFrame({"user": np.repeat(np.arange(120), 10), "position": np.tile(np.arange(10), 120),
                            "next_item": np.arange(1200) + 1})
    exclude = np.arange(200) % 120
    flat = UserIndex(build_index(vectors, "Flat", metric, "faiss"), windows).search(queries, exclude, 5)
    exact = UserIndex(TorchIndex(vectors, metric), windows).search(queries, exclude, 5)
    assert (flat.users == exact.users).mean() > 0.99  # float summation order may swap near-ties
    np.testing.assert_allclose(flat.similarities, exact.similarities, rtol=1e-4, atol=1e-5)
    assert (flat.users != exclude[:, None]).all()


def test_query_user_is_never_a_neighbour_even_when_its_windows_are_nearest():
    rng = np.random.default_rng(0)
    n_users, per_user, d, k = 20, 100, 8, 3
    centers = rng.normal(size=(n_users, d))
    vectors = normalise(np.repeat(centers, per_user, axis=0) + 0.01 * rng.normal(size=(n_users * per_user, d)), "ip")
    users = np.repeat(np.arange(n_users), per_user)
    windows = pd.DataFrame({"user": users, "position": np.tile(np.arange(per_user), n_users), "next_item": 1})
    index = UserIndex(build_index(vectors, "Flat", "ip", "faiss"), windows)
    queries = vectors[::per_user]  # one window of each user: its own 100 windows are its nearest
    found = index.search(queries, np.arange(n_users), k)
    sims = queries @ vectors.T
    for q in range(n_users):
        best_per_user = np.array([sims[q, users == u].max() if u != q else -np.inf for u in range(n_users)])
        assert list(found.users[q]) == list(np.argsort(-best_per_user, kind="stable")[:k])
        np.testing.assert_allclose(found.similarities[q], np.sort(best_per_user)[::-1][:k], rtol=1e-5)


@pytest.mark.parametrize("factory, nprobe", [("HNSW32", 1), ("IVF32,Flat", 8), ("IVF32,PQ16x4fs,RFlat", 8)])
def test_approximate_indexes_reach_high_recall(factory, nprobe):
    data = normalise(_clustered(8300, 32, 64, seed=3), "ip")
    vectors, queries = data[:8000], data[8000:]  # queries from the same clusters, not in the index
    exact = build_index(vectors, "Flat", "ip", "faiss").search(queries, 10)[1]
    approx = build_index(vectors, factory, "ip", "faiss", nprobe=nprobe, ef_search=64, refine_factor=16)
    approx = approx.search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9, recall


def test_mmap_storage_gives_the_in_memory_results_and_still_checks_the_file(built, tmp_path):
    cfg = built["cfg"].index
    queries = normalise(_clustered(50, 16, 5, seed=4), "ip")  # the built index has d = 16 (hidden_size)
    in_memory = load_index(built["index"], cfg, built["model_file"]).vectors.search(queries, 5)
    mapped = load_index(built["index"], dataclasses.replace(cfg, storage="mmap"), built["model_file"])
    np.testing.assert_array_equal(mapped.vectors.search(queries, 5)[1], in_memory[1])
    folder = tmp_path / "bad"
    shutil.copytree(built["index"], folder)
    data = bytearray((folder / "index.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="index.faiss is corrupted"):
        load_index(folder, dataclasses.replace(cfg, storage="mmap"), built["model_file"])


@pytest.mark.parametrize("factory", ["IVF16,PQ8", "HNSW32", "IVF16,Flat"])
def test_large_index_path_chunked_add_sampled_training_mmap(factory, tmp_path, monkeypatch):
    """Adding in chunks gives the index one add would (IVF) or an equally good one (HNSW); training on a
    sample works; a file written by save() and memory-mapped answers as the index in memory."""
    from mmsrarec.index import backends

    data = normalise(_clustered(3100, 16, 20, seed=5), "ip")
    vectors, queries = data[:3000], data[3000:]
    whole = build_index(vectors, factory, "ip", "faiss", nprobe=4, train_size=1000)
    monkeypatch.setattr(backends, "ADD_CHUNK", 700)
    chunked = build_index(vectors, factory, "ip", "faiss", nprobe=4, train_size=1000)
    assert chunked.ntotal == 3000
    if factory.startswith("IVF"):
        np.testing.assert_array_equal(chunked.search(queries, 10)[1], whole.search(queries, 10)[1])
    chunked.save(tmp_path / "index.faiss")
    mapped = backends.open_index_file(tmp_path / "index.faiss", "faiss", "ip", nprobe=4)
    np.testing.assert_array_equal(mapped.search(queries, 10)[1], chunked.search(queries, 10)[1])
    assert not list(tmp_path.glob(".*.tmp"))


def test_training_windows_are_the_last_n_items_and_the_next_one():
    train = pd.DataFrame({"user": [7, 8, 9], "items": [[1, 2, 3, 4], [5], [6, 7]]})
    w = training_windows(train, n=2)
    assert w.users.tolist() == [7, 7, 7, 9]
    assert w.positions.tolist() == [0, 1, 2, 0] and w.next_items.tolist() == [2, 3, 4, 7]
    assert [h.tolist() for h in w.histories()] == [[1], [1, 2], [2, 3], [6]]


def test_context_keywords_dedupe_rank_by_similarity_mass_and_cap():
    keywords = {1: ["a", "b"], 2: ["B", "c"], 3: ["c", "a", "a"], 4: ["d"]}
    items, sims = [1, 2, 3, 0], [0.9, 0.5, 0.4, float("nan")]  # 0 / nan: a missing neighbour
    # b: 0.9 + 0.5 = 1.4; a: 0.9 + 0.4 = 1.3 (counted once for item 3); c: 0.5 + 0.4 = 0.9
    assert context_keywords(items, sims, keywords, cap=10) == ["b", "a", "c"]
    assert context_string(items, sims, keywords, cap=2) == "b, a"
    assert context_keywords([4, 1], [0.2, 0.1], keywords, cap=10) == ["d", "a", "b"]  # ties: first seen
    assert context_keywords([], [], keywords, cap=5) == []


def test_index_config_is_checked():
    with pytest.raises(ConfigError, match="index.cf_model.*no user vectors"):
        load_config(None, ["index.cf_model=pop"])
    only_gru = load_config(None, ["cf.models=[gru4rec]", "evaluate.methods=[gru4rec]"])
    Runner(only_gru).plan("train-cf")  # a plan without the index does not care about index.cf_model
    with pytest.raises(ConfigError, match="index.cf_model.*cf.models does not train"):
        Runner(only_gru).plan("index")  # checked when the plan is made, before any stage runs
    assert load_config(None, ["cf.models=[gru4rec]", "evaluate.methods=[gru4rec]",
                              "index.cf_model=gru4rec"]).index.cf_model == "gru4rec"
    with pytest.raises(ConfigError, match="index.k' must be >= 1"):
        load_config(None, ["index.k=0"])
    with pytest.raises(ConfigError, match="index.metric"):
        load_config(None, ["index.metric=cosine"])


def test_context_signal_readers_score_what_the_neighbours_chose():
    signal = load_script("experiments/context_signal.py")
    words = {1: ["space", "war"], 2: ["romance"], 3: ["war", "drama"], 4: ["space"], 5: ["comedy"]}
    candidates = np.array([[1, 2, 5], [2, 1, 5]])
    next_items = np.array([[1, 4, 0], [3, 3, 0]])  # 0 / nan: fewer neighbours than k
    sims = np.array([[0.9, 0.5, np.nan], [0.8, 0.4, np.nan]], np.float32)
    scores = signal.reader_scores(candidates, next_items, sims, words, cap=20)
    np.testing.assert_allclose(scores["items"], [[0.9, 0, 0], [0, 0, 0]], rtol=1e-6)
    # case 0's context: space, war; case 1's: war, drama
    np.testing.assert_array_equal(scores["words"], [[2, 0, 0], [0, 1, 0]])
    assert signal.reader_scores(candidates, next_items, sims, words, cap=1)["words"][0].tolist() == [1, 0, 0]
    # the most voted next items as a list: case 0 votes 1 (0.9) over 4 (0.5); case 1 only 3 (0.8 + 0.4)
    many = signal.reader_scores(np.array([[4, 1, 3]]), np.array([[1, 4, 4, 3]]), np.array([[0.9, 0.5, 0.5, 0.2]]),
                                words, cap=20, lists=(1, 3))
    assert many["list1"].tolist() == [[1, 0, 0]]  # 4 (0.5 + 0.5) is the most voted
    assert many["list3"].tolist() == [[3, 2, 1]]
    np.testing.assert_allclose(many["items"], [[1.0, 0.9, 0.2]], rtol=1e-6)
    assert many["votes"].tolist() == [[2, 1, 1]]  # the count rank.candidate_votes shows
    history = signal.history_scores(candidates, [[4, 5], [9]], words, history_len=1)  # only item 5 for case 0
    np.testing.assert_array_equal(history, [[0, 0, 1], [0, 0, 0]])


def test_context_signal_never_finds_a_valid_or_test_item_in_the_context(built, tmp_path):
    """On the leaky dataset every valid / test item is one nobody else touches: the neighbours' next
    items (training windows only) can never be it, at any k, and the readers rank it no higher than chance."""
    signal = load_script("experiments/context_signal.py")
    out = tmp_path / "signal"
    signal.main([*sum((["--set", o] for o in [*built["overrides"], "rank.use_keywords=false"]), []),
                 "--k", "3", "10", "--lists", "5", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {(r["split"], r["k"], r["reader"]) for r in rows} == {
        (s, k, reader) for s in ("valid", "test")
        for k, reader in [(0, "history"), *((k, r) for k in (3, 10) for r in ("items", "votes", "words", "list5"))]}
    for row in rows:
        assert row["cases"] == N_USERS and row["candidates"] == 6
        assert row["target_in_context"] in (None, 0.0)
        assert row["gauc"] <= 0.5, row
    assert "| leaky |" not in out.with_suffix(".md").read_text()  # one run: the variant is main
    assert "| main | test | words | 10 | 1 |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="no finished index stage.*--stop-before train-ranker"):
        signal.main([*sum((["--set", o] for o in [*built["overrides"], "name=never-run"]), []), "--out", str(out)])


def test_the_notes_cf_models_run_on_the_cpu_whatever_cf_train_device_says(built):
    """What CF models put into prompts (votes, ranks) is computed on the CPU, so it is the same on every
    machine: a run whose cf.train.device names a GPU this machine lacks still builds its notes here."""
    import torch

    from mmsrarec.errors import ConfigError
    from mmsrarec.rank.stage import NoteMaker

    on_gpu = load_config(None, [*built["overrides"], "cf.train.device=cuda", "rank.candidate_votes=5",
                                "rank.candidate_cf_rank=sasrec"])
    n_items = len(_prepared(built["run_dir"])["items"])
    if not torch.cuda.is_available():
        from mmsrarec.cf.stage import load_trained
        with pytest.raises(ConfigError, match="no CUDA GPU"):  # the CF model's own device, for its own rows
            load_trained(built["run_dir"] / "train-cf", "sasrec", on_gpu, n_items)
    maker = NoteMaker.load(on_gpu, built["index"], built["run_dir"] / "train-cf", n_items,
                           _prepared(built["run_dir"])["train"])
    assert maker.retriever.model.device.type == maker.cf_model.device.type == "cpu"
    maker.notes(_prepared(built["run_dir"])["test"]["history"][:3], [0, 1, 2])  # and they run there
