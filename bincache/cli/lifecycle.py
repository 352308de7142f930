"""Verbs for a cache's life after the push: check, migrate, browse, prune, sync."""

from __future__ import annotations

import json
import sys

from .. import api
from ..errors import UsageError
from .output import LiveStatus, human_size, print_json, table


def register(sub, verb: str | None = None) -> None:
    # ``verb``: every verb of this module is built (they are few and cheap).
    p = sub.add_parser(
        "check", help="tell which specs a mirror lacks (exit 1 when something needs a rebuild)",
        description="For each spec (default: every installed spec of --root), whether MIRROR "
        "holds its package with a signature that verifies against a trusted key. Exit status 0 "
        "when nothing needs a rebuild, 1 when something does (on any mirror), as Spack's "
        "`buildcache check`. SPECS are name, name@version, /hash (installed here, or a full "
        "/hash looked up in the mirror) or spec files.")
    p.add_argument("mirror", nargs="?", help="mirror name, path or URL (default: -m, else every "
                   "configured mirror)")
    p.add_argument("specs", nargs="*", help="specs, /hashes or spec files to check")
    p.add_argument("-m", "--mirror", dest="mirrors", action="append", default=[], metavar="M",
                   help="a mirror to check against (repeatable; then every argument is a spec)")
    p.add_argument("--unsigned", action="store_true", default=None,
                   help="a package without a verifiable signature is good enough")
    p.add_argument("-o", "--output-file", metavar="FILE",
                   help="write the specs to rebuild, per mirror, as Spack's JSON document")
    p.add_argument("-j", "--jobs", type=int, default=4, metavar="N", help="checks at once")
    p.add_argument("--json", action="store_true", help="print every result as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "migrate", help="migrate a Spack layout v2 cache to layout v3",
        description="Rewrite the layout v2 cache at MIRROR (Spack before 1.0) as a layout v3 "
        "cache, in place or into DEST, as Spack 1.0's `buildcache migrate` does. A v2 signature "
        "covers the spec file and v3 signs the manifest, so signatures cannot be carried over: "
        "signed packages are verified against your trusted keys and their manifests signed with "
        "-k KEY. Every package is checked before anything is written; the old layout stays "
        "unless --delete-old. Run it again to resume.")
    p.add_argument("mirror", help="the v2 cache: mirror name, path or URL")
    p.add_argument("dest", nargs="?", help="where to write the v3 cache (default: in place)")
    p.add_argument("-k", "--key", help="GnuPG key that signs the new manifests")
    p.add_argument("-u", "--unsigned", action="store_true",
                   help="migrate unsigned packages, and signed ones without -k, unsigned")
    p.add_argument("--delete-old", "--delete-existing", dest="delete_old", action="store_true",
                   help="remove build_cache/ once every package is migrated")
    p.add_argument("-y", "--yes-to-all", dest="yes", action="store_true",
                   help="do not ask before --delete-old")
    p.add_argument("-j", "--jobs", type=int, default=4, metavar="N", help="packages at once")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "browse", help="write a static HTML page listing a mirror's packages",
        description="Write index.html: every package of MIRROR's index with version, hash, "
        "architecture, size, signer (verified here), push date, dependencies as links, a search "
        "box and the commands to install it. One file, no dependencies: open it from a "
        "directory or put it on any static host. Without -o it is written into the mirror "
        "(as `update-index --html` does).")
    p.add_argument("mirror", help="mirror name, path or URL")
    p.add_argument("-o", "--output", metavar="DIR", help="write the page into DIR instead")
    p.add_argument("--url", metavar="URL", help="the mirror URL the install commands name "
                   "(default: the mirror's, or where the page is served from)")
    p.add_argument("-j", "--jobs", type=int, default=8, metavar="N", help="signatures checked at once")
    p.set_defaults(func=cmd_browse)

    p = sub.add_parser(
        "prune", help="delete what no root needs (mark and sweep; a dry run unless --yes)",
        description="Keep every package reachable from the roots through its dependencies and "
        "delete the rest: manifests first, then blobs no remaining manifest names. Nothing "
        "younger than --grace is deleted (a push running meanwhile keeps its uploads, and "
        "packages pushed that recently count as roots). Roots: specs (name, name@version, "
        "/hash), files of hashes, spack.lock files, --keep-newest N. With -m, several mirrors "
        "at once, roots from all of them. Layout v3 mirrors (directory, s3) and OCI registries "
        "(their delete API; a registry that refuses deletes is said before anything changes; "
        "a registry tells no ages, so there --grace cannot apply).")
    p.add_argument("mirror", nargs="?", help="mirror path (or -m, repeatable)")
    p.add_argument("-m", "--mirror", dest="mirrors", action="append", default=[], metavar="M",
                   help="a mirror to prune (repeatable)")
    p.add_argument("-k", "--keep", action="extend", nargs="+", default=[], metavar="ROOT",
                   help="a spec, a file of hashes, or a spack.lock")
    p.add_argument("--keep-newest", type=int, default=0, metavar="N",
                   help="also keep the N most recently pushed packages of each name")
    p.add_argument("--grace", type=float, default=3600.0, metavar="SECONDS",
                   help="never delete blobs or packages younger than this (default 3600)")
    p.add_argument("-y", "--yes", action="store_true", help="delete (default: only list)")
    p.add_argument("-j", "--jobs", type=int, default=8, metavar="N", help="manifests read at once")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "sync", help="copy packages from one mirror to another, signatures as they are",
        description="Copy SPECS (default: every package) and their dependencies from SRC to DST, "
        "layout v3 mirrors (directory, s3; http as a source), OCI registries, or from a layout "
        "v2 cache (converted as migrate does; signed packages need --resign): blobs the "
        "destination has are not copied again (between repositories of one registry they are "
        "mounted), manifests are copied byte for byte (signed ones stay valid; in a registry a "
        "signed manifest goes along with the image as its signature), a layout v3 source's "
        "public keys go along to a layout v3 destination, and the destination's index is "
        "updated. Run it again to resume.")
    p.add_argument("source", metavar="SRC", help="mirror name, path or URL to copy from")
    p.add_argument("dest", metavar="DST", help="mirror name, path or URL to copy to")
    p.add_argument("specs", nargs="*", help="specs to copy: name, name@version, /hash")
    p.add_argument("--only", choices=["package"], help="do not copy dependencies")
    p.add_argument("--resign", metavar="KEY", help="verify each signed package against your "
                   "trusted keys and sign the copy with KEY (a key of your keyring); needed "
                   "for signed packages of a layout v2 source")
    p.add_argument("--no-update-index", dest="update_index", action="store_false",
                   help="leave the destination's index as it is")
    p.add_argument("-j", "--jobs", type=int, default=4, metavar="N", help="packages copied at once")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_sync)


def cmd_check(args) -> int:
    specs = list(args.specs)
    mirrors = list(args.mirrors)
    if mirrors:
        if args.mirror:
            specs.insert(0, args.mirror)
    elif args.mirror:
        mirrors = [args.mirror]
    if args.jobs < 1:
        raise UsageError("-j takes a positive number")
    report = api.check(specs, mirrors=mirrors, root=args.root, unsigned=args.unsigned,
                       jobs=args.jobs)
    if args.output_file:
        try:
            with open(args.output_file, "w") as f:
                json.dump(report.rebuilds(), f, indent=2)
        except OSError as e:
            raise UsageError(f"cannot write {args.output_file}: {e.strerror}") from None
    if args.json:
        print_json({"needs_rebuild": report.needs_rebuild,
                    "results": [r.to_dict() for r in report.results],
                    "rebuilds": report.rebuilds()})
    else:
        rows = [[r.status, r.target.short(), r.mirror_name or r.mirror, r.reason]
                for r in report.results]
        table(rows, ["STATUS", "SPEC", "MIRROR", "WHY"])
        bad = {r.target.hash for r in report.results if r.needs_rebuild}
        n = len({r.target.hash for r in report.results})
        if bad:
            print(f"{len(bad)} of {n} spec{'' if n == 1 else 's'} need{'s' if len(bad) == 1 else ''} "
                  "a rebuild")
        else:
            print(f"nothing to rebuild: every mirror holds all {n} spec{'' if n == 1 else 's'}")
    return 1 if report.needs_rebuild else 0


def cmd_migrate(args) -> int:
    if args.jobs < 1:
        raise UsageError("-j takes a positive number")
    if args.delete_old and not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("--delete-old removes the layout v2 files: add --yes-to-all to confirm")
        answer = input("--delete-old removes build_cache/ once the migration succeeds. Proceed? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise UsageError("migration aborted")
    result = api.migrate(args.mirror, args.dest, key=args.key, unsigned=args.unsigned,
                         delete_old=args.delete_old, jobs=args.jobs)
    if args.json:
        print_json({"source": result.source, "dest": result.dest, "in_place": result.in_place,
                    "key": result.key, "index_updated": result.index_updated,
                    "layout_written": result.layout_written, "deleted_old": result.deleted_old,
                    "packages": [vars(p) for p in result.packages]})
        return 1 if result.failed else 0
    rows = []
    for p in result.packages:
        if p.action == "migrated" and p.signer:
            why = f"v2 signature by {p.v2_signer} verified; manifest signed by {p.signer}"
        elif p.action == "migrated" and p.signed_v2:
            why = "v2 signature NOT carried over (--unsigned without -k): unsigned now"
        elif p.action == "migrated":
            why = "unsigned"
        else:
            why = p.message
        rows.append([p.action, p.short(), why])
    if rows:
        table(rows, ["ACTION", "SPEC", "SIGNATURE"])
    counts = {a: sum(p.action == a for p in result.packages) for a in ("migrated", "present", "failed")}
    where = "in place" if result.in_place else f"into {result.dest}"
    print(f"{counts['migrated']} migrated, {counts['present']} already in layout v3, "
          f"{counts['failed']} failed ({where})")
    if any(p.signer for p in result.packages):
        print(f"re-signed with {result.key}: a v2 signature covers the spec file, layout v3 signs "
              "the manifest, so the old signatures cannot be kept; its public key is published")
    if result.failed:
        print("layout.json not written (the mirror still reads as v2 where it was one); fix the "
              "failures above and run again")
    elif result.deleted_old:
        print("old layout (build_cache/) deleted")
    else:
        print("old layout kept: Spack < 1.0 still reads it, and pushes to this mirror now need "
              "--layout v3 (or v2); `migrate --delete-old` removes it" if result.in_place
              else "old layout kept (--delete-old removes it)")
    return 1 if result.failed else 0


def cmd_browse(args) -> int:
    page = api.write_cache_page(args.mirror, args.output, url=args.url, jobs=max(1, args.jobs))
    print(f"page written: {page.path} ({page.packages} packages)")
    return 0


def cmd_prune(args) -> int:
    mirrors = list(args.mirrors) + ([args.mirror] if args.mirror else [])
    if not mirrors:
        raise UsageError("give the mirror to prune: bincache prune MIRROR --keep ROOT...")
    if args.keep_newest < 0 or args.jobs < 1:
        raise UsageError("--keep-newest and -j take positive numbers")
    result = api.prune(mirrors, args.keep, newest=args.keep_newest, yes=args.yes,
                       grace=args.grace, jobs=args.jobs)
    if args.json:
        print_json({"dry_run": result.dry_run,
                    "roots": [{"name": s.name, "version": s.version, "hash": s.hash} for s in result.roots],
                    "young": [s.hash for s in result.young],
                    "mirrors": [{"url": m.url,
                                 "kept": [s.hash for s in m.kept], "deleted": [s.hash for s in m.deleted],
                                 "blobs_deleted": m.blobs_deleted, "bytes_freed": m.bytes_freed,
                                 "blobs_young": m.blobs_young} for m in result.mirrors]})
        return 0
    verb = "would delete" if result.dry_run else "deleted"
    for m in result.mirrors:
        for s in m.deleted:
            print(f"{verb}  {s.short()}")
        young = f"; {m.blobs_young} unreferenced blobs kept, younger than --grace" if m.blobs_young else ""
        print(f"{m.url}: {len(m.kept)} kept, {len(m.deleted)} {verb}; {m.blobs_deleted} blobs "
              f"({human_size(m.bytes_freed)}) {verb}{young}")
    print(f"{len(result.roots)} roots"
          + (f", and {len(result.young)} packages pushed within --grace kept as roots"
             if result.young else ""))
    if result.dry_run:
        print("dry run: nothing deleted; add --yes to delete")
    return 0


def cmd_sync(args) -> int:
    if args.jobs < 1:
        raise UsageError("-j takes a positive number")
    live = LiveStatus(False if args.json else None, unit=" packages")
    try:
        result = api.sync(args.source, args.dest, args.specs, only_package=args.only == "package",
                          jobs=args.jobs, update_index=args.update_index, resign=args.resign,
                          planned=lambda n: live.plan(n, None),
                          copied=lambda s: live.finished(f"copied   {s.short()}"))
    finally:
        live.close()
    if args.json:
        def specs(items):
            return [{"name": s.name, "version": s.version, "hash": s.hash} for s in items]

        print_json({"source": result.source, "dest": result.dest, "copied": specs(result.copied),
                    "present": specs(result.present), "blobs_copied": result.blobs_copied,
                    "bytes_copied": result.bytes_copied, "blobs_present": result.blobs_present,
                    "blobs_mounted": result.blobs_mounted, "resigned": result.resigned,
                    "index_updated": result.index_updated,
                    "requests": dict(sorted(result.requests.items()))})
        return 0
    if not live.enabled:
        for s in result.copied:
            print(f"copied   {s.short()}")
    print(f"{len(result.copied)} copied, {len(result.present)} already in {result.dest}: "
          f"{result.blobs_copied} blobs ({human_size(result.bytes_copied)}) copied, "
          f"{result.blobs_present} already there"
          + (f", {result.blobs_mounted} mounted" if result.blobs_mounted else "")
          + ("; index updated" if result.index_updated else ""))
    return 0
