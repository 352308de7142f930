"""Clearsigning through gpg and its agent, in throwaway GnuPG homes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bincache import signing
from bincache.errors import SignatureError
from tests.fixtures.gnupg import MANIFEST, gpg, quick_key

# -- choosing the signing key ---------------------------------------------------------------------


def test_no_signing_key_says_what_to_do(home):
    with pytest.raises(SignatureError, match="no signing key.*keys create NAME EMAIL.*--unsigned"):
        signing.Signer(home=home)


def test_two_signing_keys_need_a_choice(keyed):
    home, key = keyed
    other = signing.create_key("Other", "other@example.com", home=home)
    with pytest.raises(SignatureError, match="2 signing keys.*--key"):
        signing.Signer(home=home)
    assert signing.Signer(key="other@example.com", home=home).fingerprint == other.fingerprint
    assert signing.Signer(key=key.keyid, home=home).fingerprint == key.fingerprint
    with pytest.raises(SignatureError, match='matches 2 signing keys'):
        signing.Signer(key="example.com", home=home)
    with pytest.raises(SignatureError, match='no secret key matches "nobody"'):
        signing.Signer(key="nobody", home=home)


def test_revoked_and_expired_keys_cannot_sign(keyed, make_home):
    home, key = keyed
    rev = open(os.path.join(home, "openpgp-revocs.d", f"{key.fingerprint}.rev"), "rb").read()
    assert gpg(home, "--import", input=rev.replace(b":-----BEGIN", b"-----BEGIN")).returncode == 0
    with pytest.raises(SignatureError, match="no signing key"):
        signing.Signer(home=home)
    old = make_home()
    r = gpg(old, "--faked-system-time", "20200101T000000!", "--pinentry-mode", "loopback",
            "--passphrase", "", "--quick-gen-key", "Older <older@example.com>", "ed25519", "sign", "1d")
    assert r.returncode == 0, r.stderr
    with pytest.raises(SignatureError, match="cannot sign: it is expired"):
        signing.Signer(key="older@example.com", home=old)


# -- what gpg makes of it -------------------------------------------------------------------------


def test_sign_then_verify(keyed):
    home, key = keyed
    doc = signing.Signer(home=home).clearsign(MANIFEST)
    assert signing.is_clearsigned(doc)
    payload, fpr = signing.verify_clearsigned(doc, home)
    # The first line survives (python-gnupg drops it when given passphrase="").
    assert payload == MANIFEST + b"\n"
    assert fpr == key.fingerprint


def test_gpg_verify_accepts_what_signer_writes(keyed, tmp_path):
    home, key = keyed
    path = tmp_path / "m.spec.manifest.json"
    path.write_bytes(signing.Signer(home=home).clearsign(MANIFEST))
    r = gpg(home, "--status-fd", "1", "--verify", str(path))
    assert r.returncode == 0, r.stderr
    assert b"Good signature" in r.stderr
    valid = next(line for line in r.stdout.splitlines() if line.startswith(b"[GNUPG:] VALIDSIG"))
    fields = valid.split()[2:]
    assert fields[0] == key.fingerprint.encode() and fields[7] == b"8"  # SHA-256
    # And gpg's own reading of the signed text is the manifest.
    r = gpg(home, "--decrypt", str(path))
    assert r.returncode == 0 and r.stdout == MANIFEST + b"\n"


def test_overlong_line_cannot_be_signed(keyed):
    home, _ = keyed
    with pytest.raises(SignatureError, match="line breaks"):
        signing.Signer(home=home).clearsign(b"x" * 20000)


def test_concurrent_signing_from_threads(keyed):
    home, key = keyed
    signer = signing.Signer(home=home)
    docs: list[bytes] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(5):
            d = signer.clearsign(b'{"t":%d,\n"i":%d}' % (t, i))
            with lock:
                docs.append(d)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(docs) == 20
    assert {signing.verify_clearsigned(d, home)[1] for d in docs[::3]} == {key.fingerprint}
    signer.close()


def test_signing_subkey_and_rsa(home):
    # A certification-only primary key with an RSA signing subkey, as personal keys often are.
    quick_key(home, "Sub <sub@example.com>", "ed25519", "cert")
    primary = signing.list_keys(home)[0].fingerprint
    r = gpg(home, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-add-key", primary,
            "rsa2048", "sign", "1y")
    assert r.returncode == 0, r.stderr
    doc = signing.Signer(home=home).clearsign(MANIFEST)
    payload, fpr = signing.verify_clearsigned(doc, home)
    assert fpr == primary and payload == MANIFEST + b"\n"
    r = gpg(home, "--status-fd", "1", "--verify", input=doc)
    fields = next(line for line in r.stdout.splitlines() if line.startswith(b"[GNUPG:] VALIDSIG")).split()[2:]
    assert fields[0] != primary.encode() and fields[6] == b"1"  # made by the RSA subkey


def test_agent_is_restarted_when_it_goes_away(keyed):
    home, key = keyed
    signer = signing.Signer(home=home)
    signer.clearsign(MANIFEST)
    signing.stop_agent(home)
    time.sleep(0.2)
    assert signing.verify_clearsigned(signer.clearsign(MANIFEST), home)[1] == key.fingerprint


_line = st.lists(st.sampled_from(list("ab -\t{}\":,é") + ["From ", "-----BEGIN PGP", "- "]),
                 max_size=12).map("".join)
_signers: dict[str, signing.Signer] = {}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, min_size=1, max_size=6))
def test_any_text_signed_here_reads_back_the_same(keyed, lines):
    """Dash-escaping and whitespace: gpg's verified text is the text signed (lines without their
    trailing blanks), and the unverified reader sees the same."""
    home, _ = keyed
    signer = _signers.setdefault(home, signing.Signer(home=home))
    data = "\n".join(lines).encode()
    doc = signer.clearsign(data)
    payload, _ = signing.verify_clearsigned(doc, home)
    text = data if data.endswith(b"\n") else data + b"\n"
    expected = b"".join(line.rstrip(b" \t") + b"\n" for line in text.split(b"\n")[:-1])
    assert payload == expected
    assert signing.clearsigned_text(doc) == payload


# -- the secret key stays in GnuPG ----------------------------------------------------------------

_SIGN_SCRIPT = """
import sys
from bincache import signing
from bincache.errors import SignatureError
try:
    s = signing.Signer(home=sys.argv[1])
    s.clearsign(b'{"a":1}')
except SignatureError as e:
    print("SignatureError:", e)
    sys.exit(3)
print("signed?!")
"""

PASSPHRASE = "s3cret-words"


def _locked_key(home: str) -> str:
    """A signing key protected by a passphrase; returns its keygrip."""
    # Protecting a key calibrates the passphrase hashing first (~4 s here): a fixed count is quick.
    with open(os.path.join(home, "gpg-agent.conf"), "w") as f:
        f.write("s2k-count 65536\nallow-preset-passphrase\n")
    quick_key(home, "Locked <locked@example.com>", passphrase=PASSPHRASE)
    r = gpg(home, "--with-colons", "--with-keygrip", "-K")
    return next(line.split(":")[9] for line in r.stdout.decode().splitlines() if line.startswith("grp:"))


def test_passphrase_key_without_a_way_to_ask_fails_fast(home):
    _locked_key(home)
    signing.stop_agent(home)  # forget any cached passphrase
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path]))
    env.pop("GPG_TTY", None)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _SIGN_SCRIPT, home], capture_output=True,
                       timeout=60, env=env, start_new_session=True,
                       preexec_fn=lambda: os.close(0))  # no stdin at all, no terminal
    assert time.monotonic() - t0 < 30
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 3, out
    assert "protected by a passphrase" in out and "never prompts" in out
    assert PASSPHRASE not in out


def test_a_key_unlocked_only_in_the_agent_signs_and_never_leaves_gnupg(home, monkeypatch):
    """The passphrase is given to gpg-agent alone (gpg-preset-passphrase, as a CI job would):
    bincache signs with it, and no gpg it runs is ever asked to export a secret key."""
    grip = _locked_key(home)
    signing.stop_agent(home)
    subprocess.run(["gpg-connect-agent", "--homedir", home, "/bye"], check=True, capture_output=True,
                   timeout=30)
    preset = subprocess.run(["/usr/lib/gnupg/gpg-preset-passphrase", "--homedir", home, "--preset", grip],
                            input=PASSPHRASE.encode(), capture_output=True, timeout=30)
    assert preset.returncode == 0, preset.stderr
    ran: list[list[str]] = []
    real_popen = subprocess.Popen

    class Spy(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, args, *a, **kw):
            ran.append([str(x) for x in args])
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", Spy)
    signer = signing.Signer(home=home)
    doc = signer.clearsign(MANIFEST)
    payload, fpr = signing.verify_clearsigned(doc, home)
    assert payload == MANIFEST + b"\n" and fpr == signer.fingerprint
    gpg_runs = [argv for argv in ran if os.path.basename(argv[0]) == "gpg"]
    assert any("--clearsign" in argv for argv in gpg_runs)
    assert not [argv for argv in gpg_runs if any("export-secret" in a for a in argv)]
    # The key is protected on disk: without the agent's copy of the passphrase it cannot sign.
    signing.stop_agent(home)
    with pytest.raises(SignatureError, match="protected by a passphrase"):
        signer.clearsign(MANIFEST)
