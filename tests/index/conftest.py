import time

import pytest

from bincache import index_listing
from tests.fixtures.gnupg import home, keyed, make_home  # noqa: F401


@pytest.fixture(autouse=True)
def exact_clock(monkeypatch):
    """Directories made a moment before a listing count as unchanged: the real slack (a few
    seconds, for coarse timestamps) is longer than these tests take."""
    monkeypatch.setattr(index_listing, "CLOCK_SLACK", 0.0)


def tick() -> None:
    """Past the clock tick of the last write (a change in the same tick counts as changed)."""
    time.sleep(0.05)
