"""The install tree database: index.json plus an append-only journal (bincache.treedb)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from bincache.treedb import JOURNAL, SPACK_LOCK, TreeDatabase, entry


def _rec(path: str, t: float) -> dict:
    return {"spec": {"name": os.path.basename(path), "version": "1"}, "path": path,
            "installed": True, "explicit": True, "installation_time": t}


def _index(db_dir: str) -> dict:
    with open(os.path.join(db_dir, "index.json"), "rb") as f:
        return json.load(f)["database"]["installs"]


def test_first_record_writes_index_json_then_records_go_to_the_journal(tmp_path):
    db = TreeDatabase(str(tmp_path / ".spack-db"))
    db.append([entry("a" * 32, _rec("/p/a", 1.0), [], "7")])
    assert list(_index(db.dir)) == ["a" * 32]
    with open(db.index_path, "rb") as f:
        assert json.load(f)["database"]["version"] == "7"
    size = os.path.getsize(db.index_path)
    db.append([entry("b" * 32, _rec("/p/b", 2.0), ["a" * 32], "7")])
    # Not rewritten for one more record (it would be once the journal reaches 1/8 of it)...
    assert os.path.getsize(db.index_path) == size or not db.pending()
    # ... but every reader sees it, with the dependency's reference counted.
    installs = db.read()["database"]["installs"]
    assert set(installs) == {"a" * 32, "b" * 32}
    assert installs["a" * 32]["ref_count"] == 1
    assert db.version("8") == "7"


def test_index_json_is_rewritten_a_bounded_number_of_times(tmp_path):
    db = TreeDatabase(str(tmp_path / ".spack-db"))
    rewrites = 0
    last = None
    for i in range(400):
        db.append([entry(f"{i:032d}", _rec(f"/p/{i}", float(i)), [], "7")])
        st = os.stat(db.index_path)
        if (st.st_ino, st.st_size) != last:
            rewrites += 1
            last = (st.st_ino, st.st_size)
    # Recording N packages one at a time rewrites the document O(log N) times, not N.
    assert rewrites < 60, rewrites
    assert len(db.read()["database"]["installs"]) == 400
    db.compact()
    assert len(_index(db.dir)) == 400 and not db.pending()


def test_replaying_a_journal_twice_changes_nothing(tmp_path):
    # A compaction killed after index.json was replaced and before the journal was emptied.
    db = TreeDatabase(str(tmp_path / ".spack-db"))
    db.append([entry("a" * 32, _rec("/p/a", 1.0), [], "7")])
    db.append([entry("b" * 32, _rec("/p/b", 2.0), ["a" * 32], "7")])
    with open(db.journal_path, "rb") as f:
        journal = f.read()
    db.compact()
    with open(db.journal_path, "ab") as f:
        f.write(journal)
    installs = db.read()["database"]["installs"]
    assert installs["a" * 32]["ref_count"] == 1
    db.compact()
    assert _index(db.dir)["a" * 32]["ref_count"] == 1


def test_a_line_cut_short_by_a_crash_is_ignored_and_the_next_record_kept(tmp_path):
    db = TreeDatabase(str(tmp_path / ".spack-db"))
    for i in range(30):  # enough that the journal is not folded in at once
        db.append([entry(f"{i:032d}", _rec(f"/p/{i}", float(i)), [], "7")])
    db.append([entry("c" * 32, _rec("/p/c", 3.0), [], "7")])
    with open(db.journal_path, "ab") as f:
        f.write(b'{"hash":"dddddddddddddddddddddddddddddddd","rec')  # killed mid-write
    assert "d" * 32 not in db.read()["database"]["installs"]
    db.append([entry("e" * 32, _rec("/p/e", 4.0), [], "7")])
    installs = db.read()["database"]["installs"]
    assert {"c" * 32, "e" * 32} <= set(installs) and "d" * 32 not in installs
    assert len(installs) == 32


def test_settle_folds_the_journal_in_where_spack_uses_the_tree(tmp_path):
    db = TreeDatabase(str(tmp_path / ".spack-db"))
    for i in range(20):
        db.append([entry(f"{i:032d}", _rec(f"/p/{i}", float(i)), [], "7")])
    db.append([entry("f" * 32, _rec("/p/f", 9.0), [], "7")])
    db.settle(always=False)  # a register, no Spack here: bincache reads the journal itself
    if db.pending():
        assert "f" * 32 not in _index(db.dir)
    open(os.path.join(db.dir, SPACK_LOCK), "w").close()
    db.settle(always=False)
    assert "f" * 32 in _index(db.dir)  # what Spack reads
    assert os.path.getsize(os.path.join(db.dir, JOURNAL)) == 0


def test_spack_key_order_version_is_read_without_parsing(tmp_path):
    d = tmp_path / ".spack-db"
    d.mkdir()
    (d / "index.json").write_text('{"database":{"installs":{"x":{"spec":{"version":"2"}}},"version":"8"}}')
    assert TreeDatabase(str(d)).version("7") == "8"


def _big_tree(db_dir: str, n: int) -> None:
    """index.json of ``n`` records as bincache writes it, and no Spack lock."""
    os.makedirs(db_dir)
    installs = {f"{i:032d}": dict(_rec(f"/p/{i}", float(i)), ref_count=0) for i in range(n)}
    with open(os.path.join(db_dir, "index.json"), "w") as f:
        json.dump({"database": {"version": "8", "installs": installs}}, f, separators=(",", ":"))


def test_an_install_folds_from_the_document_it_read_without_parsing_again(tmp_path, monkeypatch):
    d = str(tmp_path / ".spack-db")
    _big_tree(d, 3000)  # ~1.3 MB: the journal would stay (well below 1/8 of it)
    db = TreeDatabase(d)
    assert len(db.read()["database"]["installs"]) == 3000  # what opening the tree parses
    parsed = []
    real = json.load
    monkeypatch.setattr(json, "load", lambda f, *a, **k: parsed.append(f.name) or real(f, *a, **k))
    db.append([entry("n" * 32, _rec("/p/n", 5.0), ["0" * 32], "8")])
    db.append([entry("m" * 32, _rec("/p/m", 6.0), ["n" * 32], "8")])
    assert db.pending()
    db.settle(always=True)
    assert parsed == []  # a dump and a rename: no second parse of index.json
    monkeypatch.undo()
    installs = _index(d)  # Spack's view once the command ends: every record, counted
    assert len(installs) == 3002 and not db.pending()
    assert installs["0" * 32]["ref_count"] == 1 and installs["n" * 32]["ref_count"] == 1
    assert TreeDatabase(d).read()["database"]["installs"] == installs  # journal applied once


def test_a_fold_reads_again_what_another_process_changed_meanwhile(tmp_path):
    d = str(tmp_path / ".spack-db")
    _big_tree(d, 3000)
    ours, theirs = TreeDatabase(d), TreeDatabase(d)
    ours.read()
    theirs.append([entry("t" * 32, _rec("/p/t", 7.0), [f"{1:032d}"], "8")])
    theirs.compact()  # index.json replaced under our kept copy
    theirs.append([entry("u" * 32, _rec("/p/u", 8.0), [], "8")])
    ours.append([entry("o" * 32, _rec("/p/o", 9.0), [f"{1:032d}"], "8")])
    ours.settle(always=True)
    installs = _index(d)
    assert {"t" * 32, "u" * 32, "o" * 32} <= set(installs) and len(installs) == 3003
    assert installs[f"{1:032d}"]["ref_count"] == 2


def test_a_fold_rewrites_only_changed_records_and_never_a_lookalike_inside_one(tmp_path):
    d = str(tmp_path / ".spack-db")
    _big_tree(d, 50)
    target = f"{7:032d}"
    with open(os.path.join(d, "index.json")) as f:
        doc = json.load(f)
    installs = doc["database"]["installs"]
    # A package's own node holding an object under another record's key (a look-alike).
    decoy = dict(installs[target], path="/elsewhere")
    installs[f"{3:032d}"]["spec"]["parameters"] = {target: decoy}
    with open(os.path.join(d, "index.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    db = TreeDatabase(d)
    db.read()
    db.append([entry("n" * 32, _rec("/p/n", 5.0), [target], "8")])
    db.settle(always=True)
    after = _index(d)
    assert after[target]["ref_count"] == 1 and after[target]["path"] == "/p/7"
    assert after[f"{3:032d}"]["spec"]["parameters"] == {target: decoy}  # untouched
    expected = dict(installs, **{target: dict(installs[target], ref_count=1)},
                    **{"n" * 32: dict(_rec("/p/n", 5.0), ref_count=0)})
    assert after == expected


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "no-kernel-copy"])
def test_a_fold_keeps_every_byte_it_does_not_change(tmp_path, monkeypatch, kernel_copy):
    # The unchanged ranges are copied file to file; on a file system that cannot (a copy
    # across file systems, no kernel support) the same bytes are written from the mapping.
    if not kernel_copy:
        def refuse(*_a, **_k):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        monkeypatch.setattr(os, "copy_file_range", refuse)
    d = str(tmp_path / ".spack-db")
    _big_tree(d, 2000)
    path = os.path.join(d, "index.json")
    with open(path, "rb") as f:
        before = f.read()
    db = TreeDatabase(d)
    db.append([entry("n" * 32, _rec("/p/n", 5.0), [f"{1500:032d}"], "8")])
    db.settle(always=True)
    with open(path, "rb") as f:
        after = f.read()
    old = b'"ref_count":0'
    at = before.index(b'"%s":' % f"{1500:032d}".encode())
    # Everything before the dependency's counter and between it and the end of the map is the
    # old text; the new record is last, and the document ends as it did.
    counter = before.index(old, at)
    assert after[:counter] == before[:counter] and after[counter:counter + 13] == b'"ref_count":1'
    tail = b"}}}"
    assert after.endswith(tail) and before.endswith(tail)
    end = len(before) - len(tail)
    assert after[counter + 13:end] == before[counter + 13:end]
    new = json.loads(b"{" + after[end + 1:-len(tail)] + b"}")
    assert new == {"n" * 32: dict(_rec("/p/n", 5.0), ref_count=0)}
    assert len(_index(d)) == 2001
