"""Configuration scopes, mirrors.yaml, and resolving mirror arguments (in process)."""

from __future__ import annotations

import os
import textwrap
import time
import warnings

import pytest

from bincache import config
from bincache.errors import ConfigError, MirrorError, MirrorNotFound, UsageError
from bincache.mirror import config as mirrors
from bincache.mirror.config import Credential, MirrorChanges


@pytest.fixture(autouse=True)
def _fresh_config():
    config.reset()
    yield
    config.reset()


def write(path, text: str) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def scopes(tmp_path, _isolated_home):
    """A site scope (<root>/etc), the user scope, and a -C project scope, all configured."""
    root = tmp_path / "opt"
    project = tmp_path / "project"
    project.mkdir()
    cfg = config.configure(root=str(root), scope_dirs=[str(project)])
    return {
        "site": root / "etc",
        "user": _isolated_home / ".bincache",
        "project": project,
        "cfg": cfg,
    }


# ---------------------------------------------------------------------------------- scopes


def test_higher_scopes_win_and_blame_names_file_and_line(scopes):
    write(scopes["site"] / "mirrors.yaml", """
        mirrors:
          shared: {url: /srv/site-cache, signed: false}
          site-only: /srv/site-only
    """)
    write(scopes["user"] / "mirrors.yaml", """
        mirrors:
          # mine
          shared:
            url: /home/cache
    """)
    write(scopes["project"] / "mirrors.yaml", """
        mirrors:
          proj: ./cache
    """)
    cfg = scopes["cfg"]
    merged = cfg.get("mirrors")
    # Higher scopes' mirrors come first: they are tried first on install.
    assert list(merged) == ["proj", "shared", "site-only"]
    assert merged["shared"] == {"url": "/home/cache", "signed": False}

    blame = cfg.blame("mirrors")
    user_file = str(scopes["user"] / "mirrors.yaml")
    site_file = str(scopes["site"] / "mirrors.yaml")
    line_of = {line.split()[-2]: line for line in blame.splitlines() if len(line.split()) > 2}
    assert line_of["url:"].startswith(f"{user_file}:4 ")
    assert line_of["signed:"].startswith(f"{site_file}:2 ")
    assert f"{scopes['project'] / 'mirrors.yaml'}:2" in blame


def test_command_line_scope_is_highest(scopes):
    write(scopes["project"] / "config.yaml", "config:\n  gnupghome: ./gpg\n")
    cfg = scopes["cfg"]
    assert config.get_value("gnupghome") == "./gpg"
    cfg.set_override("config", "gnupghome", "/keys")
    assert config.get_value("gnupghome") == "/keys"
    assert "<command_line>" in cfg.blame("config")
    with pytest.raises(ConfigError, match="command line: config:gnupghome: expected a string"):
        cfg.set_override("config", "gnupghome", 3)


def test_install_tree_root_is_read_the_way_spack_spells_it(_isolated_home):
    write(_isolated_home / ".bincache" / "config.yaml", """
        config:
          install_tree:
            root: /opt/tree
    """)
    assert config.get_value("install_tree:root") == "/opt/tree"
    assert config.get_value("config:install_tree:root") == "/opt/tree"
    assert config.get_value("install_tree:projections") is None
    write(_isolated_home / ".bincache" / "config.yaml", """
        config:
          install_tree:
            projections: {all: "{name}/{version}"}
            padded_lenght: 128
    """)
    # Spack's padded_length is accepted (tests/integration/test_spack_config.py); a misspelling is not.
    with pytest.raises(ConfigError, match=r"config.yaml:4: config:install_tree:padded_lenght: unknown key"):
        config.get_value("install_tree:root")


def test_home_is_honoured_each_time_without_configure(tmp_path, monkeypatch):
    for who in ("alice", "bob"):
        write(tmp_path / who / ".bincache" / "mirrors.yaml", f"mirrors:\n  m: /srv/{who}\n")
    monkeypatch.setenv("HOME", str(tmp_path / "alice"))
    assert config.get("mirrors") == {"m": "/srv/alice"}
    monkeypatch.setenv("HOME", str(tmp_path / "bob"))
    assert config.get("mirrors") == {"m": "/srv/bob"}


def test_scopes_exported_by_the_cli_are_seen_by_a_build_step(tmp_path, monkeypatch):
    write(tmp_path / "ci" / "mirrors.yaml", "mirrors:\n  ci: ./ci-cache\n")
    monkeypatch.setenv(config.SCOPES_ENV, str(tmp_path / "ci"))
    assert mirrors.resolve("ci").url == f"file://{tmp_path}/ci/ci-cache"


def test_unknown_scope_and_section_are_usage_errors(scopes):
    with pytest.raises(UsageError, match='no configuration scope "usr". Did you mean "user"'):
        scopes["cfg"].get("mirrors", scope="usr")
    with pytest.raises(UsageError, match='Did you mean "mirrors"'):
        scopes["cfg"].get("mirror")


def test_no_site_scope_without_a_root(_isolated_home):
    with pytest.raises(UsageError, match="no site scope"):
        config.current().write_scope("site")


# ------------------------------------------------------------------------------ bad files


@pytest.mark.parametrize(
    "text, message",
    [
        ("mirrors:\n  a:\n    url: /x\n  - b\n", r"mirrors.yaml:4: invalid YAML: expected <block end>"),
        ("mirrors:\n\ta: x\n", r"mirrors.yaml:2: invalid YAML: found character '\\t'"),
        ("mirrors:\n  a:\n    url: /x\n    autopush: maybe\n",
         r"mirrors.yaml:4: mirrors:a:autopush: expected true or false, got 'maybe'"),
        ("mirrors:\n  a:\n    url: /x\n    autopsh: true\n",
         r'mirrors.yaml:4: mirrors:a:autopsh: unknown key \(did you mean "autopush"\?\)'),
        ("mirrors:\n  a:\n    url: [1, 2]\n", r"mirrors.yaml:3: mirrors:a:url: expected a string, got a list"),
        ("mirrors:\n  a:\n    signed: true\n", r'mirrors.yaml:2: mirrors:a: needs "url"'),
        ("mirrors:\n  a:\n    url: /x\n    access_pair: [u]\n",
         r"mirrors.yaml:4: mirrors:a:access_pair: expected 2 items, got 1"),
        ("mirrors:\n  a:\n    url: /x\n    access_pair: [u, {variable: 1BAD}]\n",
         r"mirrors.yaml:4: mirrors:a:access_pair:1:variable: '1BAD' is not an environment variable"),
        ("mirrors:\n  a: /x\n  a: /y\n", r"mirrors.yaml:3: mirrors:a: duplicate key \(the first one is on line 2\)"),
        ("mirror:\n  a: /x\n", r'mirrors.yaml:1: mirror: unknown key; this file holds only "mirrors:"'),
        ("- a\n", r'mirrors.yaml:1: expected a mapping with the key "mirrors:"'),
        ("mirrors:\n  my/cache: /x\n", r"mirrors.yaml:2: mirrors:my/cache: 'my/cache' is not a mirror name"),
    ],
)
def test_bad_files_name_file_line_and_key(_isolated_home, text, message):
    path = write(_isolated_home / ".bincache" / "mirrors.yaml", text)
    with pytest.raises(ConfigError, match=message) as e:
        config.get("mirrors")
    assert str(e.value).startswith(path + ":")


def test_a_scope_may_tune_a_mirror_defined_below_it(scopes):
    write(scopes["site"] / "mirrors.yaml", "mirrors:\n  team: ./team-cache\n")
    write(scopes["user"] / "mirrors.yaml", "mirrors:\n  team: {autopush: true}\n")
    # A string in one scope and a mapping above it: the mapping replaces it, so the url is gone.
    with pytest.raises(ConfigError, match=r'mirrors.yaml:2: mirrors:team: needs "url"'):
        config.get("mirrors")
    write(scopes["site"] / "mirrors.yaml", "mirrors:\n  team: {url: ./team-cache}\n")
    [ref] = mirrors.autopush_mirrors()
    # The url was written in the site scope, so it is relative to the site scope's directory.
    assert ref.url == f"file://{scopes['site']}/team-cache"


# ----------------------------------------------------------------------- paths, variables


def test_relative_paths_expand_against_the_scope_that_wrote_them(scopes, tmp_path, monkeypatch):
    write(scopes["user"] / "mirrors.yaml", "mirrors:\n  mine: ./cache\n  up: ../common\n")
    write(scopes["project"] / "mirrors.yaml", "mirrors:\n  proj: {url: build/cache}\n")
    monkeypatch.chdir(tmp_path)
    assert mirrors.resolve("mine").url == f"file://{scopes['user']}/cache"
    assert mirrors.resolve("up").url == f"file://{scopes['user'].parent}/common"
    assert mirrors.resolve("proj", "fetch").url == f"file://{scopes['project']}/build/cache"
    # A path given on the command line is relative to the current directory.
    assert mirrors.resolve("./cache").url == f"file://{tmp_path}/cache"


def test_variables_expand_at_use_and_an_unset_one_is_an_error(_isolated_home, monkeypatch):
    write(_isolated_home / ".bincache" / "mirrors.yaml", """
        mirrors:
          s3: s3://$BUCKET/cache
          home: ~/caches/${CACHE_NAME}
    """)
    monkeypatch.setenv("BUCKET", "b1")
    monkeypatch.setenv("CACHE_NAME", "main")
    assert mirrors.resolve("s3").url == "s3://b1/cache"
    assert mirrors.resolve("home").url == f"file://{_isolated_home}/caches/main"
    monkeypatch.setenv("BUCKET", "b2")
    assert mirrors.resolve("s3").url == "s3://b2/cache"
    monkeypatch.delenv("BUCKET")
    with pytest.raises(ConfigError, match=r"uses \$BUCKET, which is not set"):
        mirrors.resolve("s3")
    # The file still says what the user wrote.
    assert config.get("mirrors")["s3"] == "s3://$BUCKET/cache"


def test_credentials_per_direction_read_from_the_environment_at_use(_isolated_home, monkeypatch):
    write(_isolated_home / ".bincache" / "mirrors.yaml", """
        mirrors:
          ghcr:
            url: oci://ghcr.io/org/cache
            access_pair: [reader, {variable: READ_TOKEN}]
            push:
              url: oci://ghcr.io/org/staging
              access_pair: [{variable: PUSH_USER}, {variable: PUSH_TOKEN}]
            signed: false
            autopush: true
    """)
    monkeypatch.setenv("READ_TOKEN", "r-secret")
    monkeypatch.setenv("PUSH_USER", "ci-bot")
    monkeypatch.setenv("PUSH_TOKEN", "p-secret")
    fetch, push = mirrors.resolve("ghcr", "fetch"), mirrors.resolve("ghcr", "push")
    assert (fetch.url, fetch.username, fetch.password) == ("oci://ghcr.io/org/cache", "reader", "r-secret")
    assert (push.url, push.username, push.password) == ("oci://ghcr.io/org/staging", "ci-bot", "p-secret")
    assert push.signed is False and push.autopush is True
    assert "secret" not in repr(push)
    monkeypatch.delenv("PUSH_TOKEN")
    with pytest.raises(ConfigError, match=r"push password comes from \$PUSH_TOKEN, which is not set"):
        mirrors.resolve("ghcr", "push")


def test_spack_style_access_pair_mapping_is_read(_isolated_home, monkeypatch):
    write(_isolated_home / ".bincache" / "mirrors.yaml", """
        mirrors:
          spacky:
            url: oci://example.org/c
            access_pair: {id_variable: U, secret_variable: S}
    """)
    monkeypatch.setenv("U", "u1")
    monkeypatch.setenv("S", "s1")
    ref = mirrors.resolve("spacky", "fetch")
    assert (ref.username, ref.password) == ("u1", "s1")


# ---------------------------------------------------------------------------- resolution


def test_name_or_path_and_did_you_mean(_isolated_home, tmp_path, monkeypatch):
    write(_isolated_home / ".bincache" / "mirrors.yaml", "mirrors:\n  local: /srv/local\n")
    monkeypatch.chdir(tmp_path)
    assert mirrors.resolve("local").url == "file:///srv/local"
    assert mirrors.resolve("local").name == "local"
    anon = mirrors.resolve("./local")
    assert anon.name is None and anon.url == f"file://{tmp_path}/local"
    assert mirrors.resolve(".").url == f"file://{tmp_path}"
    assert mirrors.resolve("oci://r.example/x").url == "oci://r.example/x"
    with pytest.raises(MirrorNotFound, match=r'^no mirror named "my-mirror". Did you mean ./my-mirror\?$'):
        mirrors.resolve("my-mirror")
    with pytest.raises(MirrorNotFound, match=r'no mirror named "locl". Did you mean "local"\?'):
        mirrors.resolve("locl")


def test_a_fetch_only_mirror_cannot_be_pushed_to(_isolated_home):
    write(_isolated_home / ".bincache" / "mirrors.yaml", "mirrors:\n  ro: {fetch: https://cache.example.org}\n")
    assert mirrors.resolve("ro", "fetch").url == "https://cache.example.org"
    with pytest.raises(MirrorError, match=r'mirror "ro" has no push URL.*set-url --push ro URL'):
        mirrors.resolve("ro", "push")


def test_configured_and_autopush_mirrors_in_config_order(scopes, monkeypatch):
    write(scopes["site"] / "mirrors.yaml", """
        mirrors:
          site-cache: {url: /srv/site, autopush: true}
          sources: {url: /srv/src, binary: false}
    """)
    write(scopes["user"] / "mirrors.yaml", """
        mirrors:
          push-only: {push: /srv/push, autopush: true, signed: false}
          read: {fetch: https://read.example.org, access_pair: [u, {variable: UNSET_TOKEN}]}
    """)
    write(scopes["project"] / "mirrors.yaml", "mirrors:\n  elsewhere: $UNSET_DIR/cache\n")
    monkeypatch.delenv("UNSET_TOKEN", raising=False)
    monkeypatch.delenv("UNSET_DIR", raising=False)
    # An unset credential variable does not stop an install from reading a public cache,
    # and a mirror whose URL cannot be expanded does not stop the others.
    with pytest.warns(UserWarning) as caught:
        fetch = mirrors.configured_mirrors("fetch")
    assert [(r.name, r.url, r.password) for r in fetch] == [
        ("read", "https://read.example.org", None),
        ("site-cache", "file:///srv/site", None),
    ]
    messages = sorted(str(w.message) for w in caught)
    assert "uses $UNSET_DIR, which is not set" in messages[0] and "skipping" in messages[0]
    assert "$UNSET_TOKEN, which is not set; using the mirror without credentials" in messages[1]
    auto = mirrors.autopush_mirrors()
    assert [(r.name, r.url, r.signed) for r in auto] == [
        ("push-only", "file:///srv/push", False),
        ("site-cache", "file:///srv/site", None),
    ]


def test_legacy_spellings_warn_and_resolve(_isolated_home, tmp_path, monkeypatch):
    write(_isolated_home / ".bincache" / "mirrors.yaml", "mirrors:\n  local: /srv/local\n")
    monkeypatch.chdir(tmp_path)
    assert mirrors.resolve_legacy() is None
    with pytest.warns(FutureWarning, match="--directory is deprecated"):
        ref = mirrors.resolve_legacy(directory="out")
    assert ref.url == f"file://{tmp_path}/out"  # a directory even without a slash
    with pytest.warns(FutureWarning, match="--mirror-url is deprecated"):
        assert mirrors.resolve_legacy(mirror_url="s3://bucket/c").url == "s3://bucket/c"
    with pytest.warns(FutureWarning, match="--mirror-name is deprecated"):
        assert mirrors.resolve_legacy(mirror_name="local").url == "file:///srv/local"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MirrorNotFound, match='Did you mean "local"'):
            mirrors.resolve_legacy(mirror_name="loca")
    with pytest.raises(UsageError, match="--directory and --mirror-url cannot be used together"):
        mirrors.resolve_legacy(directory="a", mirror_url="b")


def test_urls_with_passwords_are_masked():
    assert config.mask_url("https://bob:hunter2@cache.example.org/x") == "https://bob:****@cache.example.org/x"
    assert config.mask_url("oci://ghcr.io/org/c") == "oci://ghcr.io/org/c"
    masked = config.mask_secrets("mirrors", {"m": {"url": "/x", "access_pair": ["u", "pw"],
                                                   "push": {"url": "/y", "access_pair": ["u", {"variable": "T"}]}}})
    assert masked["m"]["access_pair"] == ["u", "****"]
    assert masked["m"]["push"]["access_pair"] == ["u", {"variable": "T"}]


# ------------------------------------------------------------------------------- editing


HAND_WRITTEN = """\
# Team caches; ask #infra before changing.
mirrors:
  alpha:
    url: "./alpha"     # quoted on purpose
    signed: false

  # the registry
  beta:
    url: oci://ghcr.io/org/beta
    access_pair: [bot, {variable: BETA_TOKEN}]
  gamma: $CACHES/gamma
# trailing comment
"""


def test_editing_one_mirror_leaves_every_other_byte_alone(_isolated_home):
    path = write(_isolated_home / ".bincache" / "mirrors.yaml", HAND_WRITTEN)
    mirrors.set_mirror("beta", MirrorChanges(autopush=True))
    with open(path) as f:
        text = f.read()
    assert text == HAND_WRITTEN.replace(
        "    access_pair: [bot, {variable: BETA_TOKEN}]\n",
        "    access_pair: [bot, {variable: BETA_TOKEN}]\n    autopush: true\n",
    )

    mirrors.add_mirror("delta", "../delta", MirrorChanges(signed=True))
    with open(path) as f:
        text = f.read()
    assert text.endswith("  gamma: $CACHES/gamma\n  delta:\n    url: ../delta\n    signed: true\n# trailing comment\n")

    mirrors.remove_mirror("beta")
    with open(path) as f:
        text = f.read()
    assert "beta" not in text and "BETA_TOKEN" not in text
    assert text.startswith(HAND_WRITTEN[: HAND_WRITTEN.index("  beta:")])
    assert config.get("mirrors") == {
        "alpha": {"url": "./alpha", "signed": False},
        "gamma": "$CACHES/gamma",
        "delta": {"url": "../delta", "signed": True},
    }


def test_flow_style_files_are_rewritten_whole_but_correctly(_isolated_home):
    path = write(_isolated_home / ".bincache" / "mirrors.yaml", "mirrors: {}\n")
    mirrors.add_mirror("a", "./a")
    with open(path) as f:
        assert f.read() == "mirrors:\n  a:\n    url: ./a\n"


def test_set_with_direction_splits_fetch_and_push(_isolated_home, monkeypatch):
    monkeypatch.setenv("TOKEN", "t")
    path = write(_isolated_home / ".bincache" / "mirrors.yaml", "mirrors:\n  m: ./cache\n")
    # A secret without a user name: Spack's access_pair has no form for it (issue 9).
    with pytest.raises(UsageError, match="needs a user name or access key id too"):
        mirrors.set_mirror("m", MirrorChanges(url="oci://r.example/push",
                                              password=Credential(variable="TOKEN")), direction="push")
    with open(path) as f:
        assert f.read() == "mirrors:\n  m: ./cache\n"
    mirrors.set_mirror("m", MirrorChanges(url="oci://r.example/push", username=Credential(literal="ci"),
                                          password=Credential(variable="TOKEN")), direction="push")
    with open(path) as f:
        assert f.read() == (
            "mirrors:\n  m:\n    url: ./cache\n    push:\n      url: oci://r.example/push\n"
            "      access_pair: {id: ci, secret_variable: TOKEN}\n"
        )
    assert mirrors.resolve("m", "fetch").url == f"file://{_isolated_home}/.bincache/cache"
    # Without a direction, a new URL applies to both.
    mirrors.set_mirror("m", MirrorChanges(url="/srv/both"))
    assert mirrors.resolve("m", "fetch").url == mirrors.resolve("m", "push").url == "file:///srv/both"


def test_a_bare_url_entry_stays_bare_when_only_its_url_changes(_isolated_home):
    path = write(_isolated_home / ".bincache" / "mirrors.yaml", "mirrors:\n  m: ./a  # old\n  n: ./n\n")
    mirrors.set_mirror("m", MirrorChanges(url="./b"))
    with open(path) as f:
        assert f.read() == "mirrors:\n  m: ./b\n  n: ./n\n"


def test_edits_are_checked_before_the_file_is_replaced(_isolated_home):
    path = write(_isolated_home / ".bincache" / "mirrors.yaml", HAND_WRITTEN)
    with pytest.raises(MirrorError, match='mirror "alpha" already exists'):
        mirrors.add_mirror("alpha", "/x")
    with pytest.raises(UsageError, match="is not a mirror name"):
        mirrors.add_mirror("a/b", "/x")
    with pytest.raises(UsageError, match='unsupported mirror URL scheme "ftp"'):
        mirrors.add_mirror("ftp", "ftp://host/x")
    with pytest.raises(MirrorNotFound, match='Did you mean "alpha"'):
        mirrors.set_mirror("alpah", MirrorChanges(autopush=True))
    with open(path) as f:
        assert f.read() == HAND_WRITTEN


def test_set_in_a_higher_scope_writes_a_partial_override(scopes):
    write(scopes["site"] / "mirrors.yaml", "mirrors:\n  team: {url: /srv/team}\n")
    mirrors.set_mirror("team", MirrorChanges(autopush=True), scope="user")
    with open(scopes["user"] / "mirrors.yaml") as f:
        assert f.read() == "mirrors:\n  team:\n    autopush: true\n"
    [ref] = mirrors.autopush_mirrors()
    assert ref.url == "file:///srv/team"
    # Remove without a scope removes it from every file that defines it.
    result = mirrors.remove_mirror("team")
    assert sorted(result.files) == sorted([str(scopes["user"] / "mirrors.yaml"),
                                           str(scopes["site"] / "mirrors.yaml")])
    assert config.get("mirrors") == {}


def test_default_write_scope_is_the_last_config_scope_given(scopes):
    result = mirrors.add_mirror("p", "./p")
    assert result.files == [str(scopes["project"] / "mirrors.yaml")]


def test_plaintext_password_is_written_with_a_warning(_isolated_home):
    result = mirrors.add_mirror("m", "oci://r.example/x", MirrorChanges(
        username=Credential(literal="bob"), password=Credential(literal="hunter2")))
    assert result.warnings and "plain text" in result.warnings[0]
    assert "hunter2" not in result.warnings[0]
    result = mirrors.add_mirror("n", "oci://r.example/y", MirrorChanges(
        username=Credential(literal="bob"), password=Credential(variable="TOKEN")))
    assert result.warnings == []


def test_concurrent_edits_take_turns_and_lose_nothing(_isolated_home, monkeypatch):
    import threading

    real_write = config._write_atomic

    def slow_write(path, text, **kw):
        time.sleep(0.05)  # widen the read-modify-write window that a lost update needs
        real_write(path, text, **kw)

    monkeypatch.setattr(config, "_write_atomic", slow_write)
    barrier = threading.Barrier(6)
    errors = []

    def add(i):
        barrier.wait()
        try:
            mirrors.add_mirror(f"m{i}", f"./c{i}")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(config.get("mirrors")) == [f"m{i}" for i in range(6)]
