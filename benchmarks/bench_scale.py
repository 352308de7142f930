"""How bincache's costs grow with the mirror and the install tree: N = 1k, 10k, 50k tiny packages.

    python benchmarks/bench_scale.py [--quick] [--sizes 1000,10000,50000] [--rows a,b]
                                     [--work-dir DIR] [--json OUT]

Per N (packages made by scale_data.py, cached under --work-dir), each row runs the real command
line in a subprocess and records its wall time, CPU seconds (user + system) and peak RSS (wait4):

    create-present     create into the mirror that holds everything (nothing to push)
    create-present-s3  the same into an S3 mirror (moto) holding that mirror's index: presence
                       comes from the index there (the directory row stats each package)
    update-index-one   update-index after one new package was pushed (no --rebuild-index), on
                       the cached mirror itself, put back afterwards (benchmarks/in_place.py)
    list-name          list MIRROR NAME (a cold local index cache), list-name-again (warm)
    install-leaf       install one package without dependencies from the mirror into an empty root
    install-into-tree  install one package into the install tree of N

Then, once (not per N): requests per pushed package on a real registry and a real S3 server
(moto), and for a push with nothing new once the index is there (the clients' own counters),
and OCI update-index over 2,000 seeded tags (500 with --quick). The tables print each row by N
and the growth ratio from one N to the next; nothing here fails on a time. `--quick` (N = 200
and 2,000) runs in CI next to run_all.py, in well under two minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import in_place  # noqa: E402
import scale_data  # noqa: E402

FULL_SIZES = (1000, 10000, 50000)
QUICK_SIZES = (200, 2000)
LEAF = "pkg00010"  # no dependencies (scale_data: chains end at i % 50 == 49)


@dataclass
class Run:
    seconds: float
    rss_mb: float
    returncode: int
    stdout: str
    stderr: str
    cpu: float = 0.0


@dataclass
class Result:
    row: str
    n: int
    seconds: float
    rss_mb: float = 0.0
    note: str = ""
    error: str = ""
    cpu: float = 0.0


@dataclass
class Ctx:
    """What a row gets: the data of one N and a way to run the CLI."""

    n: int
    paths: dict[str, str]
    work: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def tree(self) -> str:
        return self.paths["tree"]

    @property
    def mirror(self) -> str:
        return self.paths["mirror"]

    def scratch(self, name: str) -> str:
        path = os.path.join(self.work, name)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Run:
        """`python -m bincache ARGS` in a subprocess; its wall time and peak RSS."""
        full = dict(os.environ, PYTHONPATH=str(REPO), **self.env, **(env or {}))
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "bincache", *args], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=full)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(seconds, usage.ru_maxrss / 1024, proc.returncode,
                   out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                   usage.ru_utime + usage.ru_stime)


def result(ctx: Ctx, row: str, run: Run, note: str = "") -> Result:
    error = "" if run.returncode == 0 else (run.stderr.strip().splitlines() or ["failed"])[-1]
    return Result(row, ctx.n, run.seconds, run.rss_mb, note, error, run.cpu)


# --- rows per N ---------------------------------------------------------------------------------
def row_create_present(ctx: Ctx) -> list[Result]:
    run = ctx.cli("--root", ctx.tree, "create", "-q", "--unsigned", ctx.mirror)
    return [result(ctx, "create-present", run)]


def row_create_present_s3(ctx: Ctx) -> list[Result]:
    """create with nothing new into S3 (moto), which holds the directory mirror's index only:
    presence believes the index there, so no package is looked at one by one."""
    if not shutil.which("moto_server"):
        return [Result("create-present-s3", ctx.n, 0.0, error="moto_server is not installed")]
    with _moto() as env:
        # boto3 in a child, not here (see _generate: this process stays small).
        subprocess.run([sys.executable, "-c", _UPLOAD, env["BINCACHE_S3_ENDPOINT_URL"], ctx.mirror,
                        *in_place.index_objects(ctx.mirror)], check=True, env=dict(os.environ, **env))
        run = ctx.cli("--root", ctx.tree, "create", "-q", "--unsigned", "s3://cache/scale", env=env)
    return [result(ctx, "create-present-s3", run)]


_UPLOAD = """
import os, sys, boto3
url, mirror, rels = sys.argv[1], sys.argv[2], sys.argv[3:]
s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
s3.create_bucket(Bucket="cache")
for rel in rels:
    s3.upload_file(os.path.join(mirror, rel), "cache", "scale/" + rel)
"""


@contextlib.contextmanager
def _moto() -> Iterator[dict[str, str]]:
    """A moto_server on a free port, without importing boto3 or requests here."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        yield {"BINCACHE_S3_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_CA_BUNDLE": "", "REQUESTS_CA_BUNDLE": ""}  # as tests/fixtures/moto.py
    finally:
        proc.terminate()
        proc.wait(5)


def row_update_index_one(ctx: Ctx) -> list[Result]:
    with in_place.restored(ctx.mirror, ["pkgextra"]):
        push = ctx.cli("--root", ctx.paths["extra"], "create", "-q", "--unsigned", ctx.mirror)
        if push.returncode != 0:
            return [result(ctx, "update-index-one", push, "the push of the new package failed")]
        run = ctx.cli("update-index", ctx.mirror)
    return [result(ctx, "update-index-one", run)]


def row_list_name(ctx: Ctx) -> list[Result]:
    name = scale_data.package_name(ctx.n // 2)
    # Cold: the local index cache an earlier repeat (or row) filled goes first.
    shutil.rmtree(ctx.env["BINCACHE_CACHE_DIR"], ignore_errors=True)
    first = ctx.cli("list", ctx.mirror, name)
    again = ctx.cli("list", ctx.mirror, name)
    return [result(ctx, "list-name", first), result(ctx, "list-name-again", again)]


def row_install_leaf(ctx: Ctx) -> list[Result]:
    root = ctx.scratch("install-leaf")
    run = ctx.cli("--root", root, "install", "-q", "--unsigned", "-m", ctx.mirror, LEAF)
    return [result(ctx, "install-leaf", run)]


def row_install_into_tree(ctx: Ctx) -> list[Result]:
    """One package into the tree of N; the tree is put back as it was afterwards."""
    tree = ctx.tree
    before = set(os.listdir(tree))
    before_pkgs = set(os.listdir(os.path.join(tree, "linux-x86_64")))
    db = os.path.join(tree, ".spack-db")
    backup = os.path.join(ctx.work, "spack-db-backup")
    shutil.rmtree(backup, ignore_errors=True)
    shutil.copytree(db, backup, symlinks=True)
    # The copy's dirty pages (21 MB at 50,000) written back before the install starts, not
    # during it: the harness's copy is not the command's cost (its rmdirs waited on it).
    os.sync()
    try:
        run = ctx.cli("--root", tree, "install", "-q", "--unsigned", "-m",
                      ctx.paths["extra_mirror"], "pkgextra")
    finally:
        for name in set(os.listdir(os.path.join(tree, "linux-x86_64"))) - before_pkgs:
            shutil.rmtree(os.path.join(tree, "linux-x86_64", name), ignore_errors=True)
        for name in set(os.listdir(tree)) - before:
            path = os.path.join(tree, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
        shutil.rmtree(db)
        shutil.move(backup, db)
    return [result(ctx, "install-into-tree", run)]


def best(runs: list[list[Result]]) -> list[Result]:
    """Each of a row's results from its run of least wall time (a failed run's, if any
    failed). A command of 0.1 s on a shared VM varies by 2x from run to run (update-index-one
    at N = 1,000 measured 0.07-0.15 s in a row), more than the growth the rows are there to
    show; the least time is the command's cost with the least interference. The peak RSS is
    the least of the runs': a child's counts this process's own at the fork (see _generate),
    which grows with the rows run before it, so only the least is the command's own."""
    out = []
    for group in zip(*runs):
        failed = [r for r in group if r.error]
        if failed:
            out.append(failed[0])
        else:
            out.append(dataclasses.replace(min(group, key=lambda r: r.seconds),
                                           rss_mb=min(r.rss_mb for r in group)))
    return out


ROWS: dict[str, Callable[[Ctx], list[Result]]] = {
    "create-present": row_create_present,
    "create-present-s3": row_create_present_s3,
    "update-index-one": row_update_index_one,
    "list-name": row_list_name,
    "install-leaf": row_install_leaf,
    "install-into-tree": row_install_into_tree,
}


# --- once: requests per pushed package, OCI update-index over many tags -----------------------
def _push_counts(url: str, tree_root: str, counter: Callable[[object], dict]) -> dict:
    """(requests of a push of every package of the tree, then of the same push again after an
    index update): the clients' own counters."""
    from bincache import create
    from bincache.index import update_index
    from bincache.mirror import MirrorRef, open_cache
    from bincache.tree import InstallTree

    out = {}
    for label in ("push", "again"):
        tree = InstallTree(tree_root)
        cache = open_cache(MirrorRef(url), push=True)
        t0 = time.perf_counter()
        res = create.push(tree, create.select_specs(tree, []), cache, jobs=2)
        out[label] = {"packages": len(res.pushed) + len(res.skipped), "pushed": len(res.pushed),
                      "seconds": round(time.perf_counter() - t0, 2), "requests": counter(cache)}
        if label == "push":
            # What --rebuild-index adds: the update on the pushing cache, as create runs it.
            before = counter(cache)
            t0 = time.perf_counter()
            update_index(cache)
            after = counter(cache)
            out["index"] = {"seconds": round(time.perf_counter() - t0, 2),
                            "requests": {k: v - before.get(k, 0) for k, v in after.items()
                                         if v - before.get(k, 0)}}
    return out


def once_requests(work: str, n: int, log) -> dict:
    paths = scale_data.generate(work, n, log=log)
    out: dict[str, dict] = {}
    from tests.fixtures.registry import REGISTRY_BIN, start_registry

    if REGISTRY_BIN:
        reg = start_registry(Path(tempfile.mkdtemp(prefix="scale-reg-", dir=work)))
        try:
            out["oci"] = _push_counts(f"{reg.url}/scale/cache", paths["tree"],
                                      lambda c: dict(c.client.stats))
        finally:
            reg.stop()
            shutil.rmtree(reg.root, ignore_errors=True)
    else:
        log("docker-registry is not installed: no OCI request counts")
    if shutil.which("moto_server"):
        from tests.fixtures.moto import moto_server

        saved = dict(os.environ)
        with moto_server() as (env, _client):
            os.environ.update(env)
            try:
                out["s3"] = _push_counts("s3://cache/scale", paths["tree"],
                                         lambda c: dict(c.backend.stats))
            finally:
                os.environ.clear()
                os.environ.update(saved)
    else:
        log("moto_server is not installed: no S3 request counts")
    return out


def once_oci_update_index(work: str, tags: int, log) -> dict:
    """update-index over `tags` seeded package tags, then again after one more push."""
    from bincache.index import update_index
    from bincache.mirror import MirrorRef, open_cache
    from bincache.oci import image as img
    from bincache.oci.client import OCI_MANIFEST, Descriptor, RegistryClient, sha256_digest
    from bincache.oci.reference import ImageReference
    from bincache.spec import Spec, make_node, specfile_bytes
    from tests.fixtures.registry import REGISTRY_BIN, start_registry

    if not REGISTRY_BIN:
        return {}

    def tiny(i: int, layer: Descriptor) -> tuple[str, bytes, bytes]:
        spec = Spec.from_node(make_node(f"pkg{i}", "1.0", [], scale_data.ARCH))
        config = img.dumps(img.build_config(
            layers=[img.Layer(layer.digest, layer.digest, layer.size)], env=[],
            spack_keys=img.spack_config_keys(specfile_bytes([spec]), layer.digest)))
        manifest = img.dumps(img.build_manifest(
            config=Descriptor(img.CONFIG, sha256_digest(config), len(config)), layers=[layer]))
        return img.package_tag(spec.name, spec.version, spec.hash), config, manifest

    reg = start_registry(Path(tempfile.mkdtemp(prefix="scale-reg-", dir=work)))
    try:
        url = f"{reg.url}/scale/index"
        image = ImageReference.from_url(url)
        client = RegistryClient(image)
        payload = b"tiny layer"
        layer = Descriptor(img.LAYER_GZIP, sha256_digest(payload), len(payload))
        client.upload_blob(image, payload, layer.digest)
        for i in range(tags):
            tag, config, manifest = tiny(i, layer)
            reg.seed_image("scale/index", tag, manifest, {sha256_digest(config): config})
        cache = open_cache(MirrorRef(url))
        t0 = time.perf_counter()
        update_index(cache)
        first = time.perf_counter() - t0
        tag, config, manifest = tiny(tags, layer)
        client.upload_blob(image, config, sha256_digest(config))
        client.put_manifest(image.with_tag(tag), manifest, OCI_MANIFEST)
        cache = open_cache(MirrorRef(url))
        t0 = time.perf_counter()
        update_index(cache)
        second = time.perf_counter() - t0
        log(f"oci update-index over {tags} tags: {first:.2f} s; after one new push {second:.2f} s")
        return {"tags": tags, "seconds": round(first, 2), "after_one_push_seconds": round(second, 2),
                "after_one_push_requests": dict(cache.client.stats)}
    finally:
        reg.stop()
        shutil.rmtree(reg.root, ignore_errors=True)


# --- tables -------------------------------------------------------------------------------------
def print_growth(results: list[Result], sizes: list[int], log) -> None:
    names = list(dict.fromkeys(r.row for r in results))
    head = "".join(f"{f'N={n}':>22s}" for n in sizes)
    growth = "".join(f"{f'x {b // 1000 or b}k/{a // 1000 or a}k' if a >= 1000 else f'x {b}/{a}':>14s}"
                     for a, b in zip(sizes, sizes[1:]))
    log(f"\n{'row':20s}{head}{growth}")
    for name in names:
        by_n = {r.n: r for r in results if r.row == name}
        cells, ratios = "", ""
        for n in sizes:
            r = by_n.get(n)
            cell = "-" if r is None else ("ERROR" if r.error else
                                          f"{r.seconds:.2f}s {r.cpu:.2f}c {r.rss_mb:.0f}MB")
            cells += f"{cell:>22s}"
        for a, b in zip(sizes, sizes[1:]):
            ra, rb = by_n.get(a), by_n.get(b)
            ok = ra and rb and not ra.error and not rb.error and ra.seconds > 0 and ra.cpu > 0
            ratios += f"{(f'{rb.seconds / ra.seconds:.2f}x {rb.cpu / ra.cpu:.2f}c' if ok else '-'):>14s}"
        log(f"{name:20s}{cells}{ratios}")
    for r in results:
        if r.error:
            log(f"  {r.row} N={r.n}: {r.error}")


def print_requests(counts: dict, log) -> None:
    for kind, runs in counts.items():
        push, again = runs["push"], runs["again"]
        total = sum(push["requests"].values())
        log(f"{kind}: push of {push['pushed']} new packages: {total} requests "
            f"({total / max(1, push['pushed']):.2f} per package) {push['requests']}")
        index = runs.get("index")
        if index:
            n = sum(index["requests"].values())
            log(f"{kind}: then its index update (--rebuild-index): {n} requests "
                f"({(total + n) / max(1, push['pushed']):.2f} per package with it) "
                f"{index['requests']}")
        log(f"{kind}: the same push again, index present: {sum(again['requests'].values())} "
            f"requests {again['requests']}")


def _generate(work_dir: str, n: int, log) -> dict[str, str]:
    """scale_data.generate in a child process: this process starts every measured command,
    and a child counts its parent's memory at the fork in its peak RSS (Linux keeps the old
    address space's high-water mark across exec), so it must not hold N packages' data."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / "scale_data.py"), work_dir, "--n", str(n)],
                          check=True, stdout=subprocess.PIPE, text=True)
    out = proc.stdout
    if time.perf_counter() - t0 > 1:
        log(out[:out.index("{")].strip())
    return json.loads(out[out.index("{"):])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"N = {QUICK_SIZES} (CI)")
    ap.add_argument("--sizes", help="comma-separated N (default 1000,10000,50000)")
    ap.add_argument("--rows", help=f"rows to run (default all: {', '.join(ROWS)}, requests, "
                    "oci-update-index)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of every row at every N; each row's least wall time is reported "
                    "(default 3)")
    ap.add_argument("--work-dir", default="/tmp/bincache-bench/scale")
    ap.add_argument("--json", help="where to write the results (default benchmarks/results/)")
    args = ap.parse_args(argv)
    repeat = max(1, args.repeat)
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else list(
        QUICK_SIZES if args.quick else FULL_SIZES)
    wanted = args.rows.split(",") if args.rows else [*ROWS, "requests", "oci-update-index"]
    unknown = [w for w in wanted if w not in ROWS and w not in ("requests", "oci-update-index")]
    if unknown:
        ap.error(f"unknown rows: {', '.join(unknown)}")
    os.makedirs(args.work_dir, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    t_start = time.perf_counter()
    log(f"scale benchmark: N = {sizes}; {platform.node()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.2f}; each row best of {repeat}")
    results: list[Result] = []
    ctxs: list[Ctx] = []
    for n in sizes:
        paths = _generate(args.work_dir, n, log)
        in_place.record_listing_in_child(paths["mirror"])  # once per cached mirror
        work = tempfile.mkdtemp(prefix=f"run-{n}-", dir=args.work_dir)
        home = os.path.join(work, "home")
        os.makedirs(home)
        ctxs.append(Ctx(n, paths, work, env={"HOME": home, "BINCACHE_CACHE_DIR": os.path.join(home, "cache")}))
    # In rounds, every N once per round (as bench_create's rows): a slow spell of the host
    # then lands on every N alike instead of on the one N whose rows ran during it.
    runs: dict[tuple[int, str], list[list[Result]]] = {}
    try:
        for _ in range(repeat):
            for ctx in ctxs:
                for name, fn in ROWS.items():
                    if name in wanted:
                        runs.setdefault((ctx.n, name), []).append(fn(ctx))
    finally:
        for ctx in ctxs:
            shutil.rmtree(ctx.work, ignore_errors=True)
    for (n, _name), row_runs in runs.items():
        for r in best(row_runs):
            results.append(r)
            log(f"  N={n:<6d} {r.row:20s} {r.seconds:7.2f} s {r.cpu:6.2f} CPU-s {r.rss_mb:6.0f} MB"
                + (f"  ERROR {r.error}" if r.error else ""))
    print_growth(results, sizes, log)
    counts, oci_index = {}, {}
    if "requests" in wanted:
        counts = once_requests(args.work_dir, 50 if args.quick else 200, log)
        log("")
        print_requests(counts, log)
    if "oci-update-index" in wanted:
        oci_index = once_oci_update_index(args.work_dir, 500 if args.quick else 2000, log)
    seconds = time.perf_counter() - t_start
    log(f"\nbench_scale: {seconds:.0f} s (load {os.getloadavg()[0]:.2f} at the end)")
    out = args.json or os.path.join(HERE, "results", f"scale-{'quick' if args.quick else 'full'}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"sizes": sizes, "repeat": repeat, "rows": [asdict(r) for r in results], "requests": counts,
                   "oci_update_index": oci_index, "seconds": round(seconds, 1),
                   "machine": {"node": platform.node(), "cpus": os.cpu_count(),
                               "python": platform.python_version()}}, f, indent=1)
    log(f"wrote {out}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
