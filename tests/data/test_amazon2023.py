"""amazon2023.py on small files in the real format (plain and gzip), good and bad."""

from __future__ import annotations

import re
import gzip
import io
import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from mmsrarec.data import get_source
from mmsrarec.data.amazon2023 import load
from mmsrarec.data.config import DataConfig, ImagesConfig
from mmsrarec.data.download import CACHE_OUTSIDE, cache_path
from mmsrarec.data.types import Skips
from mmsrarec.errors import DataError

CAT = "Baby_Products"


def review(user: str, asin: str, ts: int, **extra: object) -> dict:
    return {"rating": 5.0, "title": "ok", "text": "fine", "images": [], "asin": asin + "V", "parent_asin": asin,
            "user_id": user, "timestamp": ts, "helpful_vote": 0, "verified_purchase": True, **extra}


def meta(asin: str, title: str, url: str | None = None, **extra: object) -> dict:
    images = [{"thumb": f"{url}.thumb", "large": f"{url}.large", "variant": "MAIN", "hi_res": url}] if url else []
    return {"main_category": "Baby", "title": title, "average_rating": 4.5, "rating_number": 10,
            "features": ["Soft cotton", "Machine\nwashable"], "description": ["A blanket."], "price": 9.99,
            "images": images, "videos": [], "store": "Acme", "categories": ["Baby Products", "Nursery"],
            "details": {"Color": "Blue"}, "parent_asin": asin, "bought_together": None, **extra}


REVIEWS = [review("u1", "B1", 1_600_000_000_000), review("u2", "B2", 1_600_000_001_000),
           review("u1", "B2", 1_600_000_002_500), review("u2", "B1", 1_500_000_000_000)]
METAS = [meta("B1", "Blue Blanket", "http://img.invalid/b1.jpg"), meta("B2", "Bottle"), meta("B3", "Never reviewed")]


def lines(records: list[dict]) -> list[bytes]:
    return [json.dumps(r).encode("utf-8") for r in records]


def write(folder: Path, name: str, raw_lines: list[bytes], gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name + (".jsonl.gz" if gz else ".jsonl"))
    data = b"\n".join(raw_lines) + b"\n"
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def dataset(folder: Path, reviews: list[bytes] | None = None, metas: list[bytes] | None = None,
            gz: bool = False) -> tuple[Path, Path]:
    return (write(folder, CAT, lines(REVIEWS) if reviews is None else reviews, gz),
            write(folder, f"meta_{CAT}", lines(METAS) if metas is None else metas, gz))


def config(folder: Path, **kw: object) -> DataConfig:
    images = kw.pop("images", ImagesConfig(download=False))
    return DataConfig(source="amazon2023", path=str(folder), name=CAT, images=images, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("gz", [False, True])
def test_reads_reviews_and_metadata(tmp_path: Path, gz: bool) -> None:
    dataset(tmp_path, gz=gz)
    skips = Skips("error")
    raw = get_source("amazon2023")(config(tmp_path), skips)
    inter = raw.interactions
    assert list(inter["user_id"]) == ["u1", "u2", "u1", "u2"]  # file order
    assert list(inter["item_id"]) == ["B1", "B2", "B2", "B1"]
    assert list(inter["timestamp"]) == [1_600_000_000.0, 1_600_000_001.0, 1_600_000_002.5, 1_500_000_000.0]
    items = raw.items.set_index("item_id")
    assert list(items.index) == ["B1", "B2"]  # B3 has no review
    assert items.loc["B1", "title"] == "Blue Blanket"
    assert items.loc["B1", "text"] == ("title: Blue Blanket; features: Soft cotton | Machine washable; "
                                       "description: A blanket.; categories: Baby Products | Nursery")
    assert items.loc["B1", "image_url"] == "http://img.invalid/b1.jpg" and items.loc["B2", "image_url"] == ""
    assert set(items["image"]) == {""}  # download off and nothing cached
    assert skips.counts == {"item without interactions": 1, "item without image url": 1,
                            "image not in cache (images.download=false)": 1}


def test_text_fields_and_cut(tmp_path: Path) -> None:
    dataset(tmp_path)
    raw = load(config(tmp_path, text_fields=["title", "details", "store"], max_text_chars=40), Skips("skip"))
    assert raw.items.loc[0, "text"] == "title: Blue Blanket; details: Color: Blue"[:40]
    with pytest.raises(DataError, match=r"meta_Baby_Products\.jsonl.*data\.text_fields names \['colour'\]"):
        load(config(tmp_path, text_fields=["title", "colour"]), Skips("skip"))


def test_category_is_found_when_name_is_empty(tmp_path: Path) -> None:
    dataset(tmp_path, gz=True)
    cfg = config(tmp_path)
    cfg.name = ""
    assert len(load(cfg, Skips()).interactions) == 4


def test_cached_images_are_used_offline(tmp_path: Path) -> None:
    dataset(tmp_path)
    cache = tmp_path / "_images"  # the default cache folder, next to the raw files
    cache.mkdir()
    target = cache_path(cache, "http://img.invalid/b1.jpg")
    Image.new("RGB", (8, 8)).save(target, "JPEG")
    raw = load(config(tmp_path), Skips())
    assert raw.items.loc[0, "image"] == str(target.resolve())


def test_cache_symlink_out_of_the_cache_is_not_used(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    dataset(folder)
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret, "JPEG")
    (folder / "_images").mkdir()
    link = cache_path(folder / "_images", "http://img.invalid/b1.jpg")
    link.symlink_to(secret)
    skips = Skips("error")  # counted whatever the policy, like an image not in the cache
    raw = load(config(folder), skips)
    assert raw.items.set_index("item_id").loc["B1", "image"] == ""
    assert skips.counts == {"item without interactions": 1, "item without image url": 1, CACHE_OUTSIDE: 1}
    assert skips.examples[CACHE_OUTSIDE] == [f"item B1: {link} -> {secret}"]
    # a link to another file of the cache is used
    link.unlink()
    Image.new("RGB", (8, 8)).save(folder / "_images" / "real.jpg", "JPEG")
    link.symlink_to("real.jpg")
    raw = load(config(folder), Skips())
    assert raw.items.set_index("item_id").loc["B1", "image"] == str((folder / "_images" / "real.jpg").resolve())


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    root.mkdir()
    Image.new("RGB", (20, 10), (9, 99, 199)).save(root / "b1.jpg")
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_downloads_images_into_the_default_cache(tmp_path: Path, image_server: str) -> None:
    metas = [meta("B1", "Blanket", f"{image_server}/b1.jpg"), meta("B2", "Bottle", f"{image_server}/gone.jpg")]
    folder = tmp_path / "data"
    dataset(folder, metas=lines(metas))
    skips = Skips("error")
    raw = load(config(folder, images=ImagesConfig(workers=2, timeout_s=5, retries=0)), skips)
    image = raw.items.set_index("item_id")["image"]
    assert Path(image["B1"]).parent == (folder / "_images").resolve()
    assert Image.open(image["B1"]).size == (20, 10)
    assert image["B2"] == ""
    assert skips.counts == {"image download: http 404": 1}
    assert raw.notes["images"]["downloaded"] == 1


def test_download_refuses_a_cache_symlink_out_of_the_cache(tmp_path: Path, image_server: str) -> None:
    folder = tmp_path / "data"
    dataset(folder, metas=lines([meta("B1", "Blanket", f"{image_server}/b1.jpg"), meta("B2", "Bottle")]))
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret, "JPEG")
    (folder / "_images").mkdir()
    link = cache_path(folder / "_images", f"{image_server}/b1.jpg")
    link.symlink_to(secret)
    skips = Skips("error")
    raw = load(config(folder, images=ImagesConfig(workers=2, timeout_s=5, retries=0)), skips)
    assert raw.items.set_index("item_id").loc["B1", "image"] == ""
    assert skips.counts == {"item without image url": 1, CACHE_OUTSIDE: 1}
    assert raw.notes["images"]["failed"] == {CACHE_OUTSIDE: 1} and raw.notes["images"]["downloaded"] == 0
    assert link.is_symlink() and Image.open(secret).getpixel((0, 0))[0] > 200  # neither followed nor written


def test_kcore_limits_what_is_downloaded(tmp_path: Path) -> None:
    metas = [meta("B1", "Blanket", "http://img.invalid/b1.jpg"), meta("B2", "Bottle", "http://img.invalid/b2.jpg")]
    reviews = [review("u1", "B1", 1), review("u2", "B1", 2), review("u2", "B2", 3)]
    dataset(tmp_path, reviews=lines(reviews), metas=lines(metas))
    skips = Skips()
    raw = load(config(tmp_path, item_k=2), skips)
    assert raw.notes["images"]["not_fetched_outside_kcore"] == 1
    assert skips.counts == {"image not in cache (images.download=false)": 1}  # B1 only


# ----------------------------------------------------------------------------- bad input

GOOD = lines(REVIEWS)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("bad_line, message, reason", [
    (b'{"user_id": "u3", "parent_asin": "B1", "timestamp": 1', r"malformed JSON \(", "malformed JSON"),
    (json.dumps({"user_id": "u3", "parent_asin": "B1"}).encode(), r"missing field\(s\) timestamp",
     "missing field(s) timestamp"),
    (b'{"user_id": "u\xe9", "parent_asin": "B1", "timestamp": 1}', r"not valid UTF-8 \(invalid continuation",
     "not valid UTF-8"),
    (json.dumps({"user_id": "u3", "parent_asin": "B1", "timestamp": "soon"}).encode(),
     r"timestamp is not a number \('soon'", "timestamp is not a number"),
    (b"[1, 2]", "not a JSON object", "not a JSON object"),
    (b'{"user_id": "u3", "parent_asin": "B1", "timestamp": NaN}', r"timestamp is not finite \(nan;",
     "timestamp is not finite"),
    (b'{"user_id": "u3", "parent_asin": "B1", "timestamp": -Infinity}', r"timestamp is not finite \(-inf;",
     "timestamp is not finite"),
    (b'{"user_id": "u3", "parent_asin": "B1", "timestamp": 1e400}', r"timestamp is not finite \(inf;",
     "timestamp is not finite"),
    (b'{"user_id": "u3", "parent_asin": "B1", "timestamp": "Infinity"}', r"timestamp is not finite \('Infinity';",
     "timestamp is not finite"),
    (b'{"user_id": "u3", "parent_asin": "B1", "timestamp": 1' + b"0" * 400 + b"}",
     r"timestamp is not a number \(1000", "timestamp is not a number"),  # beyond the float range
    (b'{"user_id": "u3", "parent_asin": "B1", "timestamp": ' + b"1" * 5000 + b"}",
     r"malformed JSON \(Exceeds the limit \(4300 digits\)", "malformed JSON"),
])
def test_bad_review_lines(tmp_path: Path, gz: bool, bad_line: bytes, message: str, reason: str) -> None:
    reviews_path, _ = dataset(tmp_path, reviews=GOOD[:2] + [bad_line] + GOOD[2:], gz=gz)
    with pytest.raises(DataError, match=rf"^{re.escape(str(reviews_path))}, line 3: {message}"):
        load(config(tmp_path), Skips("error"))
    skips = Skips("skip")
    raw = load(config(tmp_path), skips)
    assert len(raw.interactions) == 4
    assert skips.counts[reason] == 1
    assert skips.examples[reason] == [f"{reviews_path}, line 3"]


def test_bad_meta_lines(tmp_path: Path) -> None:
    metas = lines(METAS)
    bad = [metas[0], json.dumps({"title": "no asin"}).encode(), b'{"parent_asin": "B9", "title": "caf\xff"}',
           metas[1], metas[1]]
    _, meta_path = dataset(tmp_path, metas=bad)
    with pytest.raises(DataError, match=rf"^{re.escape(str(meta_path))}, line 2: missing field\(s\) parent_asin"):
        load(config(tmp_path), Skips("error"))
    skips = Skips("skip")
    raw = load(config(tmp_path), skips)
    assert sorted(raw.items["item_id"]) == ["B1", "B2"]
    assert skips.counts["missing field(s) parent_asin"] == 1
    assert skips.counts["not valid UTF-8"] == 1
    assert skips.counts["duplicate parent_asin"] == 1
    assert skips.examples["duplicate parent_asin"] == [f"{meta_path}, line 5"]


def test_unknown_item_is_an_error_or_counted(tmp_path: Path) -> None:
    reviews = GOOD[:1] + lines([review("u9", "B404", 5), review("u8", "B404", 6)]) + GOOD[1:]
    reviews_path, _ = dataset(tmp_path, reviews=reviews, gz=True)
    where = re.escape(str(reviews_path))
    with pytest.raises(DataError, match=rf"^{where}, line 2: item 'B404' is not in meta_Baby_Products"):
        load(config(tmp_path), Skips("error"))
    skips = Skips("skip")
    raw = load(config(tmp_path), skips)
    assert "B404" not in set(raw.interactions["item_id"]) and len(raw.interactions) == 4
    assert skips.counts["interaction with an unknown item"] == 2


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    reviews_path, _ = dataset(tmp_path, gz=True)
    data = gzip.compress(b"\n".join(GOOD * 200))
    reviews_path.write_bytes(data[: len(data) // 2])
    where = re.escape(str(reviews_path))
    with pytest.raises(DataError, match=rf"^{where}, line \d+: file truncated or corrupt"):
        load(config(tmp_path), Skips("error"))
    skips = Skips("skip")
    raw = load(config(tmp_path), skips)  # the lines before the break are kept
    assert len(raw.interactions) > 0 and skips.counts["file truncated or corrupt, cannot read on"] == 1


def test_missing_files_say_what_to_do(tmp_path: Path) -> None:
    write(tmp_path, CAT, GOOD, gz=False)
    with pytest.raises(DataError, match=r"neither meta_Baby_Products\.jsonl nor meta_Baby_Products\.jsonl\.gz"):
        load(config(tmp_path), Skips())
    with pytest.raises(DataError, match="needs data.path"):
        load(DataConfig(source="amazon2023"), Skips())


def test_items_survive_a_parquet_round_trip(tmp_path: Path) -> None:
    """Lone surrogates from JSON escapes would make pyarrow fail later; they are replaced here."""
    metas = [meta("B1", "Bad \\ud800 title"), meta("B2", "Bottle")]
    raw_lines = [line.replace(b"\\\\ud800", b"\\ud800") for line in lines(metas)]
    dataset(tmp_path, metas=raw_lines)
    raw = load(config(tmp_path), Skips())
    buf = io.BytesIO()
    raw.items.to_parquet(buf)
    assert raw.items.loc[0, "title"].startswith("Bad ")
