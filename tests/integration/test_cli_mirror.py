"""`bincache mirror ...` and `bincache config ...` as a user runs them: the real CLI in a
subprocess, a throwaway HOME, and the YAML files checked as text."""

from __future__ import annotations

import glob
import json
import os

import pytest

from tests.conftest import run_cli


@pytest.fixture
def user_file(_isolated_home) -> str:
    return str(_isolated_home / ".bincache" / "mirrors.yaml")


def read(path) -> str:
    with open(path) as f:
        return f.read()


def ok(*args, **kw):
    return run_cli(*args, check=True, **kw)


def test_add_set_set_url_remove_round_trip_the_file(user_file):
    ok("mirror", "add", "--autopush", "--unsigned", "local", "./cache")
    ok("mirror", "add", "--oci-username", "bot", "--oci-password-variable", "GHCR_TOKEN",
       "ghcr", "oci://ghcr.io/org/cache")
    after_add = (
        "mirrors:\n"
        "  local:\n    url: ./cache\n    signed: false\n    autopush: true\n"
        "  ghcr:\n    url: oci://ghcr.io/org/cache\n    access_pair: {id: bot, secret_variable: GHCR_TOKEN}\n"
    )
    assert read(user_file) == after_add

    ok("mirror", "set", "--no-autopush", "local")
    after_set = after_add.replace("autopush: true", "autopush: false")
    assert read(user_file) == after_set

    ok("mirror", "set-url", "--push", "ghcr", "oci://ghcr.io/org/staging")
    after_set_url = after_set + "    push:\n      url: oci://ghcr.io/org/staging\n"
    assert read(user_file) == after_set_url

    ok("mirror", "set", "--push", "--oci-password-variable", "$PUSH_TOKEN", "ghcr")
    after_push_creds = after_set + (
        "    push:\n      url: oci://ghcr.io/org/staging\n"
        "      access_pair: {id: bot, secret_variable: PUSH_TOKEN}\n"
    )
    assert read(user_file) == after_push_creds

    ok("mirror", "set-url", "local", "../elsewhere")
    assert read(user_file) == after_push_creds.replace("./cache", "../elsewhere")

    ok("mirror", "remove", "ghcr")
    assert read(user_file) == (
        "mirrors:\n  local:\n    url: ../elsewhere\n    signed: false\n    autopush: false\n"
    )
    ok("mirror", "rm", "local")
    assert read(user_file) == "mirrors: {}\n"


def test_changing_one_mirror_keeps_comments_and_other_mirrors(user_file):
    os.makedirs(os.path.dirname(user_file))
    original = (
        "# managed by hand\n"
        "mirrors:\n"
        "  team:   {url: '/srv/team', signed: false}   # flow style, quoted\n"
        "\n"
        "  # CI pushes here\n"
        "  ci:\n"
        "    url: ${CI_CACHE}/bincache\n"
        "    autopush: true\n"
        "  other: ./rel\n"
    )
    with open(user_file, "w") as f:
        f.write(original)
    ok("mirror", "set", "--insecure", "ci")
    assert read(user_file) == original.replace(
        "    autopush: true\n", "    autopush: true\n    insecure: true\n")
    ok("mirror", "add", "new", "./new")
    assert read(user_file) == original.replace(
        "    autopush: true\n", "    autopush: true\n    insecure: true\n"
    ) + "  new:\n    url: ./new\n"


def test_credentials_given_as_variables_never_land_in_files_or_output(user_file):
    secret, user = "s3cr3t-t0ken-value", "robot-account"
    env = {"MY_TOKEN": secret, "MY_USER": user}
    ok("mirror", "add", "--oci-username-variable", "MY_USER", "--oci-password-variable", "MY_TOKEN",
       "reg", "oci://registry.example.org/cache", env=env)
    text = read(user_file)
    # Spack's form (0.23 and 1.x read it): variable names only.
    assert "access_pair: {id_variable: MY_USER, secret_variable: MY_TOKEN}" in text
    assert secret not in text and user not in text
    for args in (["mirror", "list"], ["mirror", "list", "--json"], ["--debug", "mirror", "list"],
                 ["--debug", "config", "get", "mirrors"], ["config", "blame", "mirrors"]):
        proc = ok(*args, env=env)
        assert secret not in proc.stdout + proc.stderr, args
    listing = ok("mirror", "list", env=env).stdout
    assert "$MY_USER:$MY_TOKEN" in listing


def test_plaintext_password_warns_and_is_masked_everywhere(user_file):
    proc = ok("mirror", "add", "--oci-username", "bob", "--oci-password", "hunter2",
              "reg", "oci://registry.example.org/cache")
    assert "warning: the password of mirror \"reg\" is stored in plain text" in proc.stderr
    assert "--oci-password-variable" in proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
    assert "access_pair: [bob, hunter2]" in read(user_file)  # what the user asked for

    listing = ok("mirror", "list").stdout
    assert "bob:****" in listing and "hunter2" not in listing
    data = json.loads(ok("mirror", "list", "--json").stdout)
    assert data[0]["push"]["password"] == "****"
    debug = ok("--debug", "mirror", "list")
    assert "****" in debug.stderr and "DEBUG" in debug.stderr
    assert "hunter2" not in debug.stdout + debug.stderr
    for args in (["config", "get", "mirrors"], ["config", "blame", "mirrors"]):
        out = ok(*args).stdout
        assert "****" in out and "hunter2" not in out


def test_mirror_list_shows_urls_as_used_and_flags(user_file, tmp_path):
    ok("mirror", "add", "--autopush", "--unsigned", "local", "./cache")
    ok("mirror", "add", "--insecure", "test-reg", "oci+http://127.0.0.1:5000/c")
    ok("mirror", "set-url", "--push", "test-reg", "oci+http://127.0.0.1:5000/push")
    out = ok("mirror", "list").stdout.splitlines()
    assert out[0].split() == ["NAME", "FETCH", "PUSH", "FLAGS", "CREDENTIALS", "SCOPE"]
    home = os.path.dirname(user_file)
    assert out[1].split() == ["local", f"file://{home}/cache", "(same)", "unsigned,autopush", "-", "user"]
    assert out[2].split() == ["test-reg", "oci+http://127.0.0.1:5000/c",
                              "oci+http://127.0.0.1:5000/push", "insecure", "-", "user"]
    data = json.loads(ok("mirror", "list", "--json").stdout)
    assert data[0]["fetch"] == {"url": f"file://{home}/cache", "configured_url": "./cache",
                                "username": None, "password": None}
    assert (data[0]["signed"], data[0]["autopush"]) == (False, True)


def test_scopes_site_user_and_config_dir(tmp_path, user_file):
    root, project = tmp_path / "opt", tmp_path / "project"
    ok("--root", str(root), "mirror", "add", "--scope", "site", "shared", "./site-cache")
    ok("mirror", "add", "mine", "/srv/mine")
    proc = ok("-C", str(project), "mirror", "add", "proj", "./p")  # default: the -C scope
    assert str(project / "mirrors.yaml") in proc.stdout
    assert read(root / "etc" / "mirrors.yaml") == "mirrors:\n  shared:\n    url: ./site-cache\n"
    assert read(project / "mirrors.yaml") == "mirrors:\n  proj:\n    url: ./p\n"

    got = ok("--root", str(root), "-C", str(project), "config", "get", "mirrors").stdout
    assert got == ("mirrors:\n  proj:\n    url: ./p\n  mine:\n    url: /srv/mine\n"
                   "  shared:\n    url: ./site-cache\n")
    blame = ok("--root", str(root), "-C", str(project), "config", "blame", "mirrors").stdout
    lines = [line.split() for line in blame.splitlines()]
    assert lines[0] == ["---", "mirrors:"]
    assert [str(project / "mirrors.yaml:3"), "url:", "./p"] in lines
    assert [str(root / "etc" / "mirrors.yaml:3"), "url:", "./site-cache"] in lines
    assert [user_file + ":3", "url:", "/srv/mine"] in lines
    only_site = ok("--root", str(root), "config", "get", "--scope", "site", "mirrors").stdout
    assert only_site == "mirrors:\n  shared:\n    url: ./site-cache\n"

    listing = ok("--root", str(root), "-C", str(project), "mirror", "list").stdout
    assert f"file://{root}/etc/site-cache" in listing  # relative to the site scope's directory
    assert f"file://{project}/p" in listing


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["mirror", "add", "my/cache", "/x"], 2, 'error: "my/cache" is not a mirror name'),
        (["mirror", "add", "m", "ftp://host/x"], 2, 'error: unsupported mirror URL scheme "ftp"'),
        (["mirror", "set", "local"], 2, "error: nothing to change"),
        (["mirror", "set", "lcal", "--autopush"], 1,
         'error: no mirror named "lcal". Did you mean "local"? (for a directory, write ./lcal)'),
        (["mirror", "add", "local", "/x"], 1, 'error: mirror "local" already exists in'),
        (["mirror", "add", "--oci-password", "a", "--oci-password-variable", "B", "m", "/x"], 2,
         "not allowed with argument"),
        (["mirror", "add", "--scope", "usr", "m", "/x"], 2, 'error: no configuration scope "usr"'),
        (["mirror", "add", "--scope", "site", "m", "/x"], 2, "error: no site scope"),
        (["config", "get", "mirror"], 2, 'error: no configuration section "mirror". Did you mean "mirrors"?'),
        (["mirror", "add", "--compression", "xz", "m", "/x"], 2,
         'error: "xz" is not a compression: use gzip (what Spack reads) or zstd'),
        (["mirror", "set", "--compression", "bzip2", "local"], 2, 'error: "bzip2" is not a compression'),
    ],
)
def test_mistakes_are_one_line_errors(user_file, args, code, message):
    ok("mirror", "add", "local", "./cache")
    before = read(user_file)
    proc = run_cli(*args)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert read(user_file) == before


def test_a_bad_config_file_names_file_line_and_key(user_file):
    os.makedirs(os.path.dirname(user_file))
    with open(user_file, "w") as f:
        f.write("mirrors:\n  local:\n    url: ./cache\n    autopush: sometimes\n")
    proc = run_cli("mirror", "list")
    assert proc.returncode == 1
    assert proc.stderr == (
        f"error: {user_file}:4: mirrors:local:autopush: expected true or false, got 'sometimes'\n"
    )


# ------------------------------------------------------------ mirrors used by other verbs


@pytest.fixture
def tree(tmp_path):
    """An install tree with one registered package (a script that embeds its prefix)."""
    root = tmp_path / "opt"
    prefix = root / "tool-1.0"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "tool").write_text(f"#!/bin/sh\necho {prefix}\n")
    ok("--root", str(root), "register", "--no-autopush", str(prefix), "--name", "tool", "--version", "1.0")
    return root


def _packages(mirror) -> list[str]:
    return [os.path.basename(p) for p in
            glob.glob(os.path.join(str(mirror), "v3/manifests/spec/*/*.spec.manifest.json"))]


def test_a_name_resolves_to_the_configured_mirror_and_a_path_to_itself(tree, tmp_path, user_file):
    work = tmp_path / "work"
    work.mkdir()
    ok("mirror", "add", "cache", str(tmp_path / "named"))
    ok("--root", str(tree), "create", "--unsigned", "cache", cwd=str(work))
    assert _packages(tmp_path / "named") and not (work / "cache").exists()
    ok("--root", str(tree), "create", "--unsigned", "./cache", cwd=str(work))
    assert _packages(work / "cache")

    proc = run_cli("--root", str(tree), "create", "--unsigned", "cahce", cwd=str(work))
    assert proc.returncode == 1
    assert 'error: no mirror named "cahce". Did you mean "cache"?' in proc.stderr
    proc = run_cli("list", "elsewhere", cwd=str(work))
    assert proc.returncode == 1
    assert proc.stderr == 'error: no mirror named "elsewhere". Did you mean ./elsewhere?\n'


def test_list_without_a_mirror_reads_every_configured_one(tree, tmp_path):
    ok("mirror", "add", "empty", str(tmp_path / "empty"))
    ok("mirror", "add", "full", str(tmp_path / "full"))
    ok("--root", str(tree), "create", "--unsigned", "--rebuild-index", "full")
    data = json.loads(ok("list", "--json").stdout)
    assert [(d["name"], d["version"]) for d in data] == [("tool", "1.0")]
    assert data[0]["mirror"] == "full"


@pytest.mark.parametrize("flag", ["--directory", "--mirror-url", "--mirror-name"])
def test_deprecated_create_flags_warn_and_work(tree, tmp_path, flag):
    target = tmp_path / "legacy"
    ok("mirror", "add", "legacy", str(target))
    value = "legacy" if flag == "--mirror-name" else str(target)
    proc = ok("--root", str(tree), "create", "--unsigned", flag, value)
    assert "deprecated" in proc.stderr and proc.stderr.startswith("warning: ")
    assert _packages(target) == [p for p in _packages(target) if p.startswith("tool-1.0-")] != []


def test_a_password_inside_a_url_is_warned_about_and_masked(user_file):
    proc = ok("mirror", "add", "web", "https://bob:hunter2@cache.example.org/c")
    assert 'the URL of mirror "web" holds a password, stored in plain text' in proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
    listing = ok("mirror", "list").stdout
    assert "https://bob:****@cache.example.org/c" in listing and "hunter2" not in listing
    assert "hunter2" not in ok("config", "get", "mirrors").stdout


def test_a_plaintext_password_file_is_readable_by_its_owner_only(tmp_path):
    from tests.conftest import run_cli

    home = tmp_path / "h"
    home.mkdir()
    run_cli("mirror", "add", "--oci-username", "bob", "--oci-password", "hunter2", "reg",
            "oci://example.com/x", env={"HOME": str(home)}, check=True)
    path = home / ".bincache" / "mirrors.yaml"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    run_cli("mirror", "add", "--oci-username", "bob", "--oci-password-variable", "TOKEN", "other",
            "oci://example.com/y", env={"HOME": str(tmp_path / "h2")}, check=True)
    assert oct((tmp_path / "h2" / ".bincache" / "mirrors.yaml").stat().st_mode & 0o777) == "0o644"


def test_compression_is_written_kept_and_used_by_create(tree, tmp_path, user_file):
    os.makedirs(os.path.dirname(user_file))
    original = "mirrors:\n  # bincache clients only\n  fast: {url: ./fast}   # flow style\n"
    with open(user_file, "w") as f:
        f.write(original)
    mirror = tmp_path / "home" / ".bincache" / "fast"
    proc = ok("mirror", "set", "--compression", "zstd", "fast")
    assert read(user_file) == original.replace("{url: ./fast}   #", "{url: ./fast, compression: zstd} #")
    assert 'warning: "compression" (mirror "fast") is bincache\'s own setting' in proc.stderr
    ok("--root", str(tree), "create", "--unsigned", "fast")
    (manifest,) = glob.glob(os.path.join(str(mirror), "v3/manifests/spec/*/*.spec.manifest.json"))
    assert json.load(open(manifest))["data"][0]["compression"] == "zstd"
    assert "zstd" in ok("mirror", "list").stdout
    ok("mirror", "add", "--compression", "gzip", "plain", "./plain")
    assert read(user_file).endswith("  plain:\n    url: ./plain\n    compression: gzip\n")


def test_zstd_is_refused_for_a_layout_v2_mirror_as_create_refuses_it(tree, tmp_path, user_file):
    v2 = tmp_path / "v2"
    ok("--root", str(tree), "create", "--unsigned", "--layout", "v2", str(v2))
    ok("mirror", "add", "old", str(v2))
    before = read(user_file)
    for args in (["mirror", "add", "--compression", "zstd", "old2", str(v2)],
                 ["mirror", "set", "--compression", "zstd", "old"]):
        proc = run_cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert "is a layout v2 build cache" in proc.stderr and "reads gzip tarballs only" in proc.stderr
        assert read(user_file) == before
    ok("mirror", "set", "--compression", "gzip", "old")
    assert "compression: gzip" in read(user_file)
