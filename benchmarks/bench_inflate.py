"""Benchmark: the inflaters extraction could use, on one gzip stream, in this process.

* the C core's ``Inflater`` (ISA-L when built with it), with and without the SHA-256 of the
  compressed bytes that install computes in the same pass;
* Python's zlib (what extraction uses for a stream without a descriptor);
* python-isal's ``isal_zlib``, when it is importable (not a dependency: measured to decide).

Best CPU seconds of ``--repeat`` runs (a loaded machine is noisy; CPU time is the steadier
figure). It never asserts on time.

    python benchmarks/bench_inflate.py [--size-mb 64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CHUNK = 1 << 20


def payload(size: int, seed: int = 0) -> bytes:
    """Half text-like (compresses ~4x, as binaries and headers do), half random."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz_/.", k=rng.randrange(3, 12)))
             for _ in range(2000)]
    parts, n = [], 0
    while n < size:
        block = b" ".join(rng.choices(words, k=4096)) if rng.random() < 0.5 else rng.randbytes(32768)
        parts.append(block)
        n += len(block)
    return b"".join(parts)[:size]


def core(path: str, digest: bool) -> int:
    from bincache._native import Inflater

    with open(path, "rb") as f:
        inf = Inflater(f.fileno(), offset=0, digest=digest)
        buf = bytearray(CHUNK)
        n = 0
        while True:
            k = inf.readinto(buf)
            if not k:
                return n
            n += k


def stream(path: str, module) -> int:
    n = 0
    with open(path, "rb") as f:
        d = module.decompressobj(wbits=31)
        while True:
            block = f.read(CHUNK)
            if not block:
                return n
            n += len(d.decompress(block))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    from bincache import _native

    variants = [(f"C core Inflater ({_native.BACKEND})", lambda p: core(p, False)),
                (f"C core Inflater ({_native.BACKEND}) + SHA-256", lambda p: core(p, True)),
                ("zlib (Python)", lambda p: stream(p, zlib))]
    try:
        from isal import isal_zlib

        variants.append(("python-isal isal_zlib", lambda p: stream(p, isal_zlib)))
    except ImportError:
        print("python-isal not importable: its row is left out")
    data = payload(args.size_mb << 20)
    with tempfile.NamedTemporaryFile(suffix=".gz") as f:
        f.write(gzip.compress(data, 6))
        f.flush()
        size = os.path.getsize(f.name)
        print(f"{len(data) >> 20} MiB -> {size / (1 << 20):.1f} MiB gzip -6; best CPU s of "
              f"{args.repeat}, load average {os.getloadavg()[0]:.1f}")
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, fn in variants:
                t = time.process_time()
                out = fn(f.name)
                spent = time.process_time() - t
                assert out == len(data), name
                best[name] = min(best.get(name, spent), spent)
        for name, _ in variants:
            print(f"  {name:40s} {best[name]:7.3f} s  {len(data) / (1 << 20) / best[name]:7.0f} MiB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
