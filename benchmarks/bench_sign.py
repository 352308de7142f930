"""Benchmark: what signing and verification cost, per manifest and on `create`.

Measures, in a throwaway GnuPG home with an Ed25519 key (no passphrase):

* clearsign of one small manifest: one ``gpg --clearsign`` process per signature, its agent
  holding the key (the secret key never leaves GnuPG), serial and from 2 threads;
* verification (one ``gpg --decrypt`` each): serial, and ``verify_manifests`` over a thread pool;
* throughput for 1,000 small manifests, signing and verifying;
* the time spent inside signing (``Signer()`` and each ``clearsign``) during an in-process
  signed create, over the rest of it: the overhead attributable to signing, immune to the
  file-system noise of a shared machine;
* ``bincache create`` of 1,000 small packages (a generated install tree, 3 small files each)
  into a directory mirror, ``--unsigned`` against ``--signed``, each a child process as a user
  runs it, alternating, ``--repeat`` times: wall time and CPU time (the child and what it waited
  for), best and median; and the same on another tree given with ``--root`` (the demo stack,
  gen_tree's tree). CPU time is the steadier figure on a shared machine.

Prints a table and writes JSON; never asserts on time. The machine may be shared: the load
average is printed. ``--primitives-only`` skips the create runs (minutes on a loaded machine).

    python benchmarks/bench_sign.py [--packages 1000] [--repeat 3] [--root TREE] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from bincache import signing as sign  # noqa: E402

MANIFEST = (b'{\n"version":3,\n"data":[\n{\n"contentLength":%d,\n'
            b'"mediaType":"application/vnd.spack.install.v2.tar+gzip",\n"compression":"gzip",\n'
            b'"checksumAlgorithm":"sha256",\n"checksum":"%064x"\n},\n{\n"contentLength":296,\n'
            b'"mediaType":"application/vnd.spack.spec.v5+json",\n"compression":"gzip",\n'
            b'"checksumAlgorithm":"sha256",\n"checksum":"%064x"\n}\n]\n}')


def manifest(i: int) -> bytes:
    return MANIFEST % (1000 + i, i * 7919, i * 104729)


def timed(fn, n: int) -> float:
    """Seconds for n calls of fn(i)."""
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return time.perf_counter() - t0


def bench_primitives(home: str, n: int) -> dict:
    out: dict = {}
    t0 = time.perf_counter()
    signer = sign.Signer(home=home)  # lists the keys and signs once (agent started, warm)
    out["init_ms"] = (time.perf_counter() - t0) * 1e3
    out["sign_serial_ms"] = timed(lambda i: signer.clearsign(manifest(i)), n) / n * 1e3
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        docs = list(pool.map(lambda i: signer.clearsign(manifest(i)), range(n)))
    out["sign_2_threads_ms"] = (time.perf_counter() - t0) / n * 1e3
    k = max(20, n // 10)
    out["verify_serial_ms"] = timed(lambda i: sign.verify_clearsigned(docs[i], home), k) / k * 1e3
    for jobs in (2, 4):
        t0 = time.perf_counter()
        sign.verify_manifests(docs, True, home, jobs=jobs)
        out[f"verify_{jobs}_threads_ms"] = (time.perf_counter() - t0) / n * 1e3
    out["sign_1000_seconds"] = min(out["sign_serial_ms"], out["sign_2_threads_ms"])
    out["verify_1000_seconds"] = min(out["verify_2_threads_ms"], out["verify_4_threads_ms"])
    return out


def make_small_tree(root: str, count: int) -> None:
    """``count`` tiny registered prefixes: a script naming its prefix, a header, a data file."""
    from bincache.tree import register_prefix

    base = os.path.join(root, "linux-x86_64")
    for i in range(count):
        prefix = os.path.join(base, f"pkg{i:04d}-1.0")
        os.makedirs(os.path.join(prefix, "bin"))
        os.makedirs(os.path.join(prefix, "include"))
        with open(os.path.join(prefix, "bin", f"pkg{i}"), "w") as f:
            f.write(f"#!/bin/sh\nexec {prefix}/bin/real \"$@\"\n")
        os.chmod(os.path.join(prefix, "bin", f"pkg{i}"), 0o755)
        with open(os.path.join(prefix, "include", f"pkg{i}.h"), "w") as f:
            f.write(f"#define PKG{i}_PREFIX \"{prefix}\"\nint pkg{i}(void);\n")
        with open(os.path.join(prefix, "data.bin"), "wb") as f:
            f.write(os.urandom(512) + prefix.encode() + b"\0" * 64)
        register_prefix(prefix, f"pkg{i:04d}", "1.0", root=root)


def _run_create(root: str, mirror: str, signed: bool, jobs: int, home: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and the processes it waited for)."""
    cmd = [sys.executable, "-m", "bincache", "--root", root, "create", "-j", str(jobs),
           "--signed" if signed else "--unsigned", mirror]
    # Bytecode cached as in an installed bincache (this checkout's environment may disable it).
    env = dict(os.environ, PYTHONPATH=REPO, BINCACHE_GNUPGHOME=home,
               PYTHONPYCACHEPREFIX=os.path.join(os.path.dirname(mirror), "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err}")
    return wall, usage.ru_utime + usage.ru_stime


def bench_create(root: str, work: str, repeat: int, jobs: int, home: str) -> dict:
    """``bincache create`` (a child process each, as a user runs it), unsigned and signed,
    alternating; wall time and CPU time."""
    runs: dict[str, list[tuple[float, float]]] = {"unsigned": [], "signed": []}
    for variant in ("unsigned", "signed"):  # warm-up: bytecode, page cache, gpg-agent
        mirror = os.path.join(work, f"mirror-warmup-{variant}")
        _run_create(root, mirror, variant == "signed", jobs, home)
        shutil.rmtree(mirror)
    for r in range(repeat):
        for variant in (("unsigned", "signed") if r % 2 == 0 else ("signed", "unsigned")):
            mirror = os.path.join(work, f"mirror-{variant}-{r}")
            runs[variant].append(_run_create(root, mirror, variant == "signed", jobs, home))
            if variant == "signed":
                spec_dir = os.path.join(mirror, "v3", "manifests", "spec")
                some = next(os.path.join(d, f) for d, _, fs in os.walk(spec_dir) for f in fs)
                with open(some, "rb") as f:
                    assert sign.is_clearsigned(f.read()), "signed create wrote an unsigned manifest"
            shutil.rmtree(mirror)
    out: dict = {"jobs": jobs, "repeat": repeat, "root": root}
    for metric, idx in (("wall", 0), ("cpu", 1)):
        for variant in ("unsigned", "signed"):
            values = [run[idx] for run in runs[variant]]
            out[f"{variant}_{metric}_best"] = min(values)
            out[f"{variant}_{metric}_median"] = statistics.median(values)
        out[f"{metric}_overhead_percent_best"] = (out[f"signed_{metric}_best"] / out[f"unsigned_{metric}_best"] - 1) * 100
        out[f"{metric}_overhead_percent_median"] = (
            out[f"signed_{metric}_median"] / out[f"unsigned_{metric}_median"] - 1) * 100
    return out


def bench_share(root: str, work: str, repeat: int, jobs: int) -> dict:
    """Time spent inside signing (``Signer()`` and every ``clearsign``) during an in-process
    signed create, over the rest of that create: the overhead signing adds, measured directly,
    so the file-system noise of a shared machine (fsync, mkdir) does not swamp it."""
    from bincache import api

    shares, spent_all, totals = [], [], []
    orig_init, orig_clearsign = sign.Signer.__init__, sign.Signer.clearsign
    lock = threading.Lock()
    for r in range(repeat):
        spent = [0.0]

        def init(self, *a, spent=spent, **k):
            t0 = time.perf_counter()
            orig_init(self, *a, **k)
            with lock:
                spent[0] += time.perf_counter() - t0

        def clearsign(self, data, spent=spent):
            t0 = time.perf_counter()
            out = orig_clearsign(self, data)
            with lock:
                spent[0] += time.perf_counter() - t0
            return out

        sign.Signer.__init__, sign.Signer.clearsign = init, clearsign
        mirror = os.path.join(work, f"mirror-share-{r}")
        try:
            t0 = time.perf_counter()
            api.push(mirror, root=root, jobs=jobs, signed=True)
            total = time.perf_counter() - t0
        finally:
            sign.Signer.__init__, sign.Signer.clearsign = orig_init, orig_clearsign
            shutil.rmtree(mirror, ignore_errors=True)
        # With -j N the signing time of N threads overlaps; per-thread sums overstate it.
        shares.append(spent[0] / max(total - spent[0], 1e-9) * 100)
        spent_all.append(spent[0])
        totals.append(total)
    return {"root": root, "jobs": jobs, "repeat": repeat, "signing_seconds": statistics.median(spent_all),
            "create_seconds": statistics.median(totals), "overhead_percent": statistics.median(shares)}


class _Done(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packages", type=int, default=1000)
    ap.add_argument("--manifests", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--root", help="also measure create on this install tree")
    ap.add_argument("--demo", action="store_true", help="also measure create on the demo stack (gcc)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--quick", action="store_true", help="100 packages, 200 manifests, 1 round")
    ap.add_argument("--primitives-only", action="store_true", help="sign/verify figures only")
    ap.add_argument("--mirror", help=argparse.SUPPRESS)  # run_all.py's contract; unused
    args = ap.parse_args(argv)
    if args.quick:
        args.packages, args.manifests, args.repeat = 100, 200, 1

    work = tempfile.mkdtemp(prefix="bench-sign-", dir=args.work_dir)
    home = tempfile.mkdtemp(prefix="bs-", dir="/tmp")  # short: gpg-agent's socket path
    os.environ["BINCACHE_GNUPGHOME"] = home
    results: dict = {"benchmark": "sign", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "loadavg_before": os.getloadavg()}
    try:
        key = sign.create_key("Bench", "bench@example.com", home=home)
        results["key"] = key.algorithm
        results["primitives"] = bench_primitives(home, args.manifests)
        if args.primitives_only:
            raise _Done
        tree = os.path.join(work, "tree")
        t0 = time.perf_counter()
        make_small_tree(tree, args.packages)
        results["tree_seconds"] = time.perf_counter() - t0
        results["share_small"] = bench_share(tree, work, args.repeat, args.jobs)
        results["share_small"]["label"] = f"{args.packages} small packages"
        results["create_small"] = bench_create(tree, work, args.repeat, args.jobs, home)
        results["create_small"]["label"] = f"{args.packages} small packages"
        results["create_small"]["packages"] = args.packages
        if args.jobs == 1:
            results["create_small_j2"] = bench_create(tree, work, args.repeat, 2, home)
            results["create_small_j2"]["label"] = f"{args.packages} small packages"
            results["create_small_j2"]["packages"] = args.packages
        if args.demo:
            from bincache.demo import build_stack

            demo = build_stack(os.path.join(work, "demo"))
            results["share_demo"] = bench_share(demo.root, work, max(args.repeat, 5), args.jobs)
            results["share_demo"]["label"] = "the demo stack (3 packages)"
            results["create_demo"] = bench_create(demo.root, work, max(args.repeat, 5), args.jobs, home)
            results["create_demo"]["label"] = "the demo stack (3 packages)"
            results["create_demo"]["packages"] = 3
        if args.root:
            results["create_root"] = bench_create(args.root, work, args.repeat, args.jobs, home)
            results["create_root"]["label"] = args.root
    except _Done:
        pass
    finally:
        sign.stop_agent(home)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_after"] = os.getloadavg()

    p = results["primitives"]
    print(f"signing key: {results['key']}; load average {results['loadavg_before'][0]:.1f} -> "
          f"{results['loadavg_after'][0]:.1f} (2 cores, shared)")
    print(f"{'operation':56s} {'ms/manifest':>12s} {'per second':>11s}")
    rows = [("clearsign, one gpg process each, serial", p["sign_serial_ms"]),
            ("clearsign, one gpg process each, 2 threads", p["sign_2_threads_ms"]),
            ("verify, one gpg process, serial", p["verify_serial_ms"]),
            ("verify, verify_manifests 2 threads", p["verify_2_threads_ms"]),
            ("verify, verify_manifests 4 threads", p["verify_4_threads_ms"])]
    for label, ms in rows:
        print(f"{label:56s} {ms:12.2f} {1000 / ms:11.0f}")
    print(f"Signer() setup: {p['init_ms']:.0f} ms")
    print(f"{args.manifests} manifests: sign {p['sign_1000_seconds'] * args.manifests / 1e3:.2f} s, "
          f"verify {p['verify_1000_seconds'] * args.manifests / 1e3:.2f} s")
    for key_ in ("share_small", "share_demo"):
        c = results.get(key_)
        if c:
            print(f"signing inside an in-process create of {c['label']} (-j {c['jobs']}, median of {c['repeat']}): "
                  f"{c['signing_seconds']:.3f} s of {c['create_seconds']:.2f} s: +{c['overhead_percent']:.1f}%")
    for key_ in ("create_small", "create_small_j2", "create_demo", "create_root"):
        c = results.get(key_)
        if not c:
            continue
        print(f"create {c['label']} (-j {c['jobs']}, {c['repeat']} runs each, alternating):")
        for metric in ("wall", "cpu"):
            # The budget (issue 12) is a few ms a package: one gpg --clearsign, the key in its agent.
            extra = c[f"signed_{metric}_median"] - c[f"unsigned_{metric}_median"]
            per = f", {extra / c['packages'] * 1e3:+.1f} ms a package" if c.get("packages") else ""
            print(f"  {metric:4s} unsigned {c[f'unsigned_{metric}_best']:6.2f} s, signed {c[f'signed_{metric}_best']:6.2f} s: "
                  f"{c[f'{metric}_overhead_percent_best']:+5.1f}% best-of, {c[f'{metric}_overhead_percent_median']:+5.1f}% median"
                  f"{per}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
