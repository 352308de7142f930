"""`bincache migrate`: a layout v2 cache (signed, as Spack 0.2x writes it) becomes layout v3,
re-signed, and bincache installs from it with signatures verified and the program runs.

The v2 caches are the real ones of test_layout_v2 (gcc-built library and program, gpg-signed
spec files, Spack's paths); the caches Spack 0.23 itself wrote are tried in test_spack_migrate.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from bincache.mirror import open_cache
from bincache.mirror.config import MirrorRef
from bincache.mirror.layout_v3 import LayoutV3Cache
from tests.conftest import run_cli
from tests.integration import test_layout_v2 as v2
from tests.integration.test_layout_v2 import assert_relocated, run_prog, write_v2_cache

# The real v2 caches of test_layout_v2: its built store and the old cache's signing key.
store = v2.store
signing_home = v2.signing_home


def snapshot(path) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture
def homes():
    made = []

    def home():
        h = tempfile.mkdtemp(prefix="bcm", dir="/tmp")
        made.append(h)
        return h

    yield home
    for h in made:
        subprocess.run(["gpgconf", "--homedir", h, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(h, ignore_errors=True)


def test_signed_v2_cache_migrates_in_place_resigned_and_installs_verified(store, signing_home,
                                                                           tmp_path, homes):
    mirror = str(tmp_path / "cache")
    write_v2_cache(store, mirror, signer=signing_home)
    site = homes()  # the site migrating: trusts the old cache's key, owns a new one

    def cli(*args, home=site, check=True):
        return run_cli(*args, env={"BINCACHE_GNUPGHOME": home}, check=check)

    cli("keys", "install", mirror, "--trust")
    cli("keys", "create", "Migrator", "migrator@example.com")
    before = snapshot(mirror)

    # Without a key the v2 signatures cannot be carried over: refused, nothing written.
    r = cli("migrate", mirror, check=False)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "cannot be carried over" in r.stderr and "-k KEY" in r.stderr
    assert snapshot(mirror) == before

    r = cli("migrate", mirror, "-k", "Migrator")
    assert "2 migrated, 0 already in layout v3, 0 failed (in place)" in r.stdout
    assert "re-signed with" in r.stdout and "cannot be kept" in r.stdout
    assert isinstance(open_cache(MirrorRef(mirror)), LayoutV3Cache)
    # The old layout is untouched, byte for byte.
    after = snapshot(mirror)
    assert {k: v for k, v in after.items() if k.startswith("build_cache/")} == before
    assert json.load(open(os.path.join(mirror, "v3", "layout.json"))) == {"signing": "gpg"}

    # The new manifests verify with gpg itself against the migrator's key.
    mdir = os.path.join(mirror, "v3", "manifests", "spec", "prog")
    (manifest,) = os.listdir(mdir)
    v = subprocess.run(["gpg", "--homedir", site, "--batch", "--verify", os.path.join(mdir, manifest)],
                       capture_output=True, text=True)
    assert v.returncode == 0 and "Migrator" in v.stderr

    # Someone who trusts only the migrator's key (published in the mirror) installs and runs.
    user = homes()
    cli("keys", "install", mirror, "--trust", home=user)
    keys = json.loads(cli("keys", "list", "--json", home=user).stdout)
    assert [(k["uids"], k["trusted"]) for k in keys] == [(["Migrator <migrator@example.com>"], True)]
    new_root = str(tmp_path / "installed")
    cli("--root", new_root, "install", "--mirror", mirror, "prog", home=user)
    assert_relocated(run_prog(new_root), new_root, store)

    # Again: nothing to do. Then --delete-old removes build_cache/; the blobs stay installable.
    r = cli("migrate", mirror, "-k", "Migrator")
    assert "0 migrated, 2 already in layout v3" in r.stdout
    r = cli("migrate", mirror, "--delete-old", check=False)
    assert r.returncode == 2 and "--yes-to-all" in r.stderr
    cli("migrate", mirror, "--delete-old", "-y")
    assert not os.path.exists(os.path.join(mirror, "build_cache"))
    again = str(tmp_path / "again")
    cli("--root", again, "install", "--mirror", mirror, "prog", home=user)
    assert_relocated(run_prog(again), again, store)


def test_unsigned_v2_cache_into_a_new_directory_leaves_the_source_alone(store, tmp_path, homes):
    src, dest = str(tmp_path / "old"), str(tmp_path / "new")
    write_v2_cache(store, src, signer=None, index=False)
    before = snapshot(src)
    env = {"BINCACHE_GNUPGHOME": homes()}
    r = run_cli("migrate", src, dest, env=env)
    assert r.returncode == 1 and "not signed: give --unsigned" in r.stderr
    assert not os.path.exists(dest)
    r = run_cli("migrate", src, dest, "--unsigned", "--json", env=env, check=True)
    doc = json.loads(r.stdout)
    assert sorted(p["name"] for p in doc["packages"] if p["action"] == "migrated") == ["libfoo", "prog"]
    assert not doc["in_place"] and doc["index_updated"]
    assert snapshot(src) == before
    listed = json.loads(run_cli("list", dest, "--json", env=env, check=True).stdout)
    assert sorted(e["name"] for e in listed) == ["libfoo", "prog"]
    assert all(e["size"] > 0 for e in listed)
    root = str(tmp_path / "root")
    run_cli("--root", root, "install", "--unsigned", "--mirror", dest, "prog", env=env, check=True)
    assert_relocated(run_prog(root), root, store)


def test_bad_input_changes_nothing(store, signing_home, tmp_path, homes):
    src = str(tmp_path / "old")
    write_v2_cache(store, src, signer=signing_home)
    home = homes()
    env = {"BINCACHE_GNUPGHOME": home}
    run_cli("keys", "install", src, "--trust", env=env, check=True)
    run_cli("keys", "create", "Migrator", "m@example.com", env=env, check=True)
    a_file = tmp_path / "file"
    a_file.write_text("not a mirror\n")
    before = snapshot(src)

    r = run_cli("migrate", src, str(a_file), "-k", "Migrator", env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "is a file" in r.stderr
    assert a_file.read_text() == "not a mirror\n"

    # A spec file changed after signing: the whole migration is refused before any write.
    sig = next(p for p in os.listdir(os.path.join(src, "build_cache")) if p.endswith(".sig") and "prog" in p)
    path = os.path.join(src, "build_cache", sig)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw.replace(b'"version":"2.3"', b'"version":"2.4"', 1))
    before = snapshot(src)
    r = run_cli("migrate", src, "-k", "Migrator", env=env)
    assert r.returncode == 1 and "nothing was changed" in r.stderr and "BAD signature" in r.stderr
    assert snapshot(src) == before

    r = run_cli("migrate", str(tmp_path / "nowhere"), env=env)
    assert r.returncode == 1 and r.stderr.startswith("error: no mirror at")
    v3 = str(tmp_path / "v3")
    os.makedirs(v3)
    r = run_cli("migrate", v3, env=env)
    assert r.returncode == 1 and "holds no Spack layout v2 cache" in r.stderr
