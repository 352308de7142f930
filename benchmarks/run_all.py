"""Run every benchmark of bincache on one synthetic tree; print the tables, write JSON.

    python benchmarks/run_all.py [--size-mb N] [--quick] [--seed S] [--work-dir DIR] [--repeat N]

Generates (or reuses) a tree of ``--size-mb`` MiB (default 1024; ``--quick``: 100) under
``--work-dir`` (default ``/tmp/bincache-bench``), keyed by generator version, seed and size, then
runs ``bench_create.py`` and, when they exist, ``bench_install.py`` and ``bench_oci.py``, which
are called as

    python benchmarks/bench_X.py --root TREE --mirror MIRROR --work-dir DIR --json OUT [--quick]

where MIRROR is the directory build cache that the create benchmark made at bincache's default
level from the same tree. Each writes ``benchmarks/results/<name>-<size>mb.json``. Exit status 1
only when a benchmark crashed; no time is ever a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_create  # noqa: E402
import gen_tree  # noqa: E402

RESULTS = os.path.join(HERE, "results")
OTHER_BENCHMARKS = ("bench_install", "bench_oci", "bench_dag")
MARKER = ".bincache-bench-tree.json"


def ensure_tree(work: str, size_mb: int, seed: int) -> str:
    """The cached tree for (generator version, seed, size); made when missing or incomplete."""
    root = os.path.join(work, f"tree-v{gen_tree.GENERATOR_VERSION}-s{seed}-{size_mb}mb")
    marker = os.path.join(root, MARKER)
    if os.path.exists(marker):
        print(f"tree: reusing {root}")
        return root
    if os.path.exists(root):
        shutil.rmtree(root)  # an interrupted generation: its prefixes cannot be trusted
    t0 = time.perf_counter()
    prefixes = gen_tree.generate(root, size_mb, seed)
    # Written last: its presence means the tree is complete.
    with open(marker, "w") as f:
        json.dump({"seed": seed, "size_mb": size_mb, "prefixes": prefixes,
                   "generator_version": gen_tree.GENERATOR_VERSION}, f, indent=1)
    print(f"tree: generated {root} in {time.perf_counter() - t0:.1f} s")
    return root


def run_other(name: str, root: str, mirror: str, work: str, out_json: str, quick: bool) -> bool:
    script = os.path.join(HERE, f"{name}.py")
    cmd = [sys.executable, script, "--root", root, "--mirror", mirror,
           "--work-dir", os.path.join(work, name), "--json", out_json]
    if quick:
        cmd.append("--quick")
    if name == "bench_install" and os.path.isdir("/dev/shm"):
        # Extraction speed on the VM disks here swings 2-4x with discards from earlier deletes
        # (tar -xzf itself: 0.8 s to 3.6 s for the same 100 MB): memory gives a stable figure.
        free = shutil.disk_usage("/dev/shm").free
        if free > 4 * os.path.getsize(root) + 4 * _tree_bytes(root):
            cmd += ["--target-dir", "/dev/shm/bcb"]
    print(f"\n== {name} ==", flush=True)
    env = bench_create.child_env()
    try:
        proc = subprocess.run(cmd, env=env)
    finally:
        shutil.rmtree("/dev/shm/bcb", ignore_errors=True)
    if proc.returncode != 0:
        print(f"error: {name} exited with {proc.returncode}", file=sys.stderr)
        return False
    return True


def _tree_bytes(root: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run the benchmarks of bincache")
    ap.add_argument("--size-mb", type=int, default=None, help="tree size in MiB (default 1024)")
    ap.add_argument("--quick", action="store_true",
                    help="about 100 MiB and no best-ratio run: for CI, under a minute")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", default="/tmp/bincache-bench")
    ap.add_argument("--repeat", type=int, default=1, help="runs per variant; the best counts")
    ap.add_argument("--only", choices=["create", *OTHER_BENCHMARKS], action="append",
                    help="run only these benchmarks")
    args = ap.parse_args(argv)
    size = args.size_mb or (100 if args.quick else 1024)
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    root = ensure_tree(work, size, args.seed)
    mirror = os.path.join(work, f"mirror-{os.path.basename(root)}")
    ok = True

    if not args.only or "create" in args.only:
        print("\n== bench_create ==", flush=True)
        skip = ("bincache_best",) if args.quick else ()
        out_dir = os.path.join(work, "create")
        if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 3 * _tree_bytes(root):
            # Every variant writes its output to memory: the figures measure the packers, not
            # the VM disk (whose write speed here swings 2-4x between runs).
            out_dir = "/dev/shm/bcb-create"
        print(f"outputs of every variant go to {out_dir}")
        try:
            result = bench_create.run(root, out_dir, keep_mirror=mirror, skip=skip, repeat=args.repeat)
        finally:
            if out_dir.startswith("/dev/shm/"):
                shutil.rmtree(out_dir, ignore_errors=True)
        result["size_mb"] = size
        print(bench_create.render(result))
        out = os.path.join(RESULTS, f"create-{size}mb.json")
        with open(out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {out}")
        if any(r["error"] for r in result["rows"]):
            ok = False

    for name in OTHER_BENCHMARKS:
        if args.only and name not in args.only:
            continue
        if not os.path.exists(os.path.join(HERE, f"{name}.py")):
            continue
        if not os.path.isdir(mirror):
            print(f"skipping {name}: no build cache at {mirror} (run the create benchmark first)")
            continue
        ok &= run_other(name, root, mirror, work, os.path.join(RESULTS, f"{name[6:]}-{size}mb.json"),
                        args.quick)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
