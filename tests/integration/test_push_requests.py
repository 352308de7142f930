"""What a push costs on a real registry and a real S3 server, counted by the clients themselves.

A push of N new packages is at most 5 requests per package on OCI (tarball and config: POST +
PUT each; the manifest PUT) and 3 on S3 (tarball, spec file, manifest PUT), plus a few per run;
a push with nothing new costs no request per package once the mirror has an index. Before
this, the same push cost 10 per package on OCI and S3 (HEADs the answers made redundant, a
bucket HEAD and a layout.json GET per package, a HEAD per package for presence).
"""

from __future__ import annotations

import os
import sys
from itertools import count

import pytest

from bincache import create
from bincache.index import Index, read_index, update_index
from bincache.mirror import MirrorRef, open_cache
from bincache.oci.reference import ImageReference
from bincache.tree import InstallTree
from tests.conftest import REPO, run_cli
from tests.fixtures.moto import moto_server

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import scale_data  # noqa: E402

pytest_plugins = ["tests.fixtures.registry"]
N = 24
_repos = count()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """N tiny registered packages (chains of dependencies among them)."""
    return scale_data.generate(str(tmp_path_factory.mktemp("tiny")), N, jobs=1)


def push(url: str, paths, **kw):
    tree = InstallTree(paths["tree"])
    cache = open_cache(MirrorRef(url), push=True)
    result = create.push(tree, create.select_specs(tree, []), cache, jobs=2, **kw)
    return cache, result


def installed_text(url: str, name: str, root) -> str:
    from bincache import api

    api.install([name], mirrors=[MirrorRef(url)], root=str(root), unsigned=True)
    found = [os.path.join(d, "info.txt") for d, _, files in os.walk(root) if "info.txt" in files
             and d.endswith(os.path.join("share", name))]
    assert len(found) == 1, found
    with open(found[0]) as f:
        return f.read()


@pytest.mark.registry
def test_oci_push_costs_five_requests_per_package_and_nothing_per_package_when_present(
        registry_http, tiny, tmp_path):
    url = f"{registry_http.url}/req{next(_repos)}/cache"
    cache, result = push(url, tiny)
    assert len(result.pushed) == N
    stats = cache.client.stats
    assert stats["HEAD blob"] == 0 and stats["HEAD manifest"] == 0, dict(stats)
    assert sum(stats.values()) <= 5 * N + 4, dict(stats)
    # --rebuild-index on the same cache: the configs it just pushed are not read back; the
    # index is read (HEAD), written, read back and the tags listed again after its write.
    before = dict(stats)
    index, fetched = update_index(cache)
    spent = {k: v - before.get(k, 0) for k, v in stats.items() if v - before.get(k, 0)}
    assert fetched == N and len(index.packages()) == N
    assert "GET manifest" not in spent and "GET blob" not in spent, spent
    assert sum(spent.values()) <= 12, spent
    # ... and it is the index a reader of the registry's configs would make.
    fresh = open_cache(MirrorRef(url))
    rebuilt = Index()
    for ref in fresh.list_package_refs():
        rebuilt.add_specfile(*fresh.read_index_entry(ref))
    assert read_index(fresh).to_bytes("8") == rebuilt.to_bytes("8")

    # Nothing new: one tag listing, not a HEAD per package.
    cache, result = push(url, tiny)
    assert len(result.skipped) == N and not result.pushed
    assert sum(cache.client.stats.values()) <= 3, dict(cache.client.stats)

    # --verify-present: each skipped package's manifest is checked too.
    cache, result = push(url, tiny, verify_present=True)
    assert len(result.skipped) == N and cache.client.stats["HEAD manifest"] == N

    # The images pushed without those HEADs are whole: a chain head installs with its deps.
    text = installed_text(url, scale_data.package_name(49 if N > 49 else N - 1), tmp_path / "i")
    assert "installed in " + str(tmp_path / "i") in text


@pytest.mark.registry
def test_oci_push_mounts_tarballs_from_another_repository_of_the_registry(registry_http, tiny,
                                                                          tmp_path):
    first = f"{registry_http.url}/req{next(_repos)}/cache"
    push(first, tiny)
    second = f"{registry_http.url}/req{next(_repos)}/cache"
    tree = InstallTree(tiny["tree"])
    cache = open_cache(MirrorRef(second), push=True)
    cache.mount_from = [ImageReference.from_url(first).name]
    result = create.push(tree, create.select_specs(tree, []), cache, jobs=2)
    assert len(result.pushed) == N
    stats = cache.client.stats
    # Each tarball: one POST that mounts it (201), no PUT; the config is new: POST + PUT.
    assert stats["PUT upload"] == N and stats["POST upload"] == 2 * N, dict(stats)
    assert sum(stats.values()) <= 4 * N + 4, dict(stats)
    assert "installed in " in installed_text(second, scale_data.package_name(5), tmp_path / "i")


@pytest.fixture(scope="module")
def s3():
    with moto_server() as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch):
    for k, v in s3[0].items():
        monkeypatch.setenv(k, v)
    return s3[1]


def test_s3_push_costs_three_requests_per_package_and_trusts_the_index_unless_verified(
        s3_env, tiny, tmp_path):
    url = f"s3://cache/req{next(_repos)}"
    cache, result = push(url, tiny)
    assert len(result.pushed) == N
    stats = cache.backend.stats
    # One bucket HEAD and one layout.json read per push, not per package.
    assert stats["HeadBucket"] == 1 and stats["GetObject"] <= 2, dict(stats)
    assert stats["PutObject"] == 3 * N + 1  # + layout.json
    assert sum(stats.values()) <= 3 * N + 8, dict(stats)
    # --rebuild-index on the same cache: no spec file read back (the sharded index writes the
    # shards that changed: at most one per package here).
    before = dict(stats)
    index, _ = update_index(cache)
    spent = {k: v - before.get(k, 0) for k, v in stats.items() if v - before.get(k, 0)}
    assert index.package_count() == N
    assert spent.get("GetObject", 0) <= 4 and sum(spent.values()) <= N + 8, spent
    cache, result = push(url, tiny)
    assert len(result.skipped) == N
    assert sum(cache.backend.stats.values()) <= 6, dict(cache.backend.stats)

    # A manifest removed behind the index's back: believed present by default, pushed again
    # with verify_present, and then it installs.
    victim = scale_data.package_name(3)
    key = next(o["Key"] for o in s3_env.list_objects_v2(Bucket="cache", Prefix=url[11:])["Contents"]
               if f"/{victim}/" in o["Key"] and o["Key"].endswith(".spec.manifest.json"))
    s3_env.delete_object(Bucket="cache", Key=key)
    _, result = push(url, tiny)
    assert not result.pushed
    cache, result = push(url, tiny, verify_present=True)
    assert [p.spec.name for p in result.pushed] == [victim]
    assert cache.backend.stats["HeadObject"] >= N  # each skipped package was checked
    assert "installed in " in installed_text(url, victim, tmp_path / "i")

    # The same on the command line.
    s3_env.delete_object(Bucket="cache", Key=key)
    p = run_cli("--root", tiny["tree"], "create", "--unsigned", url, check=True)
    assert "nothing to push" in p.stdout
    p = run_cli("--root", tiny["tree"], "create", "--unsigned", "--verify-present", url, check=True)
    assert "1 pushed" in p.stdout and victim in p.stdout
