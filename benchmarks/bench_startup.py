"""Benchmark: what a command costs before it does anything (interpreter start and imports).

Runs each command ``--repeat`` times (default 7) in a fresh interpreter, with an empty HOME
(no configuration file) and the median of: CPU seconds (user + system), wall seconds, and the
milliseconds ``-X importtime`` gives bincache's own imports; a bare ``python3 -c pass`` is the
floor. The commands: ``--version``, ``list`` of a one-package mirror, ``install`` of that
package into a new root, ``create`` of it into a new mirror (made once under --work-dir).

    python benchmarks/bench_startup.py [--repeat 7] [--work-dir DIR] [--json OUT]

Never asserts on time: prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


def _run(argv: list[str], env: dict) -> tuple[float, float, float]:
    """(cpu s, wall s, ms of bincache imports) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True,
                       text=True, env=env, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {p.stderr.strip().splitlines()[-1:]}")
    ms = 0
    for line in p.stderr.splitlines():
        parts = line.split("|")
        # Top-level entries only (one space of indent): their cumulative time holds the rest.
        if line.startswith("import time:") and len(parts) == 3 and parts[2].startswith(" ") \
                and not parts[2].startswith("  ") and "bincache" in parts[2]:
            ms += int(parts[1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, ms / 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--work-dir", default="/tmp/bincache-bench/startup")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    work = os.path.abspath(args.work_dir)
    home, root, mirror = (os.path.join(work, x) for x in ("home", "root", "mirror"))
    os.makedirs(home, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=REPO, HOME=home)
    env.pop("BINCACHE_CONFIG_SCOPES", None)
    if not os.path.isdir(mirror):
        from bincache.tree import register_prefix

        prefix = os.path.join(root, "tiny-1.0")
        os.makedirs(prefix, exist_ok=True)
        with open(os.path.join(prefix, "README"), "w") as f:
            f.write("tiny\n")
        register_prefix(prefix, "tiny", "1.0", root=root)
        subprocess.run([sys.executable, "-m", "bincache", "--root", root, "create", "--unsigned",
                        mirror], env=env, check=True, capture_output=True)
    new_root, new_mirror = os.path.join(work, "new-root"), os.path.join(work, "new-mirror")
    commands = {
        "python3 -c pass": ["-c", "pass"],
        "--version": ["-m", "bincache", "--version"],
        "list MIRROR": ["-m", "bincache", "list", mirror],
        "install tiny": ["-m", "bincache", "--root", new_root, "install", "-q", "--unsigned",
                         "--mirror", mirror, "tiny"],
        "create MIRROR tiny": ["-m", "bincache", "--root", root, "create", "-q", "--unsigned",
                               new_mirror, "tiny"],
    }
    rows = []
    for name, cmd in commands.items():
        runs = []
        for _ in range(max(1, args.repeat)):
            shutil.rmtree(new_root, ignore_errors=True)
            shutil.rmtree(new_mirror, ignore_errors=True)
            runs.append(_run(cmd, env))
        cpu, wall, ms = (statistics.median(r[i] for r in runs) for i in range(3))
        rows.append({"command": name, "cpu_s": cpu, "wall_s": wall, "bincache_import_ms": ms})
    shutil.rmtree(new_root, ignore_errors=True)
    shutil.rmtree(new_mirror, ignore_errors=True)
    print(f"start-up, median of {args.repeat}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':22s} {'cpu s':>7s} {'wall s':>7s} {'bincache imports ms':>20s}")
    for r in rows:
        print(f"{r['command']:22s} {r['cpu_s']:7.3f} {r['wall_s']:7.3f} {r['bincache_import_ms']:20.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "startup", "repeat": args.repeat,
                       "load_average": os.getloadavg(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
