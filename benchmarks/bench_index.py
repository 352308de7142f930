"""Index growth: `update-index` after one new package and `list NAME`, at N tiny packages.

    python3 benchmarks/bench_index.py [--sizes 1000,10000,50000] [--before CHECKOUT] [--json OUT]

Per N, a layout v3 directory mirror of N tiny packages (spec blob, tarball blob, manifest; every
50th package heads a chain of 4 dependencies) with its index is made once under --work-dir,
then each row runs the real CLI (`python -m bincache`) in a subprocess on that mirror, which
the row puts back afterwards (benchmarks/in_place.py: a copy's directories would all be new),
and reports wall time, CPU seconds (user + system) and peak RSS (wait4). `--before` runs the same rows with another
checkout on PYTHONPATH (e.g. a worktree of the commit before the sharded index) for a
before/after table. Growth = the value at N divided by the value at the previous N.
Never asserts on time.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

ARCH = {"platform": "linux", "platform_os": "debian12", "target": "x86_64"}


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _blob(mirror: Path, data: bytes, media_type: str, compression: str):
    from bincache.mirror.layout_v3 import BlobRecord

    rec = BlobRecord(len(data), media_type, compression, hashlib.sha256(data).hexdigest())
    _write(mirror / rec.path, data)
    return rec


def _put(mirror: Path, spec, closure) -> None:
    from bincache.mirror.layout_v3 import MT_SPEC_PREFIX, MT_TARBALL, LayoutV3Cache, manifest_bytes
    from bincache.spec import specfile_bytes

    tar = _blob(mirror, gzip.compress(f"{spec.name}\n".encode(), mtime=0), MT_TARBALL, "gzip")
    data = specfile_bytes(closure)
    version = json.loads(data)["spec"]["_meta"]["version"]
    rec = _blob(mirror, gzip.compress(data, mtime=0), f"{MT_SPEC_PREFIX}{version}+json", "gzip")
    _write(mirror / LayoutV3Cache.manifest_path(spec.name, spec.version, spec.hash),
           manifest_bytes([tar, rec]))


def make_mirror(work: Path, n: int) -> Path:
    """A mirror of ``n`` packages and its index (reused when already made)."""
    from in_place import record_listing

    from bincache import index as ix
    from bincache.index_db import Index
    from bincache.mirror.directory import DirectoryBackend
    from bincache.mirror.layout_v3 import LayoutV3Cache
    from bincache.spec import Spec, make_node

    mirror = work / f"mirror-{n}"
    if (mirror / "done").exists():
        record_listing(str(mirror))  # a mirror made before update-index recorded its listing
        return mirror
    shutil.rmtree(mirror, ignore_errors=True)
    idx = Index()
    prev = []
    for i in range(n + 1):  # the last one is the "new package", kept out of the index
        deps = prev[-1:] if i % 50 >= 47 else []
        spec = Spec.from_node(make_node(f"pkg{i:05d}", "1.0", deps, arch=ARCH))
        closure = [spec] + (prev[-(i % 50 - 46):] if deps else [])
        prev = (prev + [spec])[-4:]
        if i == n:
            _write(work / f"extra-{n}.json", json.dumps(spec.node).encode())
            continue
        _put(mirror, spec, closure)
        idx.add_specfile(closure, 100)
    (mirror / "v3").mkdir(exist_ok=True)
    ix.write_index(LayoutV3Cache(DirectoryBackend(str(mirror))), idx)
    record_listing(str(mirror))
    (mirror / "done").write_text("")
    return mirror


def add_extra(mirror: Path, work: Path, n: int) -> None:
    from bincache.spec import Spec

    spec = Spec.from_node(json.loads((work / f"extra-{n}.json").read_text()))
    _put(mirror, spec, [spec])


def run_rss(pythonpath: str, *args: str) -> tuple[float, float, float, str]:
    """Wall time, the child's CPU seconds and its own peak RSS (wait4, not Popen's reaping)."""
    env = dict(os.environ, PYTHONPATH=pythonpath)
    t0 = time.perf_counter()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.chdir(pythonpath)  # `python -m` puts the working directory first on sys.path
        os.dup2(w, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.execve(sys.executable, [sys.executable, "-m", "bincache", *args], env)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"bincache {' '.join(args)} failed (exit {status})")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, b"".join(chunks).decode()


def rows_for(n: int, work: Path, pythonpath: str, label: str) -> list[dict]:
    from in_place import restored

    m = work / f"mirror-{n}"  # made (and its listing recorded) by the --make child
    out = []
    with restored(str(m), [f"pkg{n:05d}"]):
        add_extra(m, work, n)
        s, cpu, rss, text = run_rss(pythonpath, "update-index", str(m))
        out.append({"row": "update-index-one", "impl": label, "n": n, "seconds": s, "cpu": cpu,
                    "rss_mb": rss, "note": text.strip()})
        s, cpu, rss, text = run_rss(pythonpath, "list", "-a", str(m), f"pkg{n // 2:05d}")
        out.append({"row": "list-name", "impl": label, "n": n, "seconds": s, "cpu": cpu, "rss_mb": rss,
                    "note": text.strip().splitlines()[-1] if text.strip() else ""})
    return out


def table(results: list[dict]) -> str:
    lines = [f"{'row':18} {'impl':7} {'N':>7} {'seconds':>8} {'growth':>7} {'CPU s':>6} {'growth':>7} "
             f"{'peak MB':>8} {'growth':>7}"]
    prev: dict[tuple[str, str], dict] = {}
    for r in results:
        key = (r["row"], r["impl"])
        p = prev.get(key)
        g_t = f"{r['seconds'] / p['seconds']:.2f}x" if p else "-"
        g_m = f"{r['rss_mb'] / p['rss_mb']:.2f}x" if p else "-"
        g_c = f"{r['cpu'] / p['cpu']:.2f}x" if p else "-"
        lines.append(f"{r['row']:18} {r['impl']:7} {r['n']:>7} {r['seconds']:>8.2f} {g_t:>7} "
                     f"{r['cpu']:>6.2f} {g_c:>7} {r['rss_mb']:>8.0f} {g_m:>7}")
        prev[key] = r
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--before", help="another checkout to run the same rows with")
    ap.add_argument("--work-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bincache-bench-index"))
    ap.add_argument("--json")
    ap.add_argument("--make", type=int, help=argparse.SUPPRESS)  # make one mirror (child process)
    args = ap.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.make:
        make_mirror(work, args.make)
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    impls = [("after", str(REPO))] + ([("before", os.path.abspath(args.before))] if args.before else [])
    results = []
    for label, path in impls:
        for n in sizes:
            t0 = time.perf_counter()
            # In a child process: a forked child's peak RSS (wait4) counts the memory the parent
            # had at the fork, so the parent stays small.
            subprocess.run([sys.executable, __file__, "--make", str(n), "--work-dir", str(work)], check=True)
            made = time.perf_counter() - t0
            if made > 1:
                print(f"(mirror of {n} made in {made:.0f}s)", file=sys.stderr)
            results.extend(rows_for(n, work, path, label))
    results.sort(key=lambda r: (r["row"], r["impl"], r["n"]))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
