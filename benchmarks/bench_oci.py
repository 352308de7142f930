"""Push a synthetic install tree to a local OCI registry, next to a directory mirror push.

    python benchmarks/bench_oci.py --root TREE [--mirror M] [--work-dir DIR] [--json OUT] [--quick]

Each variant runs the real command line (`bincache create`, `update-index`, `install`) in a
subprocess, against Debian's docker-registry on 127.0.0.1 (plain http, a fresh registry per
push so that nothing is skipped). MB/s is the tree's input bytes over the wall time, as in
bench_create. Prints a table and writes JSON; it never judges a time.
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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.registry import start_registry  # noqa: E402


@dataclass
class Row:
    variant: str
    seconds: float
    input_bytes: int
    note: str = ""
    error: str = ""

    @property
    def mb_s(self) -> float:
        return self.input_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def tree_bytes(root: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


def bincache(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bincache", *args], capture_output=True,
                          text=True, env=env)
    return time.perf_counter() - t0, proc


def measure(rows: list[Row], variant: str, input_bytes: int, *args: str, note: str = "") -> None:
    seconds, proc = bincache(*args)
    error = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["failed"])[-1]
    rows.append(Row(variant, seconds, input_bytes, note, error))
    print(f"  {variant:44s} {seconds:7.2f} s  {input_bytes / 1e6 / seconds:7.1f} MB/s"
          + (f"  ERROR {error}" if error else ""), flush=True)


def run(root: str, work: str, quick: bool) -> dict:
    input_bytes = tree_bytes(root)
    rows: list[Row] = []
    registries = []
    try:
        print(f"tree {root}: {input_bytes / 1e6:.0f} MB")
        measure(rows, "directory mirror, -j 1", input_bytes, "--root", root, "create",
                "--unsigned", "-j", "1", os.path.join(work, "dir-j1"))
        measure(rows, "directory mirror, -j 4", input_bytes, "--root", root, "create",
                "--unsigned", "-j", "4", os.path.join(work, "dir-j4"))
        for jobs in (1, 4):
            reg = start_registry(Path(work) / f"registry-j{jobs}", "http")
            registries.append(reg)
            url = f"{reg.url}/bench/cache"
            measure(rows, f"OCI registry (loopback), -j {jobs}", input_bytes, "--root", root,
                    "create", "--unsigned", "-j", str(jobs), url,
                    note="fresh registry: every blob uploaded")
        url = f"{registries[-1].url}/bench/cache"
        measure(rows, "OCI again, all present (-j 4)", input_bytes, "--root", root, "create",
                "--unsigned", "-j", "4", url, note="HEAD per package, nothing uploaded")
        measure(rows, "OCI update-index", input_bytes, "update-index", url,
                note="configs of every tag fetched")
        if not quick:
            # Strings embedded in the tree's binaries cannot grow: install to a root no longer
            # than the tree's (a temporary directory under /tmp is short).
            target = tempfile.mkdtemp(prefix="boi", dir="/tmp")
            os.rmdir(target)
            names = sorted({p.name.rsplit("-", 2)[0] for p in Path(root).glob("*/*")
                            if (p / ".spack" / "spec.json").exists()})
            measure(rows, "OCI install (all packages, -j 2)", input_bytes, "--root", target,
                    "install", "--mirror", url, "--unsigned", "-j", "2", *names,
                    note="download, verify, extract, relocate")
            shutil.rmtree(target, ignore_errors=True)
    finally:
        for reg in registries:
            reg.stop()
    return {
        "benchmark": "oci",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg": os.getloadavg()},
        "tree": {"root": root, "bytes": input_bytes},
        "rows": [dict(asdict(r), mb_s=r.mb_s) for r in rows],
    }


def render(result: dict) -> str:
    lines = [f"{'variant':44s} {'seconds':>8s} {'MB/s':>8s}  note"]
    for r in result["rows"]:
        lines.append(f"{r['variant']:44s} {r['seconds']:8.2f} {r['mb_s']:8.1f}  "
                     f"{r['error'] or r['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="OCI registry push benchmark")
    ap.add_argument("--root", required=True, help="install tree (see gen_tree.py)")
    ap.add_argument("--mirror", default=None, help="unused: the directory push is measured here")
    ap.add_argument("--work-dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument("--quick", action="store_true", help="skip the install measurement")
    args = ap.parse_args(argv)
    if shutil.which("docker-registry") is None:
        print("docker-registry is not installed: skipping the OCI benchmark")
        return 0
    work = args.work_dir or tempfile.mkdtemp(prefix="bincache-bench-oci-")
    if os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(work)
    try:
        result = run(os.path.abspath(args.root), work, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(render(result))
    out = args.json or str(HERE / "results" / f"oci-{result['tree']['bytes'] >> 20}mb.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")
    return 1 if any(r["error"] for r in result["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
