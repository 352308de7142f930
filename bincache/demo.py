"""The built-in example: a small C stack compiled with gcc, registered, pushed, installed, run.

It is what `bincache demo` runs and what several tests build on: a library (libgreet), a library
that links it (libshout), and a program (hello) that links both through RUNPATH, plus text files
that embed the prefix, symlinks and a hardlink.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from .errors import BincacheError
from .spec import Spec, host_arch, make_node
from .tree import InstalledSpec, InstallTree, register_prefix

GREET_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <dlfcn.h>
#ifndef DATADIR
#define DATADIR "unset"
#endif
const char *greet_datadir(void) { return DATADIR; }
const char *greet_where(void) {
    Dl_info info;
    if (dladdr((void *)greet_where, &info) && info.dli_fname) return info.dli_fname;
    return "?";
}
int greet(const char *who) { return printf("hello, %s\n", who); }
"""

SHOUT_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <dlfcn.h>
int greet(const char *who);
const char *shout_where(void) {
    Dl_info info;
    if (dladdr((void *)shout_where, &info) && info.dli_fname) return info.dli_fname;
    return "?";
}
int shout(const char *who) { printf("HEY! "); return greet(who); }
"""

HELLO_C = r"""
#include <stdio.h>
const char *greet_where(void);
const char *greet_datadir(void);
const char *shout_where(void);
int shout(const char *who);
#ifndef HELLO_SHARE
#define HELLO_SHARE "unset"
#endif
int main(int argc, char **argv) {
    shout(argc > 1 ? argv[1] : "world");
    printf("libgreet: %s\n", greet_where());
    printf("libshout: %s\n", shout_where());
    printf("greet data: %s\n", greet_datadir());
    printf("hello share: %s\n", HELLO_SHARE);
    return 0;
}
"""

PC_TEMPLATE = """prefix={prefix}
libdir=${{prefix}}/lib
includedir=${{prefix}}/include

Name: {name}
Description: bincache demo library
Version: {version}
Libs: -L${{libdir}} -Wl,-rpath,${{libdir}} -l{lib}
Cflags: -I${{includedir}}
"""


@dataclass
class DemoStack:
    root: str
    greet: InstalledSpec
    shout: InstalledSpec
    hello: InstalledSpec

    @property
    def program(self) -> str:
        return os.path.join(self.hello.prefix, "bin", "hello")


def _run(cmd: list[str], cwd: str | None = None) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise BincacheError(f"{cmd[0]} is not installed; the demo compiles C code (apt-get install gcc)") from None
    except subprocess.CalledProcessError as e:
        raise BincacheError(f"{' '.join(cmd[:3])}... failed: {e.stderr.strip()[:500]}") from None


def _prefix_for(root: str, name: str, version: str, deps: list[Spec]) -> tuple[str, Spec]:
    """The projection needs the hash, which depends only on the node: compute it first."""
    spec = Spec.from_node(make_node(name, version, deps, host_arch()))
    return os.path.join(root, spec.projection()), spec


def build_stack(root: str, cc: str = "gcc") -> DemoStack:
    """Compile and install the demo stack under ``root`` and register each prefix there."""
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    src = os.path.join(root, ".demo-src")
    os.makedirs(src, exist_ok=True)
    for name, text in (("greet.c", GREET_C), ("shout.c", SHOUT_C), ("hello.c", HELLO_C)):
        with open(os.path.join(src, name), "w") as f:
            f.write(text)

    # libgreet
    greet_prefix, _ = _prefix_for(root, "greet", "1.0", [])
    os.makedirs(os.path.join(greet_prefix, "lib", "pkgconfig"), exist_ok=True)
    os.makedirs(os.path.join(greet_prefix, "include"), exist_ok=True)
    os.makedirs(os.path.join(greet_prefix, "share", "greet"), exist_ok=True)
    _run([cc, "-shared", "-fPIC", "-O2", f'-DDATADIR="{greet_prefix}/share/greet"',
          "-Wl,-soname,libgreet.so.1", "-o", os.path.join(greet_prefix, "lib", "libgreet.so.1.0"),
          os.path.join(src, "greet.c"), "-ldl"])
    os.symlink("libgreet.so.1.0", os.path.join(greet_prefix, "lib", "libgreet.so.1"))
    os.symlink("libgreet.so.1", os.path.join(greet_prefix, "lib", "libgreet.so"))
    with open(os.path.join(greet_prefix, "include", "greet.h"), "w") as f:
        f.write("int greet(const char *who);\n")
    with open(os.path.join(greet_prefix, "lib", "pkgconfig", "greet.pc"), "w") as f:
        f.write(PC_TEMPLATE.format(prefix=greet_prefix, name="greet", version="1.0", lib="greet"))
    with open(os.path.join(greet_prefix, "share", "greet", "motd.txt"), "w") as f:
        f.write("Greetings from the demo stack.\n")
    greet = register_prefix(greet_prefix, "greet", "1.0", root=root)

    # libshout -> libgreet
    shout_prefix, _ = _prefix_for(root, "shout", "2.1", [greet.spec])
    os.makedirs(os.path.join(shout_prefix, "lib", "cmake", "shout"), exist_ok=True)
    _run([cc, "-shared", "-fPIC", "-O2", "-Wl,-soname,libshout.so", "-o",
          os.path.join(shout_prefix, "lib", "libshout.so"), os.path.join(src, "shout.c"),
          f"-L{greet_prefix}/lib", f"-Wl,-rpath,{greet_prefix}/lib", "-Wl,--enable-new-dtags",
          "-lgreet", "-ldl"])
    with open(os.path.join(shout_prefix, "lib", "cmake", "shout", "shout-config.cmake"), "w") as f:
        f.write(f'set(SHOUT_PREFIX "{shout_prefix}")\n'
                f'set(SHOUT_LIBRARY "{shout_prefix}/lib/libshout.so")\n'
                f'set(SHOUT_DEPENDS "{greet_prefix}/lib/libgreet.so")\n')
    shout = register_prefix(shout_prefix, "shout", "2.1", deps=[greet_prefix], root=root)

    # hello -> libshout, libgreet (RUNPATH to both)
    hello_prefix, _ = _prefix_for(root, "hello", "3.2", [shout.spec, greet.spec])
    for d in ("bin", "share/hello", "libexec"):
        os.makedirs(os.path.join(hello_prefix, d), exist_ok=True)
    exe = os.path.join(hello_prefix, "bin", "hello")
    _run([cc, "-O2", f'-DHELLO_SHARE="{hello_prefix}/share/hello"', "-o", exe,
          os.path.join(src, "hello.c"), f"-L{shout_prefix}/lib", f"-L{greet_prefix}/lib",
          f"-Wl,-rpath,{shout_prefix}/lib:{greet_prefix}/lib", "-Wl,--enable-new-dtags",
          "-lshout", "-lgreet"])
    script = os.path.join(hello_prefix, "bin", "hello-wrapper")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\n# installed at {hello_prefix}\nexec {exe} \"$@\"\n")
    os.chmod(script, 0o755)
    os.link(exe, os.path.join(hello_prefix, "libexec", "hello-again"))
    os.symlink(os.path.join(greet_prefix, "share", "greet", "motd.txt"),
               os.path.join(hello_prefix, "share", "hello", "motd.txt"))
    with open(os.path.join(hello_prefix, "share", "hello", "README"), "w") as f:
        f.write(f"hello 3.2, installed in {hello_prefix}, uses {shout_prefix}\n")
    hello = register_prefix(hello_prefix, "hello", "3.2", deps=[shout_prefix, greet_prefix], root=root)
    shutil.rmtree(src, ignore_errors=True)
    InstallTree(root)  # nothing cached: callers read the tree fresh
    return DemoStack(root, greet, shout, hello)


def padded_root(base: str, length: int = 120) -> str:
    """A long install root (as Spack's padded_length does), so installs can go to shorter ones."""
    base = os.path.abspath(base)
    pad = "_pad" * ((max(0, length - len(base) - 1)) // 4 + 1)
    return os.path.join(base, ("opt" + pad)[: max(8, length - len(base) - 1)])
