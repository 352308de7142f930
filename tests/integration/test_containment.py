"""Issue 10, findings 2 and 5: packages signed by a TRUSTED key (the worst case: a compromised
builder, or a signature bypass) still cannot write or point outside the install root, and
cannot pass for another package. Each attack is refused with one line; nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tests.conftest import run_cli
from tests.fixtures.hostile import Package, Signer, copy_keyring, member, node, tree, write_package

DEP_OLD = "/opt/old/dep-1.0-d"
OLD = "/opt/old/evil-1.0-x"


@pytest.fixture(scope="module")
def signer():
    base = tempfile.mkdtemp(prefix="bcsign-")
    s = Signer(base)
    yield s
    s.close()
    shutil.rmtree(s.home, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def trusting_home(signer):
    home = tempfile.mkdtemp(prefix="bcu-", dir="/tmp")
    signer.trust_in(home)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def user(trusting_home, _isolated_home):
    """The installing user's keyring (the test's BINCACHE_GNUPGHOME) trusts the builder."""
    copy_keyring(trusting_home, os.environ["BINCACHE_GNUPGHOME"])


def _install(tmp_path, *specs, extra=()):
    root = tmp_path / "root"
    p = run_cli("--root", str(root), "install", "--mirror", str(tmp_path / "mirror"), *extra, *specs)
    return p, root


def _refused(p, root, tmp_path, words: str):
    assert p.returncode == 1, p.stdout + p.stderr
    assert words in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error:"), p.stderr
    # Nothing installed, no staging left, nothing beside the root.
    assert not root.exists() or tree(str(root)) == [], tree(str(root))
    assert sorted(os.listdir(tmp_path)) == ["home", "mirror"]


def _with_dep(tmp_path, signer, members, *, dep_claim=DEP_OLD, arch=None):
    dep = node("dep")
    evil = node("evil", deps=(dep,), arch=arch)
    mirror = str(tmp_path / "mirror")
    write_package(mirror, Package(dep, DEP_OLD, [member(DEP_OLD + "/lib/libd.so", b"d")]), signer)
    write_package(mirror, Package(evil, OLD, members, dep_nodes=[dep],
                                  hash_to_prefix={evil["hash"]: OLD, dep["hash"]: dep_claim}), signer)


def test_a_signed_clean_package_with_a_dependency_installs(tmp_path, signer, user):
    """The control: the same construction, honest, installs (so the refusals below are real)."""
    _with_dep(tmp_path, signer, [member(OLD + "/lib/libd.so", link=DEP_OLD + "/lib/libd.so"),
                                 member(OLD + "/share/x", link="../lib/libd.so")])
    p, root = _install(tmp_path, "evil")
    assert p.returncode == 0, p.stderr
    (prefix,) = [d for d, _, f in os.walk(root) if d.endswith("/lib") and "evil" in d]
    target = os.readlink(os.path.join(prefix, "libd.so"))
    assert target.startswith(str(root)) and "dep-1.0-" in target
    assert os.path.realpath(os.path.join(prefix, "libd.so")).startswith(str(root))


@pytest.mark.parametrize("link", [
    DEP_OLD + "/../../../../etc/passwd",   # through a dependency's prefix and up
    DEP_OLD + "/lib/../../../../../tmp",
])
def test_links_climbing_out_of_a_dependency_prefix_are_refused(tmp_path, signer, user, link):
    _with_dep(tmp_path, signer, [member(OLD + "/passwd", link=link)])
    p, root = _install(tmp_path, "evil")
    _refused(p, root, tmp_path, "points outside the prefix")


def test_a_relative_link_through_a_dependency_link_cannot_climb(tmp_path, signer, user):
    _with_dep(tmp_path, signer, [member(OLD + "/a", link=DEP_OLD),
                                 member(OLD + "/b", link="a/../../../../../../etc")])
    p, root = _install(tmp_path, "evil")
    _refused(p, root, tmp_path, "points outside the prefix")


@pytest.mark.parametrize("claim", ["//", "/", "/opt/old/dep-1.0-d/..", "relative/dep"])
def test_buildinfo_cannot_claim_a_dependency_lives_anywhere(tmp_path, signer, user, claim):
    _with_dep(tmp_path, signer, [member(OLD + "/etc", link="//etc"),
                                 member(OLD + "/shadow", link=f"{claim.rstrip('/')}/etc/shadow")],
              dep_claim=claim)
    p, root = _install(tmp_path, "evil")
    _refused(p, root, tmp_path, "points outside the prefix")


@pytest.mark.parametrize("arch", [
    {"platform": "linux", "platform_os": "debian12", "target": "../../../../tmp/escaped"},
    {"platform": "../..", "platform_os": "debian12", "target": "x86_64"},
    {"platform": "linux", "platform_os": "x/y", "target": {"name": "../x"}},
])
def test_arch_fields_that_are_paths_are_refused(tmp_path, signer, user, arch):
    _with_dep(tmp_path, signer, [member(OLD + "/a.txt", b"x")], arch=arch)
    p, root = _install(tmp_path, "evil")
    _refused(p, root, tmp_path, "invalid arch")
    assert not os.path.exists("/tmp/escaped")


def test_a_link_in_the_root_does_not_route_a_prefix_outside(tmp_path, signer, user):
    """A directory of the install path that is a symlink out of the root (planted earlier)."""
    _with_dep(tmp_path, signer, [member(OLD + "/a.txt", b"x")])
    root = tmp_path / "root"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.mkdir()
    (root / "linux-x86_64").symlink_to(elsewhere)
    p, _ = _install(tmp_path, "evil")
    assert p.returncode == 1 and "outside the install root" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert os.listdir(elsewhere) == []
    assert sorted(os.listdir(root)) == ["linux-x86_64"]


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_are_refused_at_install(tmp_path, signer, user, name):
    n = node("x")
    n["name"] = name
    write_package(str(tmp_path / "mirror"), Package(n, OLD, [], filed_as=("evil", "1.0")), signer)
    p, root = _install(tmp_path, "evil")
    _refused(p, root, tmp_path, "invalid package name")


@pytest.mark.parametrize("name,version", [("..", "1.0"), ("ok", ".."), ("ok", "1.0/../x"),
                                          (".", "1")])
def test_dot_names_and_separators_are_refused_at_register(tmp_path, name, version):
    prefix = tmp_path / "p"
    prefix.mkdir()
    p = run_cli("--root", str(tmp_path), "register", str(prefix), "--name", name,
                "--version", version, "--no-autopush")
    assert p.returncode == 1 and "invalid" in p.stderr and "Traceback" not in p.stderr
    assert not (prefix / ".spack").exists()


def test_a_signed_manifest_filed_under_another_name_is_refused(tmp_path, signer, user):
    """Finding 5: a genuinely signed package (here "trojan") filed where "zlib" belongs."""
    trojan = node("trojan", "6.6")
    mirror = str(tmp_path / "mirror")
    write_package(mirror, Package(trojan, OLD, [member(OLD + "/bin/sh", b"evil")],
                                  filed_as=("zlib", "1.3")), signer)
    p, root = _install(tmp_path, "zlib")
    _refused(p, root, tmp_path, "refusing a substituted package")
    assert "trojan@6.6" in p.stderr


def test_a_signed_manifest_filed_under_another_version_is_refused(tmp_path, signer, user):
    old = node("zlib", "1.2.0")  # the vulnerable one, filed as the fixed release
    write_package(str(tmp_path / "mirror"), Package(old, OLD, [member(OLD + "/a", b"x")],
                                                    filed_as=("zlib", "1.3.1")), signer)
    p, root = _install(tmp_path, "zlib@1.3.1")
    _refused(p, root, tmp_path, "refusing a substituted package")
