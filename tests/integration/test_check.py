"""`bincache check`: CI asks which specs need a rebuild; the exit status answers (real gpg)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """An install tree with hello (depending on libgreet), a builder key, and a signed mirror
    holding both, an unsigned mirror holding both, and an empty directory mirror."""
    base = tmp_path_factory.mktemp("check")
    home = tempfile.mkdtemp(prefix="bcc", dir="/tmp")
    env = {"BINCACHE_GNUPGHOME": home, "HOME": str(base)}
    root = base / "root"
    lib = root / "opt" / "libgreet-2.0"
    (lib / "lib").mkdir(parents=True)
    (lib / "lib" / "greet.txt").write_text("hello\n")
    hello = root / "opt" / "hello-1.0"
    (hello / "bin").mkdir(parents=True)
    (hello / "bin" / "hello").write_text(f"#!/bin/sh\ncat {lib}/lib/greet.txt\n")
    os.chmod(hello / "bin" / "hello", 0o755)

    def cli(*args, check=True, gpg=home):
        return run_cli("--root", str(root), *args, env=dict(env, BINCACHE_GNUPGHOME=gpg), check=check)

    cli("register", str(lib), "--name", "libgreet", "--version", "2.0", "--no-autopush")
    cli("register", str(hello), "--name", "hello", "--version", "1.0", "--dep", str(lib), "--no-autopush")
    cli("keys", "create", "Builder", "builder@example.com")
    signed, unsigned, empty = base / "signed", base / "unsigned", base / "empty"
    cli("create", str(signed))
    cli("create", str(unsigned), "--unsigned")
    empty.mkdir()
    hashes = {json.loads(open(p / ".spack" / "spec.json").read())["spec"]["nodes"][0]["name"]:
              json.loads(open(p / ".spack" / "spec.json").read())["spec"]["nodes"][0]["hash"]
              for p in (lib, hello)}
    yield {"base": base, "root": root, "home": home, "cli": cli, "signed": signed,
           "unsigned": unsigned, "empty": empty, "hashes": hashes, "hello": hello}
    run_cli("keys", "list", env=env)  # nothing to assert: only stops using the home
    shutil.rmtree(home, ignore_errors=True)


def results(proc) -> dict:
    return {(r["name"], r["mirror"].rsplit("/", 1)[-1]): r for r in json.loads(proc.stdout)["results"]}


def test_exit_0_when_the_mirror_holds_every_installed_spec_signed(site):
    r = site["cli"]("check", str(site["signed"]), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing to rebuild" in r.stdout
    assert r.stdout.count("signed by ") == 2


def test_exit_1_on_a_mirror_without_the_specs(site):
    r = site["cli"]("check", str(site["empty"]), "--json", check=False)
    assert r.returncode == 1, r.stderr
    got = results(r)
    assert {k: v["status"] for k, v in got.items()} == {("hello", "empty"): "missing",
                                                          ("libgreet", "empty"): "missing"}


def test_one_spec_given_by_name_and_by_spec_file(site):
    r = site["cli"]("check", str(site["empty"]), "libgreet", check=False)
    assert r.returncode == 1 and "libgreet@2.0" in r.stdout and "hello@" not in r.stdout
    specfile = str(site["hello"] / ".spack" / "spec.json")
    r = site["cli"]("check", str(site["signed"]), specfile, check=False)
    assert r.returncode == 0 and "hello@1.0" in r.stdout and "libgreet" not in r.stdout


def test_a_full_hash_is_looked_up_in_the_mirror_without_an_install_tree(site):
    h = site["hashes"]["hello"]
    env = {"BINCACHE_GNUPGHOME": site["home"], "HOME": str(site["base"])}
    r = run_cli("check", str(site["signed"]), f"/{h}", "--json", env=env)
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert (res["name"], res["status"]) == ("hello", "ok")
    r = run_cli("check", str(site["empty"]), f"/{h}", env=env)
    assert r.returncode == 1 and "missing" in r.stdout


def test_several_mirrors_report_per_mirror_and_write_spacks_output_file(site):
    out = site["base"] / "rebuilds.json"
    r = site["cli"]("check", "-m", str(site["signed"]), "-m", str(site["empty"]), "hello",
                    "-o", str(out), check=False)
    assert r.returncode == 1
    doc = json.loads(out.read_text())
    # Spack's shape: only the mirror that lacks the spec, with the spec to rebuild.
    (url,) = doc
    assert url.endswith("/empty") and doc[url]["mirrorUrl"] == url
    assert [s["hash"] for s in doc[url]["rebuildSpecs"]] == [site["hashes"]["hello"]]


def test_a_tampered_signature_needs_a_rebuild_and_says_why(site):
    mirror = site["base"] / "tampered"
    shutil.copytree(site["signed"], mirror)
    mdir = mirror / "v3" / "manifests" / "spec" / "hello"
    (manifest,) = mdir.iterdir()
    raw = manifest.read_bytes()
    manifest.write_bytes(raw.replace(b'"contentLength":', b'"contentLength": ', 1))
    r = site["cli"]("check", str(mirror), "--json", check=False)
    assert r.returncode == 1
    got = results(r)
    assert got[("libgreet", "tampered")]["status"] == "ok"
    bad = got[("hello", "tampered")]
    assert bad["status"] == "bad-signature" and "BAD signature" in bad["reason"]


def test_a_key_nobody_trusts_and_an_unsigned_package_need_a_rebuild(site):
    stranger = tempfile.mkdtemp(prefix="bcs", dir="/tmp")
    try:
        r = site["cli"]("check", str(site["signed"]), "hello", "--json", check=False, gpg=stranger)
        assert r.returncode == 1
        assert results(r)[("hello", "signed")]["status"] == "bad-signature"
    finally:
        shutil.rmtree(stranger, ignore_errors=True)
    r = site["cli"]("check", str(site["unsigned"]), "hello", check=False)
    assert r.returncode == 1 and "unsigned" in r.stdout and "not signed" in r.stdout
    r = site["cli"]("check", str(site["unsigned"]), "hello", "--unsigned", check=False)
    assert r.returncode == 0, r.stdout


def test_a_manifest_naming_a_missing_blob_needs_a_rebuild(site):
    mirror = site["base"] / "holed"
    shutil.copytree(site["signed"], mirror)
    blobs = sorted((mirror / "blobs").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    biggest = blobs[-1]  # a tarball
    biggest.unlink()
    r = site["cli"]("check", str(mirror), "--json", check=False)
    assert r.returncode == 1
    statuses = [v["status"] for v in json.loads(r.stdout)["results"]]
    assert "damaged" in statuses
    assert any("lacks" in v["reason"] for v in json.loads(r.stdout)["results"])


def test_bad_input_is_one_error_line(site):
    r = site["cli"]("check", str(site["base"] / "nowhere"), check=False)
    assert r.returncode == 1 and r.stderr.strip().startswith("error: no mirror at")
    assert len(r.stderr.strip().splitlines()) == 1
    r = site["cli"]("check", str(site["signed"]), "nosuchpkg", check=False)
    assert r.returncode == 1 and r.stderr.startswith('error: no installed spec matches "nosuchpkg"')
