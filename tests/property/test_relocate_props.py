"""The binary rewrite (C core and pure twin) against a plain-Python reference, byte for byte,
and the text rule's round trip."""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bincache._native import _pure
from bincache.errors import CannotGrowString, NativeError
from bincache.relocate.plan import TextRelocator, prefix_pairs

BACKENDS = [pytest.param(_pure, id="python")]
try:
    from bincache._native import _cffi

    BACKENDS.append(pytest.param(_cffi, id="c"))
except ImportError:  # the C core is not built: the twin is still checked against the reference
    pass

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(data: bytes, pairs: list[tuple[bytes, bytes]]) -> tuple[bytes, int]:
    """Leftmost match, longest old prefix at a position, non-overlapping; Spack's slash padding."""
    out = bytearray(data)
    i = count = 0
    while i < len(data):
        best = None
        for old, new in pairs:
            if data.startswith(old, i) and (best is None or len(old) > len(best[0])):
                best = (old, new)
        if best is None:
            i += 1
            continue
        old, new = best
        if len(new) > len(old):
            raise CannotGrowString(f"{old!r} -> {new!r}")
        out[i : i + len(old)] = b"/" * (len(old) - len(new)) + new
        count += 1
        i += len(old)
    return bytes(out), count


# Small alphabets so prefixes overlap, nest and recur often.
path_part = st.binary(min_size=1, max_size=6).map(lambda b: bytes(97 + c % 3 for c in b))
prefix = st.lists(path_part, min_size=1, max_size=4).map(lambda ps: b"/" + b"/".join(ps))


@st.composite
def relocation_case(draw, allow_growth=False):
    olds = draw(st.lists(prefix, min_size=1, max_size=4, unique=True))
    # Prefixes that are prefixes of each other (e.g. /a and /a/b) on purpose.
    if draw(st.booleans()):
        base = olds[0]
        olds.append(base + b"/" + draw(path_part))
        olds = list(dict.fromkeys(olds))
    pairs = []
    for old in olds:
        if allow_growth:
            new = draw(prefix)
        else:
            new = b"/" + draw(st.binary(max_size=max(0, len(old) - 1))).replace(b"\0", b"z")
            new = new[: len(old)]
        pairs.append((old, new))
    pieces = draw(
        st.lists(
            st.one_of(
                st.sampled_from(olds),
                st.binary(max_size=8),
                st.just(b"\0"),
                st.sampled_from([b"/", b"a", b"/a", b"ab/"]),
            ),
            max_size=24,
        )
    )
    return b"".join(pieces), pairs


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(case=relocation_case())
def test_relocate_buffer_matches_reference(backend, case):
    data, pairs = case
    expected, count = reference(data, pairs)
    buf = bytearray(data)
    assert backend.relocate_buffer(buf, pairs) == count
    assert bytes(buf) == expected
    assert len(buf) == len(data)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(case=relocation_case(allow_growth=True))
def test_growth_is_refused_without_writing(backend, case):
    data, pairs = case
    try:
        expected, count = reference(data, pairs)
    except CannotGrowString:
        buf = bytearray(data)
        with pytest.raises(CannotGrowString):
            backend.relocate_buffer(buf, pairs)
        assert bytes(buf) == data  # checked everything before writing anything
        return
    buf = bytearray(data)
    assert backend.relocate_buffer(buf, pairs) == count
    assert bytes(buf) == expected


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(case=relocation_case())
def test_recorded_offsets_applied_to_a_file_match_the_reference(backend, case):
    data, pairs = case
    expected, _ = reference(data, pairs)
    olds = [o for o, _ in pairs]
    hits = backend.scan_buffer(data, olds)
    patches = [(off, olds[i], pairs[i][1]) for i, off in hits]
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
    try:
        backend.apply_patches(f.name, patches)
        with open(f.name, "rb") as g:
            assert g.read() == expected
    finally:
        os.unlink(f.name)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(case=relocation_case(), shift=st.integers(min_value=1, max_value=5))
def test_a_stale_offset_is_refused_and_the_file_is_unchanged(backend, case, shift):
    data, pairs = case
    olds = [o for o, _ in pairs]
    hits = backend.scan_buffer(data, olds)
    assume(hits)
    patches = [(off, olds[i], pairs[i][1]) for i, off in hits]
    off, old, new = patches[-1]
    assume(data[off + shift : off + shift + len(old)] != old)
    patches[-1] = (off + shift, old, new)
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
    try:
        with pytest.raises(NativeError):
            backend.apply_patches(f.name, patches)
        with open(f.name, "rb") as g:
            assert g.read() == data
    finally:
        os.unlink(f.name)


# Old prefixes over one alphabet, new ones over another, text around over both plus separators.
old_prefix = st.lists(st.text("abc", min_size=1, max_size=5), min_size=1, max_size=3).map(
    lambda ps: "/" + "/".join(ps))
new_prefix = st.lists(st.text("xyz", min_size=1, max_size=9), min_size=1, max_size=4).map(
    lambda ps: "/" + "/".join(ps))


@SETTINGS
@given(
    mapping=st.dictionaries(old_prefix, new_prefix, min_size=1, max_size=4),
    pieces=st.lists(st.one_of(old_prefix, st.text("abc/-_ :=\n\"'", max_size=6)), max_size=20),
)
def test_text_relocation_round_trips(mapping, pieces):
    assume(len(set(mapping.values())) == len(mapping))
    text = "".join(pieces).encode()
    forward = TextRelocator(prefix_pairs(mapping))
    back = TextRelocator(prefix_pairs({v: k for k, v in mapping.items()}))
    moved = forward(text)
    # No old prefix is left on a boundary (relocating again changes nothing), and the way back
    # restores every byte.
    assert forward(moved) == moved
    assert back(moved) == text
