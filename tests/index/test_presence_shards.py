"""create's presence check on an S3 mirror reads the sharded index shard by shard (the shards
of the pushed names), not Spack's whole index, unless that index is small and one request
costs less than the shards."""

from __future__ import annotations

import pytest

from bincache import index as ix
from bincache import presence
from bincache.index_shards import shard_key
from bincache.mirror import MirrorRef, open_cache
from bincache.mirror.layout_v3 import BlobRecord, LayoutV3Cache
from tests.fixtures.moto import moto_server
from tests.index.packages import make_specs, put_package


@pytest.fixture(scope="module")
def s3_mirror():
    """An S3 mirror of 60 tiny packages with its index; (url, specs, index.json path)."""
    with moto_server() as (env, _client):
        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            url = "s3://cache/presence"
            cache = open_cache(MirrorRef(url), push=True)
            assert isinstance(cache, LayoutV3Cache)
            specs = make_specs([f"pkg{i:02d}" for i in range(60)])
            by_hash = {s.hash: s for s in specs}
            for s in specs:
                put_package(cache, s, by_hash)
            view, _ = ix.update_index(cache)
            spack_index = BlobRecord(view.spack_index_size(), "", "none", view.root.spack_index[0]).path
            yield url, specs, spack_index, view.root


def _reads(url: str, specs, monkeypatch, tmp_path) -> tuple[set[str] | None, list[str]]:
    monkeypatch.setenv("BINCACHE_CACHE_DIR", str(tmp_path / "cache"))  # empty: reads go to S3
    cache = open_cache(MirrorRef(url), push=True)
    reads: list[str] = []
    real = cache.backend.read

    def read(rel, max_size=None):
        reads.append(rel)
        return real(rel, max_size)

    monkeypatch.setattr(cache.backend, "read", read)
    got = presence.indexed(cache, specs)
    assert got is not None
    found, listed = got
    assert listed == 60
    return found, reads


def test_the_shards_of_the_pushed_names_are_read_not_the_whole_index(s3_mirror, monkeypatch, tmp_path):
    url, specs, spack_index, root = s3_mirror
    monkeypatch.setattr(presence, "SMALL_INDEX", 0)  # as an index of 50,000 packages is
    new = make_specs(["notpushed"])
    found, reads = _reads(url, specs[:40] + new, monkeypatch, tmp_path)
    assert found == {s.hash for s in specs[:40]}
    assert spack_index not in reads
    shards = {f"blobs/sha256/{i.checksum[:2]}/{i.checksum}" for i in root.shards.values()}
    wanted = {shard_key(s.name) for s in specs[:40] + new} & set(root.shards)
    assert len([r for r in reads if r in shards]) == len(wanted)


def test_a_small_index_is_read_whole_when_the_push_spans_many_shards(s3_mirror, monkeypatch, tmp_path):
    url, specs, spack_index, root = s3_mirror
    found, reads = _reads(url, specs, monkeypatch, tmp_path)
    assert found == {s.hash for s in specs}
    assert reads.count(spack_index) == 1
    assert not [r for r in reads if r.startswith("blobs/") and r != spack_index]
