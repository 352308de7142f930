"""The push pipeline: packing never waits for a dependency, commits follow the DAG."""

from __future__ import annotations

import random
import threading
import time

import pytest

from bincache.pipeline import DependencyFailed, Pipeline

WAIT = 10.0


def chain(n: int) -> list[tuple[str, list[str]]]:
    return [(f"p{i}", [f"p{i - 1}"] if i else []) for i in range(n)]


def run(items, pack, commit=None, jobs=2, discard=None, max_parked=None):
    commits: list[str] = []
    lock = threading.Lock()

    def do_commit(item, packed):
        if commit:
            commit(item, packed)
        with lock:
            commits.append(item[0])

    pipe = Pipeline(items, key=lambda i: i[0], deps=lambda i: i[1], pack=pack, commit=do_commit,
                    jobs=jobs, discard=discard, max_parked=max_parked)
    try:
        futures = pipe.start()
        outcomes = [f.exception(timeout=WAIT) for f in futures]
    finally:
        pipe.close()
    return outcomes, commits


def test_a_chain_is_packed_concurrently_on_two_workers():
    # p0 is packed until p2 (which depends on p1, which depends on p0) has started packing:
    # a scheduler that holds a worker while a dependency is packed never gets there.
    p2_started = threading.Event()

    def pack(item):
        if item[0] == "p2":
            p2_started.set()
        if item[0] == "p0":
            assert p2_started.wait(WAIT), "p2 did not start while p0 was being packed"
        return item[0]

    outcomes, commits = run(chain(3), pack)
    assert outcomes == [None, None, None]
    assert commits == ["p0", "p1", "p2"]


def test_commits_follow_the_dag_whatever_the_packing_order():
    rng = random.Random(7)
    items = [(f"p{i}", sorted(rng.sample([f"p{j}" for j in range(i)], min(i, rng.randint(0, 3)))))
             for i in range(30)]
    deps = dict(items)
    delays = {k: rng.random() * 0.01 for k, _ in items}

    def pack(item):
        time.sleep(delays[item[0]])
        return item[0]

    outcomes, commits = run(items, pack, jobs=4, max_parked=3)
    assert outcomes == [None] * len(items)
    assert sorted(commits) == sorted(deps)
    seen = set()
    for k in commits:
        assert set(deps[k]) <= seen, f"{k} committed before its dependencies"
        seen.add(k)


def test_a_failed_package_stops_its_dependents_and_nothing_else():
    items = [("a", []), ("b", ["a"]), ("c", ["b"]), ("x", [])]
    discarded = []

    def pack(item):
        if item[0] == "a":
            time.sleep(0.05)  # b and c are packed (parked) by now
            raise OSError("a is broken")
        return item[0]

    outcomes, commits = run(items, pack, discard=lambda item, _p: discarded.append(item[0]))
    assert isinstance(outcomes[0], OSError)
    assert isinstance(outcomes[1], DependencyFailed) and outcomes[1].key == "a"
    assert isinstance(outcomes[2], DependencyFailed)
    assert outcomes[3] is None and commits == ["x"]
    assert sorted(discarded) == ["b", "c"]  # packed tarballs of dependents dropped


def test_a_failed_commit_fails_dependents_and_drops_their_tarballs():
    items = chain(4)
    discarded, packed = [], []

    def pack(item):
        packed.append(item[0])
        return item[0]

    def commit(item, _packed):
        if item[0] == "p1":
            raise RuntimeError("upload failed")

    outcomes, commits = run(items, pack, commit=commit,
                            discard=lambda item, _p: discarded.append(item[0]))
    assert outcomes[0] is None and isinstance(outcomes[1], RuntimeError)
    assert all(isinstance(o, DependencyFailed) for o in outcomes[2:])
    assert commits == ["p0"]
    # Every tarball packed and not committed is dropped (p3 may fail before it is packed).
    assert sorted(discarded) == sorted(set(packed) - {"p0"})


@pytest.mark.parametrize("max_parked", [2, 3])
def test_a_bounded_number_of_packages_waits_for_a_commit(max_parked):
    # A slow first commit: packing runs ahead by at most max_parked packages.
    lock = threading.Lock()
    state = {"packed": 0, "committed": 0, "most": 0}

    def pack(item):
        with lock:
            state["packed"] += 1
            state["most"] = max(state["most"], state["packed"] - state["committed"])
        return item[0]

    def commit(item, _packed):
        if item[0] == "p0":
            time.sleep(0.2)
        with lock:
            state["committed"] += 1

    outcomes, _ = run(chain(12), pack, commit=commit, jobs=2, max_parked=max_parked)
    assert outcomes == [None] * 12
    assert state["most"] <= max_parked
