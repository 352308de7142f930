"""`bincache sync`: directory -> s3 (a real moto_server) -> directory, signatures carried as
they are; a rerun after an interruption copies only what was missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from tests.conftest import run_cli
from tests.integration import test_s3

s3_server = test_s3.s3_server  # a real moto_server on loopback, with the bucket "cache"

pytestmark = pytest.mark.skipif(shutil.which("moto_server") is None, reason="moto_server is not installed")


@pytest.fixture
def signed_mirror(tmp_path):
    """hello -> libgreet, pushed signed by a builder whose key the mirror publishes."""
    builder = tempfile.mkdtemp(prefix="bcy", dir="/tmp")
    root = tmp_path / "root"
    lib = root / "opt" / "libgreet-2.0"
    (lib / "share").mkdir(parents=True)
    (lib / "share" / "greeting").write_text("hello from libgreet\n" * 100)
    hello = root / "opt" / "hello-1.0"
    (hello / "bin").mkdir(parents=True)
    (hello / "bin" / "hello").write_text(f"#!/bin/sh\ncat {lib}/share/greeting | head -1\n")
    os.chmod(hello / "bin" / "hello", 0o755)
    env = {"BINCACHE_GNUPGHOME": builder}
    run_cli("--root", str(root), "register", str(lib), "--name", "libgreet", "--version", "2.0",
            "--no-autopush", env=env, check=True)
    run_cli("--root", str(root), "register", str(hello), "--name", "hello", "--version", "1.0",
            "--dep", str(lib), "--no-autopush", env=env, check=True)
    run_cli("keys", "create", "Builder", "b@example.com", env=env, check=True)
    mirror = tmp_path / "origin"
    run_cli("--root", str(root), "create", str(mirror), "--rebuild-index", env=env, check=True)
    yield mirror
    subprocess.run(["gpgconf", "--homedir", builder, "--kill", "all"], capture_output=True, check=False)
    shutil.rmtree(builder, ignore_errors=True)


def sync(*args, env):
    r = run_cli("sync", *args, "--json", env=env, check=True)
    return json.loads(r.stdout)


def test_round_trip_through_s3_installs_verified_and_resumes(signed_mirror, s3_server, tmp_path):
    user = tempfile.mkdtemp(prefix="bcu", dir="/tmp")
    env = dict(s3_server, BINCACHE_GNUPGHOME=user)
    try:
        first = sync(str(signed_mirror), "s3://cache/copy", "hello", env=env)
        assert sorted(s["name"] for s in first["copied"]) == ["hello", "libgreet"]  # deps too
        back = tmp_path / "back"
        again = sync("s3://cache/copy", str(back), env=env)
        assert again["blobs_copied"] == first["blobs_copied"]
        # The manifests are the original bytes: the builder's signatures still verify.
        for d, _, files in os.walk(signed_mirror / "v3" / "manifests" / "spec"):
            for f in files:
                rel = os.path.relpath(os.path.join(d, f), signed_mirror)
                assert (back / rel).read_bytes() == (signed_mirror / rel).read_bytes()
        run_cli("keys", "install", str(back), "--trust", env=env, check=True)  # the carried key
        new_root = tmp_path / "installed"
        run_cli("--root", str(new_root), "install", "--mirror", str(back), "hello", env=env, check=True)
        (prog,) = [os.path.join(d, "hello") for d, _, f in os.walk(new_root) if "hello" in f]
        out = subprocess.run([prog], capture_output=True, text=True, check=True).stdout
        assert out == "hello from libgreet\n"

        # An interrupted run: hello's manifest never landed, one of its blobs neither.
        (manifest,) = (back / "v3" / "manifests" / "spec" / "hello").iterdir()
        records = json.loads(manifest.read_text().split("\n\n", 1)[1].split("-----BEGIN PGP SIGNATURE", 1)[0])
        lost = records["data"][0]
        manifest.unlink()
        (back / "blobs" / "sha256" / lost["checksum"][:2] / lost["checksum"]).unlink()
        resumed = sync("s3://cache/copy", str(back), env=env)
        assert [s["name"] for s in resumed["copied"]] == ["hello"]
        assert [s["name"] for s in resumed["present"]] == ["libgreet"]
        assert (resumed["blobs_copied"], resumed["bytes_copied"]) == (1, lost["contentLength"])
        nothing = sync("s3://cache/copy", str(back), env=env)
        assert nothing["copied"] == [] and nothing["bytes_copied"] == 0
    finally:
        subprocess.run(["gpgconf", "--homedir", user, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(user, ignore_errors=True)


def test_only_package_and_bad_input(signed_mirror, tmp_path):
    dest = tmp_path / "dest"
    r = run_cli("sync", str(signed_mirror), str(dest), "hello", "--only", "package", "--json", check=True)
    assert [s["name"] for s in json.loads(r.stdout)["copied"]] == ["hello"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = run_cli("sync", str(signed_mirror), str(a_file))
    assert r.returncode == 2 and "is a file" in r.stderr and a_file.read_text() == "x"
    r = run_cli("sync", str(signed_mirror), str(tmp_path / "d2"), "nosuch")
    assert r.returncode == 1 and "not in the source mirror" in r.stderr
    assert not (tmp_path / "d2").exists()
