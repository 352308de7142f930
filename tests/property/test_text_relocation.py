"""Text relocation without a compiled regex (bincache.relocate.text) against Spack's regex rule,
byte for byte, on random text made of prefixes, path pieces and the characters the rule looks at."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bincache.relocate.plan import prefix_pairs
from bincache.relocate.text import TextRelocator


def spack_rule(pairs: list[tuple[bytes, bytes]], data: bytes) -> bytes:
    """Spack's relocate_text.py: one alternation of every old prefix, longest first."""
    mapping = dict(pairs)
    alternatives = b"|".join(re.escape(o) for o, _ in pairs)
    regex = re.compile(rb"(?<![\w\-_/])([\w\-_]*?)(" + alternatives + rb")([\w\-_/]*)")
    return regex.sub(lambda m: m.group(1) + mapping[m.group(2)] + m.group(3), data)


SEGMENT = st.sampled_from(["a", "b", "ab", "opt", "x-1", "p.q", "@v", "_", "usr"])
PATH = st.lists(SEGMENT, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s))
PIECE = st.sampled_from([b"/", b"a", b"b", b"-", b"_", b".", b" ", b"=", b"@", b"\n", b"x",
                         b"/a", b"/ab", b"-I", b"\0"])


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(PATH, PATH, min_size=1, max_size=6), st.data())
def test_same_bytes_as_spacks_regex(mapping, data):
    pairs = prefix_pairs(mapping)
    if not pairs:
        return
    olds = [o for o, _ in pairs]
    text = b"".join(data.draw(st.lists(st.one_of(PIECE, st.sampled_from(olds)), max_size=40)))
    assert TextRelocator(pairs)(text) == spack_rule(pairs, text)


def test_prefixes_without_a_shared_anchor():
    # Prefixes under different top directories: several anchors, still the regex's result.
    pairs = prefix_pairs({"/opt/a": "/new/a", "/home/u/b": "/n/b", "/srv": "/S"})
    text = b"x /opt/a/lib -L/home/u/b/lib /x/srv /srv:/opt/a-1 a/opt/a @/home/u/b"
    assert TextRelocator(pairs)(text) == spack_rule(pairs, text)
