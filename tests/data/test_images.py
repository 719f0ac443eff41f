"""images.py: every kind of bad image file is reported by reason, and none of them raises."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mmsrarec.data.config import ImagesConfig
from mmsrarec.data.images import (IMAGE_CORRUPT, IMAGE_MISSING, IMAGE_MODE, IMAGE_TOO_LARGE, check_image, inside,
                                  load_image, validate_items_images)
from mmsrarec.data.types import Skips

MB = 1_000_000


def photo(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A small gradient picture (real pixel content, so JPEG has real entropy-coded data)."""
    w, h = size
    img = Image.new("RGB", size)
    img.putdata([(x * 255 // w, y * 255 // h, (x + y) % 256) for y in range(h) for x in range(w)])
    return img if mode == "RGB" else img.convert(mode)


def save(img: Image.Image, path: Path, fmt: str | None = None) -> Path:
    img.save(path, fmt)
    return path


def huge_png_header(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG that claim to be width x height: a decompression bomb's header."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_good_images_in_every_convertible_mode_load_as_rgb(tmp_path: Path) -> None:
    files = {
        "rgb.jpg": save(photo(), tmp_path / "rgb.jpg"),
        "grey.png": save(photo(mode="L"), tmp_path / "grey.png"),
        "palette.gif": save(photo(mode="P"), tmp_path / "palette.gif"),
        "cmyk.jpg": save(photo(mode="CMYK"), tmp_path / "cmyk.jpg"),
        "bw.png": save(photo(mode="1"), tmp_path / "bw.png"),
    }
    for name, path in files.items():
        assert check_image(path, MB, MB) == (True, ""), name
        img = load_image(path)
        assert img is not None and img.mode == "RGB" and img.size == (64, 48), name


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    img = photo().convert("RGBA")
    img.putpixel((0, 0), (0, 0, 0, 0))
    path = save(img, tmp_path / "cutout.png")
    rgb = load_image(path)
    assert rgb is not None and rgb.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("name, content, reason", [
    ("truncated.jpg", "truncated", IMAGE_CORRUPT),
    ("page.jpg", b"<html><body>404 Not Found</body></html>", IMAGE_CORRUPT),
    ("empty.jpg", b"", IMAGE_CORRUPT),
    ("garbage.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, IMAGE_CORRUPT),
    ("bomb.png", huge_png_header(100_000, 100_000), IMAGE_TOO_LARGE),
    ("deep.png", "I;16", IMAGE_MODE),
])
def test_bad_files_are_reported_not_raised(tmp_path: Path, name: str, content: object, reason: str) -> None:
    path = tmp_path / name
    if content == "truncated":
        buf = io.BytesIO()
        photo((256, 256)).save(buf, "JPEG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif content == "I;16":
        Image.new("I;16", (8, 8)).save(path)
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    # the bomb is refused even when our own limit would allow it (PIL's guard fires first)
    assert check_image(path, MB, 10**12) == (False, reason)
    assert load_image(path, MB, 10**12) is None


def test_missing_and_oversized(tmp_path: Path) -> None:
    path = save(photo((200, 100)), tmp_path / "wide.png")
    assert check_image(tmp_path / "nope.jpg", MB, MB) == (False, IMAGE_MISSING)
    assert check_image(tmp_path, MB, MB) == (False, IMAGE_MISSING)  # a folder is not an image
    assert check_image(path, 100, MB) == (False, IMAGE_TOO_LARGE)  # bytes
    assert check_image(path, MB, 200 * 100 - 1) == (False, IMAGE_TOO_LARGE)  # pixels, from the header
    assert check_image(path, MB, 200 * 100) == (True, "")


def test_validate_items_images_blanks_and_counts_each_bad_item(tmp_path: Path) -> None:
    good = save(photo(), tmp_path / "good.jpg")
    big = save(photo((300, 300)), tmp_path / "big.png")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all")
    deep = tmp_path / "deep.png"
    Image.new("I;16", (8, 8)).save(deep)
    items = pd.DataFrame({
        "item_id": ["a", "b", "c", "d", "e", "f", "g"],
        "title": ["t"] * 7, "text": ["x"] * 7,
        "image": [str(good), str(tmp_path / "gone.jpg"), str(corrupt), str(big), str(deep), "", str(corrupt)],
    })
    cfg = ImagesConfig(workers=2, max_bytes=MB, max_pixels=300 * 300 - 1)
    skips = Skips("error")  # missing images are counted, never raised, whatever the policy
    out = validate_items_images(items, cfg, skips)
    assert list(out["image"]) == [str(good), "", "", "", "", "", ""]
    assert list(items["image"])[1] != ""  # the input frame is not modified
    assert dict(skips.counts) == {IMAGE_MISSING: 1, IMAGE_CORRUPT: 2, IMAGE_TOO_LARGE: 1, IMAGE_MODE: 1}
    assert skips.examples[IMAGE_MISSING][0].startswith("item b: ")
    assert "300x300" in skips.examples[IMAGE_TOO_LARGE][0]


def test_inside_resolves_and_refuses_paths_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "pics").mkdir(parents=True)
    pic = save(photo(), root / "pics" / "a.png")
    (root / "pics" / "alias.png").symlink_to("a.png")
    (root / "pics" / "out.png").symlink_to(tmp_path / "elsewhere.png")
    (root / "loop.png").symlink_to("loop.png")
    assert inside("pics/a.png", root) == inside(str(pic), root) == inside("pics/alias.png", root) == pic.resolve()
    assert inside("pics/../pics/a.png", root) == pic.resolve()
    for path in ("../elsewhere.png", str(tmp_path / "elsewhere.png"), "/etc/passwd", "pics/out.png", "a\0b"):
        assert inside(path, root) is None, path
    assert inside("loop.png", root) is not None  # no error; it reads as missing later
    assert check_image(inside("loop.png", root), MB, MB) == (False, IMAGE_MISSING)
