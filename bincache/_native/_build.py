"""cffi build script of the C core (out-of-line API mode), named in setup.py's cffi_modules.

Libraries are detected by compiling and linking a tiny program. Required: zlib (Debian's
python3-dev already depends on zlib1g-dev) and OpenSSL's libcrypto, the only SHA-256
(``libssl-dev``); a build without either stops with what to install. Optional: ISA-L (igzip
deflate, ``libisal-dev``), else zlib deflate; libzstd (``libzstd-dev``) for ``--compression
zstd``, without which the core refuses that codec; ``BINCACHE_NO_ISAL=1`` / ``BINCACHE_NO_ZSTD=1``
turn their detection off (to test those fallbacks).

``python bincache/_native/_build.py --sanitize`` builds the same core with AddressSanitizer and
UBSan as ``bincache._native._lib_asan`` (objects under build/asan/), next to the normal ``_lib``,
which it does not touch; ``BINCACHE_SANITIZE=1`` at run time makes ``_cffi`` load that one.
scripts/test-asan builds it and runs the native and property tests under it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Callable

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"

_PROBES = {
    "isal": (
        "#include <isa-l.h>\n"
        "int main(void) { struct isal_zstream s; isal_deflate_init(&s);"
        ' return (int)crc32_gzip_refl(0, (const unsigned char *)"", 0); }\n',
        ["isal"],
    ),
    "openssl": (
        "#include <openssl/evp.h>\n"
        "int main(void) { EVP_MD_CTX *c = EVP_MD_CTX_new();"
        " EVP_DigestInit_ex(c, EVP_sha256(), NULL); EVP_MD_CTX_free(c); return 0; }\n",
        ["crypto"],
    ),
    "zstd": (
        "#include <zstd.h>\n"
        "int main(void) { ZSTD_CCtx *c = ZSTD_createCCtx();"
        " ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1); ZSTD_freeCCtx(c); return 0; }\n",
        ["zstd"],
    ),
    "zlib": (
        "#include <zlib.h>\nint main(void) { return (int)crc32(0L, Z_NULL, 0); }\n",
        ["z"],
    ),
}


def _compiler() -> list[str]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


def _probe(name: str) -> bool:
    """True when a program using the library compiles and links here."""
    source, libs = _PROBES[name]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"probe_{name}.c"
        src.write_text(source)
        cmd = [*_compiler(), str(src), "-o", str(Path(tmp) / "probe")]
        cmd += [f"-l{lib}" for lib in libs]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0


def _enabled(name: str) -> bool:
    return os.environ.get(f"BINCACHE_NO_{name.upper()}", "") in ("", "0")


def _cdef() -> str:
    text = (CSRC / "bincache.h").read_text()
    body = text.split("/* BC_CDEF_BEGIN */", 1)[1].split("/* BC_CDEF_END */", 1)[0]
    # Constants are filled in by the compiler.
    return re.sub(r"=\s*-?\d+", "= ...", body)


def _configure() -> tuple[list[tuple[str, None]], list[str]]:
    if not _probe("zlib"):
        raise SystemExit(
            "bincache: zlib headers not found; install zlib1g-dev (Debian) or zlib-devel"
        )
    if not _probe("openssl"):
        raise SystemExit(
            "bincache: OpenSSL's libcrypto (SHA-256) not found; install libssl-dev (Debian) "
            "or openssl-devel"
        )
    macros: list[tuple[str, None]] = []
    libs = ["z", "crypto"]
    if _enabled("isal") and _probe("isal"):
        macros.append(("BC_HAVE_ISAL", None))
        libs.append("isal")
    if _enabled("zstd") and _probe("zstd"):
        macros.append(("BC_HAVE_ZSTD", None))
        libs.append("zstd")
    return macros, libs


def _path(p: Path) -> str:
    # setuptools wants paths relative to setup.py; absolute when built from elsewhere.
    return str(p.relative_to(ROOT)) if Path.cwd().resolve() == ROOT else str(p)


SANITIZE_FLAGS = [
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    # A UBSan finding stops the run instead of printing and carrying on.
    "-fno-sanitize-recover=undefined",
]
# Python's CFLAGS carry -fwrapv, which defines signed overflow and so hides it from UBSan.
SANITIZE_COMPILE = ["-fno-wrapv", "-O1", "-g"]

_macros, _libs = _configure()


def _builder(
    module: str, paths: Callable[[Path], str], cflags: list[str], ldflags: list[str]
) -> FFI:
    ffi = FFI()
    ffi.cdef(_cdef())
    ffi.set_source(
        module,
        '#include "bincache.h"',
        sources=[paths(p) for p in sorted(CSRC.glob("*.c"))],
        include_dirs=[paths(CSRC)],
        # Listed so that a header change rebuilds (the sdist carries them through MANIFEST.in).
        depends=[paths(p) for p in sorted(CSRC.glob("*.h"))],
        define_macros=_macros,
        libraries=[*_libs, "pthread"],
        extra_compile_args=["-std=gnu99", "-O2", "-pthread", "-fvisibility=hidden", *cflags],
        extra_link_args=["-pthread", *ldflags],
    )
    return ffi


ffibuilder = _builder("bincache._native._lib", _path, [], [])


def build_sanitized() -> Path:
    """Compile ``bincache._native._lib_asan`` (ASan + UBSan, -O1 -g) and put it next to _lib."""
    tmp = ROOT / "build" / "asan"
    tmp.mkdir(parents=True, exist_ok=True)
    ffi = _builder("bincache._native._lib_asan", str, [*SANITIZE_FLAGS, *SANITIZE_COMPILE],
                   SANITIZE_FLAGS)
    built = Path(ffi.compile(tmpdir=str(tmp)))
    dest = Path(__file__).resolve().parent / built.name
    shutil.copyfile(built, dest)
    return dest


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--sanitize"]:
        print(build_sanitized())
    else:
        ffibuilder.compile(verbose=True)
