"""The C core builds and works without its optional fast libraries (ISA-L, OpenSSL)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHECK = r"""
import gzip, hashlib, io, tarfile
from bincache._native import _cffi as n
buf = io.BytesIO()
w = n.TarWriter(buf, prefixes=[b"/opt/p"], threads=2)
data = bytes(range(256)) * 20000 + b"/opt/p/lib"
scan = w.add_bytes("opt/p/f", data, 0o644)
r = w.finish()
out = buf.getvalue()
assert r.digest == hashlib.sha256(out).hexdigest()
assert r.diff_id == hashlib.sha256(gzip.decompress(out)).hexdigest()
assert tarfile.open(fileobj=io.BytesIO(out)).extractfile("opt/p/f").read() == data
assert scan.hits == [(0, len(data) - 10)]
print(n.BACKEND, n.DEFAULT_LEVEL)
"""


@pytest.mark.slow
def test_fallback_build_uses_zlib_and_portable_sha256(tmp_path):
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    shutil.copytree(
        ROOT / "bincache",
        tmp_path / "bincache",
        ignore=shutil.ignore_patterns("_lib*.so", "__pycache__"),
    )
    env = {**os.environ, "BINCACHE_NO_ISAL": "1", "BINCACHE_NO_OPENSSL": "1"}
    build = (
        "import sys; sys.path.insert(0, 'bincache/_native'); "
        "from _build import ffibuilder; ffibuilder.compile(tmpdir='.')"
    )
    subprocess.run(
        [sys.executable, "-c", build], cwd=tmp_path, env=env, check=True, capture_output=True
    )
    built = list((tmp_path / "bincache" / "_native").glob("_lib*.so"))
    assert built, "no module was built"
    proc = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["zlib", "1"]
    # and it really linked neither library
    libs = subprocess.run(["ldd", str(built[0])], capture_output=True, text=True).stdout
    assert "libisal" not in libs and "libcrypto" not in libs
