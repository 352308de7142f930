"""Issue 10, finding 3: the bytes whose checksum is checked are the bytes extracted.

A directory mirror's blob is not copied before install (it is extracted from the open file),
so a writer of the mirror could rewrite it in place after the check. Here the rewrite happens
for real, at the moment extraction starts (the install's own progress hook), with a signed
package and a trusted key: the trojan must never be installed.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile

import pytest

from bincache import api
from bincache.errors import BincacheError, IntegrityError
from bincache.tar.extract import extract_package
from bincache.tar.inflate import Expected
from tests.conftest import place_inflate
from tests.fixtures.hostile import (
    Package,
    Signer,
    blob_path,
    buildinfo,
    copy_keyring,
    member,
    node,
    tarball,
    tree,
    write_package,
)

OLD = "/opt/old/zlib-1.3-x"


@pytest.fixture(scope="module")
def keys():
    base = tempfile.mkdtemp(prefix="bcsign-")
    signer = Signer(base)
    user = tempfile.mkdtemp(prefix="bcu-", dir="/tmp")
    signer.trust_in(user)
    yield signer, user
    signer.close()
    for d in (signer.home, user, base):
        shutil.rmtree(d, ignore_errors=True)


def _trojan(n: dict) -> bytes:
    return tarball(OLD, [member(OLD + "/bin/sh", b"#!/bin/sh\necho pwned\n", mode=0o755)],
                   buildinfo(OLD, {n["hash"]: OLD}))


@pytest.mark.parametrize("inflate", ["thread", "inline"])
def test_a_blob_rewritten_in_place_after_its_check_is_not_installed(tmp_path, keys, monkeypatch,
                                                                      inflate):
    signer, user = keys
    copy_keyring(user, os.environ["BINCACHE_GNUPGHOME"])
    place_inflate(monkeypatch, inflate)
    n = node("zlib", "1.3")
    mirror = str(tmp_path / "mirror")
    record = write_package(mirror, Package(n, OLD, [member(OLD + "/lib/libz.so", b"good")]), signer)
    path = blob_path(mirror, record)
    rewritten = []

    def progress(step, plan):
        if step == "extract" and not rewritten:
            with open(path, "r+b") as f:  # same inode: the open file the install holds
                f.write(_trojan(n))
                f.truncate()
            rewritten.append(step)

    root = tmp_path / "root"
    with pytest.raises(BincacheError) as err:
        api.install(["zlib"], mirrors=[mirror], root=str(root), progress=progress)
    assert rewritten
    message = str(err.value)
    assert "\n" not in message and "replaced after it was fetched" in message, message
    assert isinstance(err.value, IntegrityError)
    assert not root.exists() or tree(str(root)) == []
    assert sorted(os.listdir(tmp_path)) == ["home", "mirror"]


def test_the_same_install_without_the_rewrite_succeeds(tmp_path, keys):
    signer, user = keys
    copy_keyring(user, os.environ["BINCACHE_GNUPGHOME"])
    n = node("zlib", "1.3")
    mirror = str(tmp_path / "mirror")
    write_package(mirror, Package(n, OLD, [member(OLD + "/lib/libz.so", b"good")]), signer)
    result = api.install(["zlib"], mirrors=[mirror], root=str(tmp_path / "root"))
    (pkg,) = result.installed
    assert open(os.path.join(pkg.prefix, "lib", "libz.so"), "rb").read() == b"good"


@pytest.mark.parametrize("how", ["file", "stream"])
def test_extract_checks_the_digest_of_what_it_read(tmp_path, how):
    """Both readers: the C inflater on a descriptor, and Python's zlib on a stream."""
    n = node("zlib", "1.3")
    data = _trojan(n)
    src: object = io.BytesIO(data)
    if how == "file":
        (tmp_path / "t.tar.gz").write_bytes(data)
        src = str(tmp_path / "t.tar.gz")
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        _extract_fresh(tmp_path, src, Expected(len(data), "sha256", "0" * 64, "blob"))
    with pytest.raises(IntegrityError, match="manifest says 5"):
        _extract_fresh(tmp_path, src, Expected(5, "sha256", "0" * 64, "blob"))
    good = Expected(len(data), "sha256", hashlib.sha256(data).hexdigest(), "blob")
    out = _extract_fresh(tmp_path, src, good)
    assert out.files == ["bin/sh", ".spack/binary_distribution"]


def _extract_fresh(tmp_path, src, expect):
    staging = tempfile.mkdtemp(dir=tmp_path)
    if hasattr(src, "seek"):
        src.seek(0)
    return extract_package(src, None, staging, expect=expect)
