"""Verification through gpg against the trusted keys: what is refused, and what text is returned."""

from __future__ import annotations

import json
import os

import pytest

from bincache import signing
from bincache.errors import SignatureError, SpecError
from bincache.signing import verify
from tests.fixtures.gnupg import MANIFEST, gpg, quick_key


def test_tampered_byte_is_refused(keyed):
    home, _ = keyed
    doc = signing.Signer(home=home).clearsign(MANIFEST)
    bad = doc.replace(b'"contentLength":737', b'"contentLength":738')
    assert bad != doc
    with pytest.raises(SignatureError, match="BAD signature"):
        signing.verify_clearsigned(bad, home)


def test_damaged_signature_is_refused(keyed):
    home, _ = keyed
    doc = bytearray(signing.Signer(home=home).clearsign(MANIFEST))
    at = doc.index(b"-----BEGIN PGP SIGNATURE-----") + 40
    doc[at] = ord("A") if doc[at] != ord("A") else ord("B")
    with pytest.raises(SignatureError):
        signing.verify_clearsigned(bytes(doc), home)


def test_unknown_key_is_refused(make_home):
    signer_home, verifier_home = make_home(), make_home()
    signing.create_key("Stranger", "stranger@example.com", home=signer_home)
    doc = signing.Signer(home=signer_home).clearsign(MANIFEST)
    with pytest.raises(SignatureError, match="unknown key .*keys install MIRROR --trust"):
        signing.verify_clearsigned(doc, verifier_home)


def test_known_but_untrusted_key_is_refused(make_home):
    signer_home, verifier_home = make_home(), make_home()
    stranger = signing.create_key("Stranger", "stranger@example.com", home=signer_home)
    public, _ = signing.export_keys(home=signer_home)
    # In the keyring, good signature, gpg exits 0 ... and still refused: not trusted.
    assert signing.import_keys(public, trust=False, home=verifier_home) == [stranger.fingerprint]
    doc = signing.Signer(home=signer_home).clearsign(MANIFEST)
    assert gpg(verifier_home, "--verify", input=doc).returncode == 0
    with pytest.raises(SignatureError, match=f"{stranger.fingerprint}.*NOT trusted"):
        signing.verify_clearsigned(doc, verifier_home)


def test_revoked_key_is_refused(keyed):
    home, key = keyed
    doc = signing.Signer(home=home).clearsign(MANIFEST)
    rev = open(os.path.join(home, "openpgp-revocs.d", f"{key.fingerprint}.rev"), "rb").read()
    # gpg stores the certificate with a ':' before the armor so it is not imported by accident.
    rev = rev.replace(b":-----BEGIN", b"-----BEGIN")
    assert gpg(home, "--import", input=rev).returncode == 0
    with pytest.raises(SignatureError, match="REVOKED"):
        signing.verify_clearsigned(doc, home)


def test_expired_key_is_refused(home):
    # A key that lived one day in 2020, and what it signed then.
    quick_key(home, "Old <old@example.com>", "ed25519", "sign", "1d", "",
              "--faked-system-time", "20200101T000000!")
    r = gpg(home, "--faked-system-time", "20200101T000100!", "--clearsign", input=MANIFEST)
    assert r.returncode == 0, r.stderr
    with pytest.raises(SignatureError, match="EXPIRED"):
        signing.verify_clearsigned(r.stdout, home)
    with pytest.raises(SignatureError, match="no signing key"):
        signing.Signer(home=home)


# -- signature hygiene (issue 10, finding 8) --------------------------------------------------------


def test_a_sha1_signature_is_refused(keyed):
    home, key = keyed
    r = gpg(home, "--digest-algo", "SHA1", "--local-user", key.fingerprint, "--clearsign", input=MANIFEST)
    assert r.returncode == 0, r.stderr
    assert gpg(home, "--verify", input=r.stdout).returncode == 0  # gpg itself accepts it
    with pytest.raises(SignatureError, match="signed with SHA-1, which can be forged; refusing it"):
        signing.verify_clearsigned(r.stdout, home)


def test_a_future_dated_signature_is_refused(keyed):
    home, key = keyed
    r = gpg(home, "--faked-system-time", "20991231T000000!", "--local-user", key.fingerprint,
            "--clearsign", input=MANIFEST)
    assert r.returncode == 0, r.stderr
    assert gpg(home, "--verify", input=r.stdout).returncode == 0  # gpg itself accepts it
    with pytest.raises(SignatureError, match="dated 2099-12-31 00:00 UTC, in the future; refusing it"):
        signing.verify_clearsigned(r.stdout, home)


def test_a_little_clock_skew_is_accepted(keyed):
    home, key = keyed
    import time

    ahead = time.strftime("%Y%m%dT%H%M%S!", time.gmtime(time.time() + verify.CLOCK_SKEW / 2))
    r = gpg(home, "--faked-system-time", ahead, "--local-user", key.fingerprint, "--clearsign",
            input=MANIFEST)
    assert r.returncode == 0, r.stderr
    assert signing.verify_clearsigned(r.stdout, home)[1] == key.fingerprint


def test_a_crlf_copy_verifies_as_gpg_reads_it(keyed):
    home, key = keyed
    doc = signing.Signer(home=home).clearsign(MANIFEST)
    crlf = doc.replace(b"\n", b"\r\n")
    assert gpg(home, "--verify", input=crlf).returncode == 0
    payload, fpr = signing.verify_clearsigned(crlf, home)
    assert fpr == key.fingerprint
    assert json.loads(payload) == json.loads(MANIFEST)
    assert signing.clearsigned_text(crlf) == MANIFEST + b"\n"
    # Canonical line endings do not make room for changes: one byte more is still BAD.
    with pytest.raises(SignatureError, match="BAD signature"):
        signing.verify_clearsigned(crlf.replace(b"737", b"738"), home)


# -- documents that are not one clearsigned block ---------------------------------------------------


def test_extra_text_around_the_signed_block_is_refused(keyed):
    home, _ = keyed
    signer = signing.Signer(home=home)
    doc = signer.clearsign(MANIFEST)
    other = signer.clearsign(b'{"version":3,"data":[]}')
    for bad in (doc + other, doc + b'{"version":3}\n', b'{"version":3}\n' + doc,
                doc + b"-----BEGIN PGP MESSAGE-----\n\nxx\n-----END PGP MESSAGE-----\n"):
        with pytest.raises(SignatureError, match="clearsigned document"):
            signing.verify_clearsigned(bad, home)


def test_plain_json_is_not_clearsigned(keyed):
    home, _ = keyed
    assert not signing.is_clearsigned(MANIFEST)
    with pytest.raises(SignatureError, match="not a clearsigned document"):
        signing.verify_clearsigned(MANIFEST, home)


def test_a_line_past_gpgs_limit_is_refused_although_gpg_says_good(keyed):
    home, _ = keyed
    doc = signing.Signer(home=home).clearsign(MANIFEST)
    # gpg drops the rest of an overlong line and still reports a good signature.
    padded = doc.replace(b"\n]\n}\n", b"\n]" + b" " * 20000 + b',"data":[]\n}\n', 1)
    assert gpg(home, "--verify", input=padded).returncode == 0
    for reader in (signing.verify_clearsigned, lambda d, h: signing.clearsigned_text(d)):
        with pytest.raises(SignatureError, match=r"line of 20\d{3} bytes, longer than gpg verifies"):
            reader(padded, home)


# -- install's entry point ------------------------------------------------------------------------


def test_verify_manifest_bytes_policy(keyed, monkeypatch):
    home, _ = keyed
    doc = signing.Signer(home=home).clearsign(MANIFEST)
    assert signing.verify_manifest_bytes(doc, True, home) == MANIFEST + b"\n"
    with pytest.raises(SignatureError, match="hello.*not signed.*--unsigned"):
        signing.verify_manifest_bytes(MANIFEST, True, home, source="hello@1.0")
    assert signing.verify_manifest_bytes(MANIFEST, False, home) == MANIFEST
    monkeypatch.setattr(verify, "_skip_warned", False)
    with pytest.warns(UserWarning, match="NOT verified"):
        assert signing.verify_manifest_bytes(doc, False, home) == MANIFEST + b"\n"
    # Not verified means not verified: a tampered manifest passes, as the user asked.
    tampered = doc.replace(b"737", b"738")
    assert json.loads(signing.verify_manifest_bytes(tampered, False, home))["data"][0]["contentLength"] == 738
    with pytest.raises(SignatureError, match="BAD"):
        signing.verify_manifest_bytes(tampered, True, home)


def test_verify_manifests_in_parallel(keyed):
    home, _ = keyed
    signer = signing.Signer(home=home)
    docs = [signer.clearsign(b'{"version":3,"data":[\n{"n":%d}\n]}' % i) for i in range(12)]
    payloads = signing.verify_manifests(docs, True, home, jobs=4)
    assert [json.loads(p)["data"][0]["n"] for p in payloads] == list(range(12))
    docs[7] = docs[7].replace(b'"n":7', b'"n":8')
    with pytest.raises(SignatureError, match="BAD"):
        signing.verify_manifests(docs, True, home, jobs=4)


def test_v2_specfile(keyed, make_home):
    home, _ = keyed
    spec = {"spec": {"_meta": {"version": 4}, "nodes": [{"name": "zlib", "version": "1.3"}]}}
    text = json.dumps(spec, indent=0).encode()
    signer = signing.Signer(home=home)
    signed = signer.clearsign(text)
    assert signing.verify_v2_specfile(signed, home) == spec
    with pytest.raises(SignatureError, match="unknown key"):
        signing.verify_v2_specfile(signed, make_home())
    with pytest.raises(SpecError, match="not JSON"):
        signing.verify_v2_specfile(signer.clearsign(b"zlib 1.3"), home)


def test_signature_times_read_in_both_of_gpgs_forms():
    assert verify._timestamp("4102358400") == 4102358400.0
    assert verify._timestamp("20991231T000000") == 4102358400.0
    assert verify._timestamp("soon") is None
