"""Autopush as a build system uses it: a Makefile compiles and installs a small C program,
registers the prefix, and the package lands in every autopush mirror without a push command;
a mirror that cannot be written is a warning, never a failed build."""

from __future__ import annotations

import glob
import os
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli

HELLO_C = r"""
#include <stdio.h>
int main(void) { printf("hello from %s\n", PREFIX); return 0; }
"""

# The install step registers the prefix; `bincache register` pushes it to autopush mirrors.
# PUSH_STEP lets a test use the Python API instead (what a build system's own code would do).
MAKEFILE = """\
PREFIX ?= /usr/local
VERSION ?= 1.0
all: hello
hello: hello.c
\t$(CC) -O1 -DPREFIX='"$(PREFIX)"' -o $@ $<
install: hello
\tmkdir -p $(PREFIX)/bin
\tcp hello $(PREFIX)/bin/hello
\t$(PUSH_STEP)
.PHONY: all install
"""

CLI = f"{shlex.quote(sys.executable)} -m bincache"


def api_step(prefix_var: str = "$(PREFIX)") -> str:
    code = (
        "import bincache.api as b; "
        f"b.register('{prefix_var}', 'hello', '$(VERSION)'); "
        f"b.on_build_finished('{prefix_var}')"
    )
    return f'{shlex.quote(sys.executable)} -c "{code}"'


@pytest.fixture
def project(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.c").write_text(HELLO_C)
    (src / "Makefile").write_text(MAKEFILE)
    return src


def make_install(project, prefix, push_step: str, version: str = "1.0") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        ["make", "-s", "-C", str(project), "install", f"PREFIX={prefix}", f"VERSION={version}",
         f"PUSH_STEP={push_step}", "CC=gcc"],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
    )


def packages(mirror) -> list[str]:
    return sorted(os.path.basename(p) for p in
                  glob.glob(os.path.join(str(mirror), "v3/manifests/spec/*/*.spec.manifest.json")))


def test_a_make_install_lands_in_the_autopush_mirror_and_installs_elsewhere(project, tmp_path):
    cache = tmp_path / "cache"
    run_cli("mirror", "add", "--autopush", "--unsigned", "team", str(cache), check=True)
    # A long build root (Spack's padded_length), so the install can go anywhere shorter.
    prefix = tmp_path / ("build" + "_" * 150) / "hello-1.0"

    proc = make_install(project, prefix, f"{CLI} register $(PREFIX) --name hello --version $(VERSION)")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    [manifest] = packages(cache)
    assert manifest.startswith("hello-1.0-")

    # Someone else installs it from the configured mirrors (no --mirror) and runs it.
    root = tmp_path / "elsewhere"
    run_cli("--root", str(root), "install", "hello", check=True)
    [exe] = glob.glob(str(root / "**" / "bin" / "hello"), recursive=True)
    out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    assert out.startswith("hello from ")
    assert str(prefix) not in out  # relocated to where it was installed


def test_the_python_api_pushes_after_each_build(project, tmp_path):
    cache = tmp_path / "cache"
    run_cli("mirror", "add", "--autopush", "--unsigned", "team", str(cache), check=True)
    for version in ("1.0", "1.1"):
        proc = make_install(project, tmp_path / "build" / f"hello-{version}", api_step(), version)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
    assert [p.split("-")[1] for p in packages(cache)] == ["1.0", "1.1"]


def test_a_mirror_that_cannot_be_written_is_a_warning_and_the_build_succeeds(project, tmp_path):
    good = tmp_path / "good"
    (tmp_path / "a-file").write_text("not a directory")
    broken = tmp_path / "a-file" / "cache"  # we run as root: chmod would not stop us, this does
    run_cli("mirror", "add", "--autopush", "--unsigned", "broken", str(broken), check=True)
    run_cli("mirror", "add", "--autopush", "--unsigned", "good", str(good), check=True)

    for step in (f"{CLI} register $(PREFIX) --name hello --version $(VERSION)", api_step()):
        prefix = tmp_path / "build" / ("cli" if "register" in step.split() else "api") / "hello-1.0"
        proc = make_install(project, prefix, step)
        assert proc.returncode == 0, proc.stderr
        assert 'autopush: hello-1.0 was not pushed to "broken"' in proc.stderr
        assert "Not a directory" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert os.path.exists(prefix / "bin" / "hello")
    assert len(packages(good)) == 1  # both builds are the same package
    assert not broken.exists()


def test_only_the_package_is_pushed_not_its_dependencies(tmp_path):
    cache = tmp_path / "cache"
    run_cli("mirror", "add", "--autopush", "--unsigned", "team", str(cache), check=True)
    dep = tmp_path / "build" / "libgreet-2.0"
    (dep / "lib").mkdir(parents=True)
    (dep / "lib" / "greet.txt").write_text("hi\n")
    run_cli("register", "--no-autopush", str(dep), "--name", "libgreet", "--version", "2.0", check=True)
    pkg = tmp_path / "build" / "app-1.0"
    (pkg / "share").mkdir(parents=True)
    (pkg / "share" / "uses").write_text(f"{dep}/lib/greet.txt\n")
    run_cli("register", str(pkg), "--name", "app", "--version", "1.0", "--dep", str(dep), check=True)
    assert [p.split("-")[0] for p in packages(cache)] == ["app"]


def test_signing_follows_each_mirror(project, tmp_path):
    signed, unsigned = tmp_path / "signed", tmp_path / "unsigned"
    run_cli("mirror", "add", "--autopush", "signed", str(signed), check=True)
    run_cli("mirror", "add", "--autopush", "--unsigned", "plain", str(unsigned), check=True)
    step = f"{CLI} register $(PREFIX) --name hello --version $(VERSION)"

    # No signing key yet: the signed mirror is skipped with the reason; the build goes on.
    proc = make_install(project, tmp_path / "b1" / "hello-1.0", step)
    assert proc.returncode == 0, proc.stderr
    assert 'was not pushed to "signed"' in proc.stderr and "signing key" in proc.stderr
    assert packages(signed) == [] and len(packages(unsigned)) == 1

    run_cli("keys", "create", "CI", "ci@example.org", check=True)
    proc = make_install(project, tmp_path / "b2" / "hello-1.0", step, version="2.0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    [m_signed] = glob.glob(str(signed / "v3/manifests/spec/hello/*.json"))
    [m_plain] = glob.glob(str(unsigned / "v3/manifests/spec/hello/hello-2.0-*.json"))
    assert open(m_signed).read().startswith("-----BEGIN PGP SIGNED MESSAGE-----")
    assert open(m_plain).read().startswith("{")


def test_an_unregistered_prefix_or_a_broken_config_never_raises(tmp_path, _isolated_home):
    from bincache import autopush, config

    config.reset()
    run_cli("mirror", "add", "--autopush", "--unsigned", "team", str(tmp_path / "cache"), check=True)
    seen: list[str] = []
    results = autopush.on_build_finished(str(tmp_path), warn=seen.append)
    assert [r.ok for r in results] == [False]
    assert "is not registered" in seen[0] and "bincache register" in seen[0]

    (_isolated_home / ".bincache" / "mirrors.yaml").write_text("mirrors: [oops\n")
    seen.clear()
    assert autopush.on_build_finished(str(tmp_path), warn=seen.append) == []
    assert "mirror configuration cannot be read" in seen[0] and "mirrors.yaml:" in seen[0]


# The snippet of docs/autopush.md, verbatim but for the bincache command.
CMAKELISTS = """\
cmake_minimum_required(VERSION 3.19)
project(hello VERSION 1.0 LANGUAGES C)
add_executable(hello hello.c)
target_compile_definitions(hello PRIVATE PREFIX="${CMAKE_INSTALL_PREFIX}")
install(TARGETS hello RUNTIME DESTINATION bin)

# Last install rule: register the installed prefix; bincache pushes it to autopush mirrors.
set(BINCACHE bincache CACHE STRING "the bincache command")
install(CODE "execute_process(
  COMMAND ${BINCACHE} register \\${CMAKE_INSTALL_PREFIX}
          --name ${PROJECT_NAME} --version ${PROJECT_VERSION}
  COMMAND_ERROR_IS_FATAL ANY)")
"""


def test_a_cmake_install_step_pushes_too(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.c").write_text(HELLO_C)
    (src / "CMakeLists.txt").write_text(CMAKELISTS)
    cache = tmp_path / "cache"
    run_cli("mirror", "add", "--autopush", "--unsigned", "team", str(cache), check=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    build, prefix = tmp_path / "build", tmp_path / "prefix" / "hello-1.0"

    def run(*cmd):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    run("cmake", "-S", str(src), "-B", str(build), f"-DCMAKE_INSTALL_PREFIX={prefix}",
        f"-DBINCACHE={sys.executable} -m bincache")
    run("cmake", "--build", str(build))
    proc = run("cmake", "--install", str(build))
    assert "registered hello@1.0" in proc.stdout
    [manifest] = packages(cache)
    assert manifest.startswith("hello-1.0-")


def test_warnings_reach_the_callers_channel_and_the_push_goes_on(tmp_path, monkeypatch):
    from bincache import api, autopush, config

    config.reset()
    monkeypatch.delenv("CACHE_TOKEN", raising=False)
    run_cli("mirror", "add", "--autopush", "--unsigned", "--oci-username", "ci",
            "--oci-password-variable", "CACHE_TOKEN", "team", str(tmp_path / "cache"), check=True)
    prefix = tmp_path / "build" / "data-1.0"
    (prefix / "share").mkdir(parents=True)
    (prefix / "share" / "readme").write_text("data\n")
    api.register(str(prefix), "data", "1.0")
    seen: list[str] = []
    [result] = autopush.on_build_finished(str(prefix), warn=seen.append)
    assert result.ok and result.pushed and result.mirror == "team"
    assert seen == ['autopush: mirror "team": the push password comes from $CACHE_TOKEN, '
                    "which is not set; using the mirror without credentials"]
    assert packages(tmp_path / "cache")[0].startswith("data-1.0-")
