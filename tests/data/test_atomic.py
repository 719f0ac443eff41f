"""atomic.py and movielens.py on hostile input: image paths that lead out of the dataset folder, and
timestamps that are not finite numbers (issue #28)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmsrarec.data import get_source
from mmsrarec.data.atomic import IMAGE_OUTSIDE
from mmsrarec.data.config import DataConfig
from mmsrarec.data.types import RawData, Skips
from mmsrarec.errors import DataError

from conftest import with_item_images, write_atomic

N_ITEMS = 10


def dataset(tmp_path: Path) -> Path:
    """tmp_path/ds, a toy atomic dataset whose even items have pics/<i>.png, and tmp_path/outside/secret.png,
    a real image outside it."""
    folder = with_item_images(write_atomic(tmp_path / "ds", n_users=5, n_items=N_ITEMS, length=4), "toy", N_ITEMS,
                              size=lambda i: (8, 8), color=lambda i: (i, 0, 0))
    (tmp_path / "outside").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "outside" / "secret.png")
    return folder


def set_image(folder: Path, item: int, image: str) -> int:
    """Give item i<item> this image value in toy.item; returns its line number."""
    path = folder / "toy.item"
    rows = path.read_text().splitlines()
    line = item + 2  # the header is line 1
    rows[line - 1] = f"i{item}\tItem {item}\t{image}"
    path.write_text("\n".join(rows) + "\n")
    return line


def load(folder: Path, skips: Skips) -> RawData:
    return get_source("atomic")(DataConfig(source="atomic", path=str(folder), name="toy"), skips)


def escape(tmp_path: Path, folder: Path, how: str) -> str:
    """An image value that leads to tmp_path/outside/secret.png."""
    secret = tmp_path / "outside" / "secret.png"
    if how == "dotdot":
        return "../outside/secret.png"
    if how == "absolute":
        return str(secret)
    if how == "file link":
        (folder / "pics" / "link.png").symlink_to(secret)
        return "pics/link.png"
    (folder / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)  # a folder link
    return "linked/secret.png"


@pytest.mark.parametrize("how", ["dotdot", "absolute", "file link", "folder link"])
def test_image_path_outside_the_dataset_is_a_bad_record(tmp_path: Path, how: str) -> None:
    folder = dataset(tmp_path)
    image = escape(tmp_path, folder, how)
    line = set_image(folder, 2, image)
    item_file = re.escape(str(folder / "toy.item"))
    with pytest.raises(DataError, match=rf"^{item_file}, line {line}, record i2: {IMAGE_OUTSIDE} "
                                        rf"\({re.escape(repr(image))}, symlinks followed, is not inside ") as err:
        load(folder, Skips("error"))
    assert "data.on_bad_record=skip" in str(err.value)

    skips = Skips("skip")
    items = load(folder, skips).items.set_index("item_id")
    assert skips.counts == {IMAGE_OUTSIDE: 1}
    assert skips.examples[IMAGE_OUTSIDE] == [f"{folder / 'toy.item'}, line {line}, record i2"]
    assert items.loc["i2", "image"] == "" and items.loc["i2", "title"] == "Item 2"  # the item stays
    assert items.loc["i4", "image"] == str((folder / "pics" / "4.png").resolve())
    root = folder.resolve()
    assert all(Path(p).is_relative_to(root) for p in items["image"] if p)


def test_symlinks_inside_the_dataset_are_followed(tmp_path: Path) -> None:
    folder = dataset(tmp_path)
    (folder / "pics" / "alias.png").symlink_to("4.png")  # relative link to another file of the dataset
    set_image(folder, 2, "pics/alias.png")
    set_image(folder, 6, str(folder / "pics" / "6.png"))  # absolute, but inside
    (tmp_path / "ds-link").symlink_to(folder, target_is_directory=True)  # data.path itself a link
    for path in (folder, tmp_path / "ds-link"):
        skips = Skips("error")
        items = load(path, skips).items.set_index("item_id")
        assert items.loc["i2", "image"] == str((folder / "pics" / "4.png").resolve())
        assert items.loc["i6", "image"] == str((folder / "pics" / "6.png").resolve())
        assert not skips.counts


def test_prepare_keeps_the_item_and_reports_the_skip(tmp_path: Path) -> None:
    """Through the prepare stage: items.parquet holds no outside path, skipped.json counts it."""
    import json

    from mmsrarec.config import load_config
    from mmsrarec.stages import Runner

    folder = dataset(tmp_path)
    set_image(folder, 2, "../outside/secret.png")
    runner = Runner(load_config(None, [f"runs_dir={tmp_path / 'runs'}", "name=t", "data.source=atomic",
                                       f"data.path={folder}", "data.name=toy", "data.num_negatives=2",
                                       "data.on_bad_record=skip"]))
    runner.run("prepare")
    out = runner.run_dir / "prepare"
    items = pd.read_parquet(out / "items.parquet").set_index("item_id")
    assert "secret" not in " ".join(items["image"])
    assert items.loc["i2", "image"] == "" and items.loc["i4", "image"] != ""
    assert json.loads((out / "skipped.json").read_text())[IMAGE_OUTSIDE]["count"] == 1


# ----------------------------------------------------------------------------- timestamps

INTER = ["user_id:token\titem_id:token\ttimestamp:float", "u1\ti1\t1", "u1\ti2\t2", "u2\ti1\t3", "u2\ti2\t4"]


@pytest.mark.parametrize("stamp", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400"])
def test_non_finite_timestamp_is_a_bad_record(tmp_path: Path, stamp: str) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = INTER[:2] + [f"u1\ti3\t{stamp}"] + INTER[2:]
    (folder / "toy.inter").write_text("\n".join(rows) + "\n")
    inter_file = re.escape(str(folder / "toy.inter"))
    with pytest.raises(DataError, match=rf"^{inter_file}, line 3: timestamp '{stamp}' is not finite"):
        load(folder, Skips("error"))
    skips = Skips("skip")
    raw = load(folder, skips)
    assert skips.counts == {f"timestamp {stamp!r} is not finite": 1}
    assert np.isfinite(raw.interactions["timestamp"]).all() and "i3" not in set(raw.interactions["item_id"])


def test_grouplens_non_finite_timestamp(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t4\t100\n1\t2\t4\tnan\n2\t1\t3\t-inf\n2\t2\t3\t101\n")
    flags = "|".join(["0"] * 19)
    (folder / "u.item").write_text("".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{flags}\n" for i in (1, 2)))
    cfg = DataConfig(source="movielens100k", path=str(folder))
    data_file = re.escape(str(folder / "u.data"))
    with pytest.raises(DataError, match=rf"^{data_file}, line 2: timestamp 'nan' is not finite"):
        get_source("movielens100k")(cfg, Skips("error"))
    skips = Skips("skip")
    raw = get_source("movielens100k")(cfg, skips)
    assert skips.counts == {"timestamp 'nan' is not finite": 1, "timestamp '-inf' is not finite": 1}
    assert list(raw.interactions["timestamp"]) == [100.0, 101.0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), None])
def test_raw_data_refuses_non_finite_timestamps_from_any_source(bad: float | None) -> None:
    """The backstop for a source that forgets to check."""
    interactions = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"],
                                 "timestamp": pd.Series([1.0, bad, 2.0], dtype="float64")})
    items = pd.DataFrame({"item_id": ["a", "b"], "title": "", "text": "", "image": ""})
    with pytest.raises(DataError, match=r"^/some/source: 1 interaction\(s\) have a timestamp that is not a finite "
                                        r"number, e.g. user 'u1', item 'b'"):
        RawData(interactions=interactions, items=items, origin="/some/source")
    interactions.loc[1, "timestamp"] = 1.5
    RawData(interactions=interactions, items=items, origin="/some/source")
