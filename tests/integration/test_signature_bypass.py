"""Issue 10, finding 1: a trojan OCI image under a legitimate signature, against a real registry.

gpg hashes (and prints) only the first ~20,000 bytes of a clearsigned line. A mirror that
appends padding and other ``data``/``subject`` values to a line of a legitimate signature
document keeps gpg's "Good signature"; a reader that parses the file itself sees the appended
values. Install must trust only the text gpg returned, and refuse such documents outright.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import pytest

from bincache import api
from bincache.errors import BincacheError
from bincache.mirror import MirrorRef, open_cache
from bincache.oci import image as img
from bincache.oci.client import OCI_MANIFEST, Descriptor, sha256_digest

pytest_plugins = ["tests.fixtures.registry"]
pytestmark = pytest.mark.registry


def _trojan_tarball(legit: bytes, prefix: str) -> bytes:
    """The legitimate package tarball with one more file: what an attacker would ship."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(legit))) as src, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            dst.addfile(member, data)
            if member.isdir() and member.name == prefix.lstrip("/"):
                evil = tarfile.TarInfo(prefix.lstrip("/") + "/TROJAN")
                evil.size, evil.mode = 6, 0o644
                dst.addfile(evil, io.BytesIO(b"pwned\n"))
    return gzip.compress(out.getvalue(), mtime=0)


def _plant_trojan(cache, spec, prefix: str) -> None:
    """Replace the package image by a trojan one whose signature document is the legitimate one
    with the trojan's records appended, past gpg's line limit, to a line of the signed text."""
    client, image = cache.client, cache.image
    tag = image.with_tag(img.package_tag(spec.name, spec.version, spec.hash))
    legit = client.fetch_manifest(tag)
    doc = legit.json()
    own = Descriptor.from_json(doc["layers"][-1])
    sig_manifest = client.fetch_manifest(image.with_tag(img.signature_tag(legit.digest))).json()
    sig_desc = Descriptor.from_json(sig_manifest["layers"][0])
    legit_sig = client.fetch_blob_bytes(image, sig_desc.digest, sig_desc.size)

    trojan = _trojan_tarball(client.fetch_blob_bytes(image, own.digest, own.size), prefix)
    client.upload_blob(image, trojan, sha256_digest(trojan))
    doc["layers"][-1] = Descriptor(own.media_type, sha256_digest(trojan), len(trojan)).to_json()
    raw = img.dumps(doc)
    trojan_digest = sha256_digest(raw)
    client.put_manifest(image.with_digest(trojan_digest), raw, legit.media_type)
    client.put_manifest(tag, raw, legit.media_type)

    # The line closing "subject" gets padding (gpg drops everything past its limit, and trailing
    # blanks are not signed) and then the trojan's records: JSON readers keep the last key.
    signed = json.loads(legit_sig.split(b"\n\n", 1)[1].split(b"-----BEGIN PGP SIGNATURE", 1)[0])
    signed["data"][0] = {**signed["data"][0], "checksum": sha256_digest(trojan).split(":")[1],
                         "contentLength": len(trojan)}
    signed["subject"] = {"mediaType": legit.media_type, "digest": trojan_digest, "size": len(raw)}
    extra = json.dumps({"data": signed["data"], "subject": signed["subject"]},
                       separators=(",", ":"))[1:-1]
    lines = legit_sig.split(b"\n")
    end = lines.index(b"-----BEGIN PGP SIGNATURE-----")
    assert lines[end - 1] == b"}" and lines[end - 2] == b"}"
    lines[end - 2] = b"}" + b" " * 20000 + b"," + extra.encode()
    evil_sig = b"\n".join(lines)
    client.upload_blob(image, evil_sig, sha256_digest(evil_sig))
    client.upload_blob(image, img.EMPTY_JSON, sha256_digest(img.EMPTY_JSON))
    sig_doc = img.build_manifest(
        config=Descriptor(img.EMPTY, sha256_digest(img.EMPTY_JSON), len(img.EMPTY_JSON)),
        layers=[Descriptor(img.SIGNATURE_LAYER, sha256_digest(evil_sig), len(evil_sig))],
        subject=Descriptor(legit.media_type, trojan_digest, len(raw)),
        artifact_type=img.SIGNATURE_ARTIFACT)
    sig_raw = img.dumps(sig_doc)
    client.put_manifest(image.with_digest(sha256_digest(sig_raw)), sig_raw, OCI_MANIFEST)
    client.put_manifest(image.with_tag(img.signature_tag(trojan_digest)), sig_raw, OCI_MANIFEST)


@pytest.fixture
def trojan_registry(registry_http, demo_stack_factory, tmp_path):
    """A registry repository holding greet, signed by a trusted key, then swapped for a trojan."""
    from bincache import signing

    signing.create_key("Release", "release@example.com")
    url = f"{registry_http.url}/bypass{os.getpid()}-{tmp_path.name}/cache"
    stack = demo_stack_factory
    api.push(MirrorRef(url), ["greet"], root=stack.root, signed=True)
    legit_root = tmp_path / "legit"
    api.install(["greet"], mirrors=[MirrorRef(url)], root=str(legit_root), unsigned=False)
    cache = open_cache(MirrorRef(url))
    _plant_trojan(cache, stack.greet.spec, stack.greet.prefix)
    return url


def _installed_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_trojan_image_with_a_padded_signature_line_is_refused(trojan_registry, tmp_path):
    root = tmp_path / "victim"
    with pytest.raises(BincacheError) as info:
        api.install(["greet"], mirrors=[MirrorRef(trojan_registry)], root=str(root), unsigned=False)
    message = str(info.value)
    assert "longer than" in message and "\n" not in message.strip()
    # Nothing of the trojan (nor any prefix, nor staging debris) is left behind.
    assert not root.exists() or _installed_files(root) == []


def test_trojan_is_refused_from_gpgs_text_even_without_the_line_check(trojan_registry, tmp_path,
                                                                       monkeypatch):
    """Defence in depth: with the line limit check out of the way, the records install uses are
    the ones gpg verified, and those name the legitimate image, not the trojan."""
    from bincache.signing import cleartext

    monkeypatch.setattr(cleartext, "MAX_LINE", 1 << 20)
    root = tmp_path / "victim"
    with pytest.raises(BincacheError, match="was made for another image"):
        api.install(["greet"], mirrors=[MirrorRef(trojan_registry)], root=str(root), unsigned=False)
    assert not root.exists() or _installed_files(root) == []


def test_the_trojan_cli_error_is_one_line(trojan_registry, tmp_path):
    from tests.conftest import run_cli

    root = tmp_path / "victim"
    p = run_cli("--root", str(root), "install", "--mirror", trojan_registry, "greet")
    assert p.returncode == 1, p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "longer than" in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not root.exists() or _installed_files(root) == []
