"""Benchmark: install from a directory build cache, bincache against the alternatives.

One run measures, side by side, on the same build cache (its blobs read once first, so every
variant starts from a warm page cache) and into the same file system:

* ``tar -xzf`` of every package tarball, one after the other (the yardstick: no verification,
  no relocation);
* the plain-Python reference: SHA-256 of each blob with hashlib, ``tar -xzf``, then a Python
  relocation pass as a pure-Python tool does it (Spack's text regex over every listed text file,
  a regex scan and slash-padded rewrite of every listed binary, symlinks re-pointed);
* ``bincache install`` of every package (verify + safe extract + relocate + rename, and the
  database), with ``-j 1`` and ``-j 2``.

Each variant runs in its own child process: wall time, CPU time (user + system of the child and
its children, which on a loaded machine is the steadier figure) and peak RSS. MB/s is the
extracted file bytes over wall seconds. The install root is never longer than the tree's root,
so every string can be relocated. It never asserts on time: it prints a table and writes JSON.

    python benchmarks/bench_install.py --root TREE --mirror MIRROR --work-dir DIR --json OUT [--quick]
    python benchmarks/bench_install.py [--size-mb N] [--work-dir DIR]   # makes tree and mirror
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for p in (HERE, REPO):
    if p not in sys.path:
        sys.path.insert(0, p)

MB = 1 << 20
TARBALL = "application/vnd.spack.install.v2.tar+gzip"
TIME = "/usr/bin/time"


@dataclass
class Row:
    variant: str
    key: str
    seconds: float | None = None
    cpu_seconds: float | None = None
    bytes_out: int = 0
    peak_rss_kb: int | None = None
    error: str = ""

    @property
    def mbs(self) -> float | None:
        return self.bytes_out / MB / self.seconds if self.seconds else None


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def measure(cmd: list[str]) -> tuple[float, float, int, int, str]:
    """(wall s, cpu s, peak RSS KiB, exit code, stderr tail) of a child process."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=child_env())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        # wait4 reports the child alone; its own children (tar's gzip) come through RUSAGE_CHILDREN
        # of the child only once it waited for them, which tar and python do.
        cpu = usage.ru_utime + usage.ru_stime
        err.seek(0)
        tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
        return wall, cpu, usage.ru_maxrss, os.waitstatus_to_exitcode(status), " | ".join(tail)


def packages(mirror: str) -> list[dict]:
    """Every package of a directory build cache: its selector, tarball blob and size."""
    out = []
    spec_dir = os.path.join(mirror, "v3", "manifests", "spec")
    for d, _dirs, files in os.walk(spec_dir):
        for f in sorted(files):
            if not f.endswith(".spec.manifest.json"):
                continue
            with open(os.path.join(d, f), "rb") as fh:
                doc = json.load(fh)
            rec = next(r for r in doc["data"] if r["mediaType"] == TARBALL)
            blob = os.path.join(mirror, "blobs", "sha256", rec["checksum"][:2], rec["checksum"])
            h = f[: -len(".spec.manifest.json")].rsplit("-", 1)[-1]
            out.append({"hash": h, "blob": blob, "size": rec["contentLength"],
                        "sha256": rec["checksum"]})
    return sorted(out, key=lambda p: p["hash"])


def tree_bytes(root: str) -> int:
    total = 0
    seen = set()
    for d, _dirs, files in os.walk(root):
        for f in files:
            st = os.lstat(os.path.join(d, f))
            if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f)):
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
    return total


# The plain-Python reference, run in a child: what a pure-Python installer does.
REFERENCE = textwrap.dedent(
    r'''
    import hashlib, json, os, re, subprocess, sys, yaml

    pkgs, old_root, new_root, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    for p in pkgs:
        h = hashlib.sha256()
        with open(p["blob"], "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        assert h.hexdigest() == p["sha256"], p["blob"]
        subprocess.run(["tar", "-xzf", p["blob"], "-C", out], check=True)
    staged = os.path.join(out, old_root.lstrip("/"))
    for d, dirs, files in os.walk(staged):
        if ".spack" in dirs and os.path.exists(os.path.join(d, ".spack", "binary_distribution")):
            with open(os.path.join(d, ".spack", "binary_distribution")) as f:
                info = yaml.safe_load(f)
            pairs = {}
            for old in list(info["hash_to_prefix"].values()) + [old_root]:
                pairs[old.encode()] = (new_root + old[len(old_root):]).encode()
            olds = sorted(pairs, key=len, reverse=True)
            alt = b"|".join(re.escape(o) for o in olds)
            text_re = re.compile(rb"(?<![\w\-_/])([\w\-_]*?)(" + alt + rb")([\w\-_/]*)")
            bin_re = re.compile(b"(" + alt + b")")
            for rel in info.get("relocate_textfiles") or []:
                path = os.path.join(d, rel)
                with open(path, "rb") as f:
                    data = f.read()
                new = text_re.sub(lambda m: m.group(1) + pairs[m.group(2)] + m.group(3), data)
                if new != data:
                    with open(path, "wb") as f:
                        f.write(new)
            for rel in info.get("relocate_binaries") or []:
                path = os.path.join(d, rel)
                with open(path, "rb+") as f:
                    data = bytearray(f.read())
                    for m in bin_re.finditer(bytes(data)):
                        old = m.group(1)
                        new = pairs[old]
                        data[m.start():m.end()] = b"/" * (len(old) - len(new)) + new
                    f.seek(0)
                    f.write(data)
            for rel in info.get("relocate_links") or []:
                path = os.path.join(d, rel)
                target = os.readlink(path)
                for o in olds:
                    if target.startswith(o.decode()):
                        os.unlink(path)
                        os.symlink(pairs[o].decode() + target[len(o):], path)
                        break
            dirs[:] = []
    '''
)


def new_root_for(old_root: str, key: str, parent: str | None = None) -> str:
    """A root of the same length as the tree's (beside it unless ``parent`` is given): every
    string relocates in place."""
    old_root = old_root.rstrip("/")
    parent = os.path.abspath(parent) if parent else os.path.dirname(old_root)
    room = len(old_root) - len(parent) - 1
    if room < 1:
        raise SystemExit(f"{parent} is too long to hold a root no longer than {old_root}")
    return os.path.join(parent, (key + "_" * room)[:room])


def run(root: str, mirror: str, work: str, *, quick: bool = False, repeat: int = 1,
        target_dir: str | None = None) -> dict:
    root = os.path.abspath(root)
    pkgs = packages(mirror)
    if not pkgs:
        raise SystemExit(f"no packages in {mirror}")
    os.makedirs(work, exist_ok=True)
    # The page cache holds every blob before any variant runs.
    for p in pkgs:
        with open(p["blob"], "rb") as f:
            while f.read(8 * MB):
                pass
    compressed = sum(p["size"] for p in pkgs)
    rows: list[Row] = []

    def fresh(name: str) -> str:
        path = new_root_for(root, name, target_dir)
        if os.path.exists(path):
            raise SystemExit(f"{path} exists beside the tree; remove it (a leftover of a killed run?)")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def record(variant: str, key: str, cmd: list[str], out_dir: str, mkdir: bool = False) -> None:
        best: Row | None = None
        for _ in range(max(1, repeat)):
            if mkdir:
                os.makedirs(out_dir)
            wall, cpu, rss, rc, err = measure(cmd)
            row = Row(variant, key, wall, cpu,
                      tree_bytes(out_dir) if os.path.isdir(out_dir) else 0, rss)
            shutil.rmtree(out_dir, ignore_errors=True)
            if rc != 0:
                row.error = f"exit {rc}: {err}"
                best = row
                break
            print(f"  {variant}: {wall:.2f} s wall, {cpu:.2f} s cpu", flush=True)
            if best is None or wall < (best.seconds or 0):
                best = row
        assert best is not None
        rows.append(best)

    # tar -xzf, sequential (bash loop so one child process is measured, gzip included).
    out = fresh("t")
    script = "set -e\n" + "".join(f"tar -xzf '{p['blob']}' -C '{out}'\n" for p in pkgs)
    record("tar -xzf (no verify, no relocation)", "tar", ["bash", "-c", script], out, mkdir=True)

    out = fresh("p")
    record("hashlib + tar -xzf + Python relocation", "python_reference",
           [sys.executable, "-c", REFERENCE, json.dumps(pkgs), root, out, out], out, mkdir=True)

    selectors = ["/" + p["hash"] for p in pkgs]
    for jobs in (1, 2):
        out = fresh(f"b{jobs}")
        record(f"bincache install -j {jobs}", f"bincache_j{jobs}",
               [sys.executable, "-m", "bincache", "--root", out, "install", "--mirror", mirror,
                "--unsigned", "-j", str(jobs), *selectors], out)

    try:
        from bincache import _native

        backend = f"{_native.BACKEND} ({'C core' if _native.IS_NATIVE else 'pure Python twin'})"
    except Exception as e:  # the table still says what ran
        backend = f"unknown ({e})"
    return {
        "benchmark": "install",
        "tree": root,
        "target_dir": target_dir or os.path.dirname(root),
        "mirror": mirror,
        "packages": len(pkgs),
        "repeat": repeat,
        "compressed_bytes": compressed,
        "native_backend": backend,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "rows": [dict(asdict(r), mb_per_s=r.mbs) for r in rows],
    }


def render(result: dict) -> str:
    rows = result["rows"]
    tar = next((r for r in rows if r["key"] == "tar" and not r["error"]), None)
    lines = [
        f"install of {result['packages']} packages ({result['compressed_bytes'] / MB:.0f} MiB of "
        f"tarballs), native core: {result['native_backend']}, load average "
        f"{result['machine']['load_average'][0]:.1f}, best of {result['repeat']}, into "
        f"{result['target_dir']}",
        f"{'variant':44s} {'wall s':>8s} {'cpu s':>7s} {'MiB out':>8s} {'MB/s':>7s} "
        f"{'vs tar':>7s} {'RSS MiB':>8s}",
    ]
    for r in rows:
        if r["error"]:
            lines.append(f"{r['variant']:44s} error: {r['error']}")
            continue
        speed = f"{tar['seconds'] / r['seconds']:.2f}x" if tar and r["seconds"] else "-"
        lines.append(
            f"{r['variant']:44s} {r['seconds']:8.2f} {r['cpu_seconds']:7.2f} "
            f"{r['bytes_out'] / MB:8.0f} {r['mb_per_s']:7.1f} {speed:>7s} "
            f"{(r['peak_rss_kb'] or 0) / 1024:8.0f}"
        )
    best = max((r for r in rows if r["key"].startswith("bincache") and not r["error"]),
               key=lambda r: r["mb_per_s"] or 0, default=None)
    if best and tar:
        lines.append(f"target (issue 3): bincache install >= 0.8x bare tar -xzf with relocation "
                     f"included: {tar['seconds'] / best['seconds']:.2f}x")
    return "\n".join(lines)


def prepare(work: str, size_mb: int, seed: int) -> tuple[str, str]:
    """A tree (benchmarks/gen_tree.py) and its build cache, for a standalone run."""
    root = os.path.join(work, f"tree-{size_mb}mb-s{seed}")
    mirror = os.path.join(work, f"mirror-{size_mb}mb-s{seed}")
    if not os.path.isdir(mirror):
        shutil.rmtree(root, ignore_errors=True)
        import gen_tree

        gen_tree.generate(root, size_mb, seed)
        from bincache import api

        api.push(mirror, [], root=root, signed=False, update_index=True, jobs=2)
    return root, mirror


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", help="the install tree the mirror was made from")
    ap.add_argument("--mirror", help="a directory build cache made from --root")
    ap.add_argument("--work-dir", default="/tmp/bincache-bench/install")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--quick", action="store_true", help="(accepted from run_all.py; same variants)")
    ap.add_argument("--size-mb", type=int, default=100, help="tree size when making one")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-dir", help="where the install roots go (default: beside the tree; "
                    "e.g. /dev/shm to take the disk out of the figures)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per variant, the fastest counts (a loaded machine is noisy)")
    args = ap.parse_args(argv)
    work = os.path.abspath(args.work_dir)
    if args.root and args.mirror:
        root, mirror = args.root, args.mirror
    else:
        root, mirror = prepare(work, args.size_mb, args.seed)
    result = run(root, mirror, work, quick=args.quick, repeat=args.repeat,
                 target_dir=args.target_dir)
    print(render(result))
    out = args.json or os.path.join(HERE, "results", f"install-{args.size_mb}mb.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
    return 1 if any(r["error"] for r in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
