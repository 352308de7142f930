"""`bincache config get|blame SECTION`: the merged configuration, and which file set what."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..config_schema import SCHEMAS

if TYPE_CHECKING:
    from .. import config


def register(sub, verb: str | None = None) -> None:
    # ``verb``: every verb of this module is built (they are few and cheap).
    p = sub.add_parser(
        "config",
        help="show the configuration and where each value comes from",
        description="Configuration scopes, lowest precedence first: defaults, site (<root>/etc), "
        "user (~/.bincache), each -C DIR, the command line. Sections: "
        + ", ".join(SCHEMAS) + ".",
    )
    csub = p.add_subparsers(dest="config_verb", metavar="SUBCOMMAND")
    csub.required = True

    g = csub.add_parser("get", help="print a section as merged over all scopes (or one scope)")
    g.add_argument("--scope", metavar="SCOPE", help="only this scope: defaults, site, user or DIR")
    g.add_argument("section", metavar="SECTION", help=" or ".join(SCHEMAS))
    g.set_defaults(func=cmd_get)

    b = csub.add_parser("blame", help="print a section with the file:line that set each value")
    b.add_argument("section", metavar="SECTION", help=" or ".join(SCHEMAS))
    b.set_defaults(func=cmd_blame)


def _configure(args) -> config.Config:
    from .. import config

    return config.configure(root=getattr(args, "root", None),
                            scope_dirs=getattr(args, "config_scope", None) or ())


def cmd_get(args) -> int:
    sys.stdout.write(_configure(args).dump(args.section, args.scope))
    return 0


def cmd_blame(args) -> int:
    sys.stdout.write(_configure(args).blame(args.section))
    return 0
