"""Registering prefixes another build system made, outside any install tree (as docs/autopush.md
shows, without --root): a library and a program that links it are compiled with gcc, pushed by
the autopush hook, installed into a new root, and the program runs against the installed library.
A rebuild registered with a new --hash-input is a new package."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli

GREET_C = r"""
#include <stdio.h>
void greet(const char *who) { printf("hello, %s\n", who); }
"""

APP_C = r"""
void greet(const char *who);
int main(void) { greet("world"); return 0; }
"""


def _gcc(*args: str) -> None:
    subprocess.run(["gcc", *args], check=True, capture_output=True)


def build_lib(src, prefix) -> None:
    (prefix / "lib").mkdir(parents=True)
    (src / "greet.c").write_text(GREET_C)
    _gcc("-shared", "-fPIC", "-o", str(prefix / "lib" / "libgreet.so"), str(src / "greet.c"))


def build_app(src, prefix, lib_prefix) -> None:
    (prefix / "bin").mkdir(parents=True)
    (src / "app.c").write_text(APP_C)
    _gcc("-o", str(prefix / "bin" / "app"), str(src / "app.c"), f"-L{lib_prefix}/lib", "-lgreet",
         f"-Wl,-rpath,{lib_prefix}/lib")


def manifests(mirror) -> list[str]:
    return sorted(os.path.basename(p) for p in
                  glob.glob(os.path.join(str(mirror), "v3/manifests/spec/*/*.spec.manifest.json")))


@pytest.fixture
def autopush_mirror(tmp_path):
    cache = tmp_path / "cache"
    run_cli("mirror", "add", "--autopush", "--unsigned", "team", str(cache), check=True)
    return cache


def test_a_dependent_built_outside_any_tree_installs_elsewhere_and_runs(tmp_path, autopush_mirror):
    src = tmp_path / "src"
    src.mkdir()
    # Two unrelated build directories (no install tree, no --root), long enough to relocate from.
    lib = tmp_path / ("libs" + "_" * 80) / "libgreet-5.0"
    app = tmp_path / ("apps" + "_" * 80) / "app-1.0"
    build_lib(src, lib)
    proc = run_cli("register", str(lib), "--name", "libgreet", "--version", "5.0", check=True)
    assert "pushed to team" in proc.stdout
    build_app(src, app, lib)
    # The Python flow of docs/autopush.md: register, then the autopush hook.
    env = dict(os.environ, PYTHONPATH=REPO)
    code = ("import bincache.api as b; "
            f"b.register({str(app)!r}, 'app', '1.0', deps=[{str(lib)!r}]); "
            f"print([r.pushed for r in b.on_build_finished({str(app)!r})])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[True]" and out.stderr == ""
    assert [m.split("-")[0] for m in manifests(autopush_mirror)] == ["app", "libgreet"]

    new = tmp_path / "new"
    run_cli("--root", str(new), "install", "app", check=True)
    [exe] = glob.glob(str(new / "**" / "bin" / "app"), recursive=True)
    [installed_lib] = glob.glob(str(new / "**" / "libgreet-5.0-*"), recursive=True)
    run = subprocess.run([exe], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello, world\n"
    # The RUNPATH names the installed library, not the build directory nor NEW/libgreet-5.0.
    dyn = subprocess.run(["readelf", "-d", exe], capture_output=True, text=True, check=True).stdout
    assert f"{installed_lib}/lib" in dyn and str(lib) not in dyn


def test_a_dependency_that_was_never_registered_is_an_error_at_register_time(tmp_path):
    lib = tmp_path / "b" / "libgreet-5.0"
    (lib / "lib").mkdir(parents=True)
    app = tmp_path / "b" / "app-1.0"
    app.mkdir()
    proc = run_cli("register", str(app), "--name", "app", "--version", "1.0", "--dep", str(lib))
    assert proc.returncode == 1
    assert proc.stderr == (f"error: dependency {lib} is not registered (no .spack/spec.json): build and "
                           f"register it first (bincache register {lib} --name NAME --version VERSION)\n")
    assert not (app / ".spack").exists()


def test_a_rebuild_with_a_new_hash_input_is_a_new_package(tmp_path, autopush_mirror):
    prefix = tmp_path / "b" / "tool-1.0"
    (prefix / "share").mkdir(parents=True)
    source = tmp_path / "tool.tar"

    def build_and_register(content: str) -> subprocess.CompletedProcess:
        source.write_text(content)
        (prefix / "share" / "data").write_text(content)
        return run_cli("register", str(prefix), "--name", "tool", "--version", "1.0",
                       "--hash-input", "commit=abc", "--hash-input", f"@{source}", check=True)

    first = build_and_register("first build\n")
    assert "pushed to team" in first.stdout
    again = build_and_register("first build\n")  # the same inputs: the same package, and it says so
    assert "skipped  tool@1.0/" in again.stdout and "already in team" in again.stdout
    assert len(manifests(autopush_mirror)) == 1
    second = build_and_register("second build\n")  # new sources: a new hash, pushed
    assert "pushed to team" in second.stdout
    spec = json.load(open(prefix / ".spack" / "spec.json"))["spec"]["nodes"][0]
    hashes = {m.rsplit("-", 1)[1].split(".")[0] for m in manifests(autopush_mirror)}
    assert len(hashes) == 2 and spec["hash"] in hashes


def test_hash_inputs_fold_into_the_package_hash_as_spack_does(tmp_path):
    from bincache import api
    from bincache.spec import dag_hash

    prefix = tmp_path / "p"
    prefix.mkdir()
    (tmp_path / "in.txt").write_text("x")
    plain = api.register(str(prefix), "p", "1.0")
    assert "package_hash" not in plain.spec.node
    a = api.register(str(prefix), "p", "1.0", hash_inputs=["v=1", f"@{tmp_path / 'in.txt'}"])
    b = api.register(str(prefix), "p", "1.0", hash_inputs=[f"@{tmp_path / 'in.txt'}", "v=1"])
    c = api.register(str(prefix), "p", "1.0", hash_inputs="v=1")  # one string is one input
    assert a.hash == b.hash != plain.hash != c.hash
    keys = list(a.spec.node)
    assert keys.index("parameters") < keys.index("package_hash") < keys.index("annotations")
    assert dag_hash(a.spec.node) == a.hash
    with pytest.raises(Exception, match="hash input @.*missing: cannot read"):
        api.register(str(prefix), "p", "1.0", hash_inputs=[f"@{tmp_path / 'missing'}"])
