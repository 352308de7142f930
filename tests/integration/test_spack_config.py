"""Configuration shared with Spack: the files real Spack 0.23 wrote (tests/fixtures/spack_config)
used as a bincache scope, through the real CLI."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import run_cli

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "spack_config")


@pytest.fixture
def spack_scope(tmp_path, _isolated_home):
    """A -C scope holding Spack's own mirrors.yaml and config.yaml, byte for byte."""
    scope = tmp_path / "spack-scope"
    scope.mkdir()
    for name in ("mirrors.yaml", "config.yaml"):
        shutil.copy(os.path.join(FIXTURES, name), scope / name)
    return scope


def read(path) -> str:
    with open(path) as f:
        return f.read()


def test_spack_settings_bincache_does_not_use_are_one_warning_each(spack_scope):
    proc = run_cli("-C", str(spack_scope), "config", "get", "config")
    assert proc.returncode == 0, proc.stderr
    # What bincache uses from Spack's file: the install tree's root and projections.
    assert "root: /opt/spack" in proc.stdout
    assert "{name}-{version}-{hash:7}" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    config_file = str(spack_scope / "config.yaml")
    ignored = "a Spack setting that bincache does not use; ignored"
    assert warnings == [
        f"warning: {config_file}:2: config:build_jobs: {ignored}",
        f"warning: {config_file}:5: config:install_tree:padded_length: {ignored}",
        f"warning: {config_file}:8: config:ccache: {ignored}",
        f"warning: {config_file}:9: config:connect_timeout: {ignored}",
    ]


def test_spack_mirrors_are_listed_and_used(spack_scope):
    proc = run_cli("-C", str(spack_scope), "mirror", "list")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    # Spack's own order (it adds new mirrors first); a source-only mirror is listed too.
    assert names == ["local", "sources", "ghcr", "s3cache"]
    assert "hunter2" not in proc.stdout + proc.stderr
    assert "notasecret" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("file, old, new, line, key, hint", [
    ("config.yaml", "  ccache: false", "  cccache: false", 8, "config:cccache", "ccache"),
    ("mirrors.yaml", "    endpoint_url:", "    endpoint_uri:", 19, "mirrors:s3cache:endpoint_uri",
     "endpoint_url"),
])
def test_a_key_neither_spack_nor_bincache_defines_is_one_error_and_nothing_changes(
        spack_scope, file, old, new, line, key, hint):
    text = read(spack_scope / file).replace(old, new)
    (spack_scope / file).write_text(text)
    before = {n: read(spack_scope / n) for n in ("mirrors.yaml", "config.yaml")}
    proc = run_cli("-C", str(spack_scope), "config", "get", file[:-5])
    assert proc.returncode == 1
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: {spack_scope / file}:{line}: {key}: unknown key (did you mean \"{hint}\"?)")
    if file == "mirrors.yaml":
        proc = run_cli("-C", str(spack_scope), "mirror", "add", "new", "./new")
        assert proc.returncode == 1 and "unknown key" in proc.stderr
    assert {n: read(spack_scope / n) for n in before} == before
