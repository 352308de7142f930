"""Issue 10, finding 8: installed modes, and the debris of interrupted runs.

World-writable modes in a package are not installed as such (the umask applies too), and a run
killed with SIGKILL in the middle of create or install leaves a staging directory that the next
run of the same root (or mirror) removes, while a live run's directory is never touched.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

from bincache.staging import make_private_dir
from tests.conftest import REPO, run_cli
from tests.fixtures.hostile import Package, buildinfo, member, node, tarball, write_package

OLD = "/opt/old/wide-1.0-x"


def _cli(*args, umask=None):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-m", "bincache", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL,
                            preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def _modes(prefix: str) -> dict[str, int]:
    out = {"": stat.S_IMODE(os.lstat(prefix).st_mode)}
    for dirpath, dirnames, files in os.walk(prefix):
        for n in dirnames + files:
            full = os.path.join(dirpath, n)
            out[os.path.relpath(full, prefix)] = stat.S_IMODE(os.lstat(full).st_mode)
    return out


def _wide_mirror(tmp_path) -> str:
    mirror = str(tmp_path / "mirror")
    n = node("wide")
    members = [member(OLD + "/share", kind=b"5", mode=0o777),
               member(OLD + "/share/data", b"x", mode=0o666),
               member(OLD + "/bin/tool", b"#!/bin/sh\n", mode=0o4777)]
    # The tarball's prefix directory itself is 0777 too.
    tar = tarball(OLD, members, buildinfo(OLD, {n["hash"]: OLD}), prefix_mode=0o777)
    write_package(mirror, Package(n, OLD, tar=tar), None)
    return mirror


def _prefix(root) -> str:
    (found,) = [d for d, _, f in os.walk(root) if "wide-1.0-" in os.path.basename(d)]
    return found


def test_group_and_other_write_bits_are_not_installed(tmp_path):
    mirror = _wide_mirror(tmp_path)
    root = tmp_path / "root"
    p = _cli("--root", str(root), "install", "--unsigned", "-m", mirror, "wide", umask=0o000)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    modes = _modes(_prefix(root))
    assert modes["bin/tool"] == 0o755  # no setuid, no o+w, even with umask 0
    assert modes["share"] == 0o755 and modes["share/data"] == 0o644
    assert not any(m & 0o022 for m in modes.values()), modes
    assert not stat.S_IMODE(os.stat(os.path.dirname(_prefix(root))).st_mode) & 0o022


def test_the_umask_applies_to_installed_files(tmp_path):
    mirror = _wide_mirror(tmp_path)
    root = tmp_path / "root"
    p = _cli("--root", str(root), "install", "--unsigned", "-m", mirror, "wide", umask=0o077)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    modes = _modes(_prefix(root))
    assert modes["bin/tool"] == 0o700 and modes["share/data"] == 0o600


def _big_package_mirror(tmp_path) -> str:
    """A package of 80 MB of zeros: tiny to store, long enough to extract to be killed."""
    mirror = str(tmp_path / "mirror")
    write_package(mirror, Package(node("big"), "/opt/old/big-1.0-x",
                                  [member(f"/opt/old/big-1.0-x/zero{i}", bytes(8 << 20))
                                   for i in range(10)]), None)
    return mirror


def _kill_when(proc, ready, timeout=60.0) -> None:
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "the run never reached the point to kill it"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()


def test_a_killed_install_leaves_debris_the_next_install_removes(tmp_path):
    mirror = _big_package_mirror(tmp_path)
    root = tmp_path / "root"
    staging = root / ".bincache-staging"

    def extracting() -> bool:
        return any(f.name.startswith("zero") for f in staging.glob("install-*/**/.extract-*/**/*"))

    p = _cli("--root", str(root), "install", "--unsigned", "-m", mirror, "big")
    _kill_when(p, extracting)
    debris = list(staging.iterdir())
    assert debris, "the killed install left nothing to clean"
    # A live run's staging directory (another install in progress) must survive.
    live = make_private_dir(str(staging), "install-")
    try:
        again = run_cli("--root", str(root), "install", "--unsigned", "-m", mirror, "big")
        assert again.returncode == 0, again.stderr
        assert sorted(os.listdir(staging)) == [os.path.basename(live.path)]
    finally:
        live.close()
        os.rmdir(live.path)


def test_a_killed_create_leaves_debris_the_next_create_removes(tmp_path):
    root = tmp_path / "tree"
    prefix = root / "big"
    prefix.mkdir(parents=True)
    for i in range(6):
        with open(prefix / f"data{i}", "wb") as f:
            f.write(os.urandom(1 << 20) * 16)  # 16 MiB each, deflate has work to do
    run_cli("--root", str(root), "register", str(prefix), "--name", "big", "--version", "1",
            "--no-autopush", check=True)
    mirror = tmp_path / "mirror"
    staging = mirror / ".bincache-staging"

    def packing() -> bool:
        return any(f.stat().st_size > 0 for f in staging.glob("create-*/*.tar.gz"))

    p = _cli("--root", str(root), "create", "--unsigned", str(mirror), "-j", "1")
    _kill_when(p, packing)
    assert list(staging.glob("create-*/*"))
    again = run_cli("--root", str(root), "create", "--unsigned", str(mirror))
    assert again.returncode == 0, again.stderr
    assert not staging.exists() or os.listdir(staging) == []


def test_a_run_waiting_for_the_staging_lock_survives_the_base_being_removed(tmp_path):
    # One run ends (its staging removed, then the empty base) while another waits for the
    # base's lock to make its directory: the waiter must lock the base that exists afterwards,
    # not the removed one (concurrent pushers into one directory mirror hit this).
    import threading

    from bincache.locks import dir_lock
    from bincache.staging import remove_base

    base = str(tmp_path / ".bincache-staging")
    got: list[object] = []
    with dir_lock(base):
        waiter = threading.Thread(target=lambda: got.append(_try(make_private_dir, base, "c-")))
        waiter.start()
        time.sleep(0.3)  # the waiter is blocked on the lock of this base
        os.rmdir(base)  # as remove_base does, under the lock
    waiter.join(10)
    private = got[0]
    assert not isinstance(private, BaseException), private
    assert os.path.isdir(private.path) and os.path.dirname(private.path) == base
    remove_base(base)  # another run's directory is there: kept
    assert os.path.isdir(private.path)
    private.close()
    os.rmdir(private.path)
    remove_base(base)
    assert not os.path.exists(base)


def _try(fn, *args):
    try:
        return fn(*args)
    except BaseException as e:  # the thread's failure is the test's
        return e
