"""Signing and verification with the real gpg, in throwaway GnuPG homes.

Homes are made with mkdtemp under /tmp: gpg-agent's socket path must stay short (pytest's
tmp_path is often too long). Each home's agent is stopped when the test ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bincache import sign
from bincache.errors import MirrorError, SignatureError, SpecError, UsageError

MANIFEST = (b'{\n"version":3,\n"data":[\n{\n"contentLength":737,\n'
            b'"mediaType":"application/vnd.spack.install.v2.tar+gzip",\n"compression":"gzip",\n'
            b'"checksumAlgorithm":"sha256",\n"checksum":"e3d9bafb19cf20d3e5e9b8c23c2a513d8da8965421be871d6aa69395d722dfc9"\n}\n]\n}')


def _new_home() -> str:
    return tempfile.mkdtemp(prefix="bc-", dir="/tmp")


def _drop_home(home: str) -> None:
    sign.stop_agent(home)
    alias = sign._gpg_homedir(home)
    if alias != home and os.path.islink(alias):
        os.unlink(alias)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def make_home():
    homes = []

    def make() -> str:
        h = _new_home()
        homes.append(h)
        return h

    yield make
    for h in homes:
        _drop_home(h)


@pytest.fixture
def home(make_home):
    return make_home()


@pytest.fixture
def keyed(make_home):
    """A home with one signing key, and that key."""
    h = make_home()
    key = sign.create_key("CI Bot", "ci@example.com", comment="test", home=h)
    return h, key


def gpg(home: str, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["gpg", "--homedir", home, "--batch", *args], input=input,
                          capture_output=True, timeout=60)


# -- keys ------------------------------------------------------------------------------------------


def test_created_key_signs_and_is_trusted(keyed):
    home, key = keyed
    assert key.uid == "CI Bot (test) <ci@example.com>"
    assert key.can_sign and key.trusted and key.algorithm == "ed25519"
    assert [k.fingerprint for k in sign.signing_keys(home)] == [key.fingerprint]
    assert sign.trusted_fingerprints(home) == {key.fingerprint}


def test_find_key_by_fingerprint_keyid_and_email(keyed):
    home, key = keyed
    for q in (key.fingerprint, key.keyid, "0x" + key.keyid.lower(), "ci@example.com", "<ci@example.com>"):
        assert sign.find_key(q, home).fingerprint == key.fingerprint
    with pytest.raises(SignatureError, match='no key matches "nobody"'):
        sign.find_key("nobody", home)


def test_create_key_rejects_bad_input(home):
    with pytest.raises(UsageError, match="not an email"):
        sign.create_key("X", "not-an-email", home=home)
    with pytest.raises(UsageError, match="--expires"):
        sign.create_key("X", "x@example.com", expires="tomorrow", home=home)
    with pytest.raises(UsageError, match="line breaks"):
        sign.create_key("X\nKey-Type: rsa", "x@example.com", home=home)
    assert sign.list_keys(home) == []


def test_key_with_expiry_lists_it(home):
    key = sign.create_key("Short", "s@example.com", expires="2y", home=home)
    assert key.expires and key.expires > time.time() + 365 * 86400


# -- choosing the signing key ---------------------------------------------------------------------


def test_no_signing_key_says_what_to_do(home):
    with pytest.raises(SignatureError, match="no signing key.*keys create NAME EMAIL.*--unsigned"):
        sign.Signer(home=home)


def test_two_signing_keys_need_a_choice(keyed):
    home, key = keyed
    other = sign.create_key("Other", "other@example.com", home=home)
    with pytest.raises(SignatureError, match="2 signing keys.*--key"):
        sign.Signer(home=home)
    assert sign.Signer(key="other@example.com", home=home).fingerprint == other.fingerprint
    assert sign.Signer(key=key.keyid, home=home).fingerprint == key.fingerprint
    with pytest.raises(SignatureError, match='matches 2 signing keys'):
        sign.Signer(key="example.com", home=home)
    with pytest.raises(SignatureError, match='no secret key matches "nobody"'):
        sign.Signer(key="nobody", home=home)


# -- sign and verify -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", sign.MODES)
def test_sign_then_verify(keyed, mode):
    home, key = keyed
    signer = sign.Signer(home=home, mode=mode)
    assert signer.mode == mode, signer.notes
    doc = signer.clearsign(MANIFEST)
    assert sign.is_clearsigned(doc)
    payload, fpr = sign.verify_clearsigned(doc, home)
    # The first line survives (python-gnupg drops it when given passphrase="").
    assert payload == MANIFEST + b"\n"
    assert json.loads(payload)["version"] == 3
    assert fpr == key.fingerprint


def test_gpg_verify_accepts_what_signer_writes(keyed, tmp_path):
    home, key = keyed
    path = tmp_path / "m.spec.manifest.json"
    path.write_bytes(sign.Signer(home=home).clearsign(MANIFEST))
    r = gpg(home, "--status-fd", "1", "--verify", str(path))
    assert r.returncode == 0, r.stderr
    assert b"Good signature" in r.stderr
    assert f"VALIDSIG {key.fingerprint}".encode() in r.stdout
    # And gpg's own reading of the signed text is the manifest.
    r = gpg(home, "--decrypt", str(path))
    assert r.returncode == 0 and r.stdout == MANIFEST + b"\n"


def test_tampered_byte_is_refused(keyed):
    home, _ = keyed
    doc = sign.Signer(home=home).clearsign(MANIFEST)
    bad = doc.replace(b'"contentLength":737', b'"contentLength":738')
    assert bad != doc
    with pytest.raises(SignatureError, match="BAD signature"):
        sign.verify_clearsigned(bad, home)


def test_damaged_signature_is_refused(keyed):
    home, _ = keyed
    doc = bytearray(sign.Signer(home=home).clearsign(MANIFEST))
    at = doc.index(b"-----BEGIN PGP SIGNATURE-----") + 40
    doc[at] = ord("A") if doc[at] != ord("A") else ord("B")
    with pytest.raises(SignatureError):
        sign.verify_clearsigned(bytes(doc), home)


def test_unknown_key_is_refused(make_home):
    signer_home, verifier_home = make_home(), make_home()
    sign.create_key("Stranger", "stranger@example.com", home=signer_home)
    doc = sign.Signer(home=signer_home).clearsign(MANIFEST)
    with pytest.raises(SignatureError, match="unknown key .*keys install MIRROR --trust"):
        sign.verify_clearsigned(doc, verifier_home)


def test_known_but_untrusted_key_is_refused(make_home):
    signer_home, verifier_home = make_home(), make_home()
    stranger = sign.create_key("Stranger", "stranger@example.com", home=signer_home)
    public, _ = sign.export_keys(home=signer_home)
    # In the keyring, good signature, gpg exits 0 ... and still refused: not trusted.
    assert sign.import_keys(public, trust=False, home=verifier_home) == [stranger.fingerprint]
    doc = sign.Signer(home=signer_home).clearsign(MANIFEST)
    assert gpg(verifier_home, "--verify", input=doc).returncode == 0
    with pytest.raises(SignatureError, match=f"{stranger.fingerprint}.*NOT trusted"):
        sign.verify_clearsigned(doc, verifier_home)


def test_keys_exported_from_one_home_and_trusted_in_another_verify(make_home, tmp_path):
    a, b = make_home(), make_home()
    key = sign.create_key("Builder", "builder@example.com", home=a)
    data, fprs = sign.export_keys(home=a)
    assert fprs == [key.fingerprint] and b"PRIVATE" not in data
    path = tmp_path / "builder.pub"
    sign.write_export(str(path), data, secret=False)
    trusted = sign.trust_file(str(path), home=b)
    assert [k.fingerprint for k in trusted] == [key.fingerprint]
    assert not trusted[0].secret and trusted[0].trusted
    doc = sign.Signer(home=a).clearsign(MANIFEST)
    assert sign.verify_clearsigned(doc, b) == (MANIFEST + b"\n", key.fingerprint)
    # Untrusting removes it again: refused.
    sign.untrust_key(key.keyid, home=b)
    assert sign.list_keys(b) == []
    with pytest.raises(SignatureError, match="unknown key"):
        sign.verify_clearsigned(doc, b)


def test_secret_key_moves_to_a_build_machine(make_home, tmp_path):
    laptop, ci = make_home(), make_home()
    key = sign.create_key("Release", "release@example.com", home=laptop)
    data, _ = sign.export_keys([key.fingerprint], secret=True, home=laptop)
    path = tmp_path / "release.secret"
    sign.write_export(str(path), data, secret=True)
    assert os.stat(path).st_mode & 0o777 == 0o600
    sign.trust_file(str(path), home=ci)
    signer = sign.Signer(home=ci)
    signer.settle()
    assert signer.fingerprint == key.fingerprint and signer.mode == "local"
    assert sign.verify_clearsigned(signer.clearsign(MANIFEST), laptop)[1] == key.fingerprint


def test_untrusting_own_key_keeps_it_for_signing(keyed):
    home, key = keyed
    sign.untrust_key(key.fingerprint, home=home)
    doc = sign.Signer(home=home).clearsign(MANIFEST)
    with pytest.raises(SignatureError, match="NOT trusted"):
        sign.verify_clearsigned(doc, home)


def test_revoked_key_is_refused(keyed):
    home, key = keyed
    doc = sign.Signer(home=home).clearsign(MANIFEST)
    rev = open(os.path.join(home, "openpgp-revocs.d", f"{key.fingerprint}.rev"), "rb").read()
    # gpg stores the certificate with a ':' before the armor so it is not imported by accident.
    rev = rev.replace(b":-----BEGIN", b"-----BEGIN")
    assert gpg(home, "--import", input=rev).returncode == 0
    with pytest.raises(SignatureError, match="REVOKED"):
        sign.verify_clearsigned(doc, home)
    with pytest.raises(SignatureError, match="no signing key"):
        sign.Signer(home=home)


def test_expired_key_is_refused(home):
    # A key that lived one day in 2020, and what it signed then.
    r = gpg(home, "--faked-system-time", "20200101T000000!", "--pinentry-mode", "loopback",
            "--passphrase", "", "--quick-gen-key", "Old <old@example.com>", "ed25519", "sign", "1d")
    assert r.returncode == 0, r.stderr
    r = gpg(home, "--faked-system-time", "20200101T000100!", "--clearsign", input=MANIFEST)
    assert r.returncode == 0, r.stderr
    with pytest.raises(SignatureError, match="EXPIRED"):
        sign.verify_clearsigned(r.stdout, home)
    with pytest.raises(SignatureError, match="no signing key"):
        sign.Signer(home=home)


# -- documents that are not one clearsigned block ---------------------------------------------------


def test_extra_text_around_the_signed_block_is_refused(keyed):
    home, _ = keyed
    signer = sign.Signer(home=home)
    doc = signer.clearsign(MANIFEST)
    other = signer.clearsign(b'{"version":3,"data":[]}')
    for bad in (doc + other, doc + b'{"version":3}\n', b'{"version":3}\n' + doc,
                doc + b"-----BEGIN PGP MESSAGE-----\n\nxx\n-----END PGP MESSAGE-----\n"):
        with pytest.raises(SignatureError, match="clearsigned document"):
            sign.verify_clearsigned(bad, home)


def test_a_line_past_gpgs_limit_is_refused_although_gpg_says_good(keyed):
    home, _ = keyed
    doc = sign.Signer(home=home).clearsign(MANIFEST)
    # gpg drops the rest of an overlong line and still reports a good signature.
    padded = doc.replace(b"\n]\n}\n", b"\n]" + b" " * 20000 + b',"data":[]\n}\n', 1)
    assert gpg(home, "--verify", input=padded).returncode == 0
    for reader in (sign.verify_clearsigned, lambda d, h: sign.clearsigned_text(d)):
        with pytest.raises(SignatureError, match=r"line of 20\d{3} bytes, longer than gpg verifies"):
            reader(padded, home)


def test_plain_json_is_not_clearsigned(keyed):
    home, _ = keyed
    assert not sign.is_clearsigned(MANIFEST)
    with pytest.raises(SignatureError, match="not a clearsigned document"):
        sign.verify_clearsigned(MANIFEST, home)


def test_overlong_line_cannot_be_signed(keyed):
    home, _ = keyed
    with pytest.raises(SignatureError, match="line breaks"):
        sign.Signer(home=home).clearsign(b"x" * 20000)


# -- install's entry point ------------------------------------------------------------------------


def test_verify_manifest_bytes_policy(keyed, monkeypatch):
    home, _ = keyed
    doc = sign.Signer(home=home).clearsign(MANIFEST)
    assert sign.verify_manifest_bytes(doc, True, home) == MANIFEST + b"\n"
    with pytest.raises(SignatureError, match="hello.*not signed.*--unsigned"):
        sign.verify_manifest_bytes(MANIFEST, True, home, source="hello@1.0")
    assert sign.verify_manifest_bytes(MANIFEST, False, home) == MANIFEST
    monkeypatch.setattr(sign, "_skip_warned", False)
    with pytest.warns(UserWarning, match="NOT verified"):
        assert sign.verify_manifest_bytes(doc, False, home) == MANIFEST + b"\n"
    # Not verified means not verified: a tampered manifest passes, as the user asked.
    tampered = doc.replace(b"737", b"738")
    assert json.loads(sign.verify_manifest_bytes(tampered, False, home))["data"][0]["contentLength"] == 738
    with pytest.raises(SignatureError, match="BAD"):
        sign.verify_manifest_bytes(tampered, True, home)


def test_verify_manifests_in_parallel(keyed):
    home, _ = keyed
    signer = sign.Signer(home=home, mode="local")
    docs = [signer.clearsign(b'{"version":3,"data":[\n{"n":%d}\n]}' % i) for i in range(12)]
    payloads = sign.verify_manifests(docs, True, home, jobs=4)
    assert [json.loads(p)["data"][0]["n"] for p in payloads] == list(range(12))
    docs[7] = docs[7].replace(b'"n":7', b'"n":8')
    with pytest.raises(SignatureError, match="BAD"):
        sign.verify_manifests(docs, True, home, jobs=4)


def test_v2_specfile(keyed, make_home):
    home, _ = keyed
    spec = {"spec": {"_meta": {"version": 4}, "nodes": [{"name": "zlib", "version": "1.3"}]}}
    text = json.dumps(spec, indent=0).encode()
    signed = sign.Signer(home=home).clearsign(text)
    assert sign.verify_v2_specfile(signed, home) == spec
    with pytest.raises(SignatureError, match="unknown key"):
        sign.verify_v2_specfile(signed, make_home())
    with pytest.raises(SpecError, match="not JSON"):
        sign.verify_v2_specfile(sign.Signer(home=home).clearsign(b"zlib 1.3"), home)


# -- the agent fast path ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["local", "agent"])
def test_concurrent_signing_from_threads(keyed, mode):
    home, key = keyed
    signer = sign.Signer(home=home, mode=mode)
    docs: list[bytes] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(10):
            d = signer.clearsign(b'{"t":%d,\n"i":%d}' % (t, i))
            with lock:
                docs.append(d)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(docs) == 40
    assert all(fpr == key.fingerprint for _, fpr in
               (sign.verify_clearsigned(d, home) for d in docs[::4]))
    signer.close()


def test_signing_subkey_and_rsa(home):
    # A certification-only primary key with an RSA signing subkey, as personal keys often are.
    r = gpg(home, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
            "Sub <sub@example.com>", "ed25519", "cert", "never")
    assert r.returncode == 0, r.stderr
    primary = sign.list_keys(home)[0].fingerprint
    r = gpg(home, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-add-key", primary,
            "rsa2048", "sign", "1y")
    assert r.returncode == 0, r.stderr
    assert sign.Signer(home=home)._subkey[0] != primary
    for mode in sign.MODES:
        signer = sign.Signer(home=home, mode=mode)
        assert signer.mode == mode, signer.notes
        assert signer._subkey[0] != primary and signer._subkey[2] == 1
        payload, fpr = sign.verify_clearsigned(signer.clearsign(MANIFEST), home)
        assert fpr == primary and payload == MANIFEST + b"\n"


def test_agent_is_restarted_when_it_goes_away(keyed):
    home, key = keyed
    signer = sign.Signer(home=home, mode="agent")
    signer.clearsign(MANIFEST)
    sign.stop_agent(home)
    time.sleep(0.2)
    doc = signer.clearsign(MANIFEST)
    assert sign.verify_clearsigned(doc, home)[1] == key.fingerprint
    assert signer.mode == "agent", signer.notes


_line = st.lists(st.sampled_from(list("ab -\t{}\":,é") + ["From ", "-----BEGIN PGP", "- "]),
                 max_size=12).map("".join)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, min_size=1, max_size=6))
def test_any_text_signed_here_reads_back_the_same(keyed, lines):
    """The packet writer, dash-escaping and whitespace rules agree with gpg on any text, and the
    unverified reader sees what gpg verified."""
    home, _ = keyed
    signer = _signer_for(home)
    data = "\n".join(lines).encode()
    doc = signer.clearsign(data)
    payload, _ = sign.verify_clearsigned(doc, home)
    # A final line break is the end of the last line, with or without it the same document.
    text = data if data.endswith(b"\n") else data + b"\n"
    expected = b"".join(line.rstrip(b" \t") + b"\n" for line in text.split(b"\n")[:-1])
    assert payload == expected
    assert sign.clearsigned_text(doc) == payload


_signers: dict[str, sign.Signer] = {}


def _signer_for(home: str) -> sign.Signer:
    if home not in _signers:
        # No background move to in-process signing: nothing may run on after the test's home is gone.
        _signers[home] = sign.Signer(home=home, mode="local")
    return _signers[home]


# -- never hang, never leak -------------------------------------------------------------------------

_SIGN_SCRIPT = """
import sys
from bincache import sign
from bincache.errors import SignatureError
try:
    s = sign.Signer(home=sys.argv[1], mode=sys.argv[2])
    s.clearsign(b'{"a":1}')
except SignatureError as e:
    print("SignatureError:", e)
    sys.exit(3)
print("signed?!")
"""


@pytest.mark.parametrize("mode", ["auto", "agent", "gpg"])
def test_passphrase_key_without_a_way_to_ask_fails_fast(home, mode):
    # Protecting a key calibrates the passphrase hashing first (~4 s here): a fixed count is quick.
    with open(os.path.join(home, "gpg-agent.conf"), "w") as f:
        f.write("s2k-count 65536\n")
    r = gpg(home, "--pinentry-mode", "loopback", "--passphrase", "s3cret-words", "--quick-gen-key",
            "Locked <locked@example.com>", "ed25519", "sign", "never")
    assert r.returncode == 0, r.stderr
    sign.stop_agent(home)  # forget any cached passphrase
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path]))
    env.pop("GPG_TTY", None)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _SIGN_SCRIPT, home, mode], capture_output=True,
                       timeout=60, env=env, start_new_session=True,
                       preexec_fn=lambda: os.close(0))  # no stdin at all, no terminal
    assert time.monotonic() - t0 < 30
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 3, out
    assert "protected by a passphrase" in out and "never prompts" in out
    assert "s3cret" not in out


def test_public_export_and_listing_hold_nothing_secret(keyed):
    home, key = keyed
    data, _ = sign.export_keys(home=home)
    assert b"PUBLIC KEY BLOCK" in data and b"PRIVATE" not in data
    shown = json.dumps([k.to_dict() for k in sign.list_keys(home)])
    assert key.fingerprint in shown and "PRIVATE" not in shown


# -- the GnuPG home --------------------------------------------------------------------------------


def test_home_from_environment_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("BINCACHE_GNUPGHOME", str(tmp_path / "g"))
    assert sign.gnupg_home() == str(tmp_path / "g")
    assert os.stat(tmp_path / "g").st_mode & 0o777 == 0o700
    monkeypatch.delenv("BINCACHE_GNUPGHOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sign, "_configured_home", lambda: None)
    assert sign.gnupg_home() == str(tmp_path / ".bincache" / "gpg")


def test_home_from_config_is_relative_to_its_scope(monkeypatch, tmp_path):
    from bincache import config

    scope = tmp_path / "scope"
    scope.mkdir()
    (scope / "config.yaml").write_text("config:\n  gnupghome: keys/gpg\n")
    monkeypatch.delenv("BINCACHE_GNUPGHOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config.configure(scope_dirs=[str(scope)])
    try:
        assert sign.gnupg_home() == str(scope / "keys" / "gpg")
    finally:
        config.reset()


def test_deep_home_works_through_a_short_alias(make_home):
    deep = os.path.join(make_home(), *(["a-rather-long-directory-name"] * 4))
    assert len(deep) > 100
    try:
        key = sign.create_key("Deep", "deep@example.com", home=deep)
        alias = sign._gpg_homedir(deep)
        assert len(alias) < 60 and os.path.realpath(alias) == os.path.realpath(deep)
        doc = sign.Signer(home=deep).clearsign(MANIFEST)
        assert sign.verify_clearsigned(doc, deep)[1] == key.fingerprint
        assert os.path.exists(os.path.join(deep, "pubring.kbx"))
    finally:
        _drop_home(deep)


# -- keys in a mirror -------------------------------------------------------------------------------


def _dir_cache(path: str):
    from bincache.mirror.directory import DirectoryBackend
    from bincache.mirror.layout_v3 import LayoutV3Cache

    return LayoutV3Cache(DirectoryBackend(path))


def test_publish_and_install_keys(make_home, tmp_path):
    a, b = make_home(), make_home()
    k1 = sign.create_key("One", "one@example.com", home=a)
    k2 = sign.create_key("Two", "two@example.com", home=a)
    cache = _dir_cache(str(tmp_path / "mirror"))
    assert sign.publish_keys(cache, [k1.fingerprint], home=a) == [k1.fingerprint]
    assert sign.publish_keys(cache, ["two@example.com"], home=a) == [k2.fingerprint]
    # The index lists both, in Spack's format.
    index_manifest = json.loads((tmp_path / "mirror" / sign.KEYS_MANIFEST).read_bytes())
    rec = index_manifest["data"][0]
    assert rec["mediaType"] == sign.MT_KEYINDEX
    blob = tmp_path / "mirror" / "blobs" / "sha256" / rec["checksum"][:2] / rec["checksum"]
    assert set(json.loads(blob.read_bytes())["keys"]) == {k1.fingerprint, k2.fingerprint}
    key_manifest = json.loads((tmp_path / "mirror" / sign.KEY_MANIFESTS / f"{k1.fingerprint}.key.manifest.json").read_bytes())
    assert key_manifest["data"][0]["mediaType"] == "application/pgp-keys"

    assert sign.install_keys(cache, trust=False, home=b) == sorted([k1.fingerprint, k2.fingerprint])
    assert sign.trusted_fingerprints(b) == frozenset()
    doc = sign.Signer(key=k1.fingerprint, home=a).clearsign(MANIFEST)
    with pytest.raises(SignatureError, match="NOT trusted"):
        sign.verify_clearsigned(doc, b)
    sign.install_keys(cache, trust=True, home=b)
    assert sign.verify_clearsigned(doc, b)[1] == k1.fingerprint


def test_install_refuses_a_key_swapped_under_another_name(make_home, tmp_path):
    a, attacker, b = make_home(), make_home(), make_home()
    good = sign.create_key("Good", "good@example.com", home=a)
    sign.create_key("Evil", "evil@example.com", home=attacker)
    cache = _dir_cache(str(tmp_path / "mirror"))
    sign.publish_keys(cache, home=a)
    evil_data, _ = sign.export_keys(home=attacker)
    rec = cache.put_blob_bytes(evil_data, sign.MT_KEY)
    from bincache.mirror.layout_v3 import manifest_bytes

    cache.backend.write(f"{sign.KEY_MANIFESTS}/{good.fingerprint}.key.manifest.json", manifest_bytes([rec]))
    with pytest.raises(SignatureError, match=f"not the key {good.fingerprint}"):
        sign.install_keys(cache, trust=True, home=b)
    assert sign.list_keys(b) == []


def test_install_keys_from_a_mirror_without_keys(home, tmp_path):
    with pytest.raises(SignatureError, match="publishes no keys"):
        sign.install_keys(_dir_cache(str(tmp_path)), trust=True, home=home)


def test_keys_cannot_go_to_an_oci_registry(keyed):
    home, _ = keyed

    class OciLike:
        url = "oci://127.0.0.1:5000/cache"

    with pytest.raises(MirrorError, match="only in directory, http and s3"):
        sign.publish_keys(OciLike(), home=home)


def test_install_keys_from_an_old_layout_v2_cache(make_home, tmp_path):
    a, b = make_home(), make_home()
    key = sign.create_key("Old", "old@example.com", home=a)
    data, _ = sign.export_keys(home=a)
    pgp = tmp_path / "build_cache" / "_pgp"
    pgp.mkdir(parents=True)
    (pgp / "index.json").write_text(json.dumps({"keys": {key.fingerprint: {}}}))
    (pgp / f"{key.fingerprint}.pub").write_bytes(data)
    assert sign.install_keys(_dir_cache(str(tmp_path)), trust=True, home=b) == [key.fingerprint]
    assert sign.trusted_fingerprints(b) == {key.fingerprint}


def test_a_signature_gpg_rejects_is_never_handed_out(keyed, monkeypatch):
    home, key = keyed
    # A broken packet writer: the header announces SHA-512, the digest is SHA-256.
    monkeypatch.setattr(sign, "_HASH_SHA256", 10)
    signer = sign.Signer(home=home)
    doc = signer.clearsign(MANIFEST)
    assert signer.mode == "gpg"
    assert any("self-check failed" in note for note in signer.notes), signer.notes
    assert sign.verify_clearsigned(doc, home)[1] == key.fingerprint
    assert not os.path.exists(os.path.join(home, sign._CHECKED_FILE))


def test_the_self_check_is_remembered_per_key(keyed):
    home, key = keyed
    first = sign.Signer(home=home, mode="local")
    first.clearsign(MANIFEST)  # waits for the check
    with open(os.path.join(home, sign._CHECKED_FILE)) as f:
        assert any(e.startswith("local:") and key.fingerprint in e for e in json.load(f))
    second = sign.Signer(home=home, mode="local")
    assert second._check is None and second.mode == "local"
    assert sign.verify_clearsigned(second.clearsign(MANIFEST), home)[1] == key.fingerprint


def test_auto_signs_through_the_agent_then_in_process(keyed):
    home, key = keyed
    by_count = sign.Signer(home=home)
    for _ in range(sign._UPGRADE_AFTER):
        by_count.clearsign(MANIFEST)
    by_count._upgrade.join()
    assert by_count.mode == "local", by_count.notes
    signer = sign.Signer(home=home)
    assert signer.mode == "agent", signer.notes  # at once: no export, no import on the way
    early = signer.clearsign(MANIFEST)
    signer.settle()
    assert signer.mode == "local", signer.notes
    late = [signer.clearsign(MANIFEST) for _ in range(10)][-1]  # past the point it would move
    for doc in (early, late):
        assert sign.verify_clearsigned(doc, home) == (MANIFEST + b"\n", key.fingerprint)
