"""Spack's `buildcache` spellings in bincache's CLI: push -u, list -l/-L/-v/-a with an
architecture column, install -o, download -s/-p, version ranges. Real prefixes registered and
pushed to a real directory mirror, then run after install."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import run_cli

OTHER_ARCH = "linux-otheros1-x86_64"


@pytest.fixture
def mirror(tmp_path, _isolated_home):
    """foo@1.2.3 and foo@1.4.0 for this machine, bar@2.0 for another OS, pushed unsigned."""
    root = tmp_path / "root"
    for name, version, arch in (("foo", "1.2.3", None), ("foo", "1.4.0", None),
                                ("bar", "2.0", OTHER_ARCH)):
        prefix = root / f"{name}-{version}"
        (prefix / "bin").mkdir(parents=True)
        tool = prefix / "bin" / name
        tool.write_text(f"#!/bin/sh\necho {name} {version}\n")
        tool.chmod(0o755)
        args = ["--root", str(root), "register", str(prefix), "--name", name, "--version", version,
                "--no-autopush"]
        run_cli(*args, *(["--arch", arch] if arch else []), check=True)
    out = tmp_path / "mirror"
    pushed = run_cli("--root", str(root), "push", "-u", str(out), "--rebuild-index", check=True)
    assert "3 pushed" in pushed.stdout
    # -u: nothing signed, so nothing to verify later.
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.endswith((".sig", ".asc"))]
    return str(out)


def _rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    return [line.split() for line in lines[1:] if line and line[0] not in "(0123456789"]


def test_list_shows_this_machines_packages_with_their_arch_and_a_note_for_the_rest(mirror):
    out = run_cli("list", mirror, check=True).stdout
    assert out.splitlines()[0].split() == ["NAME", "VERSION", "HASH", "ARCH", "SIZE"]
    rows = _rows(out)
    assert [(r[0], r[1]) for r in rows] == [("foo", "1.2.3"), ("foo", "1.4.0")]
    assert all(len(r[2]) == 7 for r in rows)
    assert "(1 for other architectures not shown: -a lists them)" in out

    out = run_cli("list", "-a", "-L", "-v", mirror, check=True).stdout
    assert out.splitlines()[0].split() == ["NAME", "VERSION", "HASH", "ARCH", "SIZE", "VARIANTS"]
    bar = next(r for r in _rows(out) if r[0] == "bar")
    assert len(bar[2]) == 32 and bar[3] == OTHER_ARCH
    assert "not shown" not in out


def test_version_ranges_and_prefixes_select_specs(mirror):
    def names(*selectors):
        return [(r[0], r[1]) for r in _rows(run_cli("list", mirror, *selectors, check=True).stdout)]

    assert names("foo@1.3:") == [("foo", "1.4.0")]
    assert names("foo@1.2") == [("foo", "1.2.3")]
    assert names("foo@1.2:1.4") == [("foo", "1.2.3"), ("foo", "1.4.0")]
    assert names("foo@:1.1") == []


def test_install_refuses_another_arch_without_otherarch(mirror, tmp_path):
    root = tmp_path / "new"
    p = run_cli("--root", str(root), "install", "-u", "-m", mirror, "bar")
    assert p.returncode == 1
    [line] = p.stderr.strip().splitlines()
    assert line.startswith("error: bar@2.0/")
    assert ": built for linux-otheros1, this machine is linux-" in line
    assert line.endswith("; install it anyway with -o/--otherarch")
    assert not root.exists() or not any(root.rglob("bin"))

    run_cli("--root", str(root), "install", "-u", "-o", "-m", mirror, "bar", check=True)
    [tool] = root.rglob("bin/bar")
    assert subprocess.run([str(tool)], capture_output=True, text=True).stdout == "bar 2.0\n"
    # A range picks one package when only one matches.
    run_cli("--root", str(root), "install", "-u", "-m", mirror, "foo@1.3:", check=True)
    [tool] = root.rglob("bin/foo")
    assert subprocess.run([str(tool)], capture_output=True, text=True).stdout == "foo 1.4.0\n"


def test_download_takes_spacks_spec_and_path_options(mirror, tmp_path):
    dest = tmp_path / "dl"
    run_cli("download", "-u", "-m", mirror, "-s", "foo@1.2.3", "-p", str(dest), check=True)
    got = sorted(os.listdir(dest))
    assert [n.endswith(".spec.json") for n in got] == [True, False] and got[1].endswith(".tar.gz")
    assert all(n.startswith("foo-1.2.3-") for n in got)
    p = run_cli("download", "-u", "-m", mirror)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == (
        "error: give a spec to fetch: bincache download SPEC or -s SPEC")



def test_spacks_config_yaml_projection_lays_out_the_install(mirror, tmp_path):
    import shutil

    scope = tmp_path / "spack-scope"
    scope.mkdir()
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "fixtures", "spack_config", "config.yaml"),
                scope / "config.yaml")
    root = tmp_path / "tree"
    p = run_cli("-C", str(scope), "--root", str(root), "install", "-u", "-m", mirror, "foo@1.4",
                check=True)
    # Spack's {name}-{version}-{hash:7}; padded_length, build_jobs... only warned about.
    [prefix] = [d for d in os.listdir(root) if d.startswith("foo-")]
    assert len(prefix) == len("foo-1.4.0-") + 7
    assert subprocess.run([str(root / prefix / "bin" / "foo")], capture_output=True,
                          text=True).stdout == "foo 1.4.0\n"
    assert "install_tree:padded_length: a Spack setting that bincache does not use" in p.stderr
