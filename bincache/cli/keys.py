"""`bincache keys ...`: the GnuPG keys that sign and verify build caches.

The keyring is bincache's own GnuPG home (BINCACHE_GNUPGHOME, config:gnupghome, else
~/.bincache/gpg). A key is trusted when it was created here or trusted explicitly; installs accept
only packages signed by trusted keys. Nothing secret is ever printed: secret keys go to files only.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from ..errors import UsageError
from .output import print_json, table

if TYPE_CHECKING:
    from ..signing import keyring


def register(sub, verb: str | None = None) -> None:
    # ``verb``: every verb of this module is built (they are few and cheap).
    keys = sub.add_parser("keys", aliases=["gpg"], help="manage the GnuPG keys that sign build caches",
                          description="Create, list, export, trust and publish the keys that sign "
                          "packages, in bincache's own GnuPG home (BINCACHE_GNUPGHOME, "
                          "config:gnupghome, else ~/.bincache/gpg).")
    verbs = keys.add_subparsers(dest="keys_verb", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser("create", help="create a signing key (Ed25519, no passphrase, trusted)",
                         description="Create a signing key for unattended use: Ed25519, without "
                         "passphrase, trusted by this keyring.")
    p.add_argument("name", help="the key owner's name, e.g. 'ACME CI'")
    p.add_argument("email", help="the key owner's email")
    p.add_argument("--comment", help="a comment in the user id")
    p.add_argument("--expires", metavar="WHEN", default="0",
                   help="0 (never, default), N days, Nd/Nw/Nm/Ny, or YYYY-MM-DD")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_create)

    p = verbs.add_parser("list", help="list the keys of the keyring")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trusted", action="store_true", help="only keys trusted to verify packages")
    which.add_argument("--signing", action="store_true", help="only keys that can sign (secret keys)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = verbs.add_parser("export", help="export keys to a file",
                         description="Write keys (all when none are named) to FILE, ASCII-armored. "
                         "With --secret the secret keys are written (mode 0600), to move a signing "
                         "key to a build machine; they are never printed.")
    p.add_argument("file", help="file to write ('-' for standard output, public keys only)")
    p.add_argument("keys", nargs="*", help="fingerprints, key ids or user ids")
    p.add_argument("--secret", action="store_true", help="export secret keys (for a signing machine)")
    p.set_defaults(func=cmd_export)

    p = verbs.add_parser("trust", help="import the keys of a file and trust them",
                         description="Import the keys in FILE (public, or secret ones exported with "
                         "`keys export --secret`) and trust them to verify packages.")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trust)

    p = verbs.add_parser("untrust", help="stop trusting a key",
                         description="Stop trusting KEY: packages it signed are refused. A key "
                         "without secret part is removed from the keyring.")
    p.add_argument("key", help="fingerprint, key id or user id")
    p.set_defaults(func=cmd_untrust)

    p = verbs.add_parser("publish", help="publish public keys to a mirror",
                         description="Put public keys (the signing keys when none are named) into "
                         "MIRROR, where `keys install` finds them.")
    p.add_argument("mirror", help="mirror name, path or URL")
    p.add_argument("keys", nargs="*", help="fingerprints, key ids or user ids")
    p.set_defaults(func=cmd_publish)

    p = verbs.add_parser("install", help="fetch the public keys a mirror publishes",
                         description="Import the public keys MIRROR publishes (public key material "
                         "only: a key blob holding a secret key is refused). They are trusted "
                         "only with --trust: trusting a mirror's keys is an explicit choice.")
    p.add_argument("mirror", help="mirror name, path or URL")
    p.add_argument("--trust", action="store_true", help="trust the keys (verify packages with them)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_install)


def _rows(keys: list[keyring.KeyInfo]) -> list[list[str]]:
    rows = []
    for k in keys:
        flags = []
        if k.trusted:
            flags.append("trusted")
        if k.can_sign:
            flags.append("signing")
        if k.state != "valid":
            flags.append(k.state)
        expires = time.strftime("%Y-%m-%d", time.gmtime(k.expires)) if k.expires else "never"
        rows.append([k.fingerprint, k.uid, k.algorithm, expires, ",".join(flags) or "untrusted"])
    return rows


_HEADER = ["FINGERPRINT", "USER ID", "ALGORITHM", "EXPIRES", "STATUS"]


def cmd_create(args) -> int:
    from ..signing import keyring
    from ..signing.home import gnupg_home

    key = keyring.create_key(args.name, args.email, comment=args.comment, expires=args.expires)
    if args.json:
        print_json(key.to_dict())
    else:
        print(f"created signing key {key.fingerprint}")
        print(f"  {key.uid}")
        print(f"  in {gnupg_home()} (no passphrase: keep this directory private)")
        print("publish it with `bincache keys publish MIRROR` so others can trust it")
    return 0


def cmd_list(args) -> int:
    from ..signing import keyring
    from ..signing.home import gnupg_home

    if args.signing:
        keys = keyring.signing_keys()
    elif args.trusted:
        keys = keyring.trusted_keys()
    else:
        keys = keyring.list_keys()
    if args.json:
        print_json([k.to_dict() for k in keys])
    elif keys:
        table(_rows(keys), _HEADER)
    else:
        what = "signing keys" if args.signing else "trusted keys" if args.trusted else "keys"
        print(f"no {what} in {gnupg_home()}")
    return 0


def cmd_export(args) -> int:
    from ..signing import keyring

    if args.file == "-" and args.secret:
        raise UsageError("secret keys are never written to standard output; give a file name")
    data, fprs = keyring.export_keys(args.keys or None, secret=args.secret)
    if args.file == "-":
        sys.stdout.write(data.decode())
        return 0
    keyring.write_export(args.file, data, args.secret)
    what = "secret key" if args.secret else "public key"
    print(f"exported {len(fprs)} {what}{'s' if len(fprs) != 1 else ''} to {args.file}")
    for f in fprs:
        print(f"  {f}")
    return 0


def cmd_trust(args) -> int:
    from ..signing import keyring

    keys = keyring.trust_file(args.file)
    if args.json:
        print_json([k.to_dict() for k in keys])
        return 0
    for k in keys:
        print(f"trusted {k.fingerprint} {k.uid}")
    return 0


def cmd_untrust(args) -> int:
    from ..signing import keyring

    key = keyring.untrust_key(args.key)
    note = " (its secret key stays: it can still sign)" if key.secret else " (removed from the keyring)"
    print(f"no longer trusted: {key.fingerprint} {key.uid}{note}")
    return 0


def _cache(mirror: str, direction: str):
    from ..mirror import open_cache, resolve

    return open_cache(resolve(mirror, direction))


def cmd_publish(args) -> int:
    from ..mirror.keys import publish_keys

    cache = _cache(args.mirror, "push")
    fprs = publish_keys(cache, args.keys or None)
    for f in fprs:
        print(f"published {f} to {args.mirror}")
    return 0


def cmd_install(args) -> int:
    from ..mirror.keys import install_keys
    from ..signing import keyring

    cache = _cache(args.mirror, "fetch")
    fprs = install_keys(cache, trust=args.trust)
    keys = [keyring.find_key(f) for f in fprs]
    if args.json:
        print_json([k.to_dict() for k in keys])
        return 0
    for k in keys:
        print(f"{'trusted  ' if args.trust else 'imported '} {k.fingerprint} {k.uid}")
    if not args.trust:
        print("not trusted: packages they sign are refused until you run "
              f"`bincache keys install {args.mirror} --trust`")
    return 0


__all__ = ["register"]
