"""Staging in forked processes: ``-j`` packages extracted and relocated at once.

The per-package work (tar member loop, buildinfo YAML, relocation) is Python: threads share
one interpreter lock, so on two cores ``-j 2`` in threads was slower than ``-j 1``. Each worker
is a fork of the installer taken after planning, so it holds the verified manifests and spec
files in memory and is sent only a package's index (and the path of a tarball the parent
downloaded); it sends back progress steps and a small result (problems, the extracted
listing, the relocation report).

What a worker trusts is what the parent verified: the manifest records it inherited. It
extracts a blob while hashing it against that record (tar.inflate.Expected), whether the
parent downloaded it or it reads a local mirror's file itself; it never touches a network
connection (a pooled connection inherited by two processes would interleave their requests),
so remote blobs are downloaded by the parent.

A worker blocks SIGINT (the parent, which gets Ctrl-C, kills the workers and removes the
staging directory once they are gone), and dies with the parent (PR_SET_PDEATHSIG): a killed
install leaves no process writing into, or holding the lock of, its staging directory.
"""

from __future__ import annotations

import functools
import gc
import os
import pickle
import signal
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import BincacheError, CannotGrowString, InstallError, RelocationError
from ..relocate.plan import cannot_grow_message
from ..tar.extract import ExtractedPackage
from .plan import PackagePlan, _fail, _problem

if TYPE_CHECKING:
    from multiprocessing.connection import Connection


class Installer(Protocol):
    """What staging uses of :class:`bincache.install.stage._Installer`."""

    jobs: int
    local_blobs: bool
    allow_unrelocated: bool
    progress: Callable[[str, PackagePlan], None]

    def check_target(self, plan: PackagePlan) -> str | None: ...
    def installed(self) -> Any: ...
    def fetch(self, plan: PackagePlan) -> None: ...
    def extract(self, plan: PackagePlan, new_prefixes: dict[str, str]) -> None: ...
    def finish(self, plan: PackagePlan) -> None: ...

# (index, tarball path or None) -> result; emit(index, step) reports progress on the way.
Work = Callable[[int, "str | None", Callable[[int, str], None]], Any]


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a worker then finishes its package and exits at EOF
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the request took effect


def _serve(conn: Connection, work: Work) -> None:
    def emit(index: int, step: str) -> None:
        conn.send(("step", index, step))

    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        index, tarball = job
        try:
            conn.send(("done", index, work(index, tarball, emit)))
        except BaseException as e:  # a bug, not a package's problem: the parent raises it
            try:
                payload = pickle.dumps(e)
            except Exception:
                payload = pickle.dumps(RuntimeError("".join(traceback.format_exception(e))))
            conn.send(("raise", index, payload))


class Pool:
    """``jobs`` forked workers running ``work``; jobs handed out one at a time as each frees."""

    def __init__(self, jobs: int, work: Work):
        self.conns: dict[Connection, int] = {}  # parent end -> worker pid
        self.idle: list[Connection] = []
        parent = os.getpid()
        # Frozen: a worker's collections never write to the parent's objects (whose pages it
        # would then copy).
        gc.freeze()
        try:
            self._fork(jobs, work, parent)
        finally:
            gc.unfreeze()

    def _fork(self, jobs: int, work: Work, parent: int) -> None:
        from multiprocessing.connection import Pipe  # only an install with -j > 1 needs it

        for _ in range(jobs):
            mine, theirs = Pipe()
            # SIGINT blocked across fork, and kept blocked in the worker: Ctrl-C is the
            # parent's to handle (it works from any thread, where signal.signal would not).
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                pid = os.fork()
                if pid == 0:  # the worker
                    code = 0
                    try:
                        _die_with_parent(parent)
                        mine.close()
                        for other in self.conns:
                            other.close()
                        _serve(theirs, work)
                    except BaseException:
                        code = 1
                    finally:
                        os._exit(code)  # never the parent's atexit handlers or buffers
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            theirs.close()
            self.conns[mine] = pid
            self.idle.append(mine)

    def run(self, jobs: Iterator[tuple[int, str | None]]) -> Iterator[tuple[str, int, Any]]:
        """Yield ("step", i, step) and ("done", i, result) as the workers report, for each
        (index, tarball) of ``jobs``, taken from it (it may block) when a worker is free."""
        from multiprocessing.connection import Connection, wait

        pending = iter(jobs)
        busy = 0
        more = True
        while more or busy:
            while more and self.idle:
                job = next(pending, None)
                if job is None:
                    more = False
                    break
                conn = self.idle.pop()
                try:
                    conn.send(job)
                except OSError:
                    raise self._died(conn) from None
                busy += 1
            if not busy:
                continue
            for ready in wait(list(self.conns)):
                assert isinstance(ready, Connection)
                conn = ready
                try:
                    kind, i, value = conn.recv()
                except (EOFError, OSError):  # OSError: reset by a worker killed mid-send
                    raise self._died(conn) from None
                if kind == "raise":
                    try:
                        error = pickle.loads(value)
                    except Exception:
                        error = RuntimeError(f"a staging worker failed: {value!r}")
                    raise error
                if kind == "done":
                    busy -= 1
                    self.idle.append(conn)
                yield kind, i, value

    def _died(self, conn: Connection) -> InstallError:
        return InstallError([f"a staging worker (pid {self.conns[conn]}) died"])

    def close(self, *, kill: bool = False) -> None:
        """Stop the workers and wait for them (killed mid-package when ``kill``): once this
        returns, nothing writes into the staging directory any more."""
        for conn, pid in self.conns.items():
            if kill:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            else:
                try:
                    conn.send(None)
                except OSError:
                    pass
        for conn, pid in self.conns.items():
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            conn.close()
        self.conns.clear()
        self.idle.clear()


# -- staging a plan ---------------------------------------------------------------------------
def stage_all(inst: Installer, plans: list[PackagePlan]) -> None:
    """Fetch, check, extract, plan and relocate every package in its staging directory, -j at
    a time; raise naming every problem. Nothing is published here: publish() then renames the
    packages into place in the plan's order (dependencies first)."""
    problems: list[tuple[str, type]] = []
    for plan in plans:
        problem = inst.check_target(plan)
        if problem:
            problems.append((problem, InstallError))
    installed = inst.installed()
    new_prefixes = {}
    for n in {n.hash: n for plan in plans for n in plan.nodes}.values():
        found = installed.find(n.hash, n)
        if found is not None:
            new_prefixes[n.hash] = found.prefix
    new_prefixes.update({p.spec.hash: p.prefix for p in plans})

    if inst.jobs > 1 and len(plans) > 1:
        staged = _stage_in_workers(inst, plans, new_prefixes)
    else:
        staged = [_stage_one(inst, plan, new_prefixes, functools.partial(_step, inst, plan))
                  for plan in plans]
    for one in staged:
        problems += one
    if problems:
        if all(k is CannotGrowString for _, k in problems):
            # One line per file, as the user reads it: no "N problems" heading.
            err = CannotGrowString("\n".join(m for m, _ in problems))
            err.problems = [m for m, _ in problems]  # type: ignore[attr-defined]
            raise err
        raise _fail(problems)


def _step(inst: Installer, plan: PackagePlan, step: str) -> None:
    inst.progress(step, plan)


def _stage_one(inst: Installer, plan: PackagePlan, new_prefixes: dict[str, str],
               step: Callable[[str], None]) -> list[tuple[str, type]]:
    """One package fetched (unless the parent did), extracted, checked and relocated in its
    staging directory; its problems."""
    if plan.tarball is None:
        step("fetch")
        try:
            inst.fetch(plan)
        except (BincacheError, OSError) as e:
            return [_problem(plan, e)]
        step("fetched")
    # A package that did fetch is still extracted and checked, so every problem is named now.
    step("extract")
    try:
        inst.extract(plan, new_prefixes)
    except (BincacheError, OSError) as e:
        return [_problem(plan, e)]
    assert plan.relocation is not None
    out: list[tuple[str, type]] = [(p, RelocationError) for p in plan.relocation.problems]
    if any(u.blocking for u in plan.relocation.unrelocated) and not inst.allow_unrelocated:
        out.append((cannot_grow_message(plan.relocation, plan.prefix), CannotGrowString))
    if out:
        return out
    # Relocated in the staging directory (which an install that fails drops whole), in
    # parallel with the other packages.
    step("relocate")
    try:
        inst.finish(plan)
    except (BincacheError, OSError) as e:
        return [_problem(plan, e)]
    return []


def _stage_in_workers(inst: Installer, plans: list[PackagePlan],
                      new_prefixes: dict[str, str]) -> list[list[tuple[str, type]]]:
    """_stage_one of every package in -j forked workers (see .workers); a blob that is not on
    the local file system is downloaded here, -j at a time, and handed to a worker by path."""
    remote = [i for i, plan in enumerate(plans)
              if not (inst.local_blobs and plan.cache.local_blob_path(plan.manifest.tarball))]
    out: list[list[tuple[str, type]]] = [[] for _ in plans]

    def work(i: int, tarball: str | None, emit: Callable[[int, str], None]):
        plan = plans[i]
        plan.tarball = tarball
        problems = _stage_one(inst, plan, new_prefixes, lambda step: emit(i, step))
        x = plan.extracted
        # Back to the parent: what publish and the result need, not the member tables.
        slim = x and ExtractedPackage(x.staging, x.old_prefix, files=x.files, size=x.size)
        return problems, plan.staged, slim, plan.report

    pool = Pool(min(inst.jobs, len(plans)), work)  # forked before any thread is started
    fetcher = ThreadPoolExecutor(max_workers=inst.jobs) if remote else None

    def fetch(i: int) -> str | None:
        plan = plans[i]
        inst.progress("fetch", plan)
        inst.fetch(plan)
        inst.progress("fetched", plan)
        return plan.tarball

    futures = {i: fetcher.submit(fetch, i) for i in remote} if fetcher else {}

    def jobs() -> Iterator[tuple[int, str | None]]:
        for i, plan in enumerate(plans):
            if i not in futures:
                yield i, None
                continue
            try:
                yield i, futures[i].result()
            except (BincacheError, OSError) as e:
                out[i] = [_problem(plan, e)]

    try:
        for kind, i, value in pool.run(jobs()):
            plan = plans[i]
            if kind == "step":
                inst.progress(value, plan)
                continue
            out[i], plan.staged, plan.extracted, plan.report = value
    except BaseException:
        pool.close(kill=True)
        raise
    finally:
        if fetcher is not None:
            fetcher.shutdown(wait=True, cancel_futures=True)
        pool.close()
    return out
