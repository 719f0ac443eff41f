"""Load and validate item images, so that one bad file never crashes a stage that reads thousands.

Datasets ship broken images: covers that were never downloaded, truncated JPEGs, HTML error pages
saved as `.jpg`, 16-bit scans, decompression bombs. Every reader of images goes through this module:

- `check_image(path, max_bytes, max_pixels)` says whether a file is usable, and why not;
- `load_image(path, ...)` returns it as an RGB `PIL.Image`, or None;
- `inside(path, root)` resolves a path a dataset names and refuses one that leads out of its folder;
- `validate_items_images(items, cfg, skips)` blanks the `image` field of every item whose file is
  unusable and counts each by reason ("image missing", "image corrupt", "image too large",
  "image mode unsupported"), with the item and path as examples.

The pixel limit is checked from the header, before any pixel is decoded: `Image.open` reads only the
header, so a 100,000 x 100,000 PNG of a few kilobytes is rejected without allocating 30 GB. PIL's own
guard (`Image.MAX_IMAGE_PIXELS`) stays as it is; when it fires first (beyond twice its limit) its
`DecompressionBombError` is reported as "image too large" as well.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, NamedTuple

import pandas as pd
from PIL import Image

from .config import ImagesConfig
from .types import Skips

IMAGE_MISSING = "image missing"
IMAGE_CORRUPT = "image corrupt"
IMAGE_TOO_LARGE = "image too large"
IMAGE_MODE = "image mode unsupported"

# Modes PIL converts to RGB faithfully. 16-bit and float greyscale ("I", "I;16", "F") would be clipped
# to white by a plain convert, and LAB/HSV need colour management: those are reported, not guessed at.
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


class Probe(NamedTuple):
    """The outcome of opening one image: the RGB image (when asked for), or the reason and a detail."""

    image: Image.Image | None
    reason: str  # "" when usable
    detail: str


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of `img`. Transparent areas become white: product photos are cut out on white, and a
    plain convert would turn them black."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def probe_image(source: str | Path | BinaryIO, max_pixels: int, *, decode: bool = True,
                keep: bool = False) -> Probe:
    """Open an image from a path or a binary file object and check it.

    decode=False reads only the header (size, mode): fast, but misses truncated data. decode=True
    decodes all of it (JPEGs at 1/8 scale when the image is not kept, which still reads every byte).
    keep=True returns the RGB image. Never raises for bad content: a third-party decoder fed
    untrusted bytes can fail with almost any exception type, and one bad file must not stop a run.
    """
    try:
        img = Image.open(source)
    except FileNotFoundError as exc:
        return Probe(None, IMAGE_MISSING, str(exc))
    except Image.DecompressionBombError as exc:
        return Probe(None, IMAGE_TOO_LARGE, str(exc))
    except Exception as exc:  # noqa: BLE001 - see docstring
        return Probe(None, IMAGE_CORRUPT, f"not a readable image ({type(exc).__name__}: {exc})")
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            return Probe(None, IMAGE_CORRUPT, f"empty image ({width}x{height})")
        if width * height > max_pixels:
            return Probe(None, IMAGE_TOO_LARGE, f"{width}x{height} pixels > images.max_pixels={max_pixels}")
        if img.mode not in CONVERTIBLE_MODES:
            return Probe(None, IMAGE_MODE, f"mode {img.mode} (expected RGB, greyscale, palette, RGBA or CMYK)")
        if not (decode or keep):
            return Probe(None, "", "")
        return _decode(img, keep)


def _decode(img: Image.Image, keep: bool) -> Probe:
    try:
        if not keep:
            img.draft(None, (1, 1))  # JPEG: decode at 1/8 scale; other formats ignore it
        img.load()
        return Probe(to_rgb(img) if keep else None, "", "")
    except Image.DecompressionBombError as exc:
        return Probe(None, IMAGE_TOO_LARGE, str(exc))
    except Exception as exc:  # noqa: BLE001 - see probe_image
        return Probe(None, IMAGE_CORRUPT, f"cannot decode ({type(exc).__name__}: {exc})")


def _probe_file(path: str | Path, max_bytes: int, max_pixels: int, *, decode: bool = True,
                keep: bool = False) -> Probe:
    """probe_image for a file, with the existence and byte-size checks first."""
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        return Probe(None, IMAGE_MISSING, f"{exc.strerror or exc}")
    if not Path(path).is_file():
        return Probe(None, IMAGE_MISSING, "not a regular file")
    if size > max_bytes:
        return Probe(None, IMAGE_TOO_LARGE, f"{size} bytes > images.max_bytes={max_bytes}")
    if size == 0:
        return Probe(None, IMAGE_CORRUPT, "empty file")
    return probe_image(path, max_pixels, decode=decode, keep=keep)


def inside(path: str | Path, root: str | Path) -> Path | None:
    """`path` (relative to `root`, or absolute) with every symlink resolved, or None when that lies
    outside `root` (resolved too).

    Image paths come from the data: `../x`, `/etc/passwd` or a link planted in an images folder would
    otherwise have the models read, and the report embed, any file the user can read. os.path.realpath
    is Path.resolve without its error on symlink loops (a loop stays unresolved and reads as missing)."""
    try:
        real = Path(os.path.realpath(Path(root, path)))
    except ValueError:  # a NUL byte: no file has such a name
        return None
    return real if real.is_relative_to(os.path.realpath(root)) else None


def check_image(path: str | Path, max_bytes: int, max_pixels: int, *, decode: bool = True) -> tuple[bool, str]:
    """(True, "") when `path` is a usable image, else (False, reason), the reason being one of
    IMAGE_MISSING, IMAGE_CORRUPT, IMAGE_TOO_LARGE, IMAGE_MODE."""
    probe = _probe_file(path, max_bytes, max_pixels, decode=decode)
    return (not probe.reason, probe.reason)


def check_image_bytes(data: bytes, max_pixels: int) -> Probe:
    """Check an image held in memory (a download, before it is written to the cache)."""
    return probe_image(io.BytesIO(data), max_pixels, decode=True)


def load_image(path: str | Path, max_bytes: int = ImagesConfig.max_bytes,
               max_pixels: int = ImagesConfig.max_pixels) -> Image.Image | None:
    """The image at `path` as RGB, or None when it is missing, corrupt, too large or of an unsupported
    mode (use check_image to learn which)."""
    return _probe_file(path, max_bytes, max_pixels, keep=True).image


def validate_items_images(items: pd.DataFrame, cfg: ImagesConfig, skips: Skips, *, decode: bool = True,
                          progress: bool = False) -> pd.DataFrame:
    """A copy of `items` whose `image` is "" wherever the file is unusable; each such item is counted
    in `skips` under its reason with 'item <id>: <path> (<detail>)' as an example.

    Files are checked in cfg.workers threads (PIL releases the GIL while decoding); a path shared by
    several items is checked once.
    """
    out = items.copy()
    paths = sorted({p for p in out["image"].fillna("").astype(str) if p})
    results = _probe_many(paths, cfg, decode=decode, progress=progress)
    keep = []
    for item_id, path in zip(out["item_id"], out["image"].fillna("").astype(str)):
        probe = results.get(path) if path else None
        if probe is not None and probe.reason:
            skips.count(probe.reason, f"item {item_id}: {path} ({probe.detail})")
            path = ""
        keep.append(path)
    out["image"] = keep
    return out


def _probe_many(paths: list[str], cfg: ImagesConfig, *, decode: bool, progress: bool) -> dict[str, Probe]:
    def one(path: str) -> Probe:
        return _probe_file(path, cfg.max_bytes, cfg.max_pixels, decode=decode)

    if len(paths) < 2 or cfg.workers < 2:
        return {p: one(p) for p in paths}
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        probes = list(tqdm(pool.map(one, paths), total=len(paths), desc="checking images", unit="img",
                           disable=not progress))
    return dict(zip(paths, probes))
