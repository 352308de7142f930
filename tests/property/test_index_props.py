"""The index is a function of the set of packages, not of the order they were found in."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bincache.index import Index
from bincache.spec import Spec, make_node

_names = st.sampled_from(["zlib", "openssl", "curl", "hdf5", "mpich", "python"])


@st.composite
def dags(draw):
    specs: list[Spec] = []
    for i in range(draw(st.integers(1, 8))):
        deps = draw(st.lists(st.sampled_from(specs), unique_by=lambda s: s.hash, max_size=3)) if specs else []
        node = make_node(draw(_names), f"{i}.{draw(st.integers(0, 3))}", deps,
                         {"platform": "linux", "platform_os": "debian12", "target": "x86_64"})
        specs.append(Spec.from_node(node))
    return specs


@settings(max_examples=60, deadline=None)
@given(dags(), st.randoms())
def test_index_bytes_do_not_depend_on_insertion_order(specs, rnd):
    def build(order):
        idx = Index()
        for s in order:
            deps = [d for d in specs if d.hash in {x.hash for x in s.deps}]
            idx.add_specfile([s] + deps, size=len(s.name))
        return idx.to_bytes()

    shuffled = list(specs)
    rnd.shuffle(shuffled)
    assert build(specs) == build(shuffled)


@settings(max_examples=60, deadline=None)
@given(dags())
def test_index_round_trips(specs):
    idx = Index()
    for s in specs:
        idx.add_specfile([s], size=7)
    again = Index.from_bytes(idx.to_bytes())
    assert again.to_bytes() == idx.to_bytes()
    assert {e.spec.hash for e in again.packages()} == {s.hash for s in specs}
