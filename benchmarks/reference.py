"""What a pure-Python packer does: the baseline bincache's native core is measured against.

Per prefix, the way Python tools (and Spack before its native work) write a build cache tarball:

1. a prefix scan: read each file and ``bytes.find`` every old prefix (the package's and its
   dependencies'), to know which files need relocation;
2. ``tarfile`` in ``w|`` mode over ``gzip.GzipFile(compresslevel=6)`` (that is ``w|gz`` at level 6;
   Python 3.11's ``w|gz`` itself is fixed at level 9);
3. a second pass of ``hashlib.sha256`` over the compressed file, for the blob digest.

CLI: ``python benchmarks/reference.py --root ROOT OUTDIR`` writes ``OUTDIR/<prefix name>.tar.gz``
per package and prints a JSON summary (bytes in, bytes out, files with hits).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import tarfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Prefix:
    """An installed prefix and the old prefixes (its own first) that relocation must find."""

    path: str
    prefixes: tuple[str, ...]


def discover(root: str) -> list[Prefix]:
    """Prefixes under ``root`` found by their ``.spack/spec.json``, with dependency prefixes.

    Kept independent of ``bincache.spec`` so that the baseline needs nothing from bincache.
    """
    root = os.path.abspath(root)
    by_hash: dict[str, str] = {}
    nodes_of: dict[str, list[dict]] = {}
    for dirpath, dirnames, _ in os.walk(root):
        if ".spack" in dirnames and os.path.isfile(os.path.join(dirpath, ".spack", "spec.json")):
            with open(os.path.join(dirpath, ".spack", "spec.json")) as f:
                nodes = json.load(f)["spec"]["nodes"]
            by_hash[nodes[0]["hash"]] = dirpath
            nodes_of[dirpath] = nodes
            dirnames[:] = []  # a prefix does not hold other prefixes
        elif dirpath != root:
            dirnames.sort()
    out = []
    for path in sorted(nodes_of):
        deps = [by_hash[n["hash"]] for n in nodes_of[path][1:] if n["hash"] in by_hash]
        out.append(Prefix(path, tuple([path] + deps)))
    return out


def scan_prefix(prefix: str, prefixes: list[str]) -> dict[str, list[tuple[int, int]]]:
    """Relative path -> [(prefix index, offset)] of every file that holds an old prefix."""
    needles = [p.encode() for p in prefixes]
    hits: dict[str, list[tuple[int, int]]] = {}
    for dirpath, dirnames, filenames in os.walk(prefix):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            found = []
            for i, needle in enumerate(needles):
                at = data.find(needle)
                while at != -1:
                    found.append((i, at))
                    at = data.find(needle, at + len(needle))
            if found:
                hits[os.path.relpath(path, prefix)] = sorted(found, key=lambda h: h[1])
    return hits


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_prefix(pkg: Prefix, out_path: str) -> dict:
    """Scan, tar+gzip (level 6) and hash one prefix; returns sizes, digest and files with hits."""
    hits = scan_prefix(pkg.path, list(pkg.prefixes))
    with open(out_path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=6, mtime=0, fileobj=raw) as gz:
            with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                tar.add(pkg.path, arcname=pkg.path.lstrip("/"), filter=_normalize)
    sha = hashlib.sha256()
    with open(out_path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return {"prefix": pkg.path, "compressed": os.path.getsize(out_path),
            "sha256": sha.hexdigest(), "files_with_hits": len(hits)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pure-Python reference packer (benchmark baseline)")
    ap.add_argument("--root", required=True, help="install tree")
    ap.add_argument("outdir", help="directory for the tarballs")
    args = ap.parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)
    results = [pack_prefix(p, os.path.join(args.outdir, os.path.basename(p.path) + ".tar.gz"))
               for p in discover(args.root)]
    json.dump({"packages": len(results), "compressed": sum(r["compressed"] for r in results),
               "files_with_hits": sum(r["files_with_hits"] for r in results)}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
