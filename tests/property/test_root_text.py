"""The index root's text is json.dumps(indent=0)'s, byte for byte (readers, clearsigning and
the root's digest in the listing all depend on it), written without json's slow path."""

import json

from hypothesis import given
from hypothesis import strategies as st

from bincache.index_db import json_indent0 as _indent0

scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(), inner, max_size=4), max_leaves=30)


@given(documents)
def test_root_text_is_json_with_indent_0(doc):
    assert _indent0(doc) == json.dumps(doc, indent=0, separators=(",", ":"))
