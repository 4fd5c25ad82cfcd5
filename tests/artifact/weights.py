"""Helpers for the weights-registry tests: a real HTTP server on 127.0.0.1 (Range requests, a transfer cut short, a
server that ignores Range, or a proxy) and temporary bundles whose ``large_files.yml`` / metadata the bundle
generator writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from volmae.bundle.make import large_files, weights_metadata
from volmae.bundle.specs import WeightsRelease, get_bundle_spec

BUNDLES = Path(__file__).resolve().parents[2] / "volmae" / "bundles"
PROXY_VARS = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
)
DATA = bytes(range(256)) * 1024  # 256 KiB of "weights" (never loaded: only fetched and checked)


class _Handler(BaseHTTPRequestHandler):
    """GET of any path answers ``server.data``; ``server.mode``: ``ok`` (Range honoured), ``truncate`` (the next
    response stops halfway, then ``ok``), ``norange`` (Range ignored: the whole file, status 200)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data, start = srv.data, 0
        if rng and srv.mode != "norange":
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.mode == "truncate":
            body, srv.mode = body[: len(body) // 2], "ok"
        self.wfile.write(body)


@pytest.fixture
def server():
    """A weights server on a free port of 127.0.0.1; ``server.url`` serves ``server.data``."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.data, srv.mode, srv.requests = DATA, "ok", []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/releases/model.pt"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def hub_env(tmp_path, monkeypatch) -> Path:
    """Bundles under ``tmp/bundles`` ($VOLMAE_BUNDLES), weights under ``tmp/home`` ($VOLMAE_HOME), online, no proxy."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("VOLMAE_OFFLINE", raising=False)
    monkeypatch.setenv("VOLMAE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VOLMAE_BUNDLES", str(tmp_path / "bundles"))
    return tmp_path


def free_port() -> int:
    """A port nothing listens on (bound, then closed): connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_bundle(
    tmp_path: Path, name: str, url: str | None = None, data: bytes = DATA, sha256: str | None = None
) -> Path:
    """The hippocampus bundle copied to ``tmp/bundles/<name>`` (no weights); with ``url``, released there: the
    generator's ``large_files.yml`` and metadata ``weights`` for that URL, ``data``'s size and sha256."""
    root = tmp_path / "bundles" / name
    shutil.copytree(
        BUNDLES / "hippocampus", root, symlinks=True, ignore=shutil.ignore_patterns("models", "runs", "predictions")
    )
    spec = get_bundle_spec("hippocampus")
    if url:
        release = WeightsRelease(url=url, sha256=sha256 or hashlib.sha256(data).hexdigest(), size=len(data))
        spec = dataclasses.replace(spec, release=release)
    (root / "large_files.yml").write_text(large_files(spec))
    meta_path = root / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["weights"] = weights_metadata(spec)
    meta_path.write_text(json.dumps(meta, indent=4))
    return root
