"""N tiny packages for the scale benchmark: an install tree and a directory mirror holding them.

    python benchmarks/scale_data.py DIR --n 10000

makes (and reuses, keyed by GENERATOR and N) under DIR:

    tree/     N registered prefixes pkg00000 ... (one text file holding the prefix each), every
              50th package the head of a 4-package chain of dependencies; Spack's database
              written once, as a tree of N holds it
    mirror/   a layout v3 directory mirror with all N packages (tarball, spec blob, manifest;
              unsigned) and an index written through bincache.index.write_index
    extra/    one more prefix (its own small tree, extra/tree), not in the mirror: the "one new
              package"; extra/mirror holds it alone (a mirror to install it from)

Packages are packed by the real writer (bincache.create.pack: the same tarball `create` makes),
in worker processes, and their files written with the mirror's own record and manifest
functions, without the per-file fsync and existence checks of a push: 50,000 packages take
about a minute on two cores, not the half hour a `bincache create` of them would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GENERATOR = 2
ARCH = {"platform": "linux", "platform_os": "debian12", "target": "x86_64"}
CHAIN_EVERY = 50  # packages i % 50 in 47..49 each depend on the one before: chains of 4
_BATCH = 500


def package_name(i: int) -> str:
    return f"pkg{i:05d}"


def _nodes(n: int) -> list[dict]:
    """Every node, dependencies before dependents (make_node's hash covers the deps)."""
    from bincache.spec import Spec, make_node

    nodes: list[dict] = []
    specs: list[Spec] = []
    for i in range(n):
        deps = [specs[i - 1]] if _depends(i) else []
        node = make_node(package_name(i), "1.0", deps, arch=ARCH)
        nodes.append(node)
        specs.append(Spec.from_node(node))
    return nodes


def _depends(i: int) -> bool:
    return i % CHAIN_EVERY >= CHAIN_EVERY - 3


def _chain(i: int) -> list[int]:
    """Package i and the dependencies its spec file holds, root first."""
    out = [i]
    while _depends(out[-1]):
        out.append(out[-1] - 1)
    return out


class _Tree:
    """What packing asks of an install tree, for a prefix whose dependencies are known here
    (so no worker parses the tree of N)."""

    def __init__(self, root: str, prefixes: dict[str, str]):
        self.root, self.prefixes = root, prefixes

    def dependency_prefixes(self, inst) -> dict[str, str]:
        return {n.hash: self.prefixes[n.hash] for n in inst.nodes}

    def is_external_dependency(self, inst, h: str) -> bool:
        return False


def _write_prefix(root: str, nodes: list[dict], i: int) -> str:
    from bincache.spec import Spec, specfile_dict

    node = nodes[i]
    prefix = os.path.join(root, "linux-x86_64", f"{node['name']}-1.0-{node['hash']}")
    share = os.path.join(prefix, "share", node["name"])
    os.makedirs(share, exist_ok=True)
    os.makedirs(os.path.join(prefix, ".spack"), exist_ok=True)
    with open(os.path.join(share, "info.txt"), "w") as f:
        f.write(f"{node['name']} installed in {prefix}\n")
    chain = [Spec.from_node(nodes[j]) for j in _chain(i)]
    with open(os.path.join(prefix, ".spack", "spec.json"), "w") as f:
        json.dump(specfile_dict(chain), f)
    return prefix


def _pack_batch(args: tuple[str, str, list[tuple[dict, str]]]) -> list[tuple[bytes, str, int]]:
    """Pack prefixes into the mirror's blob store: (manifest bytes, manifest path, size) each.

    A job is (node, prefix) pairs of a package and its dependencies, root first.
    """
    tree_root, mirror, jobs = args
    import hashlib

    from bincache.create import pack
    from bincache.mirror.layout_v3 import (
        MT_SPEC_PREFIX,
        MT_TARBALL,
        BlobRecord,
        LayoutV3Cache,
        gzip_bytes,
        manifest_bytes,
        v5_specfile_bytes,
    )
    from bincache.spec import Spec
    from bincache.tree import InstalledSpec

    out = []
    os.makedirs(mirror, exist_ok=True)
    tmp = os.path.join(mirror, f".gen-{os.getpid()}.tar.gz")
    for chain in jobs:
        specs = [Spec.from_node(node) for node, _ in chain]
        tree = _Tree(tree_root, {s.hash: p for s, (_, p) in zip(specs, chain)})
        inst = InstalledSpec(specs[0], chain[0][1], tuple(specs))
        packed = pack(inst, tree, tmp, threads=0)
        tar_rec = BlobRecord(packed.result.compressed_size, MT_TARBALL, "gzip", packed.result.digest)
        _place(mirror, tar_rec.path, src=tmp)
        spec_data, version = v5_specfile_bytes(packed.specfile)
        gz = gzip_bytes(spec_data)
        spec_rec = BlobRecord(len(gz), f"{MT_SPEC_PREFIX}{version}+json", "gzip",
                              hashlib.sha256(gz).hexdigest())
        _place(mirror, spec_rec.path, data=gz)
        s = inst.spec
        rel = LayoutV3Cache.manifest_path(s.name, s.version, s.hash)
        out.append((manifest_bytes([tar_rec, spec_rec]), rel, tar_rec.content_length))
    return out


def _place(mirror: str, rel: str, *, src: str | None = None, data: bytes | None = None) -> None:
    path = os.path.join(mirror, *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if src is not None:
        os.replace(src, path)
    else:
        with open(path, "wb") as f:
            f.write(data or b"")


def _write_db(root: str, nodes: list[dict], prefixes: list[str]) -> None:
    """Spack's database of the tree, in one write (what N registrations would leave)."""
    from bincache.spec import DB_VERSION

    installs = {}
    ref_counts: dict[str, int] = {}
    for node in nodes:
        for d in node.get("dependencies", []):
            ref_counts[d["hash"]] = ref_counts.get(d["hash"], 0) + 1
    for node, prefix in zip(nodes, prefixes):
        installs[node["hash"]] = {
            "spec": {k: v for k, v in node.items() if k != "hash"},
            "path": prefix, "installed": True, "ref_count": ref_counts.get(node["hash"], 0),
            "explicit": True, "installation_time": 0,
        }
    os.makedirs(os.path.join(root, ".spack-db"), exist_ok=True)
    with open(os.path.join(root, ".spack-db", "index.json"), "w") as f:
        json.dump({"database": {"version": DB_VERSION, "installs": installs}}, f,
                  separators=(",", ":"))


def generate(base: str, n: int, jobs: int | None = None, log=print) -> dict[str, str]:
    """The tree, mirror and extra package for N (made once, then reused)."""
    where = os.path.join(base, f"scale-v{GENERATOR}-{n}")
    paths = {k: os.path.join(where, k) for k in ("tree", "mirror")}
    paths["extra"] = os.path.join(where, "extra", "tree")
    paths["extra_mirror"] = os.path.join(where, "extra", "mirror")
    if os.path.exists(os.path.join(where, "done")):
        return paths
    t0 = time.perf_counter()
    shutil.rmtree(where, ignore_errors=True)
    nodes = _nodes(n)
    prefixes = [_write_prefix(paths["tree"], nodes, i) for i in range(n)]
    _write_db(paths["tree"], nodes, prefixes)
    # The extra package lives in its own tree (no dependencies): the rows that need one new
    # package in the mirror push it from there.
    from bincache.spec import make_node

    extra = [make_node("pkgextra", "1.0", [], arch=ARCH)]
    extra_prefix = _write_prefix(paths["extra"], extra, 0)
    _write_db(paths["extra"], extra, [extra_prefix])
    chains = [[(nodes[j], prefixes[j]) for j in _chain(i)] for i in range(n)]
    batches = [(paths["tree"], paths["mirror"], chains[s:s + _BATCH]) for s in range(0, n, _BATCH)]
    manifests: list[tuple[bytes, str, int]] = []
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        for part in pool.map(_pack_batch, batches):
            manifests.extend(part)
    _write_mirror(paths["mirror"], nodes, manifests, _chain)
    extra_manifests = _pack_batch((paths["extra"], paths["extra_mirror"],
                                   [[(extra[0], extra_prefix)]]))
    _write_mirror(paths["extra_mirror"], extra, extra_manifests, lambda i: [i])
    with open(os.path.join(where, "done"), "w") as f:
        f.write(f"{n} packages in {time.perf_counter() - t0:.1f} s\n")
    log(f"generated {n} packages in {where} ({time.perf_counter() - t0:.1f} s)")
    return paths


def _write_mirror(mirror: str, nodes: list[dict], manifests, chain) -> None:
    """The manifests (each package's commit point), layout.json, then the index."""
    from bincache.index import Index, write_index
    from bincache.mirror import MirrorRef, open_cache
    from bincache.spec import Spec

    for body, rel, _size in manifests:
        _place(mirror, rel, data=body)
    with open(os.path.join(mirror, "v3", "layout.json"), "w") as f:
        f.write("{}")
    specs = [Spec.from_node(nd) for nd in nodes]
    index = Index()
    for i, (_body, _rel, size) in enumerate(manifests):
        index.add_specfile([specs[j] for j in chain(i)], size)
    write_index(open_cache(MirrorRef(mirror), push=True), index)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("-j", "--jobs", type=int)
    args = ap.parse_args()
    print(json.dumps(generate(args.dir, args.n, args.jobs), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
