"""Concurrent index writers lose nothing: 4 processes pushing with --rebuild-index at once, and a
slow full re-index overlapping quick pushes, on one directory, one S3 (moto) and one OCI
(docker-registry) mirror. The final index names every package; no manifest names a missing blob.

A soak run is one command: ``BINCACHE_SOAK_ROUNDS=10 BINCACHE_SOAK_LOAD=2 python3 -m pytest -q
-p no:cacheprovider tests/integration/test_index_concurrency.py`` runs each test 10 times per
mirror kind, with 2 busy-loop processes beside each round to widen the race windows
(CI runs one round, no load).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bincache import api
from bincache import index as ix
from bincache.errors import MirrorError
from bincache.mirror import open_cache
from bincache.mirror.config import MirrorRef
from tests.conftest import run_cli
from tests.fixtures.registry import needs_registry, registry_factory  # noqa: F401
from tests.index.packages import make_specs, put_package
from tests.integration.test_s3 import s3_server  # noqa: F401

PUSHERS, EACH = 4, 10
ROUNDS = int(os.environ.get("BINCACHE_SOAK_ROUNDS") or 1)
LOAD = int(os.environ.get("BINCACHE_SOAK_LOAD") or 0)
ARCH = {"platform": "linux", "platform_os": "debian12", "target": "x86_64"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """PUSHERS x EACH tiny registered prefixes, and 3 more for the quick pushes."""
    base = tmp_path_factory.mktemp("tree")
    root = str(base / "opt")
    names = [f"cc{i:02d}" for i in range(PUSHERS * EACH)] + ["quick0", "quick1", "quick2"]
    for name in names:
        prefix = os.path.join(root, name)
        os.makedirs(os.path.join(prefix, "share"))
        with open(os.path.join(prefix, "share", "data.txt"), "w") as f:
            f.write(f"{name} lives in {prefix}\n")
        api.register(prefix, name, "1.0", root=root, arch=ARCH)
    return root, names


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def _start(root: str, mirror: str, names: list[str], env: dict | None, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bincache", "--root", root, "create", "--unsigned",
                             mirror, *names, "--rebuild-index", *extra],
                            env=_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err


def _check_complete(mirror: str, expected: set[str], env: dict | None) -> None:
    """Every expected package in the index (sharded view and Spack's), every blob there."""
    listed = run_cli("list", "-a", "--json", mirror, env=env, check=True).stdout
    assert expected <= {p["name"] for p in json.loads(listed)}
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        cache = open_cache(MirrorRef(mirror))
        spack = ix.read_index(cache)  # Spack's single index (index.spack on OCI)
        assert expected <= {e.spec.name for e in spack.packages()}
        for e in spack.packages():
            if e.spec.name not in expected:
                continue
            manifest = cache.fetch_manifest(e.spec)
            for rec in (manifest.tarball, manifest.spec):
                cache.get_blob_bytes(rec)  # present, with its size and checksum
    finally:
        os.environ.clear()
        os.environ.update(old)


def _mirrors(kind, tmp_path, s3_env, factory):
    if kind == "directory":
        return str(tmp_path / "mirror"), None
    if kind == "s3":
        return f"s3://cache/round-{time.monotonic_ns()}", s3_env
    reg = factory("http")
    return f"{reg.url}/conc/cache", None


@pytest.fixture(params=["directory", "s3", "oci"])
def mirror(request, tmp_path):
    kind = request.param
    if kind == "oci" and needs_registry.args[0]:
        pytest.skip("docker-registry is not installed")
    s3_env = request.getfixturevalue("s3_server") if kind == "s3" else None
    factory = request.getfixturevalue("registry_factory") if kind == "oci" else None
    url, env = _mirrors(kind, tmp_path, s3_env, factory)
    return kind, url, env


@pytest.fixture
def load():
    """LOAD busy loops for the length of one round (as nice as the test itself)."""
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(LOAD)]
    yield
    for p in spin:
        p.kill()
        p.wait()


rounds = pytest.mark.parametrize("round_", range(ROUNDS), ids=lambda i: f"r{i}")


@pytest.mark.slow
@rounds
def test_four_pushers_at_once_lose_nothing(tree, mirror, load, round_):
    root, names = tree
    kind, url, env = mirror
    procs = [_start(root, url, names[i * EACH:(i + 1) * EACH], env, "-j", "2") for i in range(PUSHERS)]
    _wait(procs)
    _check_complete(url, set(names[:PUSHERS * EACH]), env)


@pytest.mark.slow
@rounds
def test_a_slow_full_reindex_overlapping_quick_pushes_loses_nothing(tree, mirror, tmp_path, load,
                                                                     round_):
    root, names = tree
    kind, url, env = mirror
    # Many packages the index does not know yet: the re-index reads every one, one at a time.
    bulk = [s.name for s in _seed_unindexed(kind, url, env, 40)]
    slow = subprocess.Popen([sys.executable, "-m", "bincache", "update-index", "-j", "1", url],
                            env=_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    quick = [_start(root, url, [n], env) for n in ("quick0", "quick1", "quick2")]
    _wait(quick + [slow])
    _check_complete(url, set(bulk) | {"quick0", "quick1", "quick2"}, env)


def _seed_unindexed(kind: str, url: str, env: dict | None, n: int):
    """``n`` tiny packages written straight into the mirror, without an index update."""
    specs = make_specs([f"bulk{i:03d}" for i in range(n)], chain=10 ** 9)
    by_hash = {s.hash: s for s in specs}
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        cache = open_cache(MirrorRef(url), push=True)
        if kind == "oci":
            _seed_oci(cache, specs)
        else:
            for s in specs:
                put_package(cache, s, by_hash)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return specs


def _seed_oci(cache, specs) -> None:
    from bincache.oci import image as img
    from bincache.oci.client import OCI_MANIFEST, Descriptor, sha256_digest
    from bincache.spec import specfile_bytes

    payload = b"tiny layer"
    layer = Descriptor(img.LAYER_GZIP, sha256_digest(payload), len(payload))
    cache.client.upload_blob(cache.image, payload, layer.digest)
    for s in specs:
        config = img.dumps(img.build_config(
            layers=[img.Layer(layer.digest, layer.digest, layer.size)], env=[],
            spack_keys=img.spack_config_keys(specfile_bytes([s]), layer.digest)))
        cache.client.upload_blob(cache.image, config, sha256_digest(config))
        manifest = img.dumps(img.build_manifest(
            config=Descriptor(img.CONFIG, sha256_digest(config), len(config)), layers=[layer]))
        cache.client.put_manifest(cache.tag_ref(s.name, s.version, s.hash), manifest, OCI_MANIFEST)


# --- OCI: a tag cannot be compared-and-swapped -------------------------------------------------
def _oci_writers(factory, n: int):
    reg = factory("http")
    url = f"{reg.url}/race/cache"
    return url, [open_cache(MirrorRef(url), push=True) for _ in range(n)]


def _names(url: str) -> set[str]:
    return {e.spec.name for e in ix.read_index(open_cache(MirrorRef(url))).packages()}


def test_a_stale_oci_index_write_is_repaired_by_the_stale_writer(registry_factory):  # noqa: F811
    # B reads the index and checks (HEAD) that its tag has not moved; before B's PUT lands, A
    # pushes packages and finishes a whole update (its own read-back sees them). Then B's PUT
    # overwrites A's index with one that lacks A's packages: B's read-back must list them.
    url, (a, b) = _oci_writers(registry_factory, 2)
    _seed_oci(b, make_specs(["b0", "b1", "b2"]))
    put = b.client.put_manifest
    raced = []

    def late_put(ref, data, media_type):
        if ref.tag == "index.spack" and not raced:
            raced.append(True)
            _seed_oci(a, make_specs(["a0", "a1"]))
            ix.update_index(a)
            assert _names(url) == {"a0", "a1", "b0", "b1", "b2"}
        return put(ref, data, media_type)

    b.client.put_manifest = late_put
    _, fetched = ix.update_index(b)
    assert raced and fetched == 5  # its own 3, then A's 2 that its PUT dropped, written back
    assert _names(url) == {"a0", "a1", "b0", "b1", "b2"}
    assert b.client.stats["GET tags"] == 3  # listed before its write, after each write


def test_an_oci_index_that_keeps_being_overwritten_is_one_error(registry_factory,  # noqa: F811
                                                                monkeypatch):
    # Every write of B is overwritten at once by a stale writer: B gives up after RETRIES
    # rounds with one message that says what to do; its packages stay in the mirror.
    url, (a, b) = _oci_writers(registry_factory, 2)
    _seed_oci(b, make_specs(["b0", "b1"]))
    monkeypatch.setattr(ix, "RETRIES", 3)
    put = b.client.put_manifest

    def overwritten(ref, data, media_type):
        got = put(ref, data, media_type)
        if ref.tag == "index.spack":
            a.write_index_bytes(ix.Index().to_bytes("7"), "7")
        return got

    b.client.put_manifest = overwritten
    with pytest.raises(MirrorError, match="kept changing under 3 attempts.*run bincache update-index"):
        ix.update_index(b)
    b.client.put_manifest = put
    ix.update_index(b)
    assert _names(url) == {"b0", "b1"}
