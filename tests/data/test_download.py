"""download.py against a local HTTP server: good images, 404, 500-then-ok, always-500, slow, oversized
(by Content-Length and by streaming), wrong content type, corrupt bytes; then resuming."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from mmsrarec.data.config import ImagesConfig
from mmsrarec.data.download import FAILURES_FILE, cache_path, cached_images, download_images


def image_bytes(fmt: str, color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, fmt)
    return buf.getvalue()


JPEG = image_bytes("JPEG", (200, 30, 30))
PNG = image_bytes("PNG", (30, 200, 30))
SLOW_S = 2.5
MAX_BYTES = 100_000


class Server(ThreadingHTTPServer):
    daemon_threads = True
    hits: Counter[str]
    lock: threading.Lock

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 - the slow route's client hangs up
        pass


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args: object) -> None:
        pass

    def send(self, code: int, body: bytes, ctype: str = "image/jpeg", length: bool = True) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        with self.server.lock:
            self.server.hits[self.path] += 1
            count = self.server.hits[self.path]
        route = self.path.split("?")[0]
        if route == "/good.jpg":
            self.send(200, JPEG)
        elif route == "/good.png":
            self.send(200, PNG, "image/png; charset=binary")
        elif route == "/flaky.jpg":
            self.send(500, b"busy", "text/plain") if count == 1 else self.send(200, JPEG)
        elif route == "/down.jpg":
            self.send(503, b"down", "text/plain")
        elif route == "/slow.jpg":
            time.sleep(SLOW_S)
            self.send(200, JPEG)
        elif route == "/big.jpg":
            self.send(200, b"\xff" * (MAX_BYTES + 1))
        elif route == "/big-stream.jpg":  # no Content-Length: the cap must hold while reading
            self.send(200, b"\xff" * (3 * MAX_BYTES), length=False)
        elif route == "/page.jpg":
            self.send(200, b"<html>sorry</html>", "text/html; charset=utf-8")
        elif route == "/corrupt.jpg":
            self.send(200, JPEG[: len(JPEG) // 3])
        else:
            self.send(404, b"not found", "text/plain")


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Handler)
    srv.hits, srv.lock = Counter(), threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def cfg() -> ImagesConfig:
    return ImagesConfig(workers=6, timeout_s=0.8, retries=1, max_bytes=MAX_BYTES, max_pixels=1_000_000)


def urls_for(srv: Server) -> dict[str, str]:
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    routes = {"i1": "/good.jpg", "i2": "/good.png", "i3": "/good.jpg", "i4": "/missing.jpg", "i5": "/flaky.jpg",
              "i6": "/slow.jpg", "i7": "/big.jpg", "i8": "/big-stream.jpg", "i9": "/page.jpg", "i10": "/corrupt.jpg",
              "i11": "/down.jpg"}
    urls = {item: base + route for item, route in routes.items()}
    urls["i12"] = "ftp://example.invalid/x.jpg"
    return urls


def test_failures_are_counted_by_reason_and_good_images_are_cached(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    stale = cache / ".old.jpg.1.2.part"
    cache.mkdir()
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    urls = urls_for(server)

    paths, summary = download_images(urls, cache, cfg(), backoff_s=0.01, progress=False)

    assert sorted(paths) == ["i1", "i2", "i3", "i5"]
    assert paths["i1"] == paths["i3"] == str(cache_path(cache, urls["i1"]).resolve())
    assert Path(paths["i2"]).name.endswith(".png") and Path(paths["i2"]).read_bytes() == PNG
    assert Path(paths["i5"]).read_bytes() == JPEG
    assert summary["failed"] == {"bad url": 1, "http 404": 1, "http 503": 1, "image corrupt": 1,
                                 "image too large": 2, "timeout": 1, "wrong content-type": 1}
    assert (summary["urls"], summary["downloaded"], summary["cached"]) == (11, 3, 0)
    assert summary["item_failures"]["i4"] == "http 404"
    # retried: network errors and 5xx only, once each (retries=1); shared URLs fetched once
    hits = server.hits
    assert (hits["/good.jpg"], hits["/flaky.jpg"], hits["/down.jpg"], hits["/slow.jpg"]) == (1, 2, 2, 2)
    assert (hits["/missing.jpg"], hits["/page.jpg"], hits["/big.jpg"], hits["/corrupt.jpg"]) == (1, 1, 1, 1)
    # only whole, decodable images in the cache; the stale temporary file is gone
    files = sorted(p.name for p in cache.iterdir())
    assert files == sorted([FAILURES_FILE] + [Path(paths[i]).name for i in ("i1", "i2", "i5")])
    recorded = [json.loads(line)["url"] for line in (cache / FAILURES_FILE).read_text().splitlines()]
    permanent = {urls[i] for i in ("i4", "i7", "i8", "i9", "i10")}
    assert set(recorded) == permanent  # transient failures (timeout, 503) are not recorded


def test_rerun_downloads_nothing_again_and_skips_recorded_failures(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    urls = urls_for(server)
    first, _ = download_images(urls, cache, cfg(), backoff_s=0.01, progress=False)
    server.hits.clear()

    again, summary = download_images(urls, cache, cfg(), backoff_s=0.01, progress=False)

    assert again == first
    assert (summary["downloaded"], summary["cached"], summary["skipped_recorded"]) == (0, 3, 5)
    assert set(server.hits) == {"/slow.jpg", "/down.jpg"}  # only the transient failures are tried again
    assert summary["failed"]["http 404"] == 1  # still reported
    assert cached_images(urls, cache) == (first, {})  # the offline view agrees

    server.hits.clear()
    _, summary = download_images(urls, cache, cfg(), backoff_s=0.01, progress=False, retry_failed=True)
    assert server.hits["/missing.jpg"] == 1 and server.hits["/good.jpg"] == 0
    assert summary["skipped_recorded"] == 0
    lines = (cache / FAILURES_FILE).read_text().splitlines()
    assert len(lines) == 5  # compacted: each permanent failure once


def test_a_cut_short_failures_file_is_tolerated(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    (cache / FAILURES_FILE).write_text(json.dumps({"url": base + "/good.jpg", "reason": "http 404"}) + "\n{\"url\": ")
    paths, summary = download_images({"a": base + "/good.jpg", "b": base + "/good.png"}, cache, cfg(),
                                     progress=False)
    assert sorted(paths) == ["b"] and summary["failed"] == {"http 404": 1}
    assert server.hits["/good.jpg"] == 0
