"""Concurrent index writers lose nothing: 4 processes pushing with --rebuild-index at once, and a
slow full re-index overlapping quick pushes, on one directory, one S3 (moto) and one OCI
(docker-registry) mirror. The final index names every package; no manifest names a missing blob."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bincache import api
from bincache import index as ix
from bincache.mirror import open_cache
from bincache.mirror.config import MirrorRef
from tests.conftest import run_cli
from tests.fixtures.registry import needs_registry, registry_factory  # noqa: F401
from tests.index.packages import make_specs, put_package
from tests.integration.test_s3 import s3_server  # noqa: F401

PUSHERS, EACH = 4, 10
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


@pytest.mark.slow
def test_four_pushers_at_once_lose_nothing(tree, mirror):
    root, names = tree
    kind, url, env = mirror
    procs = [_start(root, url, names[i * EACH:(i + 1) * EACH], env, "-j", "2") for i in range(PUSHERS)]
    _wait(procs)
    _check_complete(url, set(names[:PUSHERS * EACH]), env)


@pytest.mark.slow
def test_a_slow_full_reindex_overlapping_quick_pushes_loses_nothing(tree, mirror, tmp_path):
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
