"""`bincache sync` with OCI registries (a real docker-registry on 127.0.0.1): a gcc-built,
signed stack goes directory -> s3 (moto_server) -> registry -> directory and installs, verified
with the builder's original key, from the registry and from the last copy; between repositories
of one registry blobs are mounted; reruns after an interruption copy only what is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest
import requests

from tests.conftest import run_cli
from tests.fixtures.registered_stack import build_registered_stack, run_sqprog
from tests.fixtures.registry import needs_registry
from tests.integration import test_s3

s3_server = test_s3.s3_server
pytest_plugins = ["tests.fixtures.registry"]

pytestmark = [needs_registry]


def sync(*args, env=None):
    r = run_cli("sync", *args, "--json", env=env, check=True)
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def signed_stack(tmp_path_factory):
    """sqprog -> libsq (gcc-built), pushed signed into a directory mirror that publishes the
    builder's key; the builder's keyring is gone afterwards (only the published key remains)."""
    base = tmp_path_factory.mktemp("stack")
    builder = tempfile.mkdtemp(prefix="bcb", dir="/tmp")
    env = {"BINCACHE_GNUPGHOME": builder, "HOME": str(base)}
    stack = build_registered_stack(str(base), lambda *a, **k: run_cli(*a, env=env, **k))
    run_cli("keys", "create", "Builder", "b@example.com", env=env, check=True)
    origin = base / "origin"
    run_cli("--root", stack.root, "create", str(origin), "--rebuild-index", env=env, check=True)
    subprocess.run(["gpgconf", "--homedir", builder, "--kill", "all"], capture_output=True, check=False)
    shutil.rmtree(builder, ignore_errors=True)
    return stack, origin


def manifests(mirror):
    top = mirror / "v3" / "manifests" / "spec"
    return {str(p.relative_to(mirror)): p.read_bytes() for p in top.rglob("*.json")}


def install_and_run(mirror, root, env=None):
    run_cli("--root", str(root), "install", "--mirror", mirror, "sqprog", env=env, check=True)
    out = run_sqprog(str(root))
    assert out.startswith("sq(7)=49 data=") and out.rstrip().endswith("/share/sq"), out


def repo_delete(reg, repo, reference):
    """DELETE a manifest (by digest) or a blob link from one repository, as a registry client."""
    base = f"{reg.http_url}/v2/{repo}"
    if reference.startswith("blob:"):
        r = requests.delete(f"{base}/blobs/{reference[5:]}", timeout=10)
    else:
        r = requests.delete(f"{base}/manifests/{reference}", timeout=10)
    assert r.status_code == 202, (r.status_code, r.text)


def tag_digest(reg, repo, tag):
    r = requests.head(f"{reg.http_url}/v2/{repo}/manifests/{tag}", timeout=10,
                      headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 200
    return r.headers["Docker-Content-Digest"]


def test_dir_s3_oci_dir_round_trip_installs_verified_with_the_original_key(
        signed_stack, s3_server, registry_http, tmp_path):
    stack, origin = signed_stack
    env = dict(s3_server)
    oci = f"{registry_http.url}/roundtrip/cache"
    first = sync(str(origin), "s3://cache/copy", env=env)
    assert sorted(s["name"] for s in first["copied"]) == ["libsq", "sqprog"]
    to_oci = sync("s3://cache/copy", oci, env=env)
    assert sorted(s["name"] for s in to_oci["copied"]) == ["libsq", "sqprog"]
    # Two tarballs and two spec blobs went up; the images' configs are made there.
    assert to_oci["blobs_copied"] == 4 and to_oci["index_updated"]
    back = tmp_path / "back"
    last = sync(oci, str(back), env=env)
    assert last["blobs_copied"] == 4
    # The original manifests, byte for byte: the builder's signatures are the same documents.
    assert manifests(back) == manifests(origin)

    # A user who trusts only the builder's published key installs from the registry and from
    # the last copy (which has no key of its own: registries hold none).
    run_cli("keys", "install", str(origin), "--trust", check=True)
    install_and_run(oci, tmp_path / "from-oci")
    install_and_run(str(back), tmp_path / "from-back")
    r = run_cli("check", str(back), f"/{stack.prog_hash}", f"/{stack.lib_hash}")
    assert r.returncode == 0, r.stdout + r.stderr

    # Another key's user is refused: the signature really is checked on the registry copy.
    other = tempfile.mkdtemp(prefix="bco", dir="/tmp")
    try:
        r = run_cli("--root", str(tmp_path / "refused"), "install", "--mirror", oci, "sqprog",
                    env={"BINCACHE_GNUPGHOME": other})
        assert r.returncode != 0 and "error:" in r.stderr
        assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").rglob("sqprog"))
    finally:
        subprocess.run(["gpgconf", "--homedir", other, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(other, ignore_errors=True)

    # Interrupted on the way into the registry: sqprog's tag and its tarball never landed.
    tag = next(t for t in requests.get(f"{registry_http.http_url}/v2/roundtrip/cache/tags/list",
                                       timeout=10).json()["tags"] if t.startswith("sqprog-"))
    config = requests.get(f"{registry_http.http_url}/v2/roundtrip/cache/manifests/{tag}", timeout=10,
                          headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    tarball = config["layers"][-1]
    repo_delete(registry_http, "roundtrip/cache", tag_digest(registry_http, "roundtrip/cache", tag))
    repo_delete(registry_http, "roundtrip/cache", "blob:" + tarball["digest"])
    resumed = sync("s3://cache/copy", oci, env=env)
    assert [s["name"] for s in resumed["copied"]] == ["sqprog"]
    assert (resumed["blobs_copied"], resumed["bytes_copied"]) == (1, tarball["size"])
    assert resumed["requests"].get("PUT upload") == 1  # only the tarball was uploaded again
    assert tag_digest(registry_http, "roundtrip/cache", tag)  # the same image, tagged again
    install_and_run(oci, tmp_path / "after-resume")
    nothing = sync("s3://cache/copy", oci, "--no-update-index", env=env)
    assert nothing["copied"] == [] and nothing["bytes_copied"] == 0 and not nothing["index_updated"]
    assert "PUT upload" not in nothing["requests"] and "PUT manifest" not in nothing["requests"]


def test_between_repositories_of_one_registry_blobs_are_mounted(signed_stack, registry_http, tmp_path):
    stack, origin = signed_stack
    a, b = f"{registry_http.url}/mount/a", f"{registry_http.url}/mount/b"
    sync(str(origin), a, "-j", "2")
    moved = sync(a, b)
    assert sorted(s["name"] for s in moved["copied"]) == ["libsq", "sqprog"]
    # Every blob mounted (two tarballs, two configs, two spec blobs, two signed manifests, the
    # empty config of the signatures): nothing downloaded but the two signed manifests read to
    # carry them, nothing uploaded.
    assert moved["blobs_copied"] == 0 and moved["bytes_copied"] == 0
    assert moved["blobs_mounted"] == 9
    assert moved["requests"].get("POST upload") == 9 + 1  # + the index image's layer
    assert "PATCH upload" not in moved["requests"]
    assert moved["requests"]["PUT upload"] == 1  # the index written at the end, nothing else
    # GET blob: the two signed manifests (carried) and the two configs the destination's
    # update-index reads; the source's index comes from the local index cache (this machine
    # wrote it: one HEAD of index.spack checks it is still the same).
    assert moved["requests"]["GET blob"] == 2 + 2
    # The copy is the same images: same digests, same signatures.
    for tag in ("sqprog", "libsq"):
        ta = next(t for t in requests.get(f"{registry_http.http_url}/v2/mount/a/tags/list",
                                          timeout=10).json()["tags"] if t.startswith(tag + "-"))
        assert tag_digest(registry_http, "mount/a", ta) == tag_digest(registry_http, "mount/b", ta)
    run_cli("keys", "install", str(origin), "--trust", check=True)
    install_and_run(b, tmp_path / "from-b")


def test_registry_push_signed_by_bincache_syncs_to_a_directory_that_installs(
        signed_stack, registry_http, tmp_path):
    """An image signed in the registry (bincache's own OCI signature) keeps that signature in
    a directory mirror: the signed document becomes the manifest, the config the spec file."""
    stack, _ = signed_stack
    home = tempfile.mkdtemp(prefix="bcn", dir="/tmp")
    try:
        env = {"BINCACHE_GNUPGHOME": home}
        run_cli("keys", "create", "Pusher", "p@example.com", env=env, check=True)
        oci = f"{registry_http.url}/native/cache"
        run_cli("--root", stack.root, "create", oci, "--rebuild-index", env=env, check=True)
        dest = tmp_path / "dir"
        out = sync(oci, str(dest), env=env)
        assert sorted(s["name"] for s in out["copied"]) == ["libsq", "sqprog"]
        assert all(b.startswith(b"-----BEGIN PGP SIGNED MESSAGE") for b in manifests(dest).values())
        install_and_run(str(dest), tmp_path / "installed", env=env)
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def test_bad_destinations_change_nothing(signed_stack, registry_http, tmp_path):
    _, origin = signed_stack
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = run_cli("sync", f"{registry_http.url}/nosuch/repo", str(a_file))
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "is a file" in r.stderr
    assert a_file.read_text() == "x"
    r = run_cli("sync", str(origin), f"{registry_http.url}/bad/dest", "nosuch")
    assert r.returncode == 1 and "not in the source mirror" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    tags = requests.get(f"{registry_http.http_url}/v2/bad/dest/tags/list", timeout=10)
    assert tags.status_code == 404 or not tags.json().get("tags")


@pytest.mark.spack
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("BINCACHE_SPACK"), reason="BINCACHE_SPACK does not name a spack executable")
def test_spack_installs_what_sync_put_into_a_registry(tmp_path, cli):
    """A signed directory mirror synced into a registry: Spack 0.23 lists it and installs it
    (unsigned, as Spack reads every OCI cache), and the program runs from Spack's store."""
    from tests.fixtures.registry import start_registry
    from tests.integration.test_spack_live import Spack, assert_installed_and_runs, assert_listed

    spack = Spack(str(tmp_path / "spack"))
    reg = start_registry(tmp_path / "registry", "tls-anonymous")
    try:
        platform, os_name, _ = spack("arch").stdout.strip().split("-")
        stack = build_registered_stack(str(tmp_path / "build"), cli, arch=f"{platform}-{os_name}-x86_64")
        cli("keys", "create", "Builder", "b@example.com", check=True)
        origin = tmp_path / "origin"
        cli("--root", stack.root, "create", str(origin), "--rebuild-index", check=True)
        url = f"{reg.url}/spack/synced"
        sync(str(origin), url, env=reg.env())
        spack.configure(url, ssl_certs=str(reg.ca_file))
        assert_listed(spack, stack)
        assert_installed_and_runs(spack, stack, "--no-check-signature")
    finally:
        reg.stop()
        spack.close()


def test_between_two_registries_blobs_are_downloaded_and_uploaded_once(signed_stack, registry_http,
                                                                       registry_factory, tmp_path):
    stack, origin = signed_stack
    other = registry_factory("http")
    a, b = f"{registry_http.url}/cross/a", f"{other.url}/cross/b"
    sync(str(origin), a)
    moved = sync(a, b)
    assert sorted(s["name"] for s in moved["copied"]) == ["libsq", "sqprog"]
    # No mount between registries: each of the 9 blobs once down, once up; the same images.
    assert moved["blobs_mounted"] == 0 and moved["blobs_copied"] == 9
    assert moved["requests"]["PUT upload"] == 9 + 1  # + the destination's index layer
    for tag in (t for t in requests.get(f"{registry_http.http_url}/v2/cross/a/tags/list",
                                        timeout=10).json()["tags"] if t.endswith(".spack")
                and t != "index.spack"):
        assert tag_digest(registry_http, "cross/a", tag) == tag_digest(other, "cross/b", tag)
    again = sync(a, b)
    assert again["copied"] == [] and again["blobs_copied"] == 0
    run_cli("keys", "install", str(origin), "--trust", check=True)
    install_and_run(b, tmp_path / "from-other")
