"""Printing for people (tables, sizes, progress when on a terminal) and for machines (--json)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def table(rows: list[list[str]], header: list[str], out=None) -> None:
    out = out or sys.stdout
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header).rstrip(), file=out)
    for r in rows:
        print(fmt.format(*[str(x) for x in r]).rstrip(), file=out)


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def is_tty() -> bool:
    return sys.stdout.isatty()


def add_verbosity(parser, *, suppress: bool = False) -> None:
    """``-q/--quiet`` and ``-v/--verbose``; ``suppress`` on a verb, so that it does not reset
    what the global flags (before the verb) said."""
    default = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary and errors", **default)
    parser.add_argument("-v", "--verbose", action="count", help="print more about each package", **default)


def verbosity(args) -> int:
    """-1 quiet, 0 normal, 1+ verbose."""
    if getattr(args, "quiet", False):
        return -1
    return int(getattr(args, "verbose", 0) or 0)


class LiveStatus:
    """For people on a terminal: one live status line (``[i/N] name  bytes  rate  ETA``) with
    each finished item printed above it. Off the terminal (or quiet, or --json): nothing at all,
    the command prints its results itself.

    tqdm draws the line (on stderr) and keeps it below lines written through :meth:`finished`.
    Thread-safe: workers report from their threads.
    """

    def __init__(self, enabled: bool | None = None, *, unit: str = "B"):
        self.enabled = (sys.stdout.isatty() and sys.stderr.isatty()) if enabled is None else enabled
        self.unit = unit
        self.total_items, self.done_items, self.current = 0, 0, ""
        self._bar: tqdm[Any] | None = None  # a bar of no iterable
        self._lock = threading.Lock()

    def plan(self, items: int, total: int | None) -> None:
        """Start the line: ``items`` to do, ``total`` bytes (or units) in all when known."""
        if not self.enabled:
            return
        from tqdm import tqdm

        with self._lock:
            self.total_items = items
            if self._bar is None:
                fmt = ("{desc}  {n_fmt}/{total_fmt}  {rate_fmt}  ETA {remaining}" if total
                       else "{desc}  {n_fmt}  {rate_fmt}")
                # The width from COLUMNS or the terminal, 80 when it says 0 (a fresh pty, some
                # CI runners): tqdm would cut the line to nothing.
                width = shutil.get_terminal_size((80, 24)).columns or 80
                self._bar = tqdm(total=total or None, unit=self.unit, unit_scale=self.unit == "B",
                                 unit_divisor=1024 if self.unit == "B" else 1000, file=sys.stderr,
                                 leave=False, ncols=width, bar_format=fmt, mininterval=0.2)
            self._describe()

    def _describe(self) -> None:
        if self._bar is not None:
            self._bar.set_description_str(
                f"[{min(self.done_items + 1, max(self.total_items, 1))}/{self.total_items}] {self.current}",
                refresh=True)

    def begin(self, name: str) -> None:
        if self.enabled:
            with self._lock:
                self.current = name
                self._describe()

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def finished(self, line: str | None = None) -> None:
        """One item done; ``line`` is printed above the status line."""
        if not self.enabled:
            return
        with self._lock:
            self.done_items += 1
            if line:
                from tqdm import tqdm

                tqdm.write(line, file=sys.stdout)
            self._describe()

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
