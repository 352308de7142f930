"""Verbs that write build caches: create/push, update-index, list, register."""

from __future__ import annotations

import argparse
import sys
import warnings

from .. import api
from ..errors import MirrorError, UsageError
from .output import LiveStatus, add_verbosity, human_size, print_json, table, verbosity


def register(sub, verb: str | None = None) -> None:
    """The parsers of this module's verbs; with ``verb``, only the one that parses it: a
    command builds one parser, not four (each was ~0.5 ms of every start, argparse's gettext
    lookups included)."""
    for names, add in _PARSERS:
        if verb is None or verb in names:
            add(sub)


def _register_create(sub) -> None:
    for name, aliases in (("create", ["push"]),):
        p = sub.add_parser(name, aliases=aliases, help="create binary packages and push them to a mirror",
                           description="Pack installed specs (all when none are given) and their "
                           "dependencies, and push them to MIRROR (a name, path or URL).")
        p.add_argument("mirror", nargs="?", help="mirror name, path or URL")
        p.add_argument("specs", nargs="*", help="specs to push: name, name@version, /hash")
        p.add_argument("--only", choices=["package", "dependencies"], help="push only the package or only its dependencies")
        p.add_argument("-f", "--force", action="store_true", help="overwrite packages already in the mirror")
        p.add_argument("--verify-present", action="store_true",
                       help="check that each package the mirror's index lists is really there "
                       "before skipping it (by default the index is believed)")
        p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                       help="packages packed and uploaded at once (default: the number of cores, at most 8)")
        p.add_argument("--compression", choices=["gzip", "zstd"], default=None,
                       help="tarball codec (default: the mirror's `compression`, else gzip; "
                       "Spack reads gzip only, and layout v2 takes gzip only)")
        p.add_argument("--compression-level", type=int, default=None, metavar="N",
                       help="gzip level 0-9 (default: the native core's fast level), zstd 1-19 "
                       "(default 3)")
        sign = p.add_mutually_exclusive_group()
        sign.add_argument("-u", "--unsigned", dest="signed", action="store_false", default=None, help="do not sign")
        sign.add_argument("--signed", dest="signed", action="store_true", help="sign even if the mirror says signed: false")
        p.add_argument("-k", "--key", help="GnuPG key to sign with")
        p.add_argument("--rebuild-index", "--update-index", dest="rebuild_index", action="store_true",
                       help="update the mirror's index after pushing")
        p.add_argument("--layout", choices=["v2", "v3"], default=None,
                       help="build cache layout of a directory or s3 mirror: v2 for Spack < 1.0, v3 "
                       "for Spack >= 1.0 (default: the one the mirror holds, else v3)")
        p.add_argument("--base-image", metavar="IMAGE", help="OCI: put the packages on this base image")
        p.add_argument("-t", "--tag", metavar="TAG", help="OCI: also tag all pushed specs as one image")
        p.add_argument("--json", action="store_true", help="print a JSON summary")
        add_verbosity(p, suppress=True)
        p.add_argument("-d", "--directory", help=argparse.SUPPRESS)
        p.add_argument("--mirror-url", help=argparse.SUPPRESS)
        p.add_argument("--mirror-name", help=argparse.SUPPRESS)
        p.set_defaults(func=cmd_create)


def _register_update_index(sub) -> None:
    p = sub.add_parser("update-index", aliases=["rebuild-index"], help="update the index of a mirror")
    p.add_argument("mirror", help="mirror name, path or URL")
    p.add_argument("-j", "--jobs", type=int, default=8, metavar="N", help="manifests fetched at once")
    p.add_argument("--layout", choices=["v2", "v3"], default=None,
                   help="which layout's index to update (default: the one the mirror holds)")
    p.add_argument("--html", action="store_true",
                   help="also write index.html, a page listing the packages (see `bincache browse`)")
    p.add_argument("--db-version", choices=["7", "8"], default=None,
                   help="Spack database version of the index (default: the one the index has; "
                        "for a new one, 7 when every package is a Spack 0.2x one and the mirror "
                        "is layout v2 or OCI, else 8)")
    p.add_argument("-k", "--key", default=None,
                   help="clearsign the index root with this GnuPG key (layout v3; readers verify it)")
    p.add_argument("--full", action="store_true",
                   help="list every manifest directory of a directory mirror, not only those "
                        "changed since the last update (again reads manifests it could not read)")
    p.add_argument("--json", action="store_true")
    add_verbosity(p, suppress=True)
    p.set_defaults(func=cmd_update_index)


def _register_list(sub) -> None:
    p = sub.add_parser("list", help="list the packages a mirror holds",
                       description="List the packages of MIRROR (default: every configured mirror) "
                       "built for this machine's platform and OS (-a: every architecture).")
    p.add_argument("mirror", nargs="?", help="mirror name, path or URL (default: every configured mirror)")
    p.add_argument("specs", nargs="*", help="only specs matching these (name, name@1.2:1.4, /hash)")
    # Spack's `buildcache list` spellings.
    hashes = p.add_mutually_exclusive_group()
    hashes.add_argument("-l", "--long", dest="hash_length", action="store_const", const=7,
                        default=7, help="show the hash (the default)")
    hashes.add_argument("-L", "--very-long", dest="hash_length", action="store_const", const=32,
                        help="show the full hash")
    p.add_argument("-v", "--variants", action="store_true", help="show each package's variants")
    p.add_argument("-a", "--allarch", action="store_true",
                   help="list packages of every architecture, not only this machine's")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)


def _register_register(sub) -> None:
    p = sub.add_parser("register", help="record a prefix built by another build system",
                       description="Write PREFIX/.spack/spec.json (Spack's format and hash) so the "
                       "prefix can be pushed; pushes it to autopush mirrors.")
    p.add_argument("prefix")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--dep", action="append", default=[], metavar="PREFIX", help="a registered dependency prefix")
    p.add_argument("--arch", metavar="PLATFORM-OS-TARGET", help="e.g. linux-debian12-x86_64")
    p.add_argument("--compiler", metavar="NAME@VERSION",
                   help="the compiler that built it, e.g. gcc@12.2.0 (Spack < 1.0 installs only "
                   "packages that name one)")
    p.add_argument("--hash-input", action="append", default=[], metavar="VALUE",
                   help="a build input folded into the package's hash (repeatable; @FILE: the "
                   "file's content), e.g. the source commit, so a rebuild is a new package")
    p.add_argument("--no-autopush", action="store_true", help="do not push to autopush mirrors")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_register)


# The verbs (aliases too) each function registers, in the order `bincache --help` lists them.
_PARSERS = ((("create", "push"), _register_create),
            (("update-index", "rebuild-index"), _register_update_index),
            (("list",), _register_list),
            (("register",), _register_register))


def _legacy_mirror(args) -> str | None:
    given = [(flag, v) for flag, v in (("--directory", args.directory), ("--mirror-url", args.mirror_url),
                                         ("--mirror-name", args.mirror_name)) if v]
    if not given:
        return None
    flag, value = given[0]
    warnings.warn(f"{flag} is deprecated: give the mirror as the first argument (bincache create MIRROR ...)",
                  DeprecationWarning, stacklevel=2)
    if flag == "--directory" and "/" not in value:
        value = "./" + value
    return value


def cmd_create(args) -> int:
    legacy = _legacy_mirror(args)
    if legacy is not None:
        if args.mirror:
            args.specs.insert(0, args.mirror)
        args.mirror = legacy
    if not args.mirror:
        raise UsageError("give a mirror: bincache create MIRROR [SPECS...]")
    include_deps = args.only != "package"
    include_roots = args.only != "dependencies"
    level = verbosity(args)
    live = LiveStatus(None if level >= 0 and not args.json else False)

    def planned(items) -> None:
        live.plan(len(items), sum(n for _, n in items))

    def pushed(p) -> None:
        live.finished(_pushed_line(p, level))

    # Off a terminal nothing is drawn: no walk to size the work, no callbacks per file.
    events = api.PushProgress(planned=planned, started=lambda inst: live.begin(inst.spec.short()),
                              packed_bytes=live.advance, pushed=pushed) if live.enabled else None
    extra = {}
    if args.base_image:
        extra["base_image"] = args.base_image
    if args.tag:
        extra["tag"] = args.tag
    try:
        result = api.push(args.mirror, args.specs, root=args.root, include_deps=include_deps,
                          include_roots=include_roots, force=args.force, jobs=args.jobs,
                          level=args.compression_level, compression=args.compression,
                          signed=args.signed, key=args.key,
                          update_index=args.rebuild_index, progress=events, layout=args.layout,
                          verify_present=args.verify_present, **extra)
    except api.PushInterrupted as e:
        live.close()
        return _interrupted(e, args, level, printed=live.enabled)
    finally:
        live.close()
    if args.json:
        print_json({
            "pushed": [{"name": p.spec.name, "version": p.spec.version, "hash": p.spec.hash,
                        "size": p.result.compressed_size, "input_bytes": p.bytes_in,
                        "checksum": p.result.digest} for p in result.pushed],
            "skipped": [{"name": s.name, "version": s.version, "hash": s.hash} for s in result.skipped],
            "seconds": round(result.seconds, 3),
            "index_updated": result.index_updated,
        })
        return 0
    if level >= 0:
        if not live.enabled:  # on a terminal each line was printed as its package finished
            for p in result.pushed:
                print(_pushed_line(p, level))
        for s in result.skipped:
            print(f"skipped  {s.short():40s} (already in the mirror: the same hash; --force to overwrite)")
    if result.pushed:
        mbs = result.bytes_in / 1e6 / max(result.seconds, 1e-9)
        print(f"{len(result.pushed)} pushed, {len(result.skipped)} skipped: "
              f"{human_size(result.bytes_in)} -> {human_size(result.bytes_out)} in {result.seconds:.2f}s ({mbs:.0f} MB/s)")
    else:
        print(f"nothing to push: {len(result.skipped)} already in the mirror")
    if result.index_updated:
        print("index updated")
    return 0


def _pushed_line(p, level: int) -> str:
    line = f"pushed   {p.spec.short():40s} {human_size(p.result.compressed_size):>10s}"
    if level > 0:
        line += (f"  {p.files} files, {human_size(p.bytes_in)} in {p.seconds:.2f}s "
                 f"({p.bytes_in / 1e6 / max(p.seconds, 1e-9):.0f} MB/s)")
    return line


def _interrupted(e: api.PushInterrupted, args, level: int, *, printed: bool) -> int:
    """Ctrl-C: what is in the mirror now (whole packages only) and what is not; exit 130."""
    result = e.result
    if args.json:
        print_json({
            "interrupted": True,
            "pushed": [{"name": p.spec.name, "version": p.spec.version, "hash": p.spec.hash} for p in result.pushed],
            "not_pushed": [{"name": s.name, "version": s.version, "hash": s.hash} for s in e.not_pushed],
        })
    else:
        if not printed and level >= 0:
            for p in result.pushed:
                print(_pushed_line(p, level))
        if level >= 0:
            for s in e.not_pushed:
                print(f"not pushed {s.short()}")
        sys.stdout.flush()
    print(f"error: interrupted: {len(result.pushed)} pushed whole, {len(e.not_pushed)} not pushed "
          "(the mirror holds no part of those)", file=sys.stderr)
    return 130


def cmd_update_index(args) -> int:
    live = LiveStatus(None if verbosity(args) >= 0 and not args.json else False, unit=" manifests")

    def progress(done: int, total: int) -> None:
        if done == 1:
            live.plan(total, total)
            live.begin("reading manifests")
        live.advance(1)

    try:
        idx, fetched = api.update_index(args.mirror, jobs=args.jobs, layout=args.layout,
                                        db_version=args.db_version, key=args.key, full=args.full,
                                        warn=lambda m: warnings.warn(m, stacklevel=2), progress=progress)
    finally:
        live.close()
    n = idx.package_count()
    page = api.write_cache_page(args.mirror, jobs=args.jobs) if args.html else None
    if args.json:
        print_json({"packages": n, "fetched": fetched, **({"page": page.path} if page else {})})
    else:
        print(f"index updated: {n} packages ({fetched} new)")
        if page:
            print(f"page written: {page.path}")
    return 0


def cmd_list(args) -> int:
    from ..spec import host_arch

    mirrors = [args.mirror] if args.mirror else _configured_fetch_mirrors()
    host = host_arch()
    rows, data, other_arch = [], [], 0
    for m in mirrors:
        try:
            entries, from_index = api.list_mirror(m, args.specs)
        except MirrorError as err:
            if args.mirror:
                raise
            # One configured mirror that is missing or down does not hide the others.
            warnings.warn(f"skipping mirror {m}: {err}", stacklevel=2)
            continue
        if not from_index:
            warnings.warn(f"{m} has no index; listing its manifests (run bincache update-index {m})", stacklevel=2)
        for e in entries:
            if args.specs and not any(_match(e, s) for s in args.specs):
                continue
            arch = e.spec.arch
            if not args.allarch and not _same_platform_os(arch, host):
                other_arch += 1
                continue
            arch_text = "-".join((e.spec.platform, str(arch.get("platform_os", "-")), e.spec.target))
            data.append({"name": e.spec.name, "version": e.spec.version, "hash": e.spec.hash,
                         "size": e.size, "arch": f"{e.spec.platform}-{e.spec.target}",
                         "platform_os": arch.get("platform_os"), "mirror": str(m)})
            row = [e.spec.name, e.spec.version, e.spec.hash[:args.hash_length], arch_text,
                   human_size(e.size) if e.size else "-"]
            if args.variants:
                row.append(_variants(e.spec) or "-")
            rows.append(row)
    if args.json:
        print_json(data)
        return 0
    if rows:
        headers = ["NAME", "VERSION", "HASH", "ARCH", "SIZE"] + (["VARIANTS"] if args.variants else [])
        table(rows, headers)
        print(f"{len(rows)} package{'' if len(rows) == 1 else 's'}")
    else:
        print("no packages")
    if other_arch:
        print(f"({other_arch} for other architectures not shown: -a lists them)")
    return 0


def _same_platform_os(arch: dict, host: dict) -> bool:
    """Spack's default for list and install: this machine's platform and OS."""
    return all(arch.get(k) in (None, host[k]) for k in ("platform", "platform_os"))


def _variants(spec) -> str:
    """Spack's variant syntax (+shared ~static build_type=Release) from the node's parameters."""
    params = spec.node.get("parameters") or {}
    out = []
    for k, v in sorted(params.items()):
        if k in ("cflags", "cppflags", "cxxflags", "fflags", "ldflags", "ldlibs", "patches"):
            continue
        if isinstance(v, bool):
            out.append(("+" if v else "~") + k)
        elif isinstance(v, list):
            out.append(f"{k}={','.join(map(str, v))}")
        else:
            out.append(f"{k}={v}")
    return " ".join(out)


def _match(entry, selector: str) -> bool:
    from ..spec import matches

    return matches(entry.spec, selector)


def _configured_fetch_mirrors() -> list:
    from ..mirror.config import configured_mirrors

    mirrors = configured_mirrors("fetch")
    if not mirrors:
        raise UsageError("no mirror given and none configured: bincache list MIRROR")
    return mirrors


def cmd_register(args) -> int:
    arch = None
    if args.arch:
        parts = args.arch.split("-")
        if len(parts) != 3:
            raise UsageError("--arch takes PLATFORM-OS-TARGET, e.g. linux-debian12-x86_64")
        arch = {"platform": parts[0], "platform_os": parts[1], "target": parts[2]}
    inst = api.register(args.prefix, args.name, args.version, deps=args.dep, arch=arch, root=args.root,
                        compiler=args.compiler, hash_inputs=args.hash_input)
    if not args.json:
        print(f"registered {inst.spec.short()} at {inst.prefix}", flush=True)
    results = []
    if not args.no_autopush:
        from ..autopush import on_build_finished

        results = on_build_finished(inst.prefix, root=args.root)
    if args.json:
        print_json({"name": inst.spec.name, "version": inst.spec.version, "hash": inst.hash, "prefix": inst.prefix,
                    "autopush": [{"mirror": r.mirror, "pushed": r.pushed, "error": r.error} for r in results]})
        return 0
    for r in results:
        if r.ok and r.pushed:
            print(f"pushed to {r.mirror}")
        elif r.ok:
            print(f"skipped  {inst.spec.short()}: already in {r.mirror} (the same hash; "
                  "--hash-input gives a rebuild a new one)")
    return 0
