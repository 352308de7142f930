"""Verbs that read build caches into this machine: install, download."""

from __future__ import annotations

import os
import sys
import threading

from .. import api
from ..errors import UsageError
from .output import LiveStatus, add_verbosity, human_size, print_json, verbosity


def register(sub, verb: str | None = None) -> None:
    # ``verb``: every verb of this module is built (they are few and cheap).
    p = sub.add_parser(
        "install",
        help="install packages from build caches",
        description="Install SPECS (name, name@version, /hash) and their dependencies from the "
        "mirrors into the install tree (--root), relocated to their new prefixes.",
    )
    p.add_argument("specs", nargs="+", help="specs to install: name, name@version, /hash")
    _mirror_options(p)
    p.add_argument("-f", "--force", action="store_true", help="reinstall specs already installed")
    p.add_argument("-o", "--otherarch", action="store_true",
                   help="install packages built for another platform or OS than this machine's")
    p.add_argument(
        "--allow-unrelocated",
        action="store_true",
        help="install even when a string embedding the old prefix cannot grow to the new one "
        "(every such string is listed)",
    )
    p.add_argument(
        "--projection",
        metavar="TEMPLATE",
        help="layout of prefixes under the root (default {platform}-{target}/{name}-{version}-{hash})",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_verbosity(p, suppress=True)
    p.set_defaults(func=cmd_install)

    p = sub.add_parser(
        "download",
        help="fetch and verify packages without installing them",
        description="Fetch SPECS and their dependencies, check signatures, sizes and SHA-256, and "
        "write <name>-<version>-<hash>.tar.gz and .spec.json into DIR.",
    )
    p.add_argument("specs", nargs="*", help="specs to fetch: name, name@version, /hash")
    p.add_argument("-s", "--spec", dest="spec_options", action="append", default=[],
                   metavar="SPEC", help="a spec to fetch (Spack's spelling; repeatable)")
    _mirror_options(p)
    p.add_argument("-d", "-p", "--dest", "--path", dest="dest", default=".", metavar="DIR",
                   help="where to write the files (default: the current directory)")
    p.add_argument("--only", choices=["package"], help="do not fetch dependencies")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_verbosity(p, suppress=True)
    p.set_defaults(func=cmd_download)


def _mirror_options(p) -> None:
    p.add_argument("-m", "--mirror", action="append", default=[], metavar="M",
                   help="mirror name, path or URL (repeatable; default: every configured mirror)")
    p.add_argument("-u", "--unsigned", dest="unsigned", action="store_true", default=None,
                   help="do not check signatures (overrides the mirror's signed setting)")
    p.add_argument("-j", "--jobs", type=int, default=2, metavar="N",
                   help="packages fetched and extracted at once (default 2)")


class _PlanProgress:
    """The live line of install and download, from the (step, package plan) callbacks, which
    come from worker threads."""

    def __init__(self, args, done_line):
        self.level = verbosity(args)
        self.live = LiveStatus(None if self.level >= 0 and not args.json else False)
        self.done_line = done_line
        self.planned: list = []
        self.started = False
        self._lock = threading.Lock()

    def __call__(self, step: str, plan) -> None:
        with self._lock:
            if step == "planned":
                self.planned.append(plan)
                return
            if not self.started:
                self.started = True
                self.live.plan(len(self.planned), sum(p.manifest.tarball.content_length for p in self.planned))
        if step == "fetch":
            self.live.begin(plan.spec.short())
        elif step in ("extract", "relocate"):
            self.live.begin(f"{plan.spec.short()} ({step})")
        elif step == "fetched":
            self.live.advance(plan.manifest.tarball.content_length)
        elif step in ("installed", "downloaded"):
            self.live.finished(self.done_line(plan))


def cmd_install(args) -> int:
    progress = _PlanProgress(args, lambda plan: f"installed {plan.spec.short():30s} "
                             f"{human_size(plan.manifest.tarball.content_length):>10s}  {plan.prefix}")
    try:
        result = api.install(
            args.specs,
            mirrors=args.mirror,
            root=args.root,
            unsigned=args.unsigned,
            force=args.force,
            jobs=args.jobs,
            allow_unrelocated=args.allow_unrelocated,
            projection=args.projection,
            progress=progress,
            otherarch=args.otherarch,
        )
    finally:
        progress.live.close()
    for prefix, u in result.unrelocated:
        print(f"warning: not relocated: {prefix}/{u}", file=sys.stderr)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print_json({
            "installed": [
                {"name": p.spec.name, "version": p.spec.version, "hash": p.spec.hash,
                 "prefix": p.prefix, "size": p.size, "files": p.files,
                 "relocated": {"text": p.report.text_files, "binary": p.report.binary_files,
                               "elf_fields": p.report.elf_fields, "links": p.report.links}}
                for p in result.installed
            ],
            "skipped": [{"name": s.spec.name, "version": s.spec.version, "hash": s.hash,
                         "prefix": s.prefix} for s in result.skipped],
            "unrelocated": [{"prefix": prefix, "path": u.path, "offset": u.offset, "old": u.old,
                             "new": u.new} for prefix, u in result.unrelocated],
            "seconds": round(result.seconds, 3),
        })
        return 0
    if progress.level >= 0:
        if not progress.live.enabled:  # on a terminal each was printed as it finished
            for p in result.installed:
                print(f"installed {p.spec.short():30s} {human_size(p.size):>10s}  {p.prefix}")
        for s in result.skipped:
            print(f"skipped   {s.spec.short():30s} (already installed at {s.prefix})")
    if result.installed:
        mbs = result.bytes_extracted / 1e6 / max(result.seconds, 1e-9)
        print(f"{len(result.installed)} installed, {len(result.skipped)} already there: "
              f"{human_size(result.bytes_fetched)} fetched, {human_size(result.bytes_extracted)} "
              f"extracted in {result.seconds:.2f}s ({mbs:.0f} MB/s)")
    else:
        print(f"nothing to install: {len(result.skipped)} already installed")
    return 0


def cmd_download(args) -> int:
    specs = list(args.specs) + list(args.spec_options)
    if not specs:
        raise UsageError("give a spec to fetch: bincache download SPEC or -s SPEC")
    progress = _PlanProgress(args, lambda plan: f"downloaded {plan.spec.short():30s} "
                             f"{human_size(plan.manifest.tarball.content_length):>10s}")
    try:
        got = api.download(specs, args.dest, mirrors=args.mirror, unsigned=args.unsigned, jobs=args.jobs,
                           with_dependencies=args.only != "package", progress=progress)
    finally:
        progress.live.close()
    if args.json:
        print_json([{"name": d.spec.name, "version": d.spec.version, "hash": d.spec.hash,
                     "tarball": d.tarball, "specfile": d.specfile, "size": d.size} for d in got])
        return 0
    if progress.level >= 0 and not progress.live.enabled:
        for d in got:
            print(f"downloaded {d.spec.short():30s} {human_size(d.size):>10s}  {os.path.relpath(d.tarball)}")
    return 0
