"""Seeded generator of synthetic Spack-like install trees, for the benchmarks.

``generate(root, size_mb, seed)`` writes prefixes ``<root>/linux-x86_64/<name>-<version>-<hash>/``,
each with a Spack v5 ``.spack/spec.json`` (DAG hash computed the way Spack computes it), and the
kinds of content that make packing a real install tree hard:

* ELF programs and libraries copied from the system (``/usr/lib/x86_64-linux-gnu``, ``/usr/bin``)
  and static archives (``*.a``);
* small C programs and a shared library compiled once with gcc, with RUNPATH, string constants
  and debug paths pointing into the tree; each copy gets its own prefix and its dependencies'
  prefixes patched in (left-padded with ``/``, Spack's rule, so the length stays the same), so the
  copies run: ``<prefix>/bin/bcgen-tool`` loads ``<prefix>/lib/libbcgen.so.1`` through RUNPATH;
* text files that embed the prefix and those of the dependencies (pkg-config, CMake config,
  libtool ``.la``, shell scripts with shebangs, headers), many small text files, binary data
  files that hold prefixes between NULs;
* large incompressible files (seeded PRNG bytes);
* symlink chains (``libx.so -> libx.so.1 -> libx.so.1.2.3``), absolute symlinks into the prefix
  and into dependency prefixes, and hardlinks.

Later packages depend on earlier ones. The same seed (and size, root and system files) gives the
same tree: every choice comes from ``random.Random(seed)`` and the compiler sees the same input.

CLI: ``python benchmarks/gen_tree.py ROOT --size-mb N --seed S``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

try:
    from bincache.spec import Spec, make_node, specfile_dict
except ImportError:  # run as a script from a checkout: the package is the parent directory
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bincache.spec import Spec, make_node, specfile_dict

# Bump when the generated content changes, so cached trees (run_all.py) are made again.
GENERATOR_VERSION = 2
ARCH_DIR = "linux-x86_64"
ARCH = {"platform": "linux", "platform_os": "debian12", "target": "x86_64"}
SYSTEM_ELF_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/bin")
# A copied file larger than this would dominate a small tree; real ones that big are rare.
MAX_SYSTEM_FILE = 48 << 20

# Where a package's bytes go, as fractions of its budget left after the fixed files (measured trees of Spack installs are
# mostly ELF; the rest is text, data and some already-compressed payloads).
SHARE_ELF = 0.45
SHARE_ARCHIVE = 0.08
SHARE_RANDOM = 0.15
SHARE_DATA = 0.07
# The remainder is text (many small files).

NAMES = [
    "zlib", "bzip2", "xz", "zstd", "openssl", "curl", "libxml2", "ncurses", "readline", "sqlite",
    "expat", "gettext", "libiconv", "pcre2", "libffi", "python", "perl", "cmake", "hdf5",
    "netcdf-c", "openmpi", "hwloc", "libevent", "boost", "fftw", "openblas", "lapack", "gmp",
    "mpfr", "mpc", "binutils", "gcc-runtime", "llvm", "libpng", "libjpeg-turbo", "libtiff",
    "freetype", "fontconfig", "pixman", "cairo", "glib", "harfbuzz", "pango", "gdbm", "tcl",
    "tk", "util-linux-uuid", "libedit", "krb5", "libssh2", "nghttp2", "git", "pkgconf", "m4",
    "autoconf", "automake", "libtool", "flex", "bison", "swig", "eigen", "suite-sparse",
    "metis", "parmetis", "petsc", "trilinos", "kokkos", "yaml-cpp", "nlohmann-json", "fmt",
    "spdlog", "protobuf", "grpc", "abseil-cpp", "re2", "c-ares", "lz4", "snappy", "brotli",
]

WORDS_SEED_SYLLABLES = [
    "ka", "lo", "re", "mi", "tu", "sa", "ne", "po", "di", "ga", "fu", "be", "zo", "chi", "ran",
    "tor", "lex", "vin", "mon", "das", "pre", "sub", "int", "ptr", "buf", "len", "cfg", "init",
]

C_LIB = r"""
#include <stddef.h>
/* The strings below point into the install tree, as configure-time paths do. */
const char bcgen_datadir[] = "@SELF@/share/bcgen";
const char bcgen_sysconfdir[] = "@SELF@/etc/bcgen.conf";
const char *bcgen_where(void) { return bcgen_datadir; }
int bcgen_answer(void) { return 42; }
size_t bcgen_table_size(void);
"""

C_TOOL = r"""
#include <stdio.h>
#include <string.h>
extern int bcgen_answer(void);
extern const char *bcgen_where(void);
static const char self_prefix[] = "@SELF@";
static const char dep_libdir[] = "@DEP@/lib";
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--prefix") == 0) { puts(self_prefix); return 0; }
    printf("answer=%d data=%s dep=%s\n", bcgen_answer(), bcgen_where(), dep_libdir);
    return 0;
}
"""

C_BIG = r"""
#include <stdio.h>
static const char self_prefix[] = "@SELF@";
static const unsigned int table[] = {
@TABLE@
};
int main(void) {
    unsigned long s = 0;
    for (unsigned long i = 0; i < sizeof table / sizeof table[0]; i++) s += table[i];
    printf("%s %lu\n", self_prefix, s);
    return 0;
}
"""


@dataclass
class Package:
    """One prefix to generate: its identity, dependencies (indices of earlier packages), size."""

    name: str
    version: str
    deps: list[int]
    budget: int
    node: dict = field(default_factory=dict)
    prefix: str = ""

    @property
    def hash(self) -> str:
        return self.node["hash"]


PARAMETERS = {
    "build_system": "generic",
    "cflags": [], "cppflags": [], "cxxflags": [], "fflags": [], "ldflags": [], "ldlibs": [],
}


def _spec_node(pkg: Package, deps: list[Package], seed: int) -> dict:
    """The package's node through bincache's own spec API, so hashes are computed as it does."""
    params = dict(PARAMETERS, bcgen_seed=str(seed))
    return make_node(pkg.name, pkg.version, [Spec.from_node(d.node) for d in deps], dict(ARCH), params)


def _closure(pkgs: list[Package], index: int) -> list[int]:
    """The package and its transitive dependencies, pre-order, each once (Spack's node order)."""
    seen: list[int] = []

    def visit(i: int) -> None:
        if i in seen:
            return
        seen.append(i)
        for d in sorted(pkgs[i].deps, key=lambda j: (pkgs[j].name, pkgs[j].hash)):
            visit(d)

    visit(index)
    return seen


SHAPES = ("random", "chain", "flat")


def _deps(shape: str, i: int, rng: random.Random) -> list[int]:
    """Indices of the earlier packages package ``i`` depends on.

    ``random``: 0-4 earlier packages; ``chain``: the one before (each package needs the whole
    chain below it, so a scheduler that waits for dependencies packs one at a time);
    ``flat``: none.
    """
    if shape == "chain":
        return [i - 1] if i else []
    if shape == "flat":
        return []
    ndeps = min(i, rng.choice([0, 1, 1, 2, 2, 3, 4]))
    return sorted(rng.sample(range(i), ndeps)) if ndeps else []


def _plan(root: str, size_mb: int, seed: int, rng: random.Random, prefixes: int | None = None,
          shape: str = "random") -> list[Package]:
    count = prefixes or max(6, min(80, size_mb // 16))
    total = size_mb << 20
    weights = [rng.lognormvariate(0.0, 0.8) for _ in range(count)]
    scale = total / sum(weights)
    names = list(NAMES)
    rng.shuffle(names)
    pkgs: list[Package] = []
    for i in range(count):
        name = names[i % len(names)] + ("" if i < len(names) else f"-{i // len(names)}")
        version = f"{rng.randint(0, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"
        if shape == "random":
            deps = _deps(shape, i, rng)
        else:
            # The same draw as the random shape, so sizes and names do not depend on the shape.
            _deps("random", i, rng)
            deps = _deps(shape, i, rng)
        pkg = Package(name, version, deps, max(256 << 10, int(weights[i] * scale)))
        pkg.node = _spec_node(pkg, [pkgs[d] for d in deps], seed)
        pkg.prefix = os.path.join(root, ARCH_DIR, f"{name}-{version}-{pkg.hash}")
        pkgs.append(pkg)
    return pkgs


def _write_specfile(pkgs: list[Package], index: int) -> None:
    doc = specfile_dict([Spec.from_node(pkgs[i].node) for i in _closure(pkgs, index)])
    dot_spack = os.path.join(pkgs[index].prefix, ".spack")
    os.makedirs(dot_spack, exist_ok=True)
    with open(os.path.join(dot_spack, "spec.json"), "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Compiled programs: built once with placeholders as long as the longest prefix, then patched.


@dataclass
class Compiled:
    """ELF images with two same-length placeholders: the package's prefix and a dependency's."""

    self_ph: bytes
    dep_ph: bytes
    lib: bytes
    tool: bytes
    big: bytes

    def patch(self, data: bytes, prefix: str, dep_prefix: str) -> bytes:
        size = len(self.self_ph)
        new_self = prefix.encode().rjust(size, b"/")
        new_dep = dep_prefix.encode().rjust(size, b"/")
        out = data.replace(self.self_ph, new_self).replace(self.dep_ph, new_dep)
        assert len(out) == len(data)
        return out


def _placeholder(tag: str, size: int) -> str:
    head = f"/bcgen-{tag}-placeholder-"
    return head + "x" * (size - len(head))


def _compile(max_prefix: int, rng: random.Random) -> Compiled:
    size = max(max_prefix, 48)
    self_ph, dep_ph = _placeholder("self", size), _placeholder("dep", size)
    table = ",".join(str(int(rng.paretovariate(1.2)) & 0xFFFF) for _ in range(96 * 1024))
    # Same directory name on every run: -fdebug-prefix-map hides it, but gcc also hashes the
    # object file name into some sections, so keep every input the same.
    build = tempfile.mkdtemp(prefix="bcgen-build-")
    try:
        sources = {
            "bcgen.c": C_LIB,
            "tool.c": C_TOOL,
            "big.c": C_BIG.replace("@TABLE@", table),
        }
        for fname, text in sources.items():
            with open(os.path.join(build, fname), "w") as f:
                f.write(text.replace("@SELF@", self_ph).replace("@DEP@", dep_ph))
        rpath = f"-Wl,-rpath,{self_ph}/lib:{dep_ph}/lib"
        debugmap = f"-fdebug-prefix-map={build}={self_ph}/src"
        common = ["gcc", "-O2", "-g", debugmap]
        steps = [
            common + ["-shared", "-fPIC", "-Wl,-soname,libbcgen.so.1", rpath,
                      "-o", "libbcgen.so.1.0.0", "bcgen.c"],
            ["ln", "-sf", "libbcgen.so.1.0.0", "libbcgen.so"],
            common + ["-o", "bcgen-tool", "tool.c", "-L.", "-lbcgen", rpath],
            common + ["-o", "bcgen-big", "big.c", rpath],
        ]
        for cmd in steps:
            proc = subprocess.run(cmd, cwd=build, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:2])}... failed: {proc.stderr.strip()}")

        def read(name: str) -> bytes:
            with open(os.path.join(build, name), "rb") as f:
                return f.read()

        return Compiled(self_ph.encode(), dep_ph.encode(), read("libbcgen.so.1.0.0"),
                        read("bcgen-tool"), read("bcgen-big"))
    finally:
        shutil.rmtree(build, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Pools of real files and of text.


def _system_pool() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(ELF files, static archives) from the system, sorted so the choice is reproducible."""
    elves: list[tuple[str, int]] = []
    archives: list[tuple[str, int]] = []
    for d in SYSTEM_ELF_DIRS:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for n in names:
            p = os.path.join(d, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if not os.path.isfile(p) or os.path.islink(p) or not (4096 <= st.st_size <= MAX_SYSTEM_FILE):
                continue
            try:
                with open(p, "rb") as f:
                    magic = f.read(8)
            except OSError:
                continue
            if magic[:4] == b"\x7fELF":
                elves.append((p, st.st_size))
            elif magic == b"!<arch>\n":
                archives.append((p, st.st_size))
    if not elves:
        raise RuntimeError(f"no ELF files found in {SYSTEM_ELF_DIRS}")
    return elves, archives


def _corpus(rng: random.Random, size: int = 3 << 20) -> bytes:
    """Source-like and prose-like text, compressible about as much as real headers and docs."""
    vocab = []
    for _ in range(3000):
        vocab.append("".join(rng.choice(WORDS_SEED_SYLLABLES) for _ in range(rng.randint(1, 4))))
    vocab += ["{", "}", "(", ");", "=", "*", "->", "int", "const", "char", "return", "#define",
              "static", "void", "struct", "if", "for", "the", "a", "of", "to", "is"] * 40
    words = rng.choices(vocab, k=size // 5)
    out = []
    line: list[str] = []
    width = 0
    for w in words:
        line.append(w)
        width += len(w) + 1
        if width > rng.randint(30, 90):
            out.append(" " * (4 * rng.randint(0, 2)) + " ".join(line))
            line, width = [], 0
    return ("\n".join(out) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# Writing one prefix.


class _Writer:
    """Writes files under one prefix and counts the bytes of distinct regular files."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.written = 0

    def path(self, rel: str) -> str:
        p = os.path.join(self.prefix, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def bytes(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        p = self.path(rel)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
        self.written += len(data)

    def copy(self, rel: str, src: str, mode: int = 0o755) -> None:
        p = self.path(rel)
        shutil.copyfile(src, p)
        os.chmod(p, mode)
        self.written += os.path.getsize(p)

    def symlink(self, rel: str, target: str) -> None:
        p = self.path(rel)
        os.symlink(target, p)

    def hardlink(self, rel: str, existing_rel: str) -> None:
        os.link(os.path.join(self.prefix, existing_rel), self.path(rel))


def _text_slice(rng: random.Random, corpus: bytes, size: int) -> bytes:
    start = rng.randrange(0, max(1, len(corpus) - size))
    return corpus[start:start + size]


def _pick(rng: random.Random, pool: list[tuple[str, int]], room: int) -> tuple[str, int] | None:
    """A random file of the pool that fits in ``room`` bytes (a little over is fine), or None."""
    if room <= 0:
        return None
    fits = [item for item in pool if item[1] <= room + (64 << 10)]
    return rng.choice(fits) if fits else None


def _fill_package(pkgs: list[Package], index: int, compiled: Compiled,
                  elves: list[tuple[str, int]], archives: list[tuple[str, int]],
                  corpus: bytes, rng: random.Random) -> None:
    pkg = pkgs[index]
    deps = [pkgs[d] for d in pkg.deps]
    w = _Writer(pkg.prefix)
    name, prefix = pkg.name, pkg.prefix
    dep_prefix = deps[0].prefix if deps else prefix
    budget = pkg.budget

    # The compiled stack: library with a symlink chain, a program with a hardlinked alias, an
    # absolute symlink into the prefix and one into a dependency (what Spack calls
    # relocate_links).
    w.bytes("lib/libbcgen.so.1.0.0", compiled.patch(compiled.lib, prefix, dep_prefix), 0o755)
    w.symlink("lib/libbcgen.so.1", "libbcgen.so.1.0.0")
    w.symlink("lib/libbcgen.so", "libbcgen.so.1")
    w.bytes("bin/bcgen-tool", compiled.patch(compiled.tool, prefix, dep_prefix), 0o755)
    w.hardlink(f"bin/{name}-tool", "bin/bcgen-tool")
    w.symlink(f"bin/{name}", os.path.join(prefix, "bin", "bcgen-tool"))
    w.bytes("bin/bcgen-big", compiled.patch(compiled.big, prefix, dep_prefix), 0o755)
    for d in deps:
        w.symlink(f"lib/deps/{d.name}", os.path.join(d.prefix, "lib"))

    # Text that embeds prefixes: pkg-config, CMake, libtool, scripts, a config header.
    requires = " ".join(d.name for d in deps)
    w.bytes(f"lib/pkgconfig/{name}.pc", (
        f"prefix={prefix}\nexec_prefix=${{prefix}}\nlibdir=${{exec_prefix}}/lib\n"
        f"includedir=${{prefix}}/include\n\nName: {name}\nDescription: synthetic {name}\n"
        f"Version: {pkg.version}\nRequires: {requires}\n"
        f"Libs: -L${{libdir}} -Wl,-rpath,${{libdir}} -lbcgen\nCflags: -I${{includedir}}\n"
    ).encode())
    cmake_deps = "".join(f'find_dependency({d.name} PATHS "{d.prefix}")\n' for d in deps)
    w.bytes(f"lib/cmake/{name}/{name}Config.cmake", (
        f'include(CMakeFindDependencyMacro)\n{cmake_deps}'
        f'set({name}_PREFIX "{prefix}")\nset({name}_INCLUDE_DIRS "{prefix}/include")\n'
        f'set({name}_LIBRARIES "{prefix}/lib/libbcgen.so")\n'
    ).encode())
    dep_libs = " ".join(f"-L{d.prefix}/lib" for d in deps)
    w.bytes("lib/libbcgen.la", (
        f"# libbcgen.la - a libtool library file\ndlname='libbcgen.so.1'\n"
        f"library_names='libbcgen.so.1.0.0 libbcgen.so.1 libbcgen.so'\n"
        f"dependency_libs=' {dep_libs}'\nlibdir='{prefix}/lib'\n"
    ).encode())
    path_line = ":".join([f"{prefix}/bin"] + [f"{d.prefix}/bin" for d in deps])
    w.bytes(f"bin/{name}-config", (
        f"#!/bin/sh\n# {name} {pkg.version}\nprefix={prefix}\nPATH={path_line}:$PATH\n"
        f'case "$1" in --prefix) echo "$prefix";; --libs) echo "-L$prefix/lib -lbcgen";; '
        f'*) exec "$prefix/bin/bcgen-tool" "$@";; esac\n'
    ).encode(), 0o755)
    w.bytes(f"bin/{name}-run", (
        f"#!{prefix}/bin/bcgen-tool\n# interpreter in the prefix, as Spack's perl/python scripts\n"
    ).encode(), 0o755)
    w.bytes(f"include/{name}/config.h", (
        f"#ifndef {name.upper().replace('-', '_')}_CONFIG_H\n"
        f"#define {name.upper().replace('-', '_')}_CONFIG_H\n"
        f'#define {name.upper().replace("-", "_")}_PREFIX "{prefix}"\n'
        + "".join(f'#define DEP_{d.name.upper().replace("-", "_")} "{d.prefix}"\n' for d in deps)
        + "#endif\n"
    ).encode())

    # ELF files and archives from the system, with a soname-style symlink chain for libraries.
    # The shares apply to what the fixed files above left, so small packages get text too.
    room = max(0, budget - w.written)
    target = w.written + int(room * SHARE_ELF)
    n = 0
    while (picked := _pick(rng, elves, target - w.written)) is not None:
        src = picked[0]
        base = os.path.basename(src)
        if src.startswith("/usr/bin/"):
            rel = f"bin/{base}"
        else:
            stem = base.split(".so")[0] if ".so" in base else base
            rel = f"lib/{stem}.so.{n}.0.0"
        if os.path.lexists(os.path.join(prefix, rel)):
            rel = f"{rel}-{n}"
        w.copy(rel, src)
        if rel.startswith("lib/") and ".so." in rel and not rel.endswith(f"-{n}"):
            stem = rel[4:].split(".so.")[0]
            w.symlink(f"lib/{stem}.so.{n}", os.path.basename(rel))
            if not os.path.lexists(os.path.join(prefix, f"lib/{stem}.so")):
                w.symlink(f"lib/{stem}.so", f"{stem}.so.{n}")
        n += 1

    target = w.written + int(room * SHARE_ARCHIVE)
    while (picked := _pick(rng, archives, target - w.written)) is not None:
        rel = f"lib/static/{os.path.basename(picked[0])}"
        if os.path.lexists(os.path.join(prefix, rel)):
            rel = f"lib/static/{w.written}-{os.path.basename(picked[0])}"
        w.copy(rel, picked[0], 0o644)

    # Incompressible payloads (compressed data sets, media, wheels) and one hardlink to them.
    target = w.written + int(room * SHARE_RANDOM)
    k = 0
    while w.written < target:
        size = min(target - w.written, int(rng.lognormvariate(14.5, 1.2)) + 4096)
        w.bytes(f"share/{name}/payload/blob-{k:03d}.bin", rng.randbytes(size))
        k += 1
    if k:
        w.hardlink(f"share/{name}/payload-link.bin", f"share/{name}/payload/blob-000.bin")

    # Binary data files: records with NULs, some holding prefixes (Spack relocates these too).
    target = w.written + int(room * SHARE_DATA)
    k = 0
    all_prefixes = [prefix] + [d.prefix for d in deps]
    while w.written < target:
        parts = []
        size = min(target - w.written, rng.randint(16 << 10, 2 << 20))
        got = 0
        while got < size:
            chunk = _text_slice(rng, corpus, rng.randint(64, 4096))
            chunk += b"\0" * rng.randint(1, 64)
            if rng.random() < 0.1:
                chunk += rng.choice(all_prefixes).encode() + b"/share/data\0"
            if rng.random() < 0.3:
                chunk += rng.randbytes(rng.randint(16, 512))
            parts.append(chunk)
            got += len(chunk)
        w.bytes(f"share/{name}/data/table-{k:03d}.dat", b"".join(parts))
        k += 1

    # Many small text files: headers, Python modules, man pages, docs; a few name a prefix.
    k = 0
    kinds = [("include/{n}/h{k:04d}.h", 4000), ("lib/python3.11/site-packages/{n}/m{k:04d}.py", 6000),
             ("share/man/man3/{n}_{k:04d}.3", 3000), ("share/doc/{n}/d{k:04d}.txt", 9000)]
    while w.written < budget:
        pattern, mean = rng.choice(kinds)
        size = min(max(64, int(rng.expovariate(1 / mean))), max(64, budget - w.written))
        body = _text_slice(rng, corpus, size)
        if rng.random() < 0.05:
            body = f"/* installed in {rng.choice(all_prefixes)}/include */\n".encode() + body
        w.bytes(pattern.format(n=name, k=k), body)
        k += 1

    _write_specfile(pkgs, index)


def generate(root: str, size_mb: int, seed: int = 0, prefixes: int | None = None,
             shape: str = "random") -> list[str]:
    """Write a synthetic install tree of about ``size_mb`` MiB under ``root``.

    ``prefixes``: how many (default: one per 16 MiB, 6 to 80); ``shape``: the dependency DAG
    (``random``, ``chain`` or ``flat``, see ``_deps``).

    Returns the prefixes, dependencies before dependents. ``root`` must not exist or be empty:
    prefixes embed ``root`` itself, so a tree cannot be moved after it is written.
    """
    if size_mb < 1:
        raise ValueError(f"size_mb must be at least 1, not {size_mb}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, not {shape!r}")
    if prefixes is not None and prefixes < 1:
        raise ValueError(f"prefixes must be at least 1, not {prefixes}")
    root = os.path.abspath(root)
    if os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(f"{root} is not empty; pick a new directory or remove it first")
    os.makedirs(root, exist_ok=True)
    rng = random.Random(seed)
    pkgs = _plan(root, size_mb, seed, rng, prefixes, shape)
    compiled = _compile(max(len(p.prefix) for p in pkgs), random.Random(seed + 1))
    elves, archives = _system_pool()
    corpus = _corpus(random.Random(seed + 2))
    for i in range(len(pkgs)):
        # One generator per package: a package's content does not shift when another's does.
        _fill_package(pkgs, i, compiled, elves, archives, corpus, random.Random(f"{seed}/{i}"))
    return [p.prefix for p in pkgs]


def tree_stats(prefixes: list[str]) -> dict:
    """Files, distinct bytes (hardlinks once), symlinks and hardlinks under the prefixes."""
    files = links = hardlinks = total = 0
    seen: set[tuple[int, int]] = set()
    for prefix in prefixes:
        for dirpath, dirnames, filenames in os.walk(prefix):
            for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                st = os.lstat(os.path.join(dirpath, n))
                if os.path.islink(os.path.join(dirpath, n)):
                    links += 1
                    continue
                files += 1
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    hardlinks += 1
                    continue
                seen.add(key)
                total += st.st_size
    return {"prefixes": len(prefixes), "files": files, "bytes": total,
            "symlinks": links, "hardlinks": hardlinks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="directory to create (must not exist or be empty)")
    ap.add_argument("--size-mb", type=int, default=100, help="approximate size in MiB (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefixes", type=int, default=None,
                    help="number of prefixes (default: one per 16 MiB, 6 to 80)")
    ap.add_argument("--shape", choices=SHAPES, default="random",
                    help="dependency DAG: random (default), chain (each on the one before), flat")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        prefixes = generate(args.root, args.size_mb, args.seed, args.prefixes, args.shape)
    except (FileExistsError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stats = tree_stats(prefixes)
    print(f"{stats['prefixes']} prefixes, {stats['files']} files, {stats['bytes'] / 2**20:.1f} MiB, "
          f"{stats['symlinks']} symlinks, {stats['hardlinks']} hardlinks "
          f"in {time.perf_counter() - t0:.1f} s under {os.path.abspath(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
