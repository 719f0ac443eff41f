"""prepare: sources, splits, negatives, determinism and bad inputs."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmsrarec.config import load_config
from mmsrarec.errors import DataError
from mmsrarec.stages import Runner

from conftest import write_atomic


def prepare(overrides, *extra):
    cfg = load_config(None, [*overrides, *extra])
    runner = Runner(cfg)
    runner.run("prepare")
    return runner.run_dir / "prepare"


def tables(folder: Path) -> dict[str, pd.DataFrame]:
    return {n: pd.read_parquet(folder / f"{n}.parquet") for n in ("items", "interactions", "train", "valid", "test")}


def test_loo_split_holds_out_last_two(toy_overrides):
    t = tables(prepare(toy_overrides))
    seqs = t["interactions"].groupby("user")["item"].apply(list)
    for _, row in t["test"].iterrows():
        seq = seqs[row.user]
        assert row.target == seq[-1] and list(row.history) == seq[:-1]
    train = {r.user: list(r["items"]) for _, r in t["train"].iterrows()}
    valid = {r.user: r.target for _, r in t["valid"].iterrows()}
    for _, row in t["test"].iterrows():
        assert row.target not in train[row.user] and row.target != valid[row.user]
        assert valid[row.user] not in train[row.user]


def test_negatives_are_unseen_distinct_and_deterministic(toy_overrides, tmp_path):
    first = prepare(toy_overrides)
    t = tables(first)
    seen = t["interactions"].groupby("user")["item"].apply(set)
    for split in ("valid", "test"):
        for _, row in t[split].iterrows():
            negs = list(row.negatives)
            assert len(negs) == len(set(negs)) == 5
            assert not (set(negs) & seen[row.user])
    again = prepare([*toy_overrides, "name=toy2"])
    for name in ("items", "interactions", "train", "valid", "test"):
        assert (first / f"{name}.parquet").read_bytes() == (again / f"{name}.parquet").read_bytes(), name
    other_seed = tables(prepare([*toy_overrides, "name=toy3", "seed=7"]))
    assert [list(n) for n in other_seed["test"]["negatives"]] != [list(n) for n in t["test"]["negatives"]]


def test_popularity_negatives(toy_overrides):
    t = tables(prepare(toy_overrides, "data.negative_sampling=popularity"))
    train_items = set(np.concatenate(t["train"]["items"].to_numpy()))
    assert set(np.concatenate(t["test"]["negatives"].to_numpy())) <= train_items


def test_user_split_keeps_held_out_users_out_of_training(toy_overrides):
    t = tables(prepare(toy_overrides, "data.split=users"))
    train_users, valid_users, test_users = set(t["train"].user), set(t["valid"].user), set(t["test"].user)
    assert not (train_users & test_users) and not (train_users & valid_users) and not (valid_users & test_users)
    assert len(train_users) == 24 and len(valid_users) == 3 and len(test_users) == 3


def test_kcore_reaches_a_fixed_point(tmp_path, toy_overrides):
    folder = tmp_path / "kc"
    folder.mkdir()
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    # users a,b,c share items x,y,z; user d only has item w (once) and x: with k=2, d and w go, then nothing else
    for u in "abc":
        rows += [f"{u}\tx\t1", f"{u}\ty\t2", f"{u}\tz\t3"]
    rows += ["d\tw\t1", "d\tx\t2"]
    (folder / "kc.inter").write_text("\n".join(rows) + "\n")
    out = prepare([f"runs_dir={tmp_path / 'r'}", "name=kc", "data.source=atomic", f"data.path={folder}",
                   "data.name=kc", "data.user_k=3", "data.item_k=2", "data.num_negatives=0"])
    inter = pd.read_parquet(out / "interactions.parquet")
    assert inter["user"].nunique() == 3 and len(inter) == 9


def test_chronological_order_with_stable_tie_break(tmp_path):
    folder = tmp_path / "ties"
    folder.mkdir()
    (folder / "ties.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                       "u\tc\t5\nu\ta\t1\nu\tb\t5\nu\td\t9\nu\te\t9\n")
    out = prepare([f"runs_dir={tmp_path / 'r'}", "name=t", "data.source=atomic", f"data.path={folder}",
                   "data.name=ties", "data.num_negatives=0"])
    items = pd.read_parquet(out / "items.parquet").set_index("item")["item_id"]
    inter = pd.read_parquet(out / "interactions.parquet")
    assert [items[i] for i in inter["item"]] == ["a", "c", "b", "d", "e"]


@pytest.mark.parametrize("content,needle", [
    (b"user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\nu1\ti2\n", "line 3: expected 3"),
    (b"user_id:token\titem_id:token\nu1\ti1\n", "missing column(s) ['timestamp']"),
    (b"user_id:token\titem_id:token\ttimestamp:float\nu1\ti\xff1\t1\n", "line 2: not valid UTF-8"),
    (b"user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\tyesterday\n", "line 2: timestamp 'yesterday'"),
    (b"user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\tnan\n", "line 2: timestamp 'nan' is not finite"),
    (b"user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t-inf\n", "line 2: timestamp '-inf' is not finite"),
])
def test_bad_inter_lines_name_file_and_line(tmp_path, content, needle):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.inter").write_bytes(content)
    cfg = [f"runs_dir={tmp_path / 'r'}", "name=b", "data.source=atomic", f"data.path={folder}", "data.name=bad"]
    with pytest.raises(DataError) as err:
        prepare(cfg)
    assert "bad.inter" in str(err.value) and needle in str(err.value)


def test_skip_policy_counts_bad_lines(tmp_path):
    folder = write_atomic(tmp_path / "d", name="d")
    with open(folder / "d.inter", "ab") as fh:
        fh.write(b"broken line\nu1\tnope\t1\n")  # malformed, then an unknown item
    base = [f"runs_dir={tmp_path / 'r'}", "name=s", "data.source=atomic", f"data.path={folder}", "data.name=d",
            "data.num_negatives=3"]
    with pytest.raises(DataError, match="unknown|lacks|expected 3"):
        prepare(base)
    out = prepare(base, "data.on_bad_record=skip")
    import json
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped["expected 3 tab-separated fields, found 1"]["count"] == 1
    assert skipped["interaction with an unknown item"]["count"] == 1


def test_non_finite_timestamps_never_become_targets(tmp_path):
    """NaN and inf sort last: read as times, they would be user u0's valid and test targets."""
    folder = write_atomic(tmp_path / "d", name="d")
    with open(folder / "d.inter", "a") as fh:
        fh.write("u0\ti0\tnan\nu0\ti1\tinf\n")
    base = [f"runs_dir={tmp_path / 'r'}", "name=s", "data.source=atomic", f"data.path={folder}", "data.name=d",
            "data.num_negatives=3"]
    with pytest.raises(DataError, match=r"d\.inter, line 362: timestamp 'nan' is not finite"):
        prepare(base)
    out = prepare(base, "data.on_bad_record=skip")
    import json
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped["timestamp 'nan' is not finite"]["count"] == skipped["timestamp 'inf' is not finite"]["count"] == 1
    t = tables(out)
    items = pd.read_parquet(out / "items.parquet").set_index("item")["item_id"]
    users = pd.read_parquet(out / "users.parquet").set_index("user_id")["user"]
    for split in ("valid", "test"):
        row = t[split].set_index("user").loc[users["u0"]]
        assert items[row.target] not in ("i0", "i1")
    assert np.isfinite(t["interactions"]["timestamp"]).all()


def test_empty_after_filtering(toy_overrides):
    with pytest.raises(DataError, match="no interactions left after filtering"):
        prepare(toy_overrides, "data.user_k=1000")


def test_text_fields_config(toy_overrides):
    items = pd.read_parquet(prepare(toy_overrides, "data.text_fields=[genre]") / "items.parquet")
    assert items["text"].str.startswith("genre: genre").all() and items["title"].str.startswith("Item number").all()


def test_grouplens_raw_layout(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t4\t{100 * u + i}\n" for u in range(1, 6) for i in range(u, u + 6)))
    genre_flags = "|".join(["0"] * 19)
    lines = [f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{genre_flags}" for i in range(1, 11)]
    lines[0] = "1|Misérables, Les (1995)|01-Jan-1995||http://x|0|0|0|1|" + "|".join(["0"] * 15)
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    out = prepare([f"runs_dir={tmp_path / 'r'}", "name=ml", f"data.path={folder}", "data.num_negatives=1"])
    items = pd.read_parquet(out / "items.parquet")
    assert items.loc[0, "title"] == "Misérables, Les" and "Animation" in items.loc[0, "text"]
    assert len(pd.read_parquet(out / "interactions.parquet")) == 30


def test_embedded_movielens_statistics(tmp_path):
    out = prepare([f"runs_dir={tmp_path}", "name=ml"])
    import json
    stats = json.loads((out / "stats.json").read_text())
    assert stats["raw"] == {"users": 943, "items": 1682, "interactions": 100000}
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100000)
    assert stats["valid_cases"] == stats["test_cases"] == 943
