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


# ------------------------------------------------------------- mirrors.yaml shared with Spack


def _with_comments(path) -> str:
    """Spack's file as a person keeps it: a header and a note by one entry."""
    text = "# shared with Spack: spack -C this-dir ...\n" + read(path).replace(
        "  ghcr:\n", "  # the team registry\n  ghcr:\n")
    path.write_text(text)
    return text


def _block(text: str, name: str) -> str:
    """One mirror's lines as the file holds them."""
    lines = text.splitlines(keepends=True)
    start = lines.index(f"  {name}:\n") if f"  {name}:\n" in lines else next(
        i for i, line in enumerate(lines) if line.startswith(f"  {name}: "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("    ")),
               len(lines))
    return "".join(lines[start:end])


def test_a_spack_written_mirrors_yaml_round_trips(spack_scope):
    path = spack_scope / "mirrors.yaml"
    original = _with_comments(path)
    env = {"REG_TOKEN": "t0ken"}

    def run(*args):
        return run_cli("-C", str(spack_scope), *args, env=env, check=True)

    run("mirror", "set", "--autopush", "local")
    run("mirror", "add", "--oci-username", "bot", "--oci-password-variable", "REG_TOKEN",
        "reg", "oci://registry.example.org/c")
    run("mirror", "set", "--s3-endpoint-url", "http://127.0.0.1:9100", "s3cache")
    run("mirror", "remove", "sources")
    text = read(path)
    # Comments and the entries no command touched, byte for byte (Spack's block lists too).
    assert text.startswith("# shared with Spack: spack -C this-dir ...\nmirrors:\n")
    assert "  # the team registry\n" + _block(original, "ghcr") in text
    assert _block(text, "local") == "  local:\n    url: /srv/local-cache\n    autopush: true\n"
    assert "sources" not in text
    assert _block(text, "s3cache") == _block(original, "s3cache").replace(
        "http://127.0.0.1:9000", "http://127.0.0.1:9100")
    assert _block(text, "reg") == (
        "  reg:\n    url: oci://registry.example.org/c\n"
        "    access_pair: {id: bot, secret_variable: REG_TOKEN}\n")
    assert "t0ken" not in text
    # And bincache reads back what it wrote.
    listed = run("mirror", "list").stdout
    assert [line.split()[0] for line in listed.splitlines()[1:]] == ["local", "ghcr", "s3cache", "reg"]


def _spack_1_access_pair_ok(pair) -> bool:
    """Spack 1.x's rule (lib/spack/spack/schema/mirrors.py): a mapping with secret_variable and
    exactly one of id, id_variable, all strings, no other key."""
    return (isinstance(pair, dict) and set(pair) <= {"id", "id_variable", "secret_variable"}
            and "secret_variable" in pair and ("id" in pair) != ("id_variable" in pair)
            and all(isinstance(v, str) for v in pair.values()))


@pytest.mark.parametrize("args", [
    ["--oci-username", "bot", "--oci-password-variable", "TOKEN"],
    ["--oci-username-variable", "USER", "--oci-password-variable", "TOKEN"],
    ["--s3-access-key-id", "AKID", "--s3-access-key-secret-variable", "SECRET"],
    ["--s3-access-key-id-variable", "AKID_VAR", "--s3-access-key-secret-variable", "SECRET"],
])
def test_credentials_from_variables_are_written_as_spack_1_reads_them(tmp_path, _isolated_home, args):
    import yaml

    scope = tmp_path / "scope"
    run_cli("-C", str(scope), "mirror", "add", *args, "m", "oci://r.example/c", check=True)
    run_cli("-C", str(scope), "mirror", "set", "--push", "--url", "oci://r.example/push",
            "--oci-password-variable", "PUSH_TOKEN", "m", check=True)
    entry = yaml.safe_load(read(scope / "mirrors.yaml"))["mirrors"]["m"]
    assert _spack_1_access_pair_ok(entry["access_pair"]), entry
    assert _spack_1_access_pair_ok(entry["push"]["access_pair"]), entry
    assert entry["push"]["access_pair"]["secret_variable"] == "PUSH_TOKEN"


def test_a_secret_without_a_user_is_one_error_and_changes_nothing(spack_scope):
    before = read(spack_scope / "mirrors.yaml")
    proc = run_cli("-C", str(spack_scope), "mirror", "add", "--oci-password-variable", "T",
                   "tokenonly", "oci://r.example/c")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: a secret from a variable needs a user name or access key id too (Spack's "
        "access_pair has both): add --oci-username[-variable] or --s3-access-key-id[-variable]"]
    assert read(spack_scope / "mirrors.yaml") == before


@pytest.mark.spack
@pytest.mark.skipif(not os.environ.get("BINCACHE_SPACK"), reason="BINCACHE_SPACK names no spack")
def test_real_spack_reads_what_bincache_wrote(spack_scope):
    """Spack 0.23 itself on the scope after bincache's edits. Its schema takes access_pair only as
    [id, secret] (strings), so this scope gets no credential from a variable."""
    import subprocess

    for args in (["mirror", "set", "--autopush", "local"],
                 ["mirror", "add", "--unsigned", "--s3-access-key-id", "AKID", "--s3-profile", "ci",
                  "--s3-endpoint-url", "http://127.0.0.1:9100", "s3new", "s3://bucket/new"],
                 ["mirror", "set", "--push", "--s3-endpoint-url", "http://push:9000", "s3new"],
                 ["mirror", "remove", "sources"]):
        run_cli("-C", str(spack_scope), *args, check=True)
    spack = os.environ["BINCACHE_SPACK"]
    listed = subprocess.run([spack, "-C", str(spack_scope), "mirror", "list"],
                            capture_output=True, text=True, check=True).stdout
    names = [line.split()[0] for line in listed.splitlines()]
    assert names[:4] == ["local", "ghcr", "s3cache", "s3new"]
    got = subprocess.run([spack, "-C", str(spack_scope), "config", "get", "mirrors"],
                         capture_output=True, text=True, check=True).stdout
    assert "endpoint_url: http://push:9000" in got and "profile: ci" in got
