"""An install with -j 2 stages packages in worker processes: Ctrl-C in the middle stops it
within two seconds (exit 130, one line, nothing installed, staging removed, no worker left),
and killing the install kills its workers (the next install cleans up and finishes)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from bincache.tree import register_prefix
from tests.conftest import REPO, run_cli

PACKAGES = 3
FILE_BYTES = 32 << 20
_LETTERS = bytes(97 + (b % 8) for b in range(256))


@pytest.fixture(scope="module")
def big_mirror(tmp_path_factory):
    base = tmp_path_factory.mktemp("workers")
    root = str(base / "root")
    for i in range(PACKAGES):
        prefix = os.path.join(root, f"big{i}-1.0")
        os.makedirs(os.path.join(prefix, "share"))
        with open(os.path.join(prefix, "share", "blob"), "wb") as f:
            f.write(os.urandom(FILE_BYTES).translate(_LETTERS))
        register_prefix(prefix, f"big{i}", "1.0", root=root)
    mirror = str(base / "mirror")
    run_cli("--root", root, "create", "--unsigned", "--compression-level", "1", mirror, check=True)
    return mirror


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as at a terminal (see test_push_terminal)


def _start(mirror: str, root: str) -> subprocess.Popen:
    specs = [f"big{i}" for i in range(PACKAGES)]
    return subprocess.Popen([sys.executable, "-m", "bincache", "--root", root, "install", "-j", "2",
                             "--unsigned", "--mirror", mirror, *specs],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.DEVNULL,
                            preexec_fn=_default_sigint)


def _wait_for_staging(proc: subprocess.Popen, root: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        blobs = glob.glob(os.path.join(root, ".bincache-staging", "*", "*.prefix", "share", "blob"))
        if any(os.path.getsize(b) > 0 for b in blobs):
            return
        time.sleep(0.02)
    raise AssertionError("the install never got into staging")


def _processes_naming(root: str) -> list[int]:
    """Processes whose command line names ``root`` (the install and its forked workers)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if root.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _gone(root: str) -> bool:
    deadline = time.monotonic() + 5
    while _processes_naming(root) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _processes_naming(root)


def _staged_then(proc: subprocess.Popen, root: str, sig: int) -> tuple[str, str, float]:
    """(stdout, stderr, seconds from the signal to the exit) of ``proc`` sent ``sig`` while
    its workers stage."""
    try:
        _wait_for_staging(proc, root)
        proc.send_signal(sig)
        t_sent = time.monotonic()
        out, err = proc.communicate(timeout=30)
        return out, err, time.monotonic() - t_sent
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_while_workers_stage_stops_and_leaves_nothing(big_mirror, tmp_path):
    root = str(tmp_path / "new")
    proc = _start(big_mirror, root)
    out, err, stopped = _staged_then(proc, root, signal.SIGINT)
    assert proc.returncode == 130, out + err
    assert err.strip() == "error: interrupted", out + err  # one line: none from a worker
    assert stopped < 2, f"stopped {stopped:.2f}s after SIGINT"
    assert _gone(root), "a staging worker outlived the install"
    assert not os.path.exists(root)  # the install made the root: it removed it again


def test_killed_install_takes_its_workers_and_the_next_one_finishes(big_mirror, tmp_path):
    root = str(tmp_path / "new")
    os.makedirs(root)
    proc = _start(big_mirror, root)
    _staged_then(proc, root, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert _gone(root), "a staging worker outlived the killed install"
    assert [d for d in os.listdir(root) if d != ".bincache-staging"] == []  # nothing published
    p = run_cli("--root", root, "install", "-j", "2", "--unsigned", "--mirror", big_mirror,
                *[f"big{i}" for i in range(PACKAGES)], check=True)
    assert p.stdout.count("installed big") == PACKAGES
    staging = os.path.join(root, ".bincache-staging")
    assert not os.path.exists(staging) or os.listdir(staging) == []  # the dead run's debris gone
    blobs = glob.glob(os.path.join(root, "*", "big*", "share", "blob"))
    assert len(blobs) == PACKAGES and all(os.path.getsize(b) == FILE_BYTES for b in blobs)


def test_a_worker_killed_mid_package_fails_the_install_and_leaves_nothing(big_mirror, tmp_path):
    root = str(tmp_path / "new")
    proc = _start(big_mirror, root)
    try:
        _wait_for_staging(proc, root)
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            workers = [int(p) for p in f.read().split()]
        assert workers, "no staging worker"
        os.kill(workers[0], signal.SIGKILL)  # as the OOM killer would
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert err.strip() == f"error: a staging worker (pid {workers[0]}) died", err
    assert _gone(root)
    assert not os.path.exists(root)  # nothing published, the staging directory removed
