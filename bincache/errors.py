"""One exception hierarchy: each class is a kind of failure a user can act on.

The CLI prints ``error: <message>`` for any :class:`BincacheError` and exits 1, without a
traceback (unless ``--debug``). Messages say what is wrong and, where it helps, what to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class BincacheError(Exception):
    """Base class of every error bincache reports to a user."""


class UsageError(BincacheError):
    """The command line or API call itself is wrong (exit code 2 in the CLI)."""


class OptionNotTaken(UsageError):
    """An option given for a mirror whose kind does not take it: named, never ignored."""

    def __init__(self, options: Sequence[str], use: str, where: str, what: str,
                 spelling: str = "api"):
        self.options, self.use, self.where, self.what = list(options), use, where, what
        names = [cli_spelling(o) if spelling == "cli" else o for o in self.options]
        super().__init__(f"{' and '.join(names)} {use}; {where} is not one ({what})")

    def for_cli(self) -> OptionNotTaken:
        """The same error, naming the options as the command line spells them."""
        return OptionNotTaken(self.options, self.use, self.where, self.what, "cli")


def cli_spelling(option: str) -> str:
    """``base_image`` -> ``--base-image``."""
    return "--" + option.replace("_", "-")


class ConfigError(BincacheError):
    """A configuration file or setting is invalid."""


class SpecError(BincacheError):
    """A spec file is invalid, or a spec selection matches nothing or too much."""


class PrefixError(BincacheError):
    """An installed prefix cannot be packed (missing, unreadable, holds a fifo or device...)."""


class NativeError(BincacheError):
    """The C core reported an error; the message is the core's own, with the file involved."""


class MirrorError(BincacheError):
    """A mirror cannot be read or written."""


class MirrorNotFound(MirrorError):
    """A named mirror does not exist."""


class BlobNotFound(MirrorError):
    """A file or blob that should be in a mirror is not there."""


class IndexVersionError(MirrorError):
    """A mirror's index is in a Spack database version bincache does not know."""


class NoSpaceError(MirrorError):
    """The target file system is full."""


class IntegrityError(BincacheError):
    """Downloaded data does not match its recorded size or checksum."""


class SignatureError(BincacheError):
    """A signature is missing, bad, or made by a key that is not trusted."""


class LimitError(BincacheError):
    """Untrusted input goes over one of the limits of :mod:`bincache.limits` (named in it)."""


class ExtractError(BincacheError):
    """A tarball is unsafe or damaged (escaping paths, bad links, truncated data)."""


class InstallError(BincacheError):
    """An install plan cannot succeed; the message lists every problem found."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            super().__init__(f"the install cannot proceed ({len(self.problems)} problems):\n{lines}")


class RelocationError(BincacheError):
    """A package cannot be relocated to the requested prefix."""


class CannotGrowString(RelocationError):
    """A string embedded in a binary would need to grow to hold the new prefix."""


class RegistryError(MirrorError):
    """An OCI registry answered with an error."""


class AuthError(RegistryError):
    """Credentials are missing or were refused."""
