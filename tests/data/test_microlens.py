"""microlens.py on small files in the real format, good and bad."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from mmsrarec.data import get_source
from mmsrarec.data.config import DataConfig, ImagesConfig
from mmsrarec.data.images import validate_items_images
from mmsrarec.data.microlens import COVER_OUTSIDE, load
from mmsrarec.data.types import Skips
from mmsrarec.errors import DataError

PAIRS = ["user,item,timestamp", "1,10,1583314842000", "2,11,1583314843000", "1,12,1583314844000",
         "2,10,1583314845000"]
TITLES = ["item,title", '10,"Cats, dogs and a parrot # pets # funny"', "11,Cooking noodles # food",
          '12,"multi-line\ntitle"', "13,never watched"]


def write_dataset(folder: Path, pairs: list[str] | bytes = PAIRS, titles: list[str] | bytes = TITLES,
                  covers: str | None = "covers") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (("MicroLens-50k_pairs.csv", pairs), ("MicroLens-50k_titles.csv", titles)):
        data = content if isinstance(content, bytes) else ("\n".join(content) + "\n").encode("utf-8")
        (folder / name).write_bytes(data)
    if covers:
        (folder / covers).mkdir()
        Image.new("RGB", (32, 24), (1, 2, 3)).save(folder / covers / "10.jpg")
        (folder / covers / "11.jpg").write_bytes(b"<html>not a jpeg</html>")
        # no cover for item 12
    return folder


def config(folder: Path, **kw: object) -> DataConfig:
    images = ImagesConfig(workers=2)
    return DataConfig(source="microlens", path=str(folder), images=images, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("covers", ["covers", "MicroLens-50k_covers"])
def test_reads_pairs_titles_and_covers(tmp_path: Path, covers: str) -> None:
    folder = write_dataset(tmp_path, covers=covers)
    skips = Skips("error")
    raw = get_source("microlens")(config(folder), skips)
    inter = raw.interactions
    assert list(inter["user_id"]) == ["1", "2", "1", "2"]
    assert list(inter["item_id"]) == ["10", "11", "12", "10"]
    assert list(inter["timestamp"]) == [1583314842000.0, 1583314843000.0, 1583314844000.0, 1583314845000.0]
    items = raw.items.set_index("item_id")
    assert list(items.index) == ["10", "11", "12"]  # 13 is never watched
    assert items.loc["10", "title"] == "Cats, dogs and a parrot # pets # funny"
    assert items.loc["10", "text"] == "title: Cats, dogs and a parrot # pets # funny"
    assert items.loc["12", "title"] == "multi-line title"
    assert items.loc["10", "image"] == str((folder / covers / "10.jpg").resolve())
    assert items.loc["12", "image"] == ""
    assert skips.counts == {"item without interactions": 1, "image missing": 1}
    assert skips.examples["image missing"][0].startswith("item 12: ")
    # the corrupt cover of item 11 exists; the prepare stage's image check blanks and counts it
    checked = validate_items_images(raw.items, ImagesConfig(workers=2), skips).set_index("item_id")
    assert checked.loc["11", "image"] == "" and checked.loc["10", "image"] == items.loc["10", "image"]
    assert skips.counts["image corrupt"] == 1


def test_no_header_no_covers_and_unquoted_commas(tmp_path: Path) -> None:
    titles = ["10,Cats, dogs", "11,Noodles", "12,Third"]
    folder = write_dataset(tmp_path, pairs=PAIRS[1:], titles=titles, covers=None)
    skips = Skips()
    raw = load(config(folder, max_text_chars=12), skips)
    assert len(raw.interactions) == 4
    assert raw.items.loc[0, "title"] == "Cats, dogs" and raw.items.loc[0, "text"] == "title: Cats,"
    assert set(raw.items["image"]) == {""}
    assert skips.counts == {"image missing": 3}


@pytest.mark.parametrize("which, bad, message, reason", [
    ("pairs", "3,10", r"wrong number of fields \(expected 3 \(user,item,timestamp\), found 2\)",
     "wrong number of fields"),
    ("pairs", "3,10,yesterday", r"timestamp is not a number \('yesterday'\)", "timestamp is not a number"),
    ("pairs", "3,,1583314849000", "empty user or item", "empty user or item"),
    ("pairs", "3,10,nan", r"timestamp is not finite \('nan'\)", "timestamp is not finite"),
    ("pairs", "3,10,inf", r"timestamp is not finite \('inf'\)", "timestamp is not finite"),
    ("pairs", "3,10,-Infinity", r"timestamp is not finite \('-Infinity'\)", "timestamp is not finite"),
    ("titles", "14", r"wrong number of fields \(expected 2 \(item,title\), found 1\)", "wrong number of fields"),
    ("titles", "10,again", r"duplicate item \('10' appeared on an earlier line\)", "duplicate item"),
])
def test_bad_lines_name_file_and_line(tmp_path: Path, which: str, bad: str, message: str, reason: str) -> None:
    rows = {"pairs": list(PAIRS), "titles": list(TITLES)}
    rows[which].insert(2, bad)
    folder = write_dataset(tmp_path, pairs=rows["pairs"], titles=rows["titles"])
    path = folder / f"MicroLens-50k_{which}.csv"
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}, line 3: {message}"):
        load(config(folder), Skips("error"))
    skips = Skips("skip")
    raw = load(config(folder), skips)
    assert len(raw.interactions) == 4
    assert skips.counts[reason] == 1 and skips.examples[reason] == [f"{path}, line 3"]


def test_cover_symlinks_are_followed_only_inside_the_covers_folder(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "ml")
    secret = tmp_path / "secret.jpg"  # outside the dataset
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    (folder / "covers" / "12.jpg").symlink_to(secret)
    (folder / "covers" / "11.jpg").unlink()
    (folder / "covers" / "11.jpg").symlink_to("10.jpg")  # to another cover: fine
    skips = Skips("error")  # counted whatever the policy, like a missing cover
    items = load(config(folder), skips).items.set_index("item_id")
    cover10 = str((folder / "covers" / "10.jpg").resolve())
    assert items.loc["12", "image"] == "" and items.loc["11", "image"] == items.loc["10", "image"] == cover10
    assert skips.counts == {"item without interactions": 1, COVER_OUTSIDE: 1}
    assert skips.examples[COVER_OUTSIDE] == [f"item 12: {(folder / 'covers').resolve() / '12.jpg'} -> {secret}"]


def test_non_utf8_title(tmp_path: Path) -> None:
    titles = ("\n".join(TITLES[:2]) + "\n11,caf\xe9 latte # food\n" + "\n".join(TITLES[3:]) + "\n").encode("latin-1")
    folder = write_dataset(tmp_path, titles=titles)
    path = folder / "MicroLens-50k_titles.csv"
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}, line 3: not valid UTF-8"):
        load(config(folder), Skips("error"))
    skips = Skips("skip")
    raw = load(config(folder), skips)
    assert skips.counts["not valid UTF-8"] == 1
    assert skips.counts["interaction with an unknown item"] == 1  # item 11 lost its title line
    assert "11" not in set(raw.interactions["item_id"])


def test_unknown_item(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path, pairs=PAIRS + ["3,99,1583314849000"])
    where = re.escape(str(folder / "MicroLens-50k_pairs.csv"))
    with pytest.raises(DataError, match=rf"^{where}, line 6: item '99' is not in MicroLens-50k_titles\.csv"):
        load(config(folder), Skips("error"))
    skips = Skips("skip")
    assert len(load(config(folder), skips).interactions) == 4
    assert skips.counts["interaction with an unknown item"] == 1


def test_configuration_errors(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path)
    with pytest.raises(DataError, match=r"text_fields names \['genre'\]"):
        load(config(folder, text_fields=["genre"]), Skips())
    with pytest.raises(DataError, match=r"MicroLens-50k_pairs\.csv is missing"):
        load(config(tmp_path / "elsewhere"), Skips())
