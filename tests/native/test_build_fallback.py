"""The C core builds and works without its optional ISA-L and libzstd; without OpenSSL it does
not build."""

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
assert n.codec_info("zstd")[0] is False
try:
    n.TarWriter(io.BytesIO(), prefixes=[], codec="zstd")
    raise SystemExit("a build without libzstd wrote zstd")
except n.NativeError as e:
    assert "no zstd; install libzstd-dev" in str(e), e
print(n.BACKEND, n.DEFAULT_LEVEL)
"""


BUILD = (
    "import sys; sys.path.insert(0, 'bincache/_native'); "
    "from _build import ffibuilder; ffibuilder.compile(tmpdir='.')"
)


def copy_sources(tmp_path):
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    shutil.copytree(
        ROOT / "bincache",
        tmp_path / "bincache",
        ignore=shutil.ignore_patterns("_lib*.so", "__pycache__"),
    )


@pytest.mark.slow
def test_fallback_build_uses_zlib_deflate_and_refuses_zstd(tmp_path):
    copy_sources(tmp_path)
    env = {**os.environ, "BINCACHE_NO_ISAL": "1", "BINCACHE_NO_ZSTD": "1"}
    subprocess.run(
        [sys.executable, "-c", BUILD], cwd=tmp_path, env=env, check=True, capture_output=True
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
    # and it really did without ISA-L and libzstd; SHA-256 is libcrypto's in every build
    libs = subprocess.run(["ldd", str(built[0])], capture_output=True, text=True).stdout
    assert "libisal" not in libs and "libzstd" not in libs and "libcrypto" in libs


def test_a_build_without_openssl_stops_and_says_what_to_install(tmp_path):
    """No portable SHA-256 to fall back on: the build fails before compiling, in one line."""
    copy_sources(tmp_path)
    # The compiler sees an <openssl/evp.h> that does not compile, as on a machine without
    # libssl-dev (which the test machine has installed).
    hidden = tmp_path / "no-openssl" / "openssl"
    hidden.mkdir(parents=True)
    (hidden / "evp.h").write_text("#error libssl-dev is not installed\n")
    env = {**os.environ, "CC": f"gcc -I{hidden.parent}"}
    proc = subprocess.run(
        [sys.executable, "-c", BUILD], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "OpenSSL's libcrypto (SHA-256) not found; install libssl-dev" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "bincache" / "_native").glob("_lib*.so"))
