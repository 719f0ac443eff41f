"""Download item images into a local cache: concurrent, resumable, bounded, and honest about failures.

Amazon Reviews 2023 gives image URLs, not files; a category has tens of thousands of them and some
always fail. This module fetches them with the standard library only (urllib), so that:

- **resumable**: the cache file of a URL is `<sha256(url)><ext>` (ext from the URL path, `.img` when
  it has none). A file there is never fetched again. Files are written to a temporary name and
  renamed, and only after they decoded as images: a killed run never leaves a half or bad file.
- **no endless retries**: permanent failures (HTTP 4xx, wrong content type, too large, undecodable)
  are appended to `<cache_dir>/_failures.jsonl`; a rerun skips those URLs (and still reports them)
  unless `retry_failed=True`. Transient failures (timeouts, connection errors, HTTP 5xx/408/429)
  are retried `cfg.retries` times with exponential backoff, and are not recorded, so a rerun tries
  them again.
- **bounded**: `cfg.timeout_s` per socket operation and `TOTAL_TIMEOUT_FACTOR * cfg.timeout_s` per
  attempt (a server that trickles bytes cannot hold a worker forever); `cfg.max_bytes` is enforced
  from Content-Length and again while streaming; `cfg.max_pixels` from the decoded header.
- **checked**: the Content-Type must be `image/*` (or absent / `application/octet-stream`, which some
  CDNs send for images; the decode check still applies), and the bytes must decode as an image.
- **contained**: a cache file that is a symlink out of the cache folder is never used (CACHE_OUTSIDE).

Every failure is counted by reason in the returned summary; the caller reports them per item.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from ..errors import DataError
from .config import ImagesConfig
from .images import IMAGE_CORRUPT, IMAGE_TOO_LARGE, check_image_bytes, inside

FAILURES_FILE = "_failures.jsonl"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
USER_AGENT = "mmsrarec-image-fetcher/0.1 (+research dataset preparation)"
TOTAL_TIMEOUT_FACTOR = 3.0
CHUNK_BYTES = 64 * 1024
STALE_PART_S = 3600.0
MAX_EXAMPLES = 3

BAD_URL = "bad url"
TIMEOUT = "timeout"
NETWORK = "network error"
WRONG_TYPE = "wrong content-type"
CACHE_OUTSIDE = "cached image outside the cache folder"
TRANSIENT_HTTP = frozenset({408, 429})


class _Fail(Exception):
    """One failed attempt: reason (counted), detail (shown), transient (worth retrying)."""

    def __init__(self, reason: str, detail: str, transient: bool):
        super().__init__(detail)
        self.reason, self.detail, self.transient = reason, detail, transient


@dataclass
class Outcome:
    """What happened to one URL."""

    url: str
    path: str = ""  # the cache file, when the image is available
    reason: str = ""  # why not, when it is not
    detail: str = ""
    permanent: bool = False  # recorded in the failures file
    source: str = ""  # "cached" | "downloaded" | "recorded failure" | "failed"


def cache_path(cache_dir: str | Path, url: str) -> Path:
    """Where the image of `url` lives in the cache (whether or not it is there yet)."""
    suffix = Path(urlsplit(url).path).suffix.lower()
    ext = suffix if suffix in IMAGE_EXTENSIONS else ".img"
    return Path(cache_dir) / (hashlib.sha256(url.encode("utf-8")).hexdigest() + ext)


def cached(cache_dir: str | Path, url: str) -> Outcome | None:
    """The cache's file for `url` (source "cached"), or None when there is none. Only this module writes
    the cache, so a file there that resolves outside it is a planted symlink: refused (reason
    CACHE_OUTSIDE, not recorded as a failure, so it is reported on every run until removed)."""
    path = cache_path(cache_dir, url)
    if not path.is_file():
        return None
    real = inside(path, cache_dir)
    if real is None:
        return Outcome(url, reason=CACHE_OUTSIDE, detail=f"{path} -> {os.path.realpath(path)}", source="failed")
    return Outcome(url, path=str(real), source="cached")


def cached_images(urls: Mapping[str, str], cache_dir: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """(item_id -> cache file, for the URLs already downloaded; item_id -> 'link -> target', for the cache
    files refused as CACHE_OUTSIDE). Touches no network."""
    paths, refused = {}, {}
    for item_id, url in urls.items():
        outcome = cached(cache_dir, url) if url else None
        if outcome is not None and outcome.path:
            paths[item_id] = outcome.path
        elif outcome is not None:
            refused[item_id] = outcome.detail
    return paths, refused


def download_images(urls: Mapping[str, str], cache_dir: str | Path, cfg: ImagesConfig, *,
                    retry_failed: bool = False, backoff_s: float = 0.5,
                    progress: bool = True) -> tuple[dict[str, str], dict]:
    """Fetch the image of every item into `cache_dir`.

    urls: item_id -> URL (several items may share one URL; it is fetched once).
    Returns (item_id -> absolute cache path for each available image, summary). The summary holds
    counts ("urls", "cached", "downloaded", "failed" by reason, "skipped_recorded" = URLs not retried
    because a previous run recorded a permanent failure), a few examples per reason, the failures
    file, and "item_failures" (item_id -> reason) so the caller can report each item.
    """
    cache = Path(cache_dir).expanduser()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the image cache folder: {exc.strerror or exc}", path=str(cache),
                        hint="set data.images.cache_dir to a writable folder") from None
    _remove_stale_parts(cache)
    failures_file = cache / FAILURES_FILE
    recorded = {} if retry_failed else read_failures(failures_file)
    outcomes = _plan(set(urls.values()), cache, recorded)
    todo = [url for url, o in outcomes.items() if o is None]
    outcomes.update(_fetch_all(todo, cache, cfg, backoff_s, failures_file, progress))
    if retry_failed or any(o.permanent and o.source == "failed" for o in outcomes.values()):
        _compact_failures(failures_file, outcomes)
    return _results(urls, outcomes, cache, failures_file)


def _plan(urls: set[str], cache: Path, recorded: dict[str, dict]) -> dict[str, Outcome | None]:
    """Outcome for URLs that need no request (cached, recorded failure, bad URL); None for the rest."""
    plan: dict[str, Outcome | None] = {}
    for url in sorted(urls):
        found = cached(cache, url)
        if found is not None:
            plan[url] = found
        elif url in recorded:
            rec = recorded[url]
            plan[url] = Outcome(url, reason=str(rec.get("reason", "recorded failure")),
                                detail=str(rec.get("detail", "")), permanent=True, source="recorded failure")
        elif urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            plan[url] = Outcome(url, reason=BAD_URL, detail="not an http(s) URL", source="failed")
        else:
            plan[url] = None
    return plan


def _fetch_all(todo: list[str], cache: Path, cfg: ImagesConfig, backoff_s: float, failures_file: Path,
               progress: bool) -> dict[str, Outcome]:
    """Fetch in cfg.workers threads. Permanent failures are appended to the failures file as they
    happen (by this thread only), so a run killed halfway keeps what it learned."""
    from tqdm import tqdm

    out: dict[str, Outcome] = {}
    if not todo:
        return out
    bar = tqdm(total=len(todo), desc="downloading images", unit="img", disable=not progress)
    counts: Counter[str] = Counter()
    pool = ThreadPoolExecutor(max_workers=cfg.workers)
    try:
        futures = [pool.submit(fetch_one, url, cache_path(cache, url), cfg, backoff_s) for url in todo]
        for future in as_completed(futures):
            outcome = future.result()
            out[outcome.url] = outcome
            if outcome.permanent:
                _append_failure(failures_file, outcome)
            counts["ok" if outcome.path else "failed"] += 1
            bar.set_postfix(counts, refresh=False)
            bar.update(1)
    finally:  # on Ctrl-C, drop the queued URLs and wait only for those in flight (bounded by the timeouts)
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return out


def fetch_one(url: str, dest: Path, cfg: ImagesConfig, backoff_s: float = 0.5) -> Outcome:
    """Download one URL to `dest` with retries; never raises for network or content problems."""
    for attempt in range(cfg.retries + 1):
        try:
            data = _attempt(url, cfg)
            break
        except _Fail as fail:
            if not fail.transient or attempt == cfg.retries:
                detail = fail.detail + (f" (after {attempt + 1} attempts)" if fail.transient else "")
                return Outcome(url, reason=fail.reason, detail=detail, permanent=not fail.transient, source="failed")
            time.sleep(backoff_s * (2 ** attempt) * (1.0 + 0.5 * random.random()))
    probe = check_image_bytes(data, cfg.max_pixels)
    if probe.reason:
        return Outcome(url, reason=probe.reason, detail=probe.detail, permanent=True, source="failed")
    _write_atomic(dest, data)
    return Outcome(url, path=str(dest.resolve()), source="downloaded")


def _attempt(url: str, cfg: ImagesConfig) -> bytes:
    """One HTTP GET, returning the body; raises _Fail with a reason."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
            _check_headers(response, cfg)
            return _read_capped(response, cfg)
    except _Fail:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        transient = exc.code >= 500 or exc.code in TRANSIENT_HTTP
        raise _Fail(f"http {exc.code}", f"HTTP {exc.code} {exc.reason}", transient) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _Fail(TIMEOUT, f"no answer within images.timeout_s={cfg.timeout_s}", True) from None
        raise _Fail(NETWORK, f"{exc.reason}", True) from None
    except TimeoutError:
        raise _Fail(TIMEOUT, f"no data within images.timeout_s={cfg.timeout_s}", True) from None
    except (http.client.HTTPException, OSError) as exc:
        raise _Fail(NETWORK, f"{type(exc).__name__}: {exc}", True) from None
    except ValueError as exc:  # urllib's verdict on a malformed URL
        raise _Fail(BAD_URL, str(exc), False) from None


def _check_headers(response: http.client.HTTPResponse, cfg: ImagesConfig) -> None:
    ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype and not ctype.startswith("image/") and ctype != "application/octet-stream":
        raise _Fail(WRONG_TYPE, f"Content-Type {ctype!r}, expected image/*", False)
    length = response.headers.get("Content-Length")
    if length and length.strip().isdigit() and int(length) > cfg.max_bytes:
        raise _Fail(IMAGE_TOO_LARGE, f"Content-Length {int(length)} > images.max_bytes={cfg.max_bytes}", False)


def _read_capped(response: http.client.HTTPResponse, cfg: ImagesConfig) -> bytes:
    """Read the body, stopping as soon as it exceeds max_bytes or the attempt's total time."""
    deadline = time.monotonic() + TOTAL_TIMEOUT_FACTOR * cfg.timeout_s
    chunks, total = [], 0
    while True:
        chunk = response.read(CHUNK_BYTES)
        if not chunk:
            break
        total += len(chunk)
        if total > cfg.max_bytes:
            raise _Fail(IMAGE_TOO_LARGE, f"body exceeds images.max_bytes={cfg.max_bytes}", False)
        if time.monotonic() > deadline:
            raise _Fail(TIMEOUT, f"body not complete within {TOTAL_TIMEOUT_FACTOR:g} x images.timeout_s", True)
        chunks.append(chunk)
    if total == 0:
        raise _Fail(IMAGE_CORRUPT, "empty body", False)
    return b"".join(chunks)


def _write_atomic(dest: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: readers see all or nothing."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _remove_stale_parts(cache: Path) -> None:
    """Temporary files left by a killed run; recent ones may belong to a run still going, so stay."""
    now = time.time()
    for part in cache.glob(".*.part"):
        try:
            if now - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
        except OSError:
            pass


def read_failures(path: Path) -> dict[str, dict]:
    """url -> record of the permanent failures recorded so far. A line cut short by a kill is
    ignored (that URL is simply tried again)."""
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("url"), str):
            records[rec["url"]] = rec
    return records


def _record(outcome: Outcome) -> dict:
    return {"url": outcome.url, "reason": outcome.reason, "detail": outcome.detail, "time": time.time()}


def _append_failure(path: Path, outcome: Outcome) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(_record(outcome)) + "\n")


def _compact_failures(path: Path, outcomes: dict[str, Outcome | None]) -> None:
    """Rewrite the failures file atomically: every URL still failing permanently, once; URLs that
    now succeeded or failed transiently are dropped so the next run tries them."""
    old = read_failures(path)
    keep = {url: (_record(o) if o.source == "failed" else old.get(url) or _record(o))
            for url, o in outcomes.items() if o is not None and o.permanent}
    for url, rec in old.items():  # URLs outside this call stay recorded
        if url not in outcomes:
            keep[url] = rec
    text = "".join(json.dumps(rec) + "\n" for rec in keep.values())
    _write_atomic(path, text.encode("utf-8"))


def _results(urls: Mapping[str, str], outcomes: dict[str, Outcome | None], cache: Path,
             failures_file: Path) -> tuple[dict[str, str], dict]:
    paths: dict[str, str] = {}
    item_failures: dict[str, str] = {}
    for item_id, url in urls.items():
        outcome = outcomes[url]
        assert outcome is not None
        if outcome.path:
            paths[item_id] = outcome.path
        else:
            item_failures[item_id] = outcome.reason
    return paths, _summary(urls, outcomes, cache, failures_file, item_failures)


def _summary(urls: Mapping[str, str], outcomes: dict[str, Outcome | None], cache: Path, failures_file: Path,
             item_failures: dict[str, str]) -> dict:
    sources = Counter(o.source for o in outcomes.values() if o is not None)
    failed: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for o in outcomes.values():
        if o is not None and not o.path:
            failed[o.reason] += 1
            ex = examples.setdefault(o.reason, [])
            if len(ex) < MAX_EXAMPLES:
                ex.append(f"{o.url} ({o.detail})" if o.detail else o.url)
    return {
        "items": len(urls),
        "urls": len(outcomes),
        "cached": sources["cached"],
        "downloaded": sources["downloaded"],
        "skipped_recorded": sources["recorded failure"],
        "failed": dict(sorted(failed.items())),
        "examples": examples,
        "item_failures": item_failures,
        "cache_dir": str(cache.resolve()),
        "failures_file": str(failures_file.resolve()),
    }
