"""`bincache demo [DIR]`: the whole job on a built-in example, start to finish."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from .. import api
from ..errors import BincacheError
from .output import human_size


def register(sub, verb: str | None = None) -> None:
    # ``verb``: every verb of this module is built (they are few and cheap).
    p = sub.add_parser("demo", help="build an example stack, push it, install it elsewhere, run it",
                       description="Compile a small C stack with gcc into DIR/opt..., register it, "
                       "create a build cache in DIR/mirror, install it into a shorter root and run it.")
    p.add_argument("dir", nargs="?", default="bincache-demo",
                   help="work directory: new, empty, or made by an earlier demo (default: ./bincache-demo)")
    p.add_argument("--keep", action="store_true", help="reuse the demo's DIR instead of starting afresh")
    p.set_defaults(func=cmd_demo)


# The demo's own mark: a directory holding it was made by the demo, so the demo may empty it.
MARKER = ".bincache-demo"


def _prepare(work: str, keep: bool) -> None:
    """Make ``work`` the demo's directory: new, empty, or marked as the demo's own (then emptied
    unless ``keep``). Anything else is the user's and is refused untouched."""
    marker = os.path.join(work, MARKER)
    if os.path.lexists(work):
        if os.path.islink(work) or not os.path.isdir(work):
            raise BincacheError(f"{work} exists and is not a directory; give the demo a new directory")
        entries = os.listdir(work)
        if entries and not os.path.isfile(marker):
            raise BincacheError(f"{work} is not empty and was not made by bincache demo (it has no "
                                f"{MARKER} file), so the demo will not write there or delete anything; "
                                "give it a new or empty directory")
        if not keep:
            # Its contents, not the directory itself: it may be the current directory.
            for name in entries:
                path = os.path.join(work, name)
                if name == MARKER:
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
    os.makedirs(work, exist_ok=True)
    with open(marker, "w") as f:
        f.write("made by bincache demo: `bincache demo` may empty this directory\n")


def cmd_demo(args) -> int:
    from .. import _native
    from ..demo import build_stack, padded_root

    work = os.path.abspath(args.dir)
    _prepare(work, args.keep)
    build_root = padded_root(os.path.join(work, "opt"), 120)
    mirror = os.path.join(work, "mirror")
    print(f"bincache demo in {work}  (native core: {_native.BACKEND})")

    t0 = time.perf_counter()
    stack = build_stack(build_root)
    print(f"1. built greet, shout, hello with gcc under a {len(build_root)}-character root "
          f"({time.perf_counter() - t0:.2f}s)")
    out = subprocess.run([stack.program, "demo"], capture_output=True, text=True, check=False)
    print("   " + out.stdout.strip().splitlines()[0] if out.stdout else "   (program printed nothing)")

    # A throwaway signing key in the demo's own GnuPG home: the user's keyring is never touched.
    os.environ["BINCACHE_GNUPGHOME"] = os.path.join(work, "gpg")
    from .. import signing as sign

    key = sign.create_key("bincache demo", "demo@bincache.invalid")
    try:
        return _demo_push_install(work, mirror, stack, build_root, key.fingerprint)
    finally:
        sign.stop_agent()


def _demo_push_install(work: str, mirror: str, stack, build_root: str, fingerprint: str) -> int:
    result = api.push(mirror, [], root=build_root, key=fingerprint, update_index=True)
    mbs = result.bytes_in / 1e6 / max(result.seconds, 1e-9)
    print(f"2. pushed {len(result.pushed)} packages to {mirror}, signed with key {fingerprint[-16:]}: "
          f"{human_size(result.bytes_in)} -> {human_size(result.bytes_out)} in {result.seconds:.3f}s "
          f"({mbs:.0f} MB/s), index updated")
    entries, _ = api.list_mirror(mirror)
    for e in entries:
        print(f"   {e.spec.name}@{e.spec.version}/{e.spec.hash[:7]}  {human_size(e.size)}")

    return _demo_install(work, mirror, stack, build_root)


def _demo_install(work: str, mirror: str, stack, build_root: str) -> int:
    short_root = os.path.join(work, "sw")
    t0 = time.perf_counter()
    api.install(["hello"], mirrors=[mirror], root=short_root)
    took = time.perf_counter() - t0
    from ..tree import InstallTree

    hello = InstallTree(short_root).select(["hello"])[0]
    program = os.path.join(hello.prefix, "bin", "hello")
    print(f"3. verified the signatures and installed hello and its dependencies into {short_root} "
          f"({len(short_root)} characters) in {took:.2f}s")
    out = subprocess.run([program, "relocated world"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise BincacheError(f"the relocated program failed: {out.stderr.strip()}")
    print(f"4. ran {program}:")
    for line in out.stdout.strip().splitlines():
        print(f"   {line}")
    long_root = os.path.join(work, "x" * (len(build_root) - len(work) + 20))
    try:
        api.install(["hello"], mirrors=[mirror], root=long_root)
        print(f"5. a longer root ({len(long_root)} characters) also worked")
    except BincacheError as e:
        problems = [line for line in str(e).splitlines() if line.strip()]
        first = problems[0].replace(long_root, "<longer root>").replace(build_root, "<build root>")
        print(f"5. a longer root ({len(long_root)} characters) is refused before anything is written "
              f"({len(problems)} problem{'s' if len(problems) != 1 else ''}), e.g. {first[:160]}...")
        if os.path.exists(long_root) and os.listdir(long_root):
            raise BincacheError(f"the refused install left files in {long_root}") from None
    return 0
