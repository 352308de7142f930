"""Records found in index.json's text (bincache.treetext) and the journal over them
(TreeDatabase.lookup): the answer is the one a whole parse gives, or the text says it cannot
tell; never a look-alike."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bincache.treedb import TreeDatabase, entry
from bincache.treetext import DatabaseText, Unsure

A, B, C, D = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)


def _rec(name: str, deps=(), **spec) -> dict:
    node = {"name": name, "version": "1", **spec}
    if deps:
        node["dependencies"] = [{"name": "x", "hash": h, "parameters": {"deptypes": ["link"]}}
                                for h in deps]
    return {"spec": node, "path": f"/t/{name}", "installed": True, "ref_count": 0,
            "explicit": True, "installation_time": 1.0}


def _text(installs: dict, spack_order: bool = False, **dump) -> bytes:
    db = {"installs": installs, "version": "8"} if spack_order else {"version": "8", "installs": installs}
    return json.dumps({"database": db}, **(dump or {"separators": (",", ":")})).encode()


def _decoy(h: str) -> dict:
    return {h: dict(_rec("decoy"), path="/elsewhere")}


# (what the installs map holds, hash looked up, expected: "record" = installs[h], None, or Unsure)
CASES = {
    "a record": ({A: _rec("a")}, A, "record"),
    "a record also named as another's dependency": ({B: _rec("b", [A]), A: _rec("a")}, A, "record"),
    "only a dependency's hash, not a record": ({B: _rec("b", [A])}, A, None),
    "a look-alike key nested in a record, not a record":
        ({B: _rec("b", parameters=_decoy(A))}, A, None),
    "a look-alike before the record": ({B: _rec("b", parameters=_decoy(A)), A: _rec("a")}, A, "record"),
    "a look-alike after the record": ({A: _rec("a"), B: _rec("b", parameters=_decoy(A))}, A, "record"),
    "a look-alike in an external's attributes":
        ({B: _rec("b", external={"path": "/usr", "extra_attributes": _decoy(A)}), A: _rec("a")}, A, "record"),
    "the hash inside a path": ({B: dict(_rec("b"), path=f"/t/a-1-{A}")}, A, None),
    "balanced braces in a string before the key":
        ({B: _rec("b", parameters={"f": "${prefix}/{x}"}), A: _rec("a")}, A, "record"),
    "an unbalanced brace in a string": ({B: _rec("b", parameters={"f": "a{"}), A: _rec("a")}, A, Unsure),
    "a backslash (an escaped quote)": ({B: _rec("b", parameters={"f": 'say "hi"'}), A: _rec("a")}, A, Unsure),
    "no records": ({}, A, None),
}


@pytest.mark.parametrize("spack_order", [False, True], ids=["bincache-order", "spack-order"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_record_is_found_by_its_key_in_the_installs_map_only(case, spack_order):
    installs, h, expected = CASES[case]
    text = DatabaseText(_text(installs, spack_order))
    if expected is Unsure:
        with pytest.raises(Unsure):
            text.record(h)
        return
    assert text.record(h) == (installs[h] if expected == "record" else None)
    assert all(text.record(k) == v for k, v in installs.items())


def test_a_document_not_in_the_compact_form_is_not_searched():
    with pytest.raises(Unsure):
        DatabaseText(_text({A: _rec("a")}, indent=1)).record(A)
    with pytest.raises(Unsure):
        DatabaseText(_text({A: _rec("a")})[:-3]).record(A)  # cut short


def test_the_real_spack_database_fixture_is_read_record_by_record():
    path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "spack", "spack-db.json")
    with open(path, "rb") as f:
        data = f.read()
    installs = json.loads(data)["database"]["installs"]
    text = DatabaseText(data)
    assert text.compact
    assert {h: text.record(h) for h in installs} == installs
    assert text.record("z" * 32) is None


_hashes = st.sampled_from([c * 32 for c in "abcdefgh"])
# Strings whose braces balance (as "${prefix}" does): the count of braces before a key is exact.
_strings = st.lists(st.sampled_from(["x", "/", "$", " ", ":", ",", "{}", "}{", "[", "]", "é"]),
                    max_size=6).map("".join)
_values = st.recursive(st.none() | st.booleans() | st.integers() | _strings,
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(_hashes | _strings, inner, max_size=3), max_leaves=8)


@st.composite
def _installs(draw) -> dict:
    out = {}
    for h in draw(st.lists(_hashes, unique=True, max_size=6)):
        rec = _rec(h[0], draw(st.lists(_hashes, max_size=3)),
                   parameters=draw(st.dictionaries(_hashes | _strings, _values, max_size=3)))
        out[h] = rec
    return out


@settings(max_examples=200, deadline=None)
@given(_installs(), st.booleans(), st.booleans())
def test_every_lookup_equals_a_whole_parse(installs, spack_order, ascii_only):
    data = json.dumps({"database": ({"installs": installs, "version": "8"} if spack_order
                                    else {"version": "8", "installs": installs})},
                      separators=(",", ":"), ensure_ascii=ascii_only).encode()
    text = DatabaseText(data)
    for c in "abcdefgh":
        h = c * 32
        try:
            found = text.record(h)
        except Unsure:
            assert b"\\" in data  # only an escape (here: é as \u00e9) keeps the text from answering
            continue
        assert found == installs.get(h)


# -- the journal over the text ---------------------------------------------------------------
def _db(tmp_path, installs: dict, filler: int = 0) -> TreeDatabase:
    """A database of ``installs``, plus ``filler`` records (enough, and the journal stays below
    1/8 of index.json: it is not folded in by the next append)."""
    d = tmp_path / ".spack-db"
    d.mkdir(parents=True)
    installs = dict(installs, **{f"{i:032d}": _rec(f"f{i}") for i in range(filler)})
    (d / "index.json").write_bytes(_text(installs))
    return TreeDatabase(str(d))


def test_lookup_applies_the_journal_over_the_record_as_a_whole_read_does(tmp_path):
    db = _db(tmp_path, {A: _rec("a"), B: _rec("b", [A])}, filler=300)
    moved = dict(_rec("a"), path="/moved", installation_time=5.0)
    db.append([entry(A, moved, [], "8")])  # a record the journal replaces
    db.append([entry(C, _rec("c", [A, B]), [A, B], "8")])  # a new one, referring to both
    db.append([entry(D, _rec("d", [C]), [C], "8")])
    assert db.pending()
    whole = db.read()["database"]["installs"]
    for h in (A, B, C, D, "e" * 32):
        assert TreeDatabase(db.dir).lookup(h) == whole.get(h)
    assert whole[A]["path"] == "/moved" and whole[A]["ref_count"] == 1
    assert whole[C]["ref_count"] == 1


def test_a_journal_line_already_folded_in_is_not_counted_twice(tmp_path):
    db = _db(tmp_path, {A: _rec("a")}, filler=300)
    db.append([entry(B, _rec("b", [A]), [A], "8")])
    with open(db.journal_path, "rb") as f:
        journal = f.read()
    db.compact()  # the fold ran; a crash kept the journal
    with open(db.journal_path, "ab") as f:
        f.write(journal)
    fresh = TreeDatabase(db.dir)
    assert fresh.lookup(A)["ref_count"] == 1
    assert fresh.lookup(B) == fresh.read()["database"]["installs"][B]


def test_a_lookup_and_a_fold_parse_no_whole_document(tmp_path, monkeypatch):
    installs = {f"{i:032d}": _rec(f"p{i}") for i in range(3000)}
    db = _db(tmp_path, installs)
    monkeypatch.setattr(TreeDatabase, "read", lambda self: pytest.fail("parsed the whole document"))
    target = f"{7:032d}"
    assert db.lookup(target) == installs[target]
    assert db.lookup("n" * 32) is None
    db.append([entry("n" * 32, _rec("n", [target]), [target], "8")])
    db.settle(always=True)
    monkeypatch.undo()
    after = json.loads(open(db.index_path, "rb").read())["database"]["installs"]
    assert len(after) == 3001 and not db.pending()
    assert after[target]["ref_count"] == 1 and after["n" * 32]["path"] == "/t/n"
    assert after == dict(installs, **{target: dict(installs[target], ref_count=1),
                                      "n" * 32: dict(_rec("n", [target]), ref_count=0)})


def test_an_install_tree_answers_a_lookup_from_one_record_and_finds_a_stray_prefix(tmp_path, monkeypatch):
    from bincache.tree import InstallTree, register_prefix

    root = tmp_path / "tree"
    _db(root, {}, filler=3000)  # records of prefixes that are gone: not installed
    for name in ("a", "b"):
        (root / name).mkdir()
    recorded = register_prefix(str(root / "a"), "a", "1", root=str(root))  # into the journal
    stray = register_prefix(str(root / "b"), "b", "1")  # in the tree, not in its database
    monkeypatch.setattr(TreeDatabase, "read", lambda self: pytest.fail("parsed the whole document"))
    tree = InstallTree(str(root))
    assert tree.get(recorded.hash).prefix == str(root / "a")
    assert tree.get(stray.hash).prefix == str(root / "b")
    assert tree.get(f"{5:032d}") is None and tree.get("z" * 32) is None
    monkeypatch.undo()
    assert set(InstallTree(str(root)).specs()) == {recorded.hash, stray.hash}


def _tree_of(tmp_path, n: int, **dump):
    """A tree of ``n`` prefixes (a spec file each) recorded in index.json, one depending on
    another, plus an external; written with ``dump``'s json.dump arguments."""
    from bincache.spec import make_node
    from bincache.tree import register_prefix

    root = tmp_path / "tree"
    root.mkdir()
    installs = {}
    prev = None
    for i in range(n):
        (root / f"p{i}").mkdir()
        inst = register_prefix(str(root / f"p{i}"), f"p{i}", "1", deps=[prev] if prev else [])
        node = {k: v for k, v in inst.spec.node.items() if k != "hash"}
        installs[inst.hash] = {"spec": node, "path": inst.prefix, "installed": True, "ref_count": 0,
                               "explicit": True, "installation_time": float(i)}
        prev = inst.prefix
    ext = make_node("glibc", "2.36", [], None)
    ext["external"] = {"path": "/usr", "module": None, "extra_attributes": {}}
    installs["e" * 32] = {"spec": ext, "path": "/usr", "installed": True, "ref_count": 1,
                          "explicit": False, "installation_time": 0.0}
    (root / ".spack-db").mkdir()
    (root / ".spack-db" / "index.json").write_text(
        json.dumps({"database": {"version": "8", "installs": installs}}, **(dump or {"separators": (",", ":")})))
    return root, installs


def test_opening_a_tree_decodes_one_record_at_a_time_and_nodes_when_asked_for(tmp_path, monkeypatch):
    from bincache.tree import InstallTree

    root, installs = _tree_of(tmp_path, 30)
    moved = next(iter(installs))  # the journal's record replaces index.json's
    (root / "moved").mkdir()
    installs[moved] = dict(installs[moved], path=str(root / "moved"), installation_time=99.0)
    db = TreeDatabase(str(root / ".spack-db"))
    db.append([entry(moved, installs[moved], [], "8")])
    assert db.pending()
    whole = InstallTree(str(root))
    monkeypatch.setattr(TreeDatabase, "read", lambda self: pytest.fail("parsed the whole document"))
    specs = InstallTree(str(root)).specs()
    monkeypatch.undo()
    assert set(specs) == set(installs)  # the external too, with its path
    assert specs["e" * 32].spec.is_external and specs["e" * 32].prefix == "/usr"
    for h, inst in specs.items():
        assert inst.spec.node == dict(installs[h]["spec"], hash=h)  # decoded again when asked for
        assert inst.prefix == installs[h]["path"]
    # The same as a tree whose database is not in the compact form (parsed whole).
    db.compact()
    (root / ".spack-db" / "index.json").write_text(json.dumps({"database": {"version": "8", "installs": installs}}, indent=1))
    pretty = InstallTree(str(root)).specs()
    assert pretty == specs and whole.specs() == specs
    assert [i.spec.node for i in pretty.values()] == [i.spec.node for i in specs.values()]
    assert InstallTree(str(root)).closure([specs[h] for h in specs if h != "e" * 32])
