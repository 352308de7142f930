"""`bincache demo`: the README's first command does the whole job and says what it did."""

from __future__ import annotations

import os

from tests.conftest import run_cli


def test_demo_builds_pushes_signed_installs_shorter_and_runs(tmp_path):
    work = tmp_path / "demo"
    p = run_cli("demo", str(work), check=True)
    out = p.stdout
    short_root = str(work / "sw")
    assert "signed with key" in out
    assert "verified the signatures and installed hello" in out
    assert "HEY! hello, relocated world" in out
    # the relocated program loaded both libraries from the new, shorter root
    assert f"libgreet: {short_root}/linux-x86_64/greet-1.0-" in out
    assert f"libshout: {short_root}/linux-x86_64/shout-2.1-" in out
    assert "a longer root" in out and "is refused before anything is written" in out
    assert os.path.isfile(work / "mirror" / "v3" / "layout.json")
    # the refused install left nothing in the longer root
    for name in os.listdir(work):
        if name.startswith("xxx"):
            assert not [f for _, _, files in os.walk(work / name) for f in files]
    # the user's own keyring was not touched
    assert not (tmp_path / "home" / ".bincache" / "gpg").exists()


def test_demo_keeps_a_directory_it_did_not_make(tmp_path):
    work = tmp_path / "mine"
    work.mkdir()
    (work / "notes.txt").write_text("my own notes\n")
    p = run_cli("demo", str(work))
    assert p.returncode == 1
    assert p.stderr.startswith(f"error: {work} is not empty and was not made by bincache demo")
    assert "Traceback" not in p.stderr
    assert (work / "notes.txt").read_text() == "my own notes\n"
    assert sorted(os.listdir(work)) == ["notes.txt"]
    # --keep does not write into it either
    assert run_cli("demo", "--keep", str(work)).returncode == 1
    assert sorted(os.listdir(work)) == ["notes.txt"]


def test_demo_starts_afresh_only_in_its_own_directory(tmp_path):
    work = tmp_path / "demo"
    run_cli("demo", str(work), check=True)
    assert (work / ".bincache-demo").is_file()
    (work / "mirror" / "stale").write_text("left by the last run\n")
    run_cli("demo", str(work), check=True)  # its own directory: emptied and run again
    assert not (work / "mirror" / "stale").exists()
    assert (work / "mirror" / "v3" / "layout.json").is_file()
