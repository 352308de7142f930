"""bincache's GnuPG home, and running gpg in it.

The keyring lives in bincache's own GnuPG home (``BINCACHE_GNUPGHOME``, else ``config:gnupghome``,
else ``~/.bincache/gpg``), not in the user's personal one unless configured so.

Every gpg call runs with ``--batch --pinentry-mode loopback`` and no passphrase source, so a key
that needs a passphrase the agent does not hold fails at once instead of waiting for a prompt.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import SignatureError

# gpg-agent's sockets (S.gpg-agent.browser is the longest name) must fit in sun_path (108 bytes).
_MAX_HOME_LEN = 80
GPG_OPTIONS = ["--pinentry-mode", "loopback", "--no-auto-key-retrieve"]
_TIMEOUT = 120


def gnupg_home(home: str | None = None) -> str:
    """bincache's GnuPG home: ``home``, else ``BINCACHE_GNUPGHOME``, else ``config:gnupghome``
    (relative to the scope that set it), else ``~/.bincache/gpg``. Created (mode 0700) if missing."""
    path = home or os.environ.get("BINCACHE_GNUPGHOME") or _configured_home()
    if not path:
        path = os.path.join(os.path.expanduser("~"), ".bincache", "gpg")
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as e:
            raise SignatureError(f"cannot create the GnuPG home {path}: {e.strerror}") from None
    return path


def _configured_home() -> str | None:
    from .. import config

    # A broken config file is reported (ConfigError), not replaced by another keyring silently.
    section = config.current().section("config")
    value = (section.data or {}).get("gnupghome")
    if not value:
        return None
    value = os.path.expandvars(os.path.expanduser(str(value)))
    if not os.path.isabs(value):
        origin = section.origin("gnupghome")
        directory = getattr(getattr(origin, "scope", None), "directory", None)
        if directory:
            value = os.path.join(directory, value)
    return value


def gpg_homedir(home: str) -> str:
    """The path to give gpg for ``home``: itself, or a short symlink to it when its sockets would
    not fit in a Unix socket address. The alias is stable (one per home), because gpg-agent keeps
    using the path it was started with."""
    if len(home) <= _MAX_HOME_LEN:
        return home
    base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), f"bincache-gpg-{os.getuid()}")
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise SignatureError(f"GnuPG home {home} is too long for gpg-agent's socket and {base} "
                             f"cannot be created for a short alias: {e.strerror}") from None
    st = os.lstat(base)
    if not os.path.isdir(base) or os.path.islink(base) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise SignatureError(f"{base} is not a private directory of this user; remove it, or use a "
                             "shorter GnuPG home (BINCACHE_GNUPGHOME)")
    real = os.path.realpath(home)
    link = os.path.join(base, hashlib.sha256(real.encode()).hexdigest()[:16])
    try:
        if os.readlink(link) == real:
            return link
    except OSError:
        pass
    tmp = f"{link}.{os.getpid()}.tmp"
    try:
        os.symlink(real, tmp)
        os.replace(tmp, link)
    except OSError as e:
        raise SignatureError(f"cannot make a short alias {link} for the GnuPG home {home}: {e.strerror}") from None
    return link


_gpg_lock = threading.Lock()
_gpg_objects: dict[str, Any] = {}


def python_gnupg(home: str | None = None) -> Any:
    """A python-gnupg handle on bincache's GnuPG home (cached per home): key management."""
    homedir = gpg_homedir(gnupg_home(home))
    with _gpg_lock:
        g = _gpg_objects.get(homedir)
        if g is None:
            try:
                import gnupg
            except ImportError:
                raise SignatureError("python-gnupg is not installed: pip install python-gnupg") from None
            try:
                g = gnupg.GPG(gnupghome=homedir, options=list(GPG_OPTIONS))
            except (OSError, ValueError, RuntimeError) as e:
                raise SignatureError(f"cannot run gpg ({e}); install GnuPG 2.2 or later") from None
            g.encoding = "utf-8"
            _gpg_objects[homedir] = g
        return g


@dataclass
class GpgRun:
    """One gpg process: exit code, standard output, and its ``[GNUPG:]`` status lines."""

    returncode: int
    data: bytes
    stderr: str

    @property
    def status(self) -> list[list[str]]:
        return [line[9:].split(" ") for line in self.stderr.splitlines() if line.startswith("[GNUPG:] ")]

    def codes(self) -> dict[str, list[str]]:
        """Status keyword -> its arguments (the last line of each keyword)."""
        return {s[0]: s[1:] for s in self.status}

    @property
    def messages(self) -> str:
        """gpg's own human messages (not status lines), for error reports."""
        msgs = [line[5:] for line in self.stderr.splitlines() if line.startswith("gpg: ")]
        return "; ".join(msgs[-2:])


def run_gpg(home: str | None, args: list[str], data: bytes = b"") -> GpgRun:
    """One gpg process on ``data`` (stdin), status on stderr. Signing and verification call gpg
    directly: python-gnupg's version probe and two reader threads per call cost more than gpg
    itself on this path (measured: ~10 ms -> ~6 ms a verification)."""
    homedir = gpg_homedir(gnupg_home(home))
    cmd = ["gpg", "--homedir", homedir, "--batch", "--no-tty", "--status-fd", "2", *GPG_OPTIONS, *args]
    try:
        r = subprocess.run(cmd, input=data, capture_output=True, timeout=_TIMEOUT)
    except FileNotFoundError:
        raise SignatureError("gpg is not installed: install GnuPG 2.2 or later") from None
    except subprocess.TimeoutExpired:
        raise SignatureError(f"gpg did not answer within {_TIMEOUT} s (home {homedir})") from None
    return GpgRun(r.returncode, r.stdout, r.stderr.decode("utf-8", "replace"))


def stop_agent(home: str | None = None) -> None:
    """Stop the gpg-agent of a home (tests use it to clean up their throwaway homes)."""
    homedir = gpg_homedir(gnupg_home(home))
    subprocess.run(["gpgconf", "--homedir", homedir, "--kill", "gpg-agent"], stdin=subprocess.DEVNULL,
                   capture_output=True, timeout=30, check=False, env=dict(os.environ, GNUPGHOME=homedir))
