"""A cache's memory of what it pushed is bounded: past its limit, packages are read back."""

import os

from bincache.mirror.pushed import PushedEntries


def test_pushed_entries_keep_documents_up_to_their_limit():
    kept = PushedEntries(limit=4096)
    small = b'{"spec": {"_meta": {"version": 5}, "nodes": []}}' * 20
    kept.add("a" * 32, small, 123)
    assert kept.get("a" * 32) == (small, 123)
    kept.add("b" * 32, os.urandom(8192), 9)  # does not fit (incompressible): not kept
    assert kept.get("b" * 32) is None
    assert kept.get("c" * 32) is None  # never pushed here
