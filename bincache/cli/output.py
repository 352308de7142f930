"""Printing for people (tables, sizes, progress when on a terminal) and for machines (--json)."""

from __future__ import annotations

import json
import sys


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


class Progress:
    """One updating line on a terminal; silent when stdout is piped."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done = total, label, 0
        self.enabled = is_tty() and total > 1

    def step(self, text: str) -> None:
        self.done += 1
        if self.enabled:
            sys.stdout.write(f"\r\033[K[{self.done}/{self.total}] {self.label} {text}")
            sys.stdout.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
