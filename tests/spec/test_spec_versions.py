"""Spack's version syntax in spec selection: prefixes, exact versions, ranges, lists."""

from __future__ import annotations

import pytest

from bincache.spec import Spec, matches, version_satisfies


@pytest.mark.parametrize("version, constraint, expected", [
    ("1.3", "1.3", True),
    ("1.3.1", "1.3", True),      # @1.3 is 1.3 and every 1.3.x
    ("1.30", "1.3", False),      # components, not characters
    ("1.2.9", "1.3", False),
    ("1.3", "=1.3", True),
    ("1.3.1", "=1.3", False),    # @= is exact
    ("1.2", "1.2:1.4", True),
    ("1.4.2", "1.2:1.4", True),  # an upper bound is a prefix, as in Spack
    ("1.5", "1.2:1.4", False),
    ("1.10", "1.2:1.4", False),  # numeric, not lexical
    ("2.0", "1.3:", True),
    ("1.2.99", "1.3:", False),
    ("0.9", ":1.0", True),
    ("1.1", ":1.0", False),
    ("1.4", "1.2,1.4:", True),
    ("1.3", "1.2,1.4:", False),
    ("develop", "1.0:", True),   # Spack orders develop/main above every number
    ("1.0rc1", "1.0:", True),
])
def test_version_constraints(version, constraint, expected):
    assert version_satisfies(version, constraint) is expected


def _spec(name: str, version: str) -> Spec:
    return Spec.from_node({"name": name, "version": version, "hash": "a" * 32})


def test_selectors_combine_name_versions_and_hash():
    zlib = _spec("zlib", "1.3.1")
    assert matches(zlib, "zlib@1.3")
    assert matches(zlib, "zlib@1.2:1.3")
    assert matches(zlib, "zlib@1.3:/aaa")
    assert not matches(zlib, "zlib@1.3:/b")
    assert not matches(zlib, "zlib@:1.2")
    assert not matches(zlib, "zlib-ng@1.3")
    assert matches(zlib, "/aaaa")
