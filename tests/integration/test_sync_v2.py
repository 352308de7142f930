"""`bincache sync` from a layout v2 cache (gcc-built, gpg-signed, as Spack 0.2x writes it) and
`--resign`: a v2 signature cannot travel (it signs the spec file), so signed packages need a key;
the copy installs, verified against that key only, and the program runs; `--resign` on a layout
v3 source re-signs what verified and leaves the source alone."""

from __future__ import annotations

import json
import os
import subprocess

from tests.conftest import run_cli
from tests.integration import test_layout_v2 as v2
from tests.integration.test_layout_v2 import assert_relocated, run_prog, write_v2_cache
from tests.integration.test_migrate import homes, snapshot  # noqa: F401 (fixture)

store = v2.store
signing_home = v2.signing_home
pytest_plugins = ["tests.fixtures.registry"]


def signer_of(manifest_dir, home) -> str:
    (name,) = os.listdir(manifest_dir)
    v = subprocess.run(["gpg", "--homedir", home, "--batch", "--verify", os.path.join(manifest_dir, name)],
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stderr
    return v.stderr


def test_v2_source_needs_resign_then_installs_verified(store, signing_home, tmp_path, homes,  # noqa: F811
                                                      registry_http):
    mirror = str(tmp_path / "v2")
    write_v2_cache(store, mirror, signer=signing_home)
    site = homes()

    def cli(*args, home=site, check=True):
        return run_cli(*args, env={"BINCACHE_GNUPGHOME": home}, check=check)

    cli("keys", "install", mirror, "--trust")
    cli("keys", "create", "Copier", "copier@example.com")
    before = snapshot(mirror)
    dest = tmp_path / "v3"
    r = cli("sync", mirror, str(dest), check=False)
    assert r.returncode == 1 and r.stderr.count("error:") == 1 and len(r.stderr.splitlines()) == 1
    assert "--resign KEY" in r.stderr and "nothing was copied" in r.stderr
    assert not dest.exists()

    out = json.loads(cli("sync", mirror, str(dest), "--resign", "Copier", "--json").stdout)
    assert sorted(s["name"] for s in out["copied"]) == ["libfoo", "prog"] and out["resigned"] == 2
    assert snapshot(mirror) == before  # the source is read only
    assert "Copier" in signer_of(dest / "v3" / "manifests" / "spec" / "prog", site)

    # A user who trusts only the copier's key (the copy publishes it) installs and runs.
    user = homes()
    cli("keys", "install", str(dest), "--trust", home=user)
    root = str(tmp_path / "installed")
    cli("--root", root, "install", "--mirror", str(dest), "prog", home=user)
    assert_relocated(run_prog(root), root, store)

    # Straight into a registry: the re-signed manifests travel with the images.
    oci = f"{registry_http.url}/fromv2/cache"
    cli("sync", mirror, oci, "--resign", "Copier")
    root = str(tmp_path / "from-oci")
    cli("--root", root, "install", "--mirror", oci, "prog", home=user)
    assert_relocated(run_prog(root), root, store)

    # --resign on a layout v3 source: verified against the trusted keys, signed again.
    cli("keys", "create", "Second", "second@example.com")
    again = tmp_path / "again"
    v3_before = snapshot(dest)
    out = json.loads(cli("sync", str(dest), str(again), "--resign", "Second", "--json").stdout)
    assert out["resigned"] == 2 and snapshot(dest) == v3_before
    assert "Second" in signer_of(again / "v3" / "manifests" / "spec" / "prog", site)
    # Without --resign the copy is the same bytes.
    plain = tmp_path / "plain"
    cli("sync", str(dest), str(plain))
    assert {k: v for k, v in snapshot(plain).items() if "/spec/" in k} == \
        {k: v for k, v in v3_before.items() if "/spec/" in k}


def test_resign_refuses_a_signature_it_cannot_verify(store, signing_home, tmp_path, homes):  # noqa: F811
    mirror = str(tmp_path / "v2")
    write_v2_cache(store, mirror, signer=signing_home)
    stranger = homes()  # does not trust the old cache's key
    env = {"BINCACHE_GNUPGHOME": stranger}
    run_cli("keys", "create", "Stranger", "s@example.com", env=env, check=True)
    dest = tmp_path / "dest"
    r = run_cli("sync", mirror, str(dest), "--resign", "Stranger", env=env)
    assert r.returncode != 0 and r.stderr.count("error:") == 1 and "nothing was copied" in r.stderr
    assert not dest.exists()
