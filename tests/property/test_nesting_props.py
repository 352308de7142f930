"""A parsed document is refused exactly when a container in it sits deeper than the limit.

``limits.check_nesting`` runs on every spec file of a tree before a push starts (and on
manifests and indexes): generated JSON-like values against a plain recursive depth.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bincache.errors import LimitError
from bincache.limits import check_nesting

scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=3)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=2), inner, max_size=3), max_leaves=40)


def container_depth(value, depth: int = 1) -> int:
    """How deep the deepest container is (0: no container at all)."""
    if isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, list):
        children = value
    else:
        return 0
    return max([depth] + [container_depth(c, depth + 1) for c in children])


@settings(max_examples=300, derandomize=True, deadline=None)
@given(values, st.integers(min_value=1, max_value=6))
def test_refused_only_deeper_than_the_limit(value, limit):
    if container_depth(value) > limit:
        with pytest.raises(LimitError, match=f"nested deeper than {limit} levels"):
            check_nesting(value, "spec file", limit)
    else:
        check_nesting(value, "spec file", limit)  # no error


def test_an_empty_container_at_the_limit_counts():
    check_nesting([[[]]], "spec file", 3)
    with pytest.raises(LimitError):
        check_nesting([[[[]]]], "spec file", 3)
    check_nesting([[[1, "a", None]]], "spec file", 3)  # scalars below the deepest container
