"""Image manifests and configs for packages, tags, and the merge with a base image.

A package is an image: one gzip layer per dependency (leaves first) and the package's own
tarball last (`layers[-1]`, which Spack's readers take as the package). The config is a real
image config (architecture, os, `rootfs.diff_ids`, `config.Env`) plus Spack's keys `spec`,
`binary_cache_checksum` and `buildcache_layout_version`, which OCI tells other readers to
ignore. Nothing in it depends on the time of the push, so pushing twice gives the same digests.
"""

from __future__ import annotations

import copy
import json
import os
import platform as _platform
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MirrorError
from .client import DOCKER_MANIFEST, OCI_MANIFEST, Descriptor

LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYER_TYPES = {"gzip": LAYER_GZIP, "zstd": LAYER_ZSTD}


def layer_compression(media_type: str) -> str:
    """The codec of a layer media type (OCI's or Docker's): "zstd" or "gzip"."""
    return "zstd" if media_type.endswith("+zstd") or media_type.endswith(".zstd") else "gzip"
# Keep the standard config type: skopeo inspect and umoci unpack refuse any other.
CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
SIGNATURE_ARTIFACT = "application/vnd.bincache.signature.v1+pgp"
SIGNATURE_LAYER = "application/pgp-signature"

#: The tag of the build cache index image.
INDEX_TAG = "index.spack"
#: Where Spack and bincache agree the tarball checksum and layout are kept in the config.
BUILDCACHE_LAYOUT_VERSION = 1
#: PATH of an image whose base sets none (docker's default).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Fixed creation time: a config must not change between two pushes of the same package.
EPOCH = "1970-01-01T00:00:00Z"

_TAG_MAX = 128
_HASH_RE = re.compile(r"^[a-z2-7]{32}$")


def sanitize_tag(tag: str) -> str:
    """Make `tag` valid per the distribution grammar `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.

    Invalid characters become `_`; a tag longer than 128 characters keeps its first and last
    64, so the hash and `.spack` at the end survive.
    """
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", tag)
    if not clean or not re.match(r"[A-Za-z0-9_]", clean[0]):
        clean = "_" + clean
    if len(clean) > _TAG_MAX:
        clean = clean[: _TAG_MAX // 2] + clean[-_TAG_MAX // 2:]
    return clean


def package_tag(name: str, version: str, dag_hash: str) -> str:
    """The tag of a package: `<name>-<version>-<hash>.spack`, sanitized."""
    return sanitize_tag(f"{name}-{version}-{dag_hash}.spack")


def is_package_tag(tag: str) -> bool:
    return tag.endswith(".spack") and tag != INDEX_TAG


def hash_from_tag(tag: str) -> str | None:
    """The DAG hash a package tag ends with, or None for a tag that is not a package's."""
    if not is_package_tag(tag):
        return None
    candidate = tag[: -len(".spack")].rsplit("-", 1)[-1]
    return candidate if _HASH_RE.match(candidate) else None


_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "i686": "386",
           "i386": "386"}
# Spack names micro-architectures (`x86_64_v3`, `zen3`, `neoverse_v1`): their families.
_ARM_TARGETS = ("aarch64", "arm64", "neoverse", "cortex", "thunderx", "a64fx", "graviton", "m1",
                "m2", "m3", "m4")
_X86_TARGETS = ("x86_64", "zen", "haswell", "broadwell", "skylake", "cascadelake", "icelake",
                "sapphirerapids", "cooperlake", "cannonlake", "nehalem", "westmere",
                "sandybridge", "ivybridge", "core2", "k10", "bulldozer", "piledriver",
                "steamroller", "excavator", "mic_knl", "nocona", "x86_64_v")


def goarch(machine: str | None = None) -> str:
    """The OCI/Go architecture of a machine or Spack target (`x86_64`, `zen3` -> `amd64`)."""
    name = (machine or _platform.machine()).lower()
    if name in _GOARCH:
        return _GOARCH[name]
    if name.startswith(_ARM_TARGETS):
        return "arm64"
    if name.startswith(_X86_TARGETS):
        return "amd64"
    if name.startswith("power") and name.endswith("le"):
        return "ppc64le"
    return _GOARCH.get(_platform.machine().lower(), _platform.machine().lower())


@dataclass(frozen=True)
class Layer:
    """A package tarball as an image layer: compressed digest and size, uncompressed diff_id."""

    digest: str  # sha256:<hex> of the compressed blob
    diff_id: str  # sha256:<hex> of the uncompressed tar
    size: int
    media_type: str = LAYER_GZIP  # or LAYER_ZSTD

    def descriptor(self, docker: bool = False) -> Descriptor:
        if docker and self.media_type == LAYER_ZSTD:
            # Docker's manifest v2 has no zstd layer type; an OCI manifest would not be one.
            raise MirrorError("the base image is a Docker image, whose manifest has no zstd "
                              "layers: push with --compression gzip, or use an OCI base image")
        return Descriptor(DOCKER_LAYER_GZIP if docker else self.media_type, self.digest,
                          self.size)


# Directories of a prefix and the variables that find them (Spack's prefix inspections).
_INSPECTIONS = (("bin", "PATH"), ("man", "MANPATH"), ("share/man", "MANPATH"),
                ("share/aclocal", "ACLOCAL_PATH"), ("lib/pkgconfig", "PKG_CONFIG_PATH"),
                ("lib64/pkgconfig", "PKG_CONFIG_PATH"), ("share/pkgconfig", "PKG_CONFIG_PATH"),
                ("", "CMAKE_PREFIX_PATH"))


def image_env(prefixes: Sequence[str], base_env: Iterable[str] = (),
              exists: Any = os.path.isdir) -> list[str]:
    """`config.Env` for an image holding `prefixes` (the package first, then dependencies).

    The package's directories are prepended to the base image's variables; PATH gets the
    usual system directories when the base sets none, so `sh -c prog` works in the image.
    """
    env: dict[str, str] = {}
    for item in base_env:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    for variable in dict.fromkeys(v for _, v in _INSPECTIONS):
        dirs: list[str] = []
        for prefix in prefixes:
            for sub, var in _INSPECTIONS:
                if var != variable:
                    continue
                path = os.path.join(prefix, sub) if sub else prefix
                # PATH always names bin/: a package's programs must be found even when the
                # prefix is not on this machine (a tag pushed for another one).
                if (sub == "bin" or exists(path)) and path not in dirs:
                    dirs.append(path.rstrip("/"))
        if not dirs:
            continue
        old = [p for p in env.get(variable, "").split(":") if p and p not in dirs]
        env[variable] = ":".join(dirs + old)
    return [f"{k}={v}" for k, v in env.items()]


def merge_env(envs: Sequence[Sequence[str]], base: Sequence[str] = ()) -> list[str]:
    """Merge the `config.Env` of several package images over a base image's.

    Path-like variables get every package entry (first list first, each once) in front of the
    base's entries; other variables keep the base's value, else the first list's.
    """
    base_vars = _env_dict(base)
    base_vars.setdefault("PATH", DEFAULT_PATH)
    merged: dict[str, list[str]] = {}
    for env in envs:
        for key, value in _env_dict(env).items():
            parts = merged.setdefault(key, [])
            if not _path_like(key):
                if not parts:
                    parts.append(value)
                continue
            own = set(base_vars.get(key, "").split(":"))
            parts.extend(p for p in value.split(":") if p and p not in own and p not in parts)
    for key, value in base_vars.items():
        parts = merged.setdefault(key, [])
        if _path_like(key):
            parts.extend(p for p in value.split(":") if p and p not in parts)
        else:
            parts[:] = [value]
    return [f"{k}={':'.join(v)}" for k, v in merged.items()]


def _env_dict(env: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in env:
        key, sep, value = item.partition("=")
        if sep:
            out[key] = value
    return out


def _path_like(key: str) -> bool:
    return key == "PATH" or key.endswith("_PATH")


def build_config(
    *,
    layers: Sequence[Layer],
    env: list[str],
    spack_keys: dict[str, Any] | None = None,
    base_config: dict[str, Any] | None = None,
    architecture: str | None = None,
    os_name: str = "linux",
) -> dict[str, Any]:
    """An image config: the base image's (if any) with our layers' diff_ids and Env on top."""
    config = copy.deepcopy(base_config) if base_config else {}
    config.setdefault("created", EPOCH)
    config["architecture"] = config.get("architecture") or architecture or goarch()
    config["os"] = config.get("os") or os_name
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs["type"] = "layers"
    rootfs["diff_ids"] = list(rootfs.get("diff_ids") or []) + [layer.diff_id for layer in layers]
    inner = config.setdefault("config", {}) or {}
    config["config"] = inner
    inner["Env"] = env
    # Keys added by OCI's "implementation specific" rule; other readers ignore them.
    config.update(spack_keys or {})
    return config


def spack_config_keys(specfile_json: bytes, tarball_digest: str) -> dict[str, Any]:
    """Spack's keys of an image config, from the package's DAG spec file."""
    data = json.loads(specfile_json)
    spec = data.get("spec", data)
    return {
        "spec": spec,
        "buildcache_layout_version": BUILDCACHE_LAYOUT_VERSION,
        "binary_cache_checksum": {"hash_algorithm": "sha256",
                                  "hash": tarball_digest.split(":", 1)[-1]},
    }


def build_manifest(
    *,
    config: Descriptor,
    layers: Sequence[Descriptor],
    media_type: str = OCI_MANIFEST,
    annotations: dict[str, str] | None = None,
    subject: Descriptor | None = None,
    artifact_type: str | None = None,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type:
        manifest["artifactType"] = artifact_type
    manifest["config"] = config.to_json()
    manifest["layers"] = [d.to_json() for d in layers]
    if subject is not None:
        manifest["subject"] = subject.to_json()
    # Docker's schema has no annotations; strict clients (Apptainer) refuse mixed documents.
    if annotations and media_type != DOCKER_MANIFEST:
        manifest["annotations"] = dict(annotations)
    return manifest


def dumps(document: dict[str, Any]) -> bytes:
    """The bytes a manifest or config is pushed as: compact, stable."""
    return json.dumps(document, separators=(",", ":"), sort_keys=False).encode()


def signature_tag(digest: str) -> str:
    """The fallback tag of a manifest's signature where the registry has no referrers API."""
    return sanitize_tag(digest.replace(":", "-") + ".sig")
