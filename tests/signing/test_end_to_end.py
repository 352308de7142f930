"""Signed build caches end to end, through the command line, with the real gpg.

A builder (GnuPG home A) creates a key, pushes a package signed and publishes its key; a user
(home B) trusts the mirror's keys and installs. Tampering, a foreign signature, unsigned
manifests and the unsigned switches are tried against that. Homes are short mkdtemp paths under
/tmp (gpg-agent's socket path limit); their agents are stopped at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from bincache import signing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class World:
    """Throwaway homes, an install tree with one package, and helpers to run the CLI."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.homes: list[str] = []
        self.builder = self.home()
        self.user = self.home()
        self.root = os.path.join(base, "root")
        self.prefix = os.path.join(self.root, "opt", "hello-1.0")
        os.makedirs(os.path.join(self.prefix, "bin"))
        script = os.path.join(self.prefix, "bin", "hello")
        with open(script, "w") as f:
            f.write(f"#!/bin/sh\necho hello from {self.prefix}\n")
        os.chmod(script, 0o755)

    def home(self) -> str:
        h = tempfile.mkdtemp(prefix="bci-", dir="/tmp")
        self.homes.append(h)
        return h

    def run(self, *args: str, home: str, check: bool = True, root: str | None = None,
            scope: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=REPO, BINCACHE_GNUPGHOME=home,
                   HOME=os.path.join(self.base, "userhome"))
        env.pop("BINCACHE_ROOT", None)
        cmd = [sys.executable, "-m", "bincache"]
        if root:
            cmd += ["--root", root]
        if scope:
            cmd += ["-C", scope]
        r = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError(f"bincache {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def manifest_path(self, mirror: str) -> str:
        d = os.path.join(mirror, "v3", "manifests", "spec", "hello")
        (name,) = os.listdir(d)
        return os.path.join(d, name)

    def close(self) -> None:
        for h in self.homes:
            signing.stop_agent(h)
            shutil.rmtree(h, ignore_errors=True)


@pytest.fixture(scope="module")
def world():
    base = tempfile.mkdtemp(prefix="bcsig-")
    w = World(base)
    try:
        w.run("register", w.prefix, "--name", "hello", "--version", "1.0", "--no-autopush",
              home=w.builder, root=w.root)
        w.run("keys", "create", "Builder", "builder@example.com", home=w.builder)
        w.signed_mirror = os.path.join(base, "signed-mirror")
        w.run("create", w.signed_mirror, home=w.builder, root=w.root)
        w.run("keys", "publish", w.signed_mirror, home=w.builder)
        w.run("keys", "install", w.signed_mirror, "--trust", home=w.user)
        yield w
    finally:
        w.close()
        shutil.rmtree(base, ignore_errors=True)


def copy_mirror(w: World, name: str) -> str:
    dest = os.path.join(w.base, name)
    shutil.copytree(w.signed_mirror, dest)
    return dest


def installed(root: str) -> list[str]:
    return [d for d, _, files in os.walk(root) if "hello" in files]


def test_signed_push_writes_clearsigned_manifests_gpg_accepts(world):
    w = world
    raw = open(w.manifest_path(w.signed_mirror), "rb").read()
    assert raw.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{\n")
    with open(os.path.join(w.signed_mirror, "v3", "layout.json")) as f:
        assert json.load(f) == {"signing": "gpg"}
    # A real outside client: gpg itself, with the builder's public key only.
    outsider = w.home()
    pub = os.path.join(w.base, "builder.pub")
    w.run("keys", "export", pub, home=w.builder)
    subprocess.run(["gpg", "--homedir", outsider, "--batch", "--import", pub], check=True,
                   capture_output=True, timeout=60)
    r = subprocess.run(["gpg", "--homedir", outsider, "--batch", "--verify", w.manifest_path(w.signed_mirror)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and b"Good signature" in r.stderr


def test_install_with_trusted_keys_verifies_and_runs(world):
    w = world
    root = os.path.join(w.base, "r-trusted")
    r = w.run("install", "-m", w.signed_mirror, "hello", home=w.user, root=root)
    assert "installed hello@1.0" in r.stdout
    (bindir,) = installed(root)
    out = subprocess.run([os.path.join(bindir, "hello")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("hello from")


def test_published_keys_installed_without_trust_are_refused(world):
    w = world
    cautious = w.home()
    r = w.run("keys", "install", w.signed_mirror, home=cautious)
    assert "not trusted" in r.stdout
    root = os.path.join(w.base, "r-cautious")
    r = w.run("install", "-m", w.signed_mirror, "hello", home=cautious, root=root, check=False)
    assert r.returncode == 1
    assert "NOT trusted" in r.stderr and "keys install MIRROR --trust" in r.stderr
    assert installed(root) == []


def test_tampered_manifest_is_refused_before_any_blob(world):
    w = world
    mirror = copy_mirror(w, "m-tampered")
    path = w.manifest_path(mirror)
    raw = open(path, "rb").read()
    # One byte of the signed JSON: the tarball's size.
    at = raw.index(b'"contentLength":') + len(b'"contentLength":')
    tampered = raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:]
    open(path, "wb").write(tampered)
    # Remove the blobs: a refusal must come before anything is fetched.
    shutil.rmtree(os.path.join(mirror, "blobs"))
    root = os.path.join(w.base, "r-tampered")
    r = w.run("install", "-m", mirror, "hello", home=w.user, root=root, check=False)
    assert r.returncode == 1
    assert "BAD signature" in r.stderr, r.stderr
    assert installed(root) == []


def test_manifest_signed_by_an_untrusted_key_is_refused(world):
    w = world
    mirror = copy_mirror(w, "m-foreign")
    path = w.manifest_path(mirror)
    payload = signing.clearsigned_text(open(path, "rb").read())
    mallory = w.home()
    signing.create_key("Mallory", "mallory@example.com", home=mallory)
    open(path, "wb").write(signing.Signer(home=mallory).clearsign(payload))
    root = os.path.join(w.base, "r-foreign")
    r = w.run("install", "-m", mirror, "hello", home=w.user, root=root, check=False)
    assert r.returncode == 1
    assert "unknown key" in r.stderr
    assert installed(root) == []


def test_unsigned_manifest_is_refused_unless_asked(world):
    w = world
    mirror = os.path.join(w.base, "m-unsigned")
    r = w.run("create", "--unsigned", mirror, home=w.builder, root=w.root)
    raw = open(w.manifest_path(mirror), "rb").read()
    assert raw.startswith(b"{") and not signing.is_clearsigned(raw)
    root = os.path.join(w.base, "r-unsigned")
    r = w.run("install", "-m", mirror, "hello", home=w.user, root=root, check=False)
    assert r.returncode == 1 and "not signed" in r.stderr and "--unsigned" in r.stderr
    assert installed(root) == []
    r = w.run("install", "--unsigned", "-m", mirror, "hello", home=w.user, root=root)
    assert len(installed(root)) == 1


def test_unsigned_install_from_a_signed_mirror_says_so(world):
    w = world
    stranger = w.home()  # no keys at all
    root = os.path.join(w.base, "r-skip")
    r = w.run("install", "--unsigned", "-m", w.signed_mirror, "hello", home=stranger, root=root)
    assert "NOT verified" in r.stderr
    assert len(installed(root)) == 1


def test_mirror_configured_signed_false_pushes_and_installs_unsigned(world):
    w = world
    scope = os.path.join(w.base, "scope")
    os.makedirs(scope)
    mirror = os.path.join(w.base, "m-config")
    with open(os.path.join(scope, "mirrors.yaml"), "w") as f:
        f.write(f"mirrors:\n  local:\n    url: {mirror}\n    signed: false\n")
    w.run("create", "local", home=w.builder, root=w.root, scope=scope)
    assert not signing.is_clearsigned(open(w.manifest_path(mirror), "rb").read())
    # --signed wins over the mirror's setting.
    w.run("create", "--signed", "-f", "local", home=w.builder, root=w.root, scope=scope)
    assert signing.is_clearsigned(open(w.manifest_path(mirror), "rb").read())
    # And installing from it follows the mirror's signed: false.
    w.run("create", "-f", "local", home=w.builder, root=w.root, scope=scope)
    root = os.path.join(w.base, "r-config")
    w.run("install", "-m", "local", "hello", home=w.home(), root=root, scope=scope)
    assert len(installed(root)) == 1


def test_key_choice_on_create(world):
    w = world
    two = w.home()
    w.run("keys", "create", "One", "one@example.com", home=two)
    w.run("keys", "create", "Two", "two@example.com", home=two)
    mirror = os.path.join(w.base, "m-two")
    r = w.run("create", mirror, home=two, root=w.root, check=False)
    assert r.returncode == 1 and "2 signing keys" in r.stderr and "--key" in r.stderr
    w.run("create", "--key", "two@example.com", mirror, home=two, root=w.root)
    _, fpr = signing.verify_clearsigned(open(w.manifest_path(mirror), "rb").read(), two)
    assert signing.find_key("two@example.com", two).fingerprint == fpr


def test_keys_commands_never_print_secrets(world):
    w = world
    secret = os.path.join(w.base, "builder.secret")
    outputs = [
        w.run("keys", "list", home=w.builder),
        w.run("keys", "list", "--signing", "--json", home=w.builder),
        w.run("keys", "export", "--secret", secret, home=w.builder),
        w.run("keys", "export", "-", home=w.builder),
        w.run("keys", "export", "--secret", "-", home=w.builder, check=False),
    ]
    assert outputs[-1].returncode == 2 and "never written to standard output" in outputs[-1].stderr
    for r in outputs:
        assert "PRIVATE KEY" not in r.stdout + r.stderr
    assert os.stat(secret).st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY BLOCK" in open(secret, "rb").read()
    # The secret file makes another machine a signer.
    ci = w.home()
    r = w.run("keys", "trust", secret, home=ci)
    assert "trusted" in r.stdout
    assert "signing" in w.run("keys", "list", home=ci).stdout


def test_passphrase_key_fails_create_fast_without_prompt(world):
    w = world
    locked = w.home()
    with open(os.path.join(locked, "gpg-agent.conf"), "w") as f:
        f.write("s2k-count 65536\n")  # quick key protection
    subprocess.run(["gpg", "--homedir", locked, "--batch", "--pinentry-mode", "loopback", "--passphrase",
                    "correct horse", "--quick-gen-key", "Locked <locked@example.com>", "ed25519", "sign",
                    "never"], check=True, capture_output=True, timeout=60)
    signing.stop_agent(locked)
    t0 = time.monotonic()
    r = w.run("create", os.path.join(w.base, "m-locked"), home=locked, root=w.root, check=False)
    assert time.monotonic() - t0 < 60
    assert r.returncode == 1
    assert "protected by a passphrase" in r.stderr and "correct horse" not in r.stderr + r.stdout


def test_a_crlf_copy_of_a_signed_manifest_installs(world):
    """A mirror copied through a tool that rewrote line endings: gpg canonicalizes them in
    cleartext signatures, and so does install (issue 10, finding 8)."""
    w = world
    mirror = copy_mirror(w, "m-crlf")
    path = w.manifest_path(mirror)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw.replace(b"\n", b"\r\n"))
    root = os.path.join(w.base, "r-crlf")
    r = w.run("install", "-m", mirror, "hello", home=w.user, root=root)
    assert "installed hello@1.0" in r.stdout
    assert len(installed(root)) == 1


@pytest.mark.parametrize("trust", [False, True])
def test_keys_install_refuses_a_mirror_serving_a_secret_key(world, trust):
    """Issue 10, finding 4: `keys install` takes public key material only."""
    w = world
    mirror = copy_mirror(w, f"m-secret-{trust}")
    secret = os.path.join(w.base, f"leak-{trust}.secret")
    w.run("keys", "export", "--secret", secret, home=w.builder)
    data = open(secret, "rb").read()
    digest = hashlib.sha256(data).hexdigest()
    blob = os.path.join(mirror, "blobs", "sha256", digest[:2], digest)
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    open(blob, "wb").write(data)
    (name,) = [n for n in os.listdir(os.path.join(mirror, "v3", "manifests", "key"))
               if n != "keys.manifest.json"]
    manifest = os.path.join(mirror, "v3", "manifests", "key", name)
    doc = json.load(open(manifest))
    doc["data"][0].update(checksum=digest, contentLength=len(data))
    json.dump(doc, open(manifest, "w"))
    victim = w.home()
    r = w.run("keys", "install", mirror, *(["--trust"] if trust else []), home=victim, check=False)
    assert r.returncode == 1, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "SECRET key material" in lines[0]
    assert "PRIVATE KEY" not in r.stdout + r.stderr
    assert w.run("keys", "list", "--signing", home=victim).stdout.startswith("no signing keys")
