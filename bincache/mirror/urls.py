"""Mirror locations as written in a configuration or on a command line: ``$VARIABLES``, ``~``,
relative paths (against a scope's directory) and the URL schemes a mirror may use."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlparse

from .. import config as _config
from ..errors import ConfigError, OptionNotTaken, UsageError

#: URL schemes a mirror may use; a string without a scheme is a local path.
SCHEMES = ("file", "http", "https", "s3", "oci", "oci+http")


_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def expand_variables(text: str, what: str = "value") -> str:
    """``$NAME``/``${NAME}`` from the environment and a leading ``~``; unset is an error."""

    def sub(m: re.Match) -> str:
        name = m.group("braced") or m.group("plain")
        value = os.environ.get(name)
        if value is None:
            shown = _config.mask_url(text)
            raise ConfigError(f"{what} {shown!r} uses ${name}, which is not set in the environment")
        return value

    text = _VAR.sub(sub, text)
    if text.startswith("~"):
        text = os.path.expanduser(text)
    return text


def _has_scheme(text: str) -> bool:
    parsed = urlparse(text)
    return bool(parsed.scheme) and len(parsed.scheme) > 1 and "://" in text


def path_to_url(path: str, base_dir: str | None = None) -> str:
    """A local path or URL as an absolute URL; a relative path is taken against ``base_dir``
    (default: the current directory)."""
    if _has_scheme(path):
        return path
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(base_dir or os.getcwd(), path)
    return "file://" + os.path.normpath(path)


def check_url(url: str) -> None:
    """Refuse a URL whose scheme no backend serves (a path without a scheme is fine)."""
    if not _has_scheme(url):
        return
    scheme = urlparse(url).scheme.lower()
    if scheme not in SCHEMES:
        raise UsageError(
            f'unsupported mirror URL scheme "{scheme}" in {_config.mask_url(url)}; '
            f"use a path or one of {', '.join(s + '://' for s in SCHEMES)}"
        )


def mirror_kind(url: str) -> str:
    """"directory", "http", "s3" or "oci": the kind of mirror a URL or path names."""
    scheme = urlparse(url).scheme.lower() if _has_scheme(url) else ""
    if scheme in ("", "file"):
        return "directory"
    if scheme in ("http", "https"):
        return "http"
    return "oci" if scheme.startswith("oci") else scheme


#: The kind-specific settings of a mirror (mirrors.yaml, `mirror add/set`) each kind takes;
#: one given for another kind is refused by name, never ignored. (Credentials, access_pair,
#: are Spack's setting of any mirror: a directory mirror holding one is not refused.)
_SETTINGS_TAKEN = {
    "directory": (),
    "http": (),
    "s3": ("s3_profile", "s3_endpoint_url"),
    "oci": (),
}
_SETTING_USE = {
    "s3_profile": "is for s3:// mirrors",
    "s3_endpoint_url": "is for s3:// mirrors",
}


def refuse_settings(url: str, given: Mapping[str, object], where: str) -> None:
    """OptionNotTaken naming a setting given (truthy) that the kind of mirror at ``url`` does
    not take (an S3 profile for a directory, credentials for a directory, ...)."""
    kind = mirror_kind(url)
    taken = _SETTINGS_TAKEN.get(kind, tuple(_SETTING_USE))
    for name, value in given.items():
        if value and name not in taken:
            article = "an" if kind[0] in "aeiou" else "a"
            raise OptionNotTaken([name], _SETTING_USE[name], where,
                                 f"{article} {'OCI' if kind == 'oci' else kind} mirror")


#: The tarball codecs a mirror's `compression` may name (create's --compression).
COMPRESSIONS = ("gzip", "zstd")


def check_compression(value: str | None) -> None:
    if value is not None and value not in COMPRESSIONS:
        raise UsageError(f'"{value}" is not a compression: use gzip (what Spack reads) or zstd')
