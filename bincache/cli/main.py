"""`bincache` entry point: global options, verb dispatch, and the one way errors are printed."""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import sys
import threading
import warnings

from .. import __version__
from ..errors import BincacheError, OptionNotTaken, UsageError
from ..redact import redact
from .output import add_verbosity

# Each module defines register(subparsers); its parsers set `func(args) -> int`.
VERB_MODULES = [
    "bincache.cli.create",
    "bincache.cli.install",
    "bincache.cli.keys",
    "bincache.cli.mirror",
    "bincache.cli.config_cmd",
    "bincache.cli.demo",
    "bincache.cli.lifecycle",
]

# The verbs (aliases too) each module registers (tests/test_startup.py checks it against the
# modules): a command builds only its own verb's parsers. Importing and building all of them
# was ~40 ms of every command's start.
VERBS = {
    **dict.fromkeys(["create", "push", "update-index", "rebuild-index", "list", "register"],
                    "bincache.cli.create"),
    **dict.fromkeys(["install", "download"], "bincache.cli.install"),
    **dict.fromkeys(["keys", "gpg"], "bincache.cli.keys"),
    "mirror": "bincache.cli.mirror",
    "config": "bincache.cli.config_cmd",
    "demo": "bincache.cli.demo",
    **dict.fromkeys(["check", "migrate", "browse", "prune", "sync"], "bincache.cli.lifecycle"),
}
_GLOBAL_WITH_VALUE = ("--root", "-C", "--config-scope")

log = logging.getLogger("bincache")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: one line, exit 2
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


class _Rebuild(Exception):
    """The parser of one verb found an error: the whole parser parses again and reports it."""


class _OneVerbParser(_Parser):
    def error(self, message: str):
        raise _Rebuild(message)


def _verb(argv: list[str]) -> str | None:
    """The verb of a command line, when it is plainly there (else None: every verb is built)."""
    it = iter(argv)
    for arg in it:
        if arg in ("-h", "--help", "--version", "--"):
            return None
        if arg in _GLOBAL_WITH_VALUE:
            next(it, None)
        elif not arg.startswith("-"):
            return arg if arg in VERBS else None
    return None


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser of every verb; with ``verb``, only of the verbs its module registers (whose
    usage errors raise _Rebuild, for the whole parser to report them as it would)."""
    parser_class = _OneVerbParser if verb in VERBS else _Parser
    parser = parser_class(
        prog="bincache",
        description="Build once, install everywhere: relocatable, signed binary packages for "
        "installed prefixes, in directories, s3 and OCI registries.",
    )
    parser.add_argument("--version", action="version", version=f"bincache {__version__}")
    parser.add_argument("--root", metavar="ROOT", help="install tree (default: $BINCACHE_ROOT or config)")
    parser.add_argument("-C", "--config-scope", metavar="DIR", action="append", default=[],
                        help="extra configuration scope directory (highest precedence)")
    parser.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    add_verbosity(parser)
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=parser_class)
    sub.required = True
    for name in [VERBS[verb]] if verb in VERBS else VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            if f"No module named '{name}'" in str(e):
                continue
            raise
        module.register(sub, verb if verb in VERBS else None)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `create MIRROR --unsigned SPEC`: argparse leaves specs given after an option over.
        if hasattr(args, "specs") and not any(e.startswith("-") for e in extra):
            args.specs = list(args.specs or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args = _parse(build_parser(_verb(argv)), argv)
        except _Rebuild:
            args = _parse(build_parser(), argv)
    except BincacheError as e:  # e.g. a stale native build, found while importing the verbs
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 1
    # Only bincache's own logger goes to DEBUG: botocore and urllib3 log request headers
    # (tokens, signatures) at DEBUG, and python-gnupg repeats gpg's errors as warnings.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_redacting)
    logging.getLogger("bincache").setLevel(logging.DEBUG if args.debug else logging.WARNING)
    logging.getLogger("gnupg").setLevel(logging.ERROR)
    warnings.simplefilter("default")
    warnings.showwarning = _show_warning
    if args.config_scope:
        os.environ["BINCACHE_CONFIG_SCOPES"] = os.pathsep.join(os.path.abspath(p) for p in args.config_scope)
    try:
        from .. import config

        config.configure(root=args.root, scope_dirs=args.config_scope)
        return int(args.func(args) or 0)
    except UsageError as e:
        if args.debug:
            raise
        if isinstance(e, OptionNotTaken):
            e = e.for_cli()  # named as the user typed it
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2
    except BincacheError as e:
        if args.debug:
            raise
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if args.debug or e.errno is None:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {redact(where)}{e.strerror}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


def run() -> None:
    """The command's entry point (``bincache``, ``python -m bincache``): :func:`main`, then out
    without the interpreter's teardown of every module and object (20 ms of a create of 1 s,
    after its work is done). The atexit handlers run and the output is flushed first, as at
    any exit; should a thread still run, or the flush fail (a closed pipe), the exit is the
    usual one, which reports it as before. So is it under a profiler or a tracer (cProfile,
    coverage), which write their results after the program, in the teardown skipped here."""
    rc = main()
    if threading.active_count() > 1 or sys.getprofile() is not None or sys.gettrace() is not None:
        raise SystemExit(rc)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(rc) from None
    os._exit(rc)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {redact(str(message))}", file=sys.stderr)


def _redacting(record: logging.LogRecord) -> bool:
    """Every log line, bincache's or a library's, without the secrets of the URLs it quotes."""
    record.msg = redact(record.getMessage())
    record.args = None
    return True


if __name__ == "__main__":
    run()
