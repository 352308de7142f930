"""Public keys in a mirror: published in Spack's layout, installed as public keys only."""

from __future__ import annotations

import json

import pytest

from bincache import signing
from bincache.errors import MirrorError, SignatureError
from bincache.mirror import keys
from bincache.mirror.layout_v3 import MT_KEY, MT_KEYINDEX, manifest_bytes
from tests.fixtures.gnupg import MANIFEST


def _dir_cache(path: str):
    from bincache.mirror.directory import DirectoryBackend
    from bincache.mirror.layout_v3 import LayoutV3Cache

    return LayoutV3Cache(DirectoryBackend(path))


def test_publish_and_install_keys(make_home, tmp_path):
    a, b = make_home(), make_home()
    k1 = signing.create_key("One", "one@example.com", home=a)
    k2 = signing.create_key("Two", "two@example.com", home=a)
    cache = _dir_cache(str(tmp_path / "mirror"))
    assert keys.publish_keys(cache, [k1.fingerprint], home=a) == [k1.fingerprint]
    assert keys.publish_keys(cache, ["two@example.com"], home=a) == [k2.fingerprint]
    # The index lists both, in Spack's format.
    index_manifest = json.loads((tmp_path / "mirror" / keys.KEYS_MANIFEST).read_bytes())
    rec = index_manifest["data"][0]
    assert rec["mediaType"] == MT_KEYINDEX
    blob = tmp_path / "mirror" / "blobs" / "sha256" / rec["checksum"][:2] / rec["checksum"]
    assert set(json.loads(blob.read_bytes())["keys"]) == {k1.fingerprint, k2.fingerprint}
    key_manifest = json.loads((tmp_path / "mirror" / keys.KEY_MANIFESTS / f"{k1.fingerprint}.key.manifest.json").read_bytes())
    assert key_manifest["data"][0]["mediaType"] == "application/pgp-keys"

    assert keys.install_keys(cache, trust=False, home=b) == sorted([k1.fingerprint, k2.fingerprint])
    assert signing.trusted_fingerprints(b) == frozenset()
    doc = signing.Signer(key=k1.fingerprint, home=a).clearsign(MANIFEST)
    with pytest.raises(SignatureError, match="NOT trusted"):
        signing.verify_clearsigned(doc, b)
    keys.install_keys(cache, trust=True, home=b)
    assert signing.verify_clearsigned(doc, b)[1] == k1.fingerprint


def test_install_refuses_a_key_swapped_under_another_name(make_home, tmp_path):
    a, attacker, b = make_home(), make_home(), make_home()
    good = signing.create_key("Good", "good@example.com", home=a)
    signing.create_key("Evil", "evil@example.com", home=attacker)
    cache = _dir_cache(str(tmp_path / "mirror"))
    keys.publish_keys(cache, home=a)
    evil_data, _ = signing.export_keys(home=attacker)
    rec = cache.put_blob_bytes(evil_data, MT_KEY)
    cache.backend.write(f"{keys.KEY_MANIFESTS}/{good.fingerprint}.key.manifest.json", manifest_bytes([rec]))
    with pytest.raises(SignatureError, match=f"not the key {good.fingerprint}"):
        keys.install_keys(cache, trust=True, home=b)
    assert signing.list_keys(b) == []


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize("served", ["secret", "public+secret"])
def test_a_mirror_serving_a_secret_key_is_refused(make_home, tmp_path, trust, served):
    """Issue 10, finding 4: a mirror must not plant a signing key in the user's keyring."""
    a, b = make_home(), make_home()
    key = signing.create_key("Builder", "builder@example.com", home=a)
    cache = _dir_cache(str(tmp_path / "mirror"))
    keys.publish_keys(cache, home=a)
    secret, _ = signing.export_keys([key.fingerprint], secret=True, home=a)
    public, _ = signing.export_keys([key.fingerprint], home=a)
    rec = cache.put_blob_bytes(secret if served == "secret" else public + secret, MT_KEY)
    cache.backend.write(f"{keys.KEY_MANIFESTS}/{key.fingerprint}.key.manifest.json", manifest_bytes([rec]))
    with pytest.raises(SignatureError, match="holds SECRET key material.*public keys only"):
        keys.install_keys(cache, trust=trust, home=b)
    assert signing.list_keys(b) == [] and signing.list_keys(b, secret=True) == []


def test_install_keys_from_a_mirror_without_keys(home, tmp_path):
    with pytest.raises(SignatureError, match="publishes no keys"):
        keys.install_keys(_dir_cache(str(tmp_path)), trust=True, home=home)


def test_keys_cannot_go_to_an_oci_registry(keyed):
    from bincache.mirror import MirrorRef, open_cache

    home, _ = keyed
    registry = open_cache(MirrorRef("oci+http://127.0.0.1:1/cache"))  # nothing is sent to it
    with pytest.raises(MirrorError, match="only in directory, http and s3"):
        keys.publish_keys(registry, home=home)
    with pytest.raises(MirrorError, match="only in directory, http and s3"):
        keys.install_keys(registry, trust=True, home=home)


def test_install_keys_from_an_old_layout_v2_cache(make_home, tmp_path):
    a, b = make_home(), make_home()
    key = signing.create_key("Old", "old@example.com", home=a)
    data, _ = signing.export_keys(home=a)
    pgp = tmp_path / "build_cache" / "_pgp"
    pgp.mkdir(parents=True)
    (pgp / "index.json").write_text(json.dumps({"keys": {key.fingerprint: {}}}))
    (pgp / f"{key.fingerprint}.pub").write_bytes(data)
    assert keys.install_keys(_dir_cache(str(tmp_path)), trust=True, home=b) == [key.fingerprint]
    assert signing.trusted_fingerprints(b) == {key.fingerprint}
