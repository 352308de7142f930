"""Real Spack 0.23 installs what bincache writes (run when BINCACHE_SPACK names a spack).

A gcc-built stack registered with bincache (`register --compiler`) is pushed by bincache to a
signed layout v2 directory mirror and to an OCI registry (TLS, anonymous: Spack 0.23 speaks only
https and Bearer auth to registries). Spack lists each cache, installs from it with
`--cache-only`, and the program it installed runs from Spack's own store. Spack runs with every
configuration scope of its own in temporary directories (`-C` scope, user, cache, GnuPG home),
so nothing outside the test changes; `.ci/run` sets BINCACHE_SPACK from ../shared/tools/spack.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from tests.fixtures.registered_stack import build_registered_stack, run_sqprog
from tests.fixtures.registry import needs_registry, start_registry

SPACK = os.environ.get("BINCACHE_SPACK")
pytestmark = [pytest.mark.spack, pytest.mark.slow,
              pytest.mark.skipif(not SPACK or not os.access(SPACK, os.X_OK),
                                 reason="BINCACHE_SPACK does not name a spack executable")]

RECIPE = '''from spack.package import *


class {cls}(Package):
    """Built outside Spack, registered and pushed by bincache."""

    homepage = "https://example.org"
    url = "file:///dev/null/{name}-{version}.tar.gz"
    version("{version}", sha256="{zeros}")
{deps}
'''


class Spack:
    """One isolated Spack: its configuration, caches, keyring and store in ``base``."""

    def __init__(self, base: str):
        self.base = base
        self.scope = os.path.join(base, "scope")
        self.store = os.path.join(base, "store")
        os.makedirs(self.scope)
        self.gpg = tempfile.mkdtemp(prefix="bcsg", dir="/tmp")  # gpg-agent needs a short path
        self.env = dict(os.environ, SPACK_USER_CONFIG_PATH=os.path.join(base, "user"),
                        SPACK_USER_CACHE_PATH=os.path.join(base, "cache"),
                        SPACK_SYSTEM_CONFIG_PATH=os.path.join(base, "system"),
                        SPACK_GNUPGHOME=self.gpg, SPACK_DISABLE_LOCAL_CONFIG="1")
        self._write_repo()

    def _write_repo(self) -> None:
        """Spack installs a package only through its recipe: one per name, in the namespace
        bincache's register writes (``bincache``)."""
        repo = os.path.join(self.base, "repo")
        os.makedirs(os.path.join(repo, "packages"))
        with open(os.path.join(repo, "repo.yaml"), "w") as f:
            f.write("repo:\n  namespace: bincache\n")
        for name, version, deps in (("libsq", "1.0", ""), ("sqprog", "0.1", '    depends_on("libsq")')):
            os.makedirs(os.path.join(repo, "packages", name))
            with open(os.path.join(repo, "packages", name, "package.py"), "w") as f:
                f.write(RECIPE.format(cls=name.capitalize(), name=name, version=version, zeros="0" * 64,
                                      deps=deps))
        with open(os.path.join(self.scope, "repos.yaml"), "w") as f:
            f.write(f"repos:\n- {repo}\n")

    def configure(self, mirror_url: str, ssl_certs: str | None = None) -> None:
        with open(os.path.join(self.scope, "mirrors.yaml"), "w") as f:
            f.write(f"mirrors:\n  bincache: {mirror_url}\n")
        lines = ["config:", f"  install_tree: {{root: {self.store}}}"]
        if ssl_certs:
            lines.append(f"  ssl_certs: {ssl_certs}")
        with open(os.path.join(self.scope, "config.yaml"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([SPACK, "-C", self.scope, *args], capture_output=True, text=True, env=self.env,
                              stdin=subprocess.DEVNULL, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"spack {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", self.gpg, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(self.gpg, ignore_errors=True)


@pytest.fixture
def spack(tmp_path):
    s = Spack(str(tmp_path / "spack"))
    yield s
    s.close()


@pytest.fixture
def stack(tmp_path, cli, spack):
    """The stack, registered for the platform and OS Spack detects here (target: the family)."""
    platform, os_name, _ = spack("arch").stdout.strip().split("-")
    return build_registered_stack(str(tmp_path / "build"), cli, arch=f"{platform}-{os_name}-x86_64")


def assert_listed(spack: Spack, stack) -> None:
    out = spack("buildcache", "list", "-al").stdout
    assert f"/ {stack.compiler} " in out, out
    assert re.search(rf"^{stack.lib_hash[:7]} libsq@1\.0$", out, re.M), out
    assert re.search(rf"^{stack.prog_hash[:7]} sqprog@0\.1$", out, re.M), out


def assert_installed_and_runs(spack: Spack, stack, *extra: str) -> None:
    done = spack("install", "--cache-only", *extra, f"/{stack.prog_hash}")
    assert "sqprog: Successfully installed" in done.stdout + done.stderr
    out = run_sqprog(spack.store)
    assert out.startswith("sq(7)=49 data="), out
    # libsq's own data directory, relocated into Spack's store (left-padded with slashes).
    data = out.strip().split("data=", 1)[1]
    assert re.sub("^/+", "/", data).startswith(spack.store + "/") and data.endswith("/share/sq"), out
    assert stack.root not in out


def test_spack_installs_bincaches_signed_v2_mirror_and_the_program_runs(stack, spack, tmp_path, cli):
    cli("keys", "create", "bincache CI", "ci@example.org", check=True)
    mirror = str(tmp_path / "mirror")
    cli("--root", stack.root, "create", "--layout", "v2", mirror, "--rebuild-index", check=True)
    spack.configure(f"file://{mirror}")
    assert_listed(spack, stack)
    keys = spack("buildcache", "keys", "--install", "--trust")
    assert "imported: 1" in keys.stdout + keys.stderr
    # Signed: Spack verifies the clearsigned spec file with the key bincache published.
    assert_installed_and_runs(spack, stack)
    # A cache Spack itself pushes (no index): bincache's update-index makes Spack list it.
    spack_made = str(tmp_path / "spack-made")
    spack("buildcache", "push", "--unsigned", spack_made, f"/{stack.prog_hash}")
    assert not os.path.exists(os.path.join(spack_made, "build_cache", "index.json"))
    cli("update-index", spack_made, check=True)
    spack.configure(f"file://{spack_made}")
    assert_listed(spack, stack)
@needs_registry
def test_spack_installs_from_bincaches_oci_cache_and_the_program_runs(stack, spack, tmp_path, cli):
    reg = start_registry(tmp_path / "registry", "tls-anonymous")
    try:
        url = f"{reg.url}/spack/cache"
        cli("--root", stack.root, "create", "--unsigned", url, "--rebuild-index", env=reg.env(), check=True)
        spack.configure(url, ssl_certs=str(reg.ca_file))
        # Spack lists the packages from bincache's OCI index (index.spack).
        assert_listed(spack, stack)
        # Spack 0.23 verifies no OCI package: it installs them only as unsigned.
        assert_installed_and_runs(spack, stack, "--no-check-signature")
    finally:
        reg.stop()
