"""The local index cache, against a real http server that answers conditional GETs: a repeated
`list`/`install` of an unchanged mirror fetches no index bytes, only 304s for the root checks."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from functools import partial

import pytest

from bincache import index as ix
from bincache.index_shards import ROOT_PATH, Root
from bincache.mirror.directory import DirectoryBackend
from bincache.mirror.layout_v3 import INDEX_MANIFEST, LayoutV3Cache
from tests.conftest import run_cli
from tests.index.packages import make_specs, put_package


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files of a directory, with an ETag (their SHA-256) and If-None-Match -> 304."""

    log: list[tuple[str, str, int]]

    def do_GET(self):  # noqa: N802 - http.server's spelling
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.log.append(("GET", self.path, 404))
            self.send_error(404)
            return
        with open(path, "rb") as f:
            data = f.read()
        etag = '"' + hashlib.sha256(data).hexdigest() + '"'
        if self.headers.get("If-None-Match") == etag:
            self.log.append(("GET", self.path, 304))
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.log.append(("GET", self.path, 200))
        self.send_response(200)
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self):  # noqa: N802
        self.log.append(("HEAD", self.path, 0))
        super().do_HEAD()

    def log_message(self, *args):
        pass


def _serve(directory: str):
    log: list = []
    handler = type("H", (_Handler,), {"log": log})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=directory))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", log


@pytest.fixture
def served(tmp_path):
    mirror = tmp_path / "m"
    cache = LayoutV3Cache(DirectoryBackend(str(mirror)))
    specs = make_specs([f"tool{i}" for i in range(40)])
    by_hash = {s.hash: s for s in specs}
    for s in specs:
        put_package(cache, s, by_hash)
    ix.update_index(cache)
    server, url, log = _serve(str(mirror))
    yield url, cache, log
    server.shutdown()
    server.server_close()


@pytest.fixture
def served_stack(tmp_path, demo_stack_factory):
    """The demo stack (greet, shout, hello: real programs) pushed and served over http."""
    mirror = tmp_path / "stack"
    run_cli("--root", demo_stack_factory.root, "create", "--unsigned", str(mirror), "--rebuild-index",
            check=True)
    server, url, log = _serve(str(mirror))
    yield url, LayoutV3Cache(DirectoryBackend(str(mirror))), log
    server.shutdown()
    server.server_close()


def _index_requests(log, cache) -> list[tuple[str, int]]:
    root = Root.from_bytes(cache.backend.read(ROOT_PATH), "root")
    index_blobs = {i.checksum for i in root.shards.values()} | {root.spack_index[0]}
    out = []
    for _method, path, status in log:
        rel = path.lstrip("/")
        if rel in (ROOT_PATH, INDEX_MANIFEST) or rel.rsplit("/", 1)[-1] in index_blobs:
            out.append((rel, status))
    return out


def test_repeated_list_of_an_unchanged_mirror_fetches_no_index_bytes(served, tmp_path):
    url, cache, log = served
    env = {"BINCACHE_CACHE_DIR": str(tmp_path / "cache")}
    first = run_cli("list", url, "tool7", env=env, check=True)
    assert "tool7" in first.stdout and "tool8" not in first.stdout
    got = _index_requests(log, cache)
    assert sorted(s for _, s in got) == [200, 200, 200]  # root, Spack's manifest, one shard
    log.clear()
    again = run_cli("list", url, "tool7", env=env, check=True)
    assert again.stdout == first.stdout
    assert sorted(s for _, s in _index_requests(log, cache)) == [304, 304]
    # Another name: its shard only.
    log.clear()
    run_cli("list", url, "tool12", env=env, check=True)
    assert sorted(s for _, s in _index_requests(log, cache)) == [200, 304, 304]


def test_repeated_install_fetches_only_the_root_checks(served_stack, tmp_path):
    url, cache, log = served_stack
    env = {"BINCACHE_CACHE_DIR": str(tmp_path / "cache")}
    for n, root in enumerate(("r1", "r2")):
        log.clear()
        run_cli("--root", str(tmp_path / root), "install", "--unsigned", "--mirror", url, "hello",
                env=env, check=True)
        statuses = sorted(s for _, s in _index_requests(log, cache))
        if n == 0:
            # The root, Spack's manifest, and the shards of hello, shout and greet (its DAG).
            assert statuses == [200] * 5
        else:
            assert statuses == [304, 304]
    assert not any(p.endswith(json.loads(cache.backend.read(INDEX_MANIFEST))["data"][0]["checksum"])
                   for _, p, _ in log)  # Spack's whole index never downloaded
