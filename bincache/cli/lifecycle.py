"""Verbs for a cache's life after the push: check (and migrate, browse)."""

from __future__ import annotations

import json

from .. import api
from ..errors import UsageError
from .output import print_json, table


def register(sub) -> None:
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
