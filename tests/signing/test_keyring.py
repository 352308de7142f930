"""bincache's keyring in throwaway GnuPG homes, with the real gpg."""

from __future__ import annotations

import json
import os
import time

import pytest

from bincache import signing
from bincache.errors import SignatureError, UsageError
from bincache.signing.home import gpg_homedir
from tests.fixtures.gnupg import MANIFEST, drop_home


def test_created_key_signs_and_is_trusted(keyed):
    home, key = keyed
    assert key.uid == "CI Bot (test) <ci@example.com>"
    assert key.can_sign and key.trusted and key.algorithm == "ed25519"
    assert [k.fingerprint for k in signing.signing_keys(home)] == [key.fingerprint]
    assert signing.trusted_fingerprints(home) == {key.fingerprint}


def test_find_key_by_fingerprint_keyid_and_email(keyed):
    home, key = keyed
    for q in (key.fingerprint, key.keyid, "0x" + key.keyid.lower(), "ci@example.com", "<ci@example.com>"):
        assert signing.find_key(q, home).fingerprint == key.fingerprint
    with pytest.raises(SignatureError, match='no key matches "nobody"'):
        signing.find_key("nobody", home)


def test_create_key_rejects_bad_input(home):
    with pytest.raises(UsageError, match="not an email"):
        signing.create_key("X", "not-an-email", home=home)
    with pytest.raises(UsageError, match="--expires"):
        signing.create_key("X", "x@example.com", expires="tomorrow", home=home)
    with pytest.raises(UsageError, match="line breaks"):
        signing.create_key("X\nKey-Type: rsa", "x@example.com", home=home)
    assert signing.list_keys(home) == []


def test_key_with_expiry_lists_it(home):
    key = signing.create_key("Short", "s@example.com", expires="2y", home=home)
    assert key.expires and key.expires > time.time() + 365 * 86400


def test_keys_exported_from_one_home_and_trusted_in_another_verify(make_home, tmp_path):
    a, b = make_home(), make_home()
    key = signing.create_key("Builder", "builder@example.com", home=a)
    data, fprs = signing.export_keys(home=a)
    assert fprs == [key.fingerprint] and b"PRIVATE" not in data
    path = tmp_path / "builder.pub"
    signing.write_export(str(path), data, secret=False)
    trusted = signing.trust_file(str(path), home=b)
    assert [k.fingerprint for k in trusted] == [key.fingerprint]
    assert not trusted[0].secret and trusted[0].trusted
    doc = signing.Signer(home=a).clearsign(MANIFEST)
    assert signing.verify_clearsigned(doc, b) == (MANIFEST + b"\n", key.fingerprint)
    # Untrusting removes it again: refused.
    signing.untrust_key(key.keyid, home=b)
    assert signing.list_keys(b) == []
    with pytest.raises(SignatureError, match="unknown key"):
        signing.verify_clearsigned(doc, b)


def test_secret_key_moves_to_a_build_machine(make_home, tmp_path):
    laptop, ci = make_home(), make_home()
    key = signing.create_key("Release", "release@example.com", home=laptop)
    data, _ = signing.export_keys([key.fingerprint], secret=True, home=laptop)
    path = tmp_path / "release.secret"
    signing.write_export(str(path), data, secret=True)
    assert os.stat(path).st_mode & 0o777 == 0o600
    signing.trust_file(str(path), home=ci)
    signer = signing.Signer(home=ci)
    assert signer.fingerprint == key.fingerprint
    assert signing.verify_clearsigned(signer.clearsign(MANIFEST), laptop)[1] == key.fingerprint


def test_untrusting_own_key_keeps_it_for_signing(keyed):
    home, key = keyed
    signing.untrust_key(key.fingerprint, home=home)
    doc = signing.Signer(home=home).clearsign(MANIFEST)
    with pytest.raises(SignatureError, match="NOT trusted"):
        signing.verify_clearsigned(doc, home)


def test_public_export_and_listing_hold_nothing_secret(keyed):
    home, key = keyed
    data, _ = signing.export_keys(home=home)
    assert b"PUBLIC KEY BLOCK" in data and b"PRIVATE" not in data
    assert not signing.holds_secret_keys(data, home)
    shown = json.dumps([k.to_dict() for k in signing.list_keys(home)])
    assert key.fingerprint in shown and "PRIVATE" not in shown


def test_secret_key_material_is_recognised(keyed):
    home, key = keyed
    secret, _ = signing.export_keys([key.fingerprint], secret=True, home=home)
    public, _ = signing.export_keys(home=home)
    assert signing.holds_secret_keys(secret, home)
    assert signing.holds_secret_keys(public + secret, home)


# -- the GnuPG home --------------------------------------------------------------------------------


def test_home_from_environment_and_default(monkeypatch, tmp_path):
    from bincache.signing import home as home_mod

    monkeypatch.setenv("BINCACHE_GNUPGHOME", str(tmp_path / "g"))
    assert signing.gnupg_home() == str(tmp_path / "g")
    assert os.stat(tmp_path / "g").st_mode & 0o777 == 0o700
    monkeypatch.delenv("BINCACHE_GNUPGHOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(home_mod, "_configured_home", lambda: None)
    assert signing.gnupg_home() == str(tmp_path / ".bincache" / "gpg")


def test_home_from_config_is_relative_to_its_scope(monkeypatch, tmp_path):
    from bincache import config

    scope = tmp_path / "scope"
    scope.mkdir()
    (scope / "config.yaml").write_text("config:\n  gnupghome: keys/gpg\n")
    monkeypatch.delenv("BINCACHE_GNUPGHOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config.configure(scope_dirs=[str(scope)])
    try:
        assert signing.gnupg_home() == str(scope / "keys" / "gpg")
    finally:
        config.reset()


def test_deep_home_works_through_a_short_alias(make_home):
    deep = os.path.join(make_home(), *(["a-rather-long-directory-name"] * 4))
    assert len(deep) > 100
    try:
        key = signing.create_key("Deep", "deep@example.com", home=deep)
        alias = gpg_homedir(deep)
        assert len(alias) < 60 and os.path.realpath(alias) == os.path.realpath(deep)
        doc = signing.Signer(home=deep).clearsign(MANIFEST)
        assert signing.verify_clearsigned(doc, deep)[1] == key.fingerprint
        assert os.path.exists(os.path.join(deep, "pubring.kbx"))
    finally:
        drop_home(deep)
