"""Real Spack 0.23 both ways on a tree Spack builds now (run when BINCACHE_SPACK names a spack).

Spack builds the fixture recipes (tests/fixtures/spack/make_fixtures.sh: a padded store, glibc
and gcc-runtime external) and pushes them to layout v2 mirrors, once per module. bincache
installs that fresh cache and the program runs; bincache updates the index of Spack's own
cache, and Spack lists and installs from it with ``--cache-only``. Spack's configuration,
caches and keyring live in temporary directories; `.ci/run` sets BINCACHE_SPACK.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from tests.fixtures.spack_tree import HERE
from tests.integration.test_spack_tree import assert_runs_from, target_db

SPACK = os.environ.get("BINCACHE_SPACK")
pytestmark = [pytest.mark.spack, pytest.mark.slow,
              pytest.mark.skipif(not SPACK or not os.access(SPACK, os.X_OK),
                                 reason="BINCACHE_SPACK does not name a spack executable")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Spack's own build and pushes, in a short directory (GnuPG sockets, padded paths)."""
    base = tempfile.mkdtemp(prefix="bcst", dir="/tmp")
    out = str(tmp_path_factory.mktemp("spack-out"))
    env = dict(os.environ, ROOT_BASE=os.path.join(base, "t"),
               SPACK_USER_CONFIG_PATH=os.path.join(base, "user"),
               SPACK_USER_CACHE_PATH=os.path.join(base, "cache"),
               SPACK_SYSTEM_CONFIG_PATH=os.path.join(base, "system"),
               SPACK_DISABLE_LOCAL_CONFIG="1")
    proc = subprocess.run([os.path.join(HERE, "make_fixtures.sh"), SPACK, out], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    env["SPACK_GNUPGHOME"] = os.path.join(env["ROOT_BASE"], "gpg")
    yield {"out": out, "base": env["ROOT_BASE"], "env": env}
    subprocess.run(["gpgconf", "--homedir", env["SPACK_GNUPGHOME"], "--kill", "all"],
                   capture_output=True, check=False)
    shutil.rmtree(base, ignore_errors=True)


def spack(built, scope: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([SPACK, "-C", scope, *args], capture_output=True, text=True,
                          env=built["env"], stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0, f"spack {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_bincache_installs_a_cache_spack_just_built_and_the_program_runs(built, cli, tmp_path):
    mirror = os.path.join(built["out"], "mirror-signed")
    cli("keys", "install", mirror, "--trust", check=True)
    root = str(tmp_path / "root")
    cli("--root", root, "install", "--mirror", mirror, "hello", check=True)
    assert_runs_from(root)
    with open(os.path.join(built["out"], "facts.json")) as f:
        facts = json.load(f)
    db = target_db(root)
    for ext in facts["externals"].values():
        assert db["installs"][ext["hash"]]["path"] == "/usr"
    # And the tree Spack left, found from its configured root, is pushed without externals.
    pushed = cli("--root", facts["configured_root"], "create", "--unsigned", str(tmp_path / "m"),
                 "hello", check=True).stdout
    assert "glibc" not in pushed and "2 pushed" in pushed


def test_spack_lists_and_installs_after_bincache_updates_its_index(built, cli, tmp_path):
    mirror = str(tmp_path / "mirror")
    shutil.copytree(os.path.join(built["out"], "mirror-unsigned"), mirror)
    index = os.path.join(mirror, "build_cache", "index.json")
    os.unlink(index)  # the index bincache writes is the only one
    os.unlink(index + ".hash")
    cli("update-index", mirror, check=True)
    with open(index) as f:
        assert json.load(f)["database"]["version"] == "7"
    scope = str(tmp_path / "scope")
    shutil.copytree(os.path.join(built["base"], "cfg"), scope)
    store = str(tmp_path / "store")
    with open(os.path.join(scope, "config.yaml"), "w") as f:
        f.write(f"config:\n  install_tree: {{root: {store}}}\n")
    with open(os.path.join(scope, "mirrors.yaml"), "w") as f:
        f.write(f"mirrors:\n  bc:\n    url: file://{mirror}\n    signed: false\n")
    listed = spack(built, scope, "buildcache", "list", "-a", "-l").stdout
    assert "hello@1.0" in listed and "libgreet@1.0" in listed, listed
    spack(built, scope, "install", "--cache-only", "--no-check-signature", "hello")
    (prog,) = glob.glob(os.path.join(store, "*", "*", "hello-1.0-*", "bin", "hello"))
    out = subprocess.run([prog], capture_output=True, text=True, check=True).stdout
    at = out.splitlines()[1].split(" at ", 1)[1]
    assert re.sub("^/+", "/", at).startswith(store + "/"), out  # Spack relocated it (slash-padded)


def test_spack_finds_what_bincache_installed_into_its_store(built, cli, tmp_path):
    """An install records into the tree's `.spack-db/index.json` (bincache's journal is folded
    into Spack's text at the end of each install): Spack's own `find` lists the packages, at
    their paths, in a store Spack made and in one it never opened. The second install splices
    its record into the text the first one wrote (last in the map, its dependency's count
    rewritten where it is)."""
    mirror = os.path.join(built["out"], "mirror-unsigned")
    for opened_by_spack in (True, False):
        scope = str(tmp_path / f"scope-{opened_by_spack}")
        shutil.copytree(os.path.join(built["base"], "cfg"), scope)
        store = str(tmp_path / f"store-{opened_by_spack}")
        with open(os.path.join(scope, "config.yaml"), "w") as f:
            f.write(f"config:\n  install_tree: {{root: {store}}}\n")
        if opened_by_spack:
            spack(built, scope, "reindex")  # Spack makes the store: its lock and database
            assert os.path.exists(os.path.join(store, ".spack-db", "lock"))
        cli("--root", store, "install", "--unsigned", "--mirror", mirror, "libgreet", check=True)
        cli("--root", store, "install", "--unsigned", "--mirror", mirror, "hello", check=True)
        found = spack(built, scope, "find", "-p", "hello", "libgreet").stdout
        (hello_dir,) = glob.glob(os.path.join(store, "**", "hello-1.0-*"), recursive=True)
        assert "hello@1.0" in found and "libgreet@1.0" in found, found
        assert hello_dir in found, found
