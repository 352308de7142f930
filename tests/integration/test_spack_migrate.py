"""`bincache migrate` (and `sync`) of the signed layout v2 cache real Spack 0.23 made
(tests/fixtures/spack/mirror-signed: gcc-built hello -> libgreet, glibc and gcc-runtime
externals): the v2 signature cannot be carried over, so the site re-signs with -k and says so;
a user who trusts only the site's key installs from the v3 cache and the program runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from tests.conftest import run_cli
from tests.fixtures.spack_tree import MIRROR_SIGNED, facts, spack_tree
from tests.integration.test_migrate import snapshot
from tests.integration.test_spack_tree import assert_runs_from


@pytest.fixture
def site_and_user():
    homes = [tempfile.mkdtemp(prefix="bcs", dir="/tmp") for _ in range(2)]
    yield homes
    for h in homes:
        subprocess.run(["gpgconf", "--homedir", h, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(h, ignore_errors=True)


def test_spack_made_signed_v2_cache_migrates_resigned_and_installs_verified(site_and_user, tmp_path):
    spack_tree()  # the prefixes Spack built are where its spec files say (relocation reads them)
    site, user = site_and_user
    mirror = str(tmp_path / "cache")
    shutil.copytree(MIRROR_SIGNED, mirror)

    def cli(*args, home=site, check=True):
        return run_cli(*args, env={"BINCACHE_GNUPGHOME": home}, check=check)

    cli("keys", "install", mirror, "--trust")  # Spack's signing key, from build_cache/_pgp
    cli("keys", "create", "Site", "site@example.com")
    before = snapshot(mirror)
    r = cli("migrate", mirror, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "cannot be carried over" in r.stderr and "-k KEY" in r.stderr
    assert snapshot(mirror) == before

    r = cli("migrate", mirror, "-k", "Site")
    assert "2 migrated, 0 already in layout v3, 0 failed (in place)" in r.stdout
    assert "re-signed with" in r.stdout and "cannot be kept" in r.stdout
    after = snapshot(mirror)
    assert {k: v for k, v in after.items() if k.startswith("build_cache/")} == before
    hashes = facts()["hashes"]
    mdir = os.path.join(mirror, "v3", "manifests", "spec", "hello")
    (manifest,) = os.listdir(mdir)
    assert hashes["hello"] in manifest
    v = subprocess.run(["gpg", "--homedir", site, "--batch", "--verify", os.path.join(mdir, manifest)],
                       capture_output=True, text=True)
    assert v.returncode == 0 and "Site" in v.stderr

    cli("keys", "install", mirror, "--trust", home=user)
    keys = json.loads(cli("keys", "list", "--json", home=user).stdout)
    assert [k["uids"] for k in keys] == [["Site <site@example.com>"]]
    root = str(tmp_path / "root")
    cli("--root", root, "install", "--mirror", mirror, "hello", home=user)
    assert_runs_from(root)
    r = cli("check", mirror, f"/{hashes['hello']}", f"/{hashes['libgreet']}", home=user, check=False)
    assert r.returncode == 0, r.stdout + r.stderr

    # The same Spack cache through sync, re-signed on the way, into a new directory.
    dest = tmp_path / "synced"
    out = json.loads(cli("sync", MIRROR_SIGNED, str(dest), "--resign", "Site", "--json").stdout)
    assert sorted(s["name"] for s in out["copied"]) == ["hello", "libgreet"] and out["resigned"] == 2
    root2 = str(tmp_path / "root2")
    cli("--root", root2, "install", "--mirror", str(dest), "hello", home=user)
    assert_runs_from(root2)
