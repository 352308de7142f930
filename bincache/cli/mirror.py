"""`bincache mirror add|set|set-url|remove|list`: named mirrors in the configuration scopes."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import ConfigError, UsageError
from .output import print_json, table

if TYPE_CHECKING:  # imported by the verbs that use them (not by every command's start)
    from ..mirror import config as mirrors


def register(sub, verb: str | None = None) -> None:
    # ``verb``: every verb of this module is built (they are few and cheap).
    p = sub.add_parser(
        "mirror",
        help="add, change, remove and list named mirrors",
        description="Named mirrors live in mirrors.yaml of a configuration scope "
        "(site, user ~/.bincache, or a -C DIR). A relative path is written as given and "
        "taken relative to that scope's directory when used.",
    )
    msub = p.add_subparsers(dest="mirror_verb", metavar="SUBCOMMAND")
    msub.required = True

    a = msub.add_parser("add", help="add a named mirror", description="Add mirror NAME at URL "
                        "(a path, file://, http(s)://, s3:// or oci:// URL).")
    _scope_arg(a)
    a.add_argument("--autopush", action="store_true", default=None,
                   help="push every package here right after it is built or registered")
    _signed_args(a)
    _credential_args(a)
    a.add_argument("--insecure", action="store_true", default=None,
                   help="allow plain http to this OCI registry (test registries only)")
    _compression_arg(a)
    a.add_argument("name", metavar="NAME")
    a.add_argument("url", metavar="URL")
    a.set_defaults(func=cmd_add)

    s = msub.add_parser("set", help="change a mirror's URL, credentials or flags",
                        description="Change mirror NAME in the scope that defines it. With --push "
                        "or --fetch, URL and credentials apply to that direction only.")
    _direction_args(s)
    s.add_argument("--url", help="the new URL")
    _scope_arg(s, "the highest scope that defines NAME")
    s.add_argument("--autopush", action=argparse.BooleanOptionalAction, default=None,
                   help="push every build here (--no-autopush: stop)")
    _signed_args(s)
    _credential_args(s)
    s.add_argument("--insecure", action=argparse.BooleanOptionalAction, default=None,
                   help="allow plain http to this OCI registry")
    _compression_arg(s)
    s.add_argument("name", metavar="NAME")
    s.set_defaults(func=cmd_set)

    u = msub.add_parser("set-url", help="change a mirror's URL",
                        description="Change the URL of mirror NAME (both directions unless "
                        "--push or --fetch).")
    _direction_args(u)
    _scope_arg(u, "the highest scope that defines NAME")
    u.add_argument("name", metavar="NAME")
    u.add_argument("url", metavar="URL")
    u.set_defaults(func=cmd_set_url)

    r = msub.add_parser("remove", aliases=["rm"], help="remove a mirror",
                        description="Remove mirror NAME from every scope file that defines it "
                        "(or from --scope only).")
    _scope_arg(r, "every scope that defines NAME")
    r.add_argument("name", metavar="NAME")
    r.set_defaults(func=cmd_remove)

    ls = msub.add_parser("list", help="list the configured mirrors (credentials masked)")
    ls.add_argument("--scope", metavar="SCOPE", help="only the mirrors of this scope")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_list)


def _scope_arg(p: argparse.ArgumentParser,
               default: str = "the last -C DIR, else user") -> None:
    p.add_argument("--scope", metavar="SCOPE", help=f"site, user or a directory (default: {default})")


def _direction_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--push", dest="direction", action="store_const", const="push",
                   help="change only what pushing uses")
    g.add_argument("--fetch", dest="direction", action="store_const", const="fetch",
                   help="change only what fetching uses")


def _signed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--signed", dest="signed", action="store_const", const=True, default=None,
                   help="sign pushes and require signatures on install (the default)")
    g.add_argument("--unsigned", dest="signed", action="store_const", const=False,
                   help="push unsigned packages; install without verifying")


def _compression_arg(p: argparse.ArgumentParser) -> None:
    # Checked by mirror.urls.check_compression, not argparse choices: one error line.
    p.add_argument("--compression", metavar="CODEC",
                   help="tarball codec of pushes here: gzip (the default; what Spack reads) or "
                        "zstd (bincache clients only; not on a layout v2 mirror)")


def _check_codec(url: str, codec: str) -> None:
    """What create refuses at push time, refused when it is configured: zstd on a mirror that
    holds a layout v2 build cache (a mirror that cannot be reached now is not checked)."""
    from .. import config
    from ..errors import BincacheError
    from ..mirror import MirrorRef, open_cache

    try:
        cache = open_cache(MirrorRef(url=url), push=True)
    except BincacheError:
        return
    if codec not in cache.compressions:
        raise UsageError(f"{config.mask_url(url)} is a layout v2 build cache, which Spack 0.2x "
                         f"reads, and it reads gzip tarballs only: keep --compression gzip, or "
                         "use a layout v3 or OCI mirror")


def _credential_args(p: argparse.ArgumentParser) -> None:
    # Spack's spellings; OCI and S3 share the one access_pair (user or key id, and secret).
    u = p.add_mutually_exclusive_group()
    u.add_argument("--oci-username", metavar="USER", help="registry user name")
    u.add_argument("--oci-username-variable", metavar="VAR",
                   help="environment variable holding the user name (read when used)")
    u.add_argument("--s3-access-key-id", metavar="ID", help="S3 access key id")
    u.add_argument("--s3-access-key-id-variable", metavar="VAR",
                   help="environment variable holding the S3 access key id (read when used)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--oci-password-variable", metavar="VAR",
                   help="environment variable holding the password or token (read when used)")
    w.add_argument("--oci-password", metavar="PASSWORD",
                   help="password stored in plain text (prefer --oci-password-variable)")
    w.add_argument("--s3-access-key-secret-variable", metavar="VAR",
                   help="environment variable holding the S3 secret access key (read when used)")
    p.add_argument("--s3-profile", metavar="PROFILE",
                   help="AWS profile (~/.aws/config) for this S3 mirror")
    p.add_argument("--s3-endpoint-url", metavar="URL",
                   help="S3-compatible server for this mirror, e.g. http://127.0.0.1:9000")


def _configure(args) -> None:
    # The CLI's global options: --root names the site scope (<root>/etc), -C adds scopes.
    from .. import config

    config.configure(root=getattr(args, "root", None),
                     scope_dirs=getattr(args, "config_scope", None) or ())


def _changes(args, url: str | None = None) -> mirrors.MirrorChanges:
    from ..mirror import config as mirrors

    Cred = mirrors.Credential
    username = password = None
    for literal, variable in (("oci_username", "oci_username_variable"),
                              ("s3_access_key_id", "s3_access_key_id_variable")):
        if getattr(args, literal, None) is not None:
            username = Cred(literal=getattr(args, literal))
        elif getattr(args, variable, None) is not None:
            username = Cred(variable=_variable_name(getattr(args, variable)))
    for variable in ("oci_password_variable", "s3_access_key_secret_variable"):
        if getattr(args, variable, None) is not None:
            password = Cred(variable=_variable_name(getattr(args, variable)))
    if getattr(args, "oci_password", None) is not None:
        password = Cred(literal=args.oci_password)
    return mirrors.MirrorChanges(
        url=url,
        username=username,
        password=password,
        signed=getattr(args, "signed", None),
        autopush=getattr(args, "autopush", None),
        insecure=getattr(args, "insecure", None),
        profile=getattr(args, "s3_profile", None),
        endpoint_url=getattr(args, "s3_endpoint_url", None),
        compression=getattr(args, "compression", None),
    )


def _variable_name(name: str) -> str:
    # People write what they would type in a shell; the file holds the bare name.
    bare = name[1:] if name.startswith("$") else name
    if bare.startswith("{") and bare.endswith("}"):
        bare = bare[1:-1]
    if not bare.replace("_", "a").isalnum() or bare[0].isdigit():
        raise UsageError(f'"{name}" is not an environment variable name')
    return bare


def _report(result: mirrors.EditResult) -> None:
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)


def cmd_add(args) -> int:
    from ..mirror import config as mirrors

    _configure(args)
    result = mirrors.add_mirror(args.name, args.url, _changes(args), scope=args.scope, check=_check_codec)
    where = _where(args.name)
    print(f'added mirror "{args.name}" ({where}) to {result.files[0]}')
    _report(result)
    return 0


def cmd_set(args) -> int:
    from ..mirror import config as mirrors

    _configure(args)
    changes = _changes(args, url=args.url)
    if changes == mirrors.MirrorChanges():
        raise UsageError("nothing to change: give --url, a credential, an --s3-* setting or a flag")
    if args.direction and not changes.connection_changed:
        raise UsageError(f"--{args.direction} applies to --url, credentials and --s3-* settings; "
                         "give one")
    result = mirrors.set_mirror(args.name, changes, direction=args.direction, scope=args.scope,
                                check=_check_codec)
    print(f'changed mirror "{args.name}" in {result.files[0]}')
    _report(result)
    return 0


def cmd_set_url(args) -> int:
    from ..mirror import config as mirrors

    _configure(args)
    changes = mirrors.MirrorChanges(url=args.url)
    result = mirrors.set_mirror(args.name, changes, direction=args.direction, scope=args.scope)
    print(f'changed the URL of mirror "{args.name}" in {result.files[0]}')
    return 0


def cmd_remove(args) -> int:
    from ..mirror import config as mirrors

    _configure(args)
    result = mirrors.remove_mirror(args.name, scope=args.scope)
    for f in result.files:
        print(f'removed mirror "{args.name}" from {f}')
    return 0


def _where(name: str) -> str:
    """Where a mirror points, as configured and, when different, as used."""
    from .. import config
    from ..mirror import config as mirrors

    m = mirrors.get_mirror(name)
    conn = m.fetch or m.push
    assert conn is not None
    try:
        url = config.mask_url(conn.absolute_url("url"))
    except ConfigError:
        return config.mask_url(conn.url)
    shown = config.mask_url(conn.url)
    return shown if shown == url else f"{shown} = {url}"


def _credentials(side: dict | None) -> str:
    if side is None or (side["username"] is None and side["password"] is None):
        return ""
    return f"{side['username'] or '-'}:{side['password'] or '-'}"


def cmd_list(args) -> int:
    from .. import config
    from ..mirror import config as mirrors

    _configure(args)
    configs = mirrors.mirror_configs()
    if args.scope:
        own = config.current().get("mirrors", args.scope) or {}
        configs = [m for m in configs if m.name in own]
    data = [m.describe() for m in configs]
    if args.json:
        print_json(data)
        return 0
    if not data:
        print("no mirrors configured: bincache mirror add NAME URL")
        return 0
    rows = []
    for d in data:
        fetch, push = d["fetch"], d["push"]
        furl = fetch["url"] or fetch["configured_url"] if fetch else "-"
        purl = push["url"] or push["configured_url"] if push else "-"
        flags = [f for f in ("autopush", "insecure") if d[f]]
        if d["compression"]:
            flags.append(d["compression"])
        if d["signed"] is not None:
            flags.insert(0, "signed" if d["signed"] else "unsigned")
        fcred, pcred = _credentials(fetch), _credentials(push)
        if fcred == pcred:
            creds = fcred
        else:
            creds = "; ".join(f"{k} {v}" for k, v in (("fetch", fcred), ("push", pcred)) if v)
        rows.append([d["name"], furl, purl if purl != furl else "(same)", ",".join(flags) or "-",
                     creds or "-", d["scope"]])
    table(rows, ["NAME", "FETCH", "PUSH", "FLAGS", "CREDENTIALS", "SCOPE"])
    return 0
