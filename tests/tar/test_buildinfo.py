"""The buildinfo bincache writes (JSON, which is YAML) reads back the same in every reader."""

from __future__ import annotations

import glob
import json
import os
import subprocess

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bincache.errors import PrefixError
from bincache.relocate.plan import BuildInfo
from bincache.tar.pack import BUILDINFO, buildinfo_bytes
from tests.conftest import run_cli

# File names as os.fsdecode gives them for UTF-8 names: any character but NUL, "/" and the
# lone surrogates (names that are not UTF-8, refused below).
names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"),
                min_size=1, max_size=12)
paths = st.lists(names, min_size=1, max_size=3).map("/".join)


def info_of(files: list[str], prefix: str) -> dict:
    return {
        "relocate_textfiles": files,
        "relocate_binaries": files[:1],
        "relocate_links": [],
        "hardlinks_deduped": True,
        "buildpath": "/opt/store",
        "relative_prefix": "linux-x86_64/p-1-aaaa",
        "hash_to_prefix": {"aaaa": prefix},
        "bincache": {"version": 1, "prefix": prefix, "store_root": "/opt/store",
                     "prefixes": [prefix], "offsets": {f: [[0, 7], [0, 99]] for f in files[:1]},
                     "kinds": {f: "text" for f in files}, "hardlinks": {}},
    }


@settings(max_examples=300, deadline=None)
@given(files=st.lists(paths, min_size=1, max_size=5, unique=True), prefix=paths)
def test_json_yaml_and_libyaml_read_the_buildinfo_as_it_was_written(files, prefix):
    info = info_of(files, "/" + prefix)
    raw = buildinfo_bytes(info)
    assert json.loads(raw) == info
    assert yaml.load(raw, Loader=yaml.SafeLoader) == info
    assert yaml.load(raw, Loader=yaml.CSafeLoader) == info


def test_install_reads_spacks_block_yaml_and_bincaches_json_alike(tmp_path):
    info = info_of(["bin/tool", "share/notes\u2028\U0001f600.txt", "lib/x\x85y"], "/opt/store/p")
    got = []
    for name, raw in (("spack", yaml.safe_dump(info, default_flow_style=False).encode()),
                      ("bincache", buildinfo_bytes(info))):
        d = tmp_path / name
        (d / ".spack").mkdir(parents=True)
        (d / BUILDINFO).write_bytes(raw)
        got.append(BuildInfo.load(str(d)))
    assert got[0] == got[1]
    assert got[1].textfiles == info["relocate_textfiles"]


def test_a_name_that_is_not_utf8_is_refused_with_what_to_do():
    with pytest.raises(PrefixError, match="not valid UTF-8.*rename it"):
        buildinfo_bytes(info_of(["share/a\udcffb"], "/opt/store/p"))


@pytest.fixture
def stack(tmp_path):
    from bincache.demo import build_stack, padded_root

    return build_stack(padded_root(str(tmp_path / "build"), 100))


def test_files_with_unusual_names_are_relocated_on_install(stack, tmp_path):
    # Names a YAML reader would fold or refuse if written raw (U+2028, NEL, DEL), one outside
    # the BMP, and quotes: each holds the build prefix, and install rewrites each one.
    odd = ["line\u2028sep.txt", "nel\x85.txt", "del\x7f.txt", "emoji\U0001f600.txt", 'q"u\\ote.txt']
    share = os.path.join(stack.hello.prefix, "share", "hello")
    for name in odd:
        with open(os.path.join(share, name), "w") as f:
            f.write(f"data at {stack.hello.prefix}/share\n")
    mirror, dest = str(tmp_path / "mirror"), str(tmp_path / "dest")
    run_cli("--root", stack.root, "create", "--unsigned", mirror, "--rebuild-index", check=True)
    run_cli("--root", dest, "install", "--unsigned", "--mirror", mirror, "hello", check=True)
    (new_prefix,) = glob.glob(os.path.join(dest, "*", "hello-*"))
    for name in odd:
        with open(os.path.join(new_prefix, "share", "hello", name)) as f:
            assert f.read() == f"data at {new_prefix}/share\n"
    assert subprocess.run([os.path.join(new_prefix, "bin", "hello")], capture_output=True,
                          check=True).stdout


def test_create_refuses_a_package_with_a_name_to_relocate_that_is_not_utf8(stack, tmp_path):
    share = os.fsencode(os.path.join(stack.hello.prefix, "share", "hello"))
    with open(os.path.join(share, b"latin1-\xe9.txt"), "wb") as f:
        f.write(os.fsencode(stack.hello.prefix) + b"/share\n")
    mirror = tmp_path / "mirror"
    p = run_cli("--root", stack.root, "create", "--unsigned", str(mirror), "hello")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    (line,) = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert "not valid UTF-8" in line and "rename it" in line
    # the package is not in the mirror (its dependencies, pushed whole, are), nor anything
    # half-written of it
    pushed = {os.path.basename(p) for p in glob.glob(str(mirror / "v3/manifests/spec/*"))}
    assert pushed == {"greet", "shout"}
    assert not os.path.exists(mirror / ".bincache-staging")
