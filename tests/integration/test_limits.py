"""Issue 10, finding 6: small hostile inputs cannot exhaust memory or disk.

Each attack runs the real CLI in a child process whose peak memory is measured: a package with
one huge PAX header, a 1 KB buildinfo of nested YAML aliases, and an http mirror (a real server)
that streams an endless index, manifest or blob. Each is cut at its named limit, in one line.
"""

from __future__ import annotations

import gzip
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading

import pytest

from bincache.errors import LimitError
from bincache.limits import MAX_MANIFEST, check_nesting, load_json, load_yaml
from tests.conftest import REPO, run_cli
from tests.fixtures.hostile import Package, blob_path, buildinfo, member, node, tree, write_package

OLD = "/opt/old/bomb-1.0-x"
# At exit (the command leaves through os._exit once its atexit handlers ran: no finally of
# ours runs after it). VmHWM, not ru_maxrss: the latter keeps the parent's pages from before exec.
_MEASURED = ("import atexit, runpy, sys\n"
             "def peak():\n"
             "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
             "    print('maxrss_kb', hwm.split()[1], file=sys.stderr, flush=True)\n"
             "atexit.register(peak)\n"
             "sys.argv = ['bincache'] + sys.argv[1:]\n"
             "runpy.run_module('bincache', run_name='__main__')\n")


def _measured(*args) -> tuple[subprocess.CompletedProcess, int]:
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, "-c", _MEASURED, *args], capture_output=True, text=True,
                       env=env, timeout=300, stdin=subprocess.DEVNULL)
    lines = p.stderr.splitlines()
    rss = int(lines[-1].split()[1]) * 1024
    p.stderr = "\n".join(lines[:-1]) + "\n"
    return p, rss


def _refused(p, rss, tmp_path, words):
    assert p.returncode == 1, p.stdout + p.stderr
    assert words in p.stderr and "Traceback" not in p.stderr, p.stderr[:2000]
    assert len(p.stderr) < 2000, len(p.stderr)
    assert rss < 300 << 20, f"peak memory {rss >> 20} MiB"
    root = tmp_path / "root"
    assert not root.exists() or tree(str(root)) == []


def _pax_bomb(n: dict, size: int) -> bytes:
    """A package tarball whose first member carries a PAX header of ``size`` bytes (one record
    padded with "a": gzip makes it a few hundred KB), written through gzip as it goes."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
        ti = tarfile.TarInfo("././@PaxHeader")
        ti.type, ti.size = tarfile.XHDTYPE, size
        gz.write(ti.tobuf(tarfile.USTAR_FORMAT))
        record = f"{size} comment=".encode()
        gz.write(record)
        left = size - len(record)
        chunk = b"a" * (1 << 20)
        while left > 0:
            gz.write(chunk[:min(left, len(chunk))])
            left -= len(chunk)
        gz.write(b"\0" * ((-size) % tarfile.BLOCKSIZE))
        info = buildinfo(OLD, {n["hash"]: OLD}).encode()
        ti = tarfile.TarInfo(OLD.lstrip("/") + "/.spack/binary_distribution")
        ti.size = len(info)
        gz.write(ti.tobuf(tarfile.USTAR_FORMAT) + info + b"\0" * ((-len(info)) % 512))
        gz.write(b"\0" * 1024)
    return out.getvalue()


def test_a_huge_pax_header_is_refused_without_reading_it(tmp_path):
    n = node("bomb")
    data = _pax_bomb(n, 400 << 20)
    assert len(data) < 1 << 20  # under a megabyte that claims 400 MB of header
    write_package(str(tmp_path / "mirror"), Package(n, OLD, tar=data), None)
    p, rss = _measured("--root", str(tmp_path / "root"), "install", "--unsigned", "-m",
                       str(tmp_path / "mirror"), "bomb")
    _refused(p, rss, tmp_path, "MAX_PAX_HEADER")


def test_a_name_longer_than_path_max_is_refused(tmp_path):
    n = node("bomb")
    long = OLD + "/" + "/".join(["d" * 200] * 30)
    write_package(str(tmp_path / "mirror"), Package(n, OLD, [member(long, b"x")]), None)
    p = run_cli("--root", str(tmp_path / "root"), "install", "--unsigned", "-m",
                str(tmp_path / "mirror"), "bomb")
    assert p.returncode == 1 and "MAX_NAME" in p.stderr and "Traceback" not in p.stderr


def test_yaml_aliases_in_a_buildinfo_are_refused(tmp_path):
    n = node("bomb")
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = "\n".join(levels) + "\nrelocate_textfiles: *a9\n"
    assert len(bomb) < 1024
    write_package(str(tmp_path / "mirror"),
                  Package(n, OLD, [member(OLD + "/a", b"x")], extra_buildinfo=bomb), None)
    p, rss = _measured("--root", str(tmp_path / "root"), "install", "--unsigned", "-m",
                       str(tmp_path / "mirror"), "bomb")
    _refused(p, rss, tmp_path, "YAML aliases")


def test_documents_nested_too_deeply_are_refused():
    deep = "[" * 100000 + "]" * 100000
    with pytest.raises(LimitError, match="MAX_NESTING"):
        load_json(deep, "index", 1 << 20)
    with pytest.raises(LimitError, match="MAX_NESTING"):
        load_yaml(deep.encode(), "buildinfo", 1 << 20)
    with pytest.raises(LimitError, match="MAX_NESTING"):
        check_nesting(load_json("[" * 65 + "]" * 65, "x", 1000), "spec file")
    with pytest.raises(LimitError, match="MAX_MANIFEST"):
        load_json(b" " * (MAX_MANIFEST + 1), "manifest", MAX_MANIFEST)


class _Mirror(http.server.BaseHTTPRequestHandler):
    """Serves a directory mirror; paths in ``endless`` stream zeros until the client hangs up."""

    root = ""
    endless: set[str] = set()

    def do_GET(self):  # noqa: N802
        rel = self.path.lstrip("/").split("?")[0]
        if any(rel.endswith(e) for e in self.endless):
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            block = b"{" + b" " * (1 << 16)
            try:
                for _ in range(1 << 16):  # 4 GiB at most, should the client never stop
                    self.wfile.write(block)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        path = os.path.join(self.root, rel)
        if not os.path.isfile(path):
            self.send_response(404)
            self.end_headers()
            return
        data = open(path, "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self):  # noqa: N802
        path = os.path.join(self.root, self.path.lstrip("/"))
        self.send_response(200 if os.path.isfile(path) else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    n = node("bomb")
    record = write_package(str(mirror), Package(n, OLD, [member(OLD + "/a", b"x" * 1000)]), None)
    run_cli("update-index", str(mirror), check=True)
    handler = type("Handler", (_Mirror,), {"root": str(mirror), "endless": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler, os.path.relpath(
        blob_path(str(mirror), record), mirror)
    server.shutdown()
    server.server_close()


def test_the_http_mirror_itself_installs(http_mirror, tmp_path):
    url, _handler, _ = http_mirror
    p = run_cli("--root", str(tmp_path / "root"), "install", "--unsigned", "-m", url, "bomb")
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("endless,words", [
    (".spec.manifest.json", "MAX_MANIFEST"),
    ("index.manifest.json", "MAX_MANIFEST"),
    ("BLOB", "the manifest's size"),
])
def test_an_endless_http_stream_is_cut_at_its_limit(http_mirror, tmp_path, endless, words):
    url, handler, blob = http_mirror
    handler.endless.add(blob if endless == "BLOB" else endless)
    p, rss = _measured("--root", str(tmp_path / "root"), "install", "--unsigned", "-m", url, "bomb")
    assert words in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and rss < 300 << 20
    if endless != "index.manifest.json":  # (an unreadable index is a warning, then no listing)
        _refused(p, rss, tmp_path, words)
