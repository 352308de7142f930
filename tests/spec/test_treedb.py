"""The install tree database: index.json plus an append-only journal (bincache.treedb)."""

from __future__ import annotations

import json
import os

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
    db.settle()  # no Spack here: bincache reads the journal itself
    if db.pending():
        assert "f" * 32 not in _index(db.dir)
    open(os.path.join(db.dir, SPACK_LOCK), "w").close()
    db.settle()
    assert "f" * 32 in _index(db.dir)  # what Spack reads
    assert os.path.getsize(os.path.join(db.dir, JOURNAL)) == 0


def test_spack_key_order_version_is_read_without_parsing(tmp_path):
    d = tmp_path / ".spack-db"
    d.mkdir()
    (d / "index.json").write_text('{"database":{"installs":{"x":{"spec":{"version":"2"}}},"version":"8"}}')
    assert TreeDatabase(str(d)).version("7") == "8"
