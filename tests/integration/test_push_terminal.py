"""A long push as a person sees it on a real pseudo-terminal: a live status line within the
first seconds, and Ctrl-C (SIGINT) that stops it within two seconds, says what was pushed and
what was not, exits 130, and leaves only whole packages in the mirror. Piped, the output is the
results alone."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from bincache.tree import register_prefix
from tests.conftest import REPO, run_cli


def _default_sigint() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and the child
    # would inherit that; at a terminal Ctrl-C has its default meaning, which is what is tested.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


PACKAGES = 60
FILES = 3
FILE_BYTES = 1 << 20
# 8 letters at random: zlib's level 9 crawls on it (a few MB/s a core), so the whole push
# (180 MB) takes well over ten seconds, while each 1 MB piece the C core compresses is a
# fraction of a second (what a cancel may have to wait for).
_LETTERS = bytes(97 + (b % 8) for b in range(256))


@pytest.fixture
def slow_tree(tmp_path):
    root = str(tmp_path / "root")
    for i in range(PACKAGES):
        prefix = os.path.join(root, f"pkg{i:02d}-1.0")
        os.makedirs(os.path.join(prefix, "share"))
        for j in range(FILES):
            with open(os.path.join(prefix, "share", f"data{j}"), "wb") as f:
                f.write(os.urandom(FILE_BYTES).translate(_LETTERS))
        register_prefix(prefix, f"pkg{i:02d}", "1.0", root=root)
    return root


def _read_until(fd: int, want: bytes, deadline: float) -> bytes:
    got = b""
    while want not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                got += os.read(fd, 65536)
            except OSError:
                break
    return got


def _drain(fd: int) -> bytes:
    got = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            return got
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return got
        if not chunk:
            return got
        got += chunk


def _whole_packages(mirror: str) -> list[str]:
    """Every manifest's blobs, checked for size and SHA-256; the names of the packages."""
    names = []
    for path in glob.glob(os.path.join(mirror, "v3/manifests/spec/*/*.spec.manifest.json")):
        doc = json.load(open(path))
        for blob in doc["data"]:
            digest = blob["checksum"]
            data = open(os.path.join(mirror, "blobs", "sha256", digest[:2], digest), "rb").read()
            assert len(data) == blob["contentLength"], path
            assert hashlib.sha256(data).hexdigest() == digest, path
        names.append(os.path.basename(path).split("-")[0])
    return sorted(names)


def test_a_long_push_shows_progress_at_once_and_stops_on_ctrl_c(slow_tree, tmp_path):
    mirror = str(tmp_path / "mirror")
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # as a terminal has
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("COLUMNS", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bincache", "--root", slow_tree, "create", "--unsigned",
         "--compression-level", "9", mirror],
        stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True,
        preexec_fn=_default_sigint)
    os.close(terminal)
    try:
        seen = _read_until(controller, f"/{PACKAGES}] pkg".encode(), t0 + 10)
        shown = time.monotonic() - t0
        assert f"/{PACKAGES}] pkg".encode() in seen, seen
        assert shown < 5, f"the status line came after {shown:.1f}s"
        # Let a few packages finish, so the interrupt falls in the middle of the work.
        seen += _read_until(controller, b"pushed   pkg02", time.monotonic() + 60)
        assert proc.poll() is None, "the push finished before it could be interrupted"
        # Three packages took this long: the whole push would take over ten seconds.
        estimate = (time.monotonic() - t0) / 3 * PACKAGES
        assert estimate > 10, f"the push would take {estimate:.1f}s only"
        proc.send_signal(signal.SIGINT)
        t_int = time.monotonic()
        rc = proc.wait(timeout=10)
        stopped = time.monotonic() - t_int
        seen += _drain(controller)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
    text = seen.decode(errors="replace")
    assert rc == 130, text
    assert stopped < 2, f"stopped {stopped:.2f}s after SIGINT"
    assert "ETA" in text  # the live line: [i/N] name  bytes  rate  ETA
    assert "not pushed pkg" in text and "error: interrupted:" in text
    assert "Traceback" not in text
    pushed = _whole_packages(mirror)
    assert 0 < len(pushed) < PACKAGES
    for name in pushed:
        assert f"pushed   {name}@1.0/" in text
    assert not glob.glob(os.path.join(mirror, "**", ".tmp-*"), recursive=True)
    assert not os.path.exists(os.path.join(mirror, ".bincache-staging"))


def test_piped_output_is_the_results_alone(tmp_path):
    root = str(tmp_path / "root")
    for name in ("a", "b"):
        prefix = os.path.join(root, f"{name}-1.0")
        os.makedirs(prefix)
        open(os.path.join(prefix, "file"), "w").write(name)
        register_prefix(prefix, name, "1.0", root=root)
    mirror = str(tmp_path / "mirror")
    p = run_cli("--root", root, "create", "--unsigned", mirror, check=True)
    assert "\r" not in p.stdout + p.stderr and "ETA" not in p.stdout + p.stderr
    assert [line.split()[1].split("/")[0] for line in p.stdout.splitlines()[:2]] == ["a@1.0", "b@1.0"]
    quiet = run_cli("--root", root, "create", "-q", "--force", "--unsigned", mirror, check=True)
    [summary] = quiet.stdout.splitlines()  # -q: the summary alone
    assert summary.startswith("2 pushed, 0 skipped")
    verbose = run_cli("--root", root, "-v", "create", "--force", "--unsigned", mirror, check=True)
    assert re.search(r"pushed   a@1.0/\S+ +\d+ B  3 files, \d+ B in \d+\.\d+s \(\d+ MB/s\)", verbose.stdout)
    p = subprocess.run([sys.executable, "-m", "bincache", "--root", str(tmp_path / "new"), "install",
                        "--unsigned", "--mirror", mirror, "b"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=REPO), check=True)
    assert p.stdout.startswith("installed b@1.0/") and "\r" not in p.stdout + p.stderr


def test_ctrl_c_stops_in_the_middle_of_one_large_file(tmp_path):
    # One 64 MB file at level 9: several seconds of deflate inside one call of the C core, which
    # stops after the block it reads instead of compressing to the end of the file.
    root = str(tmp_path / "root")
    prefix = os.path.join(root, "big-1.0")
    os.makedirs(os.path.join(prefix, "share"))
    with open(os.path.join(prefix, "share", "blob"), "wb") as f:
        f.write(os.urandom(64 << 20).translate(_LETTERS))
    register_prefix(prefix, "big", "1.0", root=root)
    mirror = str(tmp_path / "mirror")
    proc = subprocess.Popen([sys.executable, "-m", "bincache", "--root", root, "create", "--unsigned",
                             "--compression-level", "9", "-j", "1", mirror],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.DEVNULL,
                                preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 20
        staged = []
        while not staged and time.monotonic() < deadline and proc.poll() is None:
            staged = [p for p in glob.glob(os.path.join(mirror, ".bincache-staging", "*", "*.tar.gz"))
                      if os.path.getsize(p) > 0]
            time.sleep(0.05)
        assert staged and proc.poll() is None, "the push never got into the file"
        proc.send_signal(signal.SIGINT)
        t_int = time.monotonic()
        out, err = proc.communicate(timeout=30)
        stopped = time.monotonic() - t_int
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert stopped < 2, f"stopped {stopped:.2f}s after SIGINT"
    assert out.startswith("not pushed big@1.0/")
    assert "0 pushed whole, 1 not pushed" in err and "Traceback" not in err
    assert _whole_packages(mirror) == []
    assert not os.path.exists(os.path.join(mirror, ".bincache-staging"))


def test_install_on_a_terminal_shows_the_live_line_and_each_package(tmp_path):
    root = str(tmp_path / "root")
    for name in ("a", "b", "c"):
        prefix = os.path.join(root, f"{name}-1.0")
        os.makedirs(prefix)
        open(os.path.join(prefix, "file"), "w").write(name * 1000)
        register_prefix(prefix, name, "1.0", root=root)
    mirror = str(tmp_path / "mirror")
    run_cli("--root", root, "create", "--unsigned", mirror, check=True)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "bincache", "--root", str(tmp_path / "new"), "install",
                             "--unsigned", "--mirror", mirror, "a", "b", "c"],
                            stdin=terminal, stdout=terminal, stderr=terminal,
                            env=dict(os.environ, PYTHONPATH=REPO), close_fds=True)
    os.close(terminal)
    try:
        seen = _read_until(controller, b"already there", time.monotonic() + 60)  # read as it runs
        rc = proc.wait(timeout=30)
        text = (seen + _drain(controller)).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
    assert rc == 0, text
    assert re.search(r"\[\d/3\] [abc]@1\.0/\w+", text)  # the live line, with the package at work
    for name in ("a", "b", "c"):
        assert text.count(f"installed {name}@1.0/") == 1  # printed once, as it finished
    assert "3 installed, 0 already there" in text
