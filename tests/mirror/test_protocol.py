"""The BuildCache protocol: every kind of cache implements all of it, and an option a kind does
not take is refused by name (one `error:` line, nothing written), never silently ignored."""

from __future__ import annotations

import inspect
import os

import pytest

from bincache.mirror import MirrorRef
from bincache.mirror.base import BuildCache, ByteBackend
from bincache.mirror.directory import DirectoryBackend
from bincache.mirror.http import HttpBackend
from bincache.mirror.layout_v2 import LayoutV2Cache
from bincache.mirror.layout_v3 import LayoutV3Cache
from bincache.mirror.oci import OciCache

pytest_plugins = ["tests.fixtures.registry"]


def _members(protocol: type) -> list[str]:
    """What the protocol declares: annotated attributes, properties and methods."""
    declared = set(protocol.__dict__.get("__annotations__", {}))
    declared |= {n for n, v in vars(protocol).items()
                 if not n.startswith("_") and (inspect.isfunction(v) or isinstance(v, property))}
    return sorted(declared)


def _backends(tmp_path) -> list[ByteBackend]:
    from bincache.mirror.s3 import S3Backend

    return [DirectoryBackend(str(tmp_path / "d")), HttpBackend("http://127.0.0.1:1/cache"),
            S3Backend("s3://cache/x", endpoint_url="http://127.0.0.1:1")]


def _caches(tmp_path) -> list[BuildCache]:
    caches: list[BuildCache] = []
    for backend in _backends(tmp_path):
        caches += [LayoutV3Cache(backend), LayoutV2Cache(backend)]
    caches.append(OciCache(MirrorRef("oci+http://127.0.0.1:1/cache")))
    return caches


def _same_signature(impl, declared) -> bool:
    """The implementation takes the protocol's parameters, by the same names and kinds."""
    want = [(p.name, p.kind) for p in inspect.signature(declared).parameters.values()]
    got = [(p.name, p.kind) for p in inspect.signature(impl).parameters.values()]
    return got[: len(want)] == want and all(p.default is not p.empty for p in
                                            list(inspect.signature(impl).parameters.values())[len(want):])


def test_every_cache_and_backend_implements_the_whole_protocol(tmp_path):
    """Nothing is probed with hasattr: so every member exists on every kind, with the
    protocol's signature (a kind that lacks a capability declares it and says so)."""
    for backend in _backends(tmp_path):
        assert isinstance(backend, ByteBackend), type(backend).__name__
        for name in _members(ByteBackend):
            member = getattr(type(backend), name, None)
            if callable(member):
                assert _same_signature(member, getattr(ByteBackend, name)), (type(backend), name)
    kinds = set()
    for cache in _caches(tmp_path):
        assert isinstance(cache, BuildCache), repr(cache)
        for name in _members(BuildCache):
            assert hasattr(cache, name), (cache, name)
            member = getattr(type(cache), name, None)
            if inspect.isfunction(member):
                assert _same_signature(member, getattr(BuildCache, name)), (cache, name)
        kinds.add(cache.kind)
        assert (cache.backend is None) == (cache.kind == "oci")
    assert kinds == {"layout-v3", "layout-v2", "oci"}


def test_what_a_kind_lacks_it_says(tmp_path, home):
    from bincache.errors import MirrorError, OptionNotTaken

    oci = OciCache(MirrorRef("oci+http://127.0.0.1:1/cache"))
    with pytest.raises(MirrorError, match="key manifests exist only in directory, http and s3"):
        oci.public_key_blobs()
    assert oci.local_blob_path(_record()) is None
    http = LayoutV3Cache(HttpBackend("http://127.0.0.1:1/cache"))
    with pytest.raises(MirrorError, match="read-only"):
        http.publish_public_keys({"A" * 40: b"key"})
    with pytest.raises(OptionNotTaken, match=r"base_image apply only to OCI mirrors .*layout v3 http mirror"):
        http.configure_push(base_image="busybox")
    directory = LayoutV2Cache(DirectoryBackend(str(tmp_path / "m")), MirrorRef(str(tmp_path / "m")))
    with pytest.raises(OptionNotTaken, match=r"tag apply only to OCI .*layout v2 directory mirror"):
        directory.configure_push(tag="env")
    assert not os.path.exists(tmp_path / "m")


def _record():
    from bincache.mirror.base import BlobRecord

    return BlobRecord(1, "application/octet-stream", "none", "0" * 64)


def _one_error_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


@pytest.mark.parametrize("option", [("--base-image", "busybox:1"), ("--tag", "whole-env")])
def test_an_oci_option_for_a_directory_mirror_is_named(demo_stack_factory, tmp_path, cli, option):
    mirror = tmp_path / "mirror"
    line = _one_error_line(cli("--root", demo_stack_factory.root, "create", "--unsigned",
                               *option, str(mirror)))
    assert f"{option[0]} apply only to OCI mirrors" in line
    assert "a layout v3 directory mirror" in line
    assert not mirror.exists()
    # A layout v2 one says so.
    line = _one_error_line(cli("--root", demo_stack_factory.root, "create", "--unsigned",
                               "--layout", "v2", *option, str(mirror)))
    assert option[0] in line and "a layout v2 directory mirror" in line
    assert not mirror.exists()


def test_an_oci_option_for_an_s3_mirror_is_named(demo_stack_factory, cli):
    from tests.fixtures.moto import moto_server

    with moto_server() as (env, client):
        res = cli("--root", demo_stack_factory.root, "create", "--unsigned", "--base-image",
                  "busybox:1", "s3://cache/builds", env=env)
        line = _one_error_line(res)
        assert "--base-image apply only to OCI mirrors" in line and "s3 mirror" in line
        assert client.list_objects_v2(Bucket="cache").get("Contents", []) == []  # nothing written


def test_a_layout_for_an_oci_mirror_is_named(demo_stack_factory, cli, registry_http):
    from bincache.oci.client import RegistryClient
    from bincache.oci.reference import ImageReference

    url = f"oci+http://{registry_http.host}/protocol/layout"
    for args in (("--root", demo_stack_factory.root, "create", "--unsigned", "--layout", "v2", url),
                 ("update-index", "--layout", "v3", url)):
        line = _one_error_line(cli(*args))
        assert "--layout is for directory, http and s3 mirrors" in line and "OCI mirror" in line
    image = ImageReference.from_url(url, insecure=True)
    assert RegistryClient(image).list_tags(image) == []  # nothing pushed, no index written


def test_an_s3_setting_for_another_kind_of_mirror_is_named(tmp_path, cli, _isolated_home):
    config = _isolated_home / ".bincache" / "mirrors.yaml"
    for flag, value, url, kind in (("--s3-profile", "ci", str(tmp_path / "m"), "directory"),
                                   ("--s3-endpoint-url", "http://127.0.0.1:9000",
                                    "oci://127.0.0.1:5000/c", "OCI"),
                                   ("--s3-profile", "ci", "https://cache.example.org/c", "http")):
        line = _one_error_line(cli("mirror", "add", flag, value, "m", url))
        assert f"{flag} is for s3:// mirrors" in line and f"a{'n' if kind == 'OCI' else ''} {kind} mirror" in line
        assert not config.exists()
    cli("mirror", "add", "m", str(tmp_path / "m"), check=True)
    before = config.read_bytes()
    line = _one_error_line(cli("mirror", "set", "--s3-profile", "ci", "m"))
    assert "--s3-profile is for s3:// mirrors" in line
    assert config.read_bytes() == before
    # Written by hand (or by another tool): refused where it is used, named as the file names it.
    config.write_text(f"mirrors:\n  m:\n    url: {tmp_path / 'm'}\n    profile: ci\n")
    res = cli("list", "m")
    assert res.returncode == 1 and res.stderr.count("error: ") == 1
    assert "profile is for s3:// mirrors" in res.stderr and "directory mirror" in res.stderr
    # The same setting with an s3:// URL is taken.
    cli("mirror", "set", "--url", "s3://cache/c", "m", check=True)
    assert "profile: ci" in config.read_text()


def test_one_update_algorithm_for_every_kind(tmp_path):
    """OCI has no update_index of its own: bincache.index updates every kind."""
    for cache in _caches(tmp_path):
        assert not hasattr(cache, "update_index") and not hasattr(cache, "read_index")


def test_conditional_reads_and_writes_behave_alike_on_every_backend(tmp_path):
    """read_tagged/write_if (the index's commit point) and list_dirs, as the protocol says:
    directory and S3 (a real moto server) write only over the tag expected; http refuses."""
    from bincache.errors import MirrorError
    from bincache.mirror.s3 import S3Backend
    from tests.fixtures.moto import moto_server

    with moto_server() as (env, _client):
        backends = [DirectoryBackend(str(tmp_path / "d")),
                    S3Backend("s3://cache/x", endpoint_url=env["BINCACHE_S3_ENDPOINT_URL"],
                              access_key=("testing", "testing"))]
        for b in backends:
            name = type(b).__name__
            assert b.read_tagged("i/root") is None, name
            assert b.write_if("i/root", b"one", None), name
            assert not b.write_if("i/root", b"two", None), name  # "only if absent"
            data, tag = b.read_tagged("i/root")
            assert data == b"one", name
            assert b.read_tagged("i/root", known=tag) == (None, tag), name  # unchanged
            assert not b.write_if("i/root", b"two", "another tag"), name
            assert b.read("i/root") == b"one", name
            assert b.write_if("i/root", b"two", tag), name
            assert b.read_tagged("i/root", known=tag)[0] == b"two", name
        b.write("spec/zlib/m.json", b"{}")
        assert backends[1].list_dirs("spec") is None  # keys, no directories
    d = backends[0]
    d.write("spec/zlib/m.json", b"{}")
    d.write("spec/curl/m.json", b"{}")
    sweep = d.list_dirs("spec")
    assert sorted(n for n, _ in sweep.changed) == ["curl", "zlib"] and sweep.count == 2
    assert all(t <= sweep.newest <= sweep.clock for _, t in sweep.changed)
    later = d.list_dirs("spec", since=sweep.newest + 1)
    assert later.count == 2 and later.changed == []  # counted, not named: nothing changed since
    http = HttpBackend("http://127.0.0.1:1/cache")
    with pytest.raises(MirrorError, match=r"http\(s\) mirrors are read-only"):
        http.write_if("i/root", b"x", None)
    assert http.list_dirs("spec") is None
