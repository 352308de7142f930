"""Fixtures of the native-core tests: the compiled core (a test fails if it is not built)."""

from __future__ import annotations

import importlib
import os

import pytest


@pytest.fixture(scope="session")
def native():
    """bincache._native._cffi; the native tests are about the C core, so it must be built."""
    if os.environ.get("BINCACHE_NATIVE") == "python":
        pytest.skip("BINCACHE_NATIVE=python: the pure-Python twin was asked for")
    try:
        return importlib.import_module("bincache._native._cffi")
    except ImportError as e:
        pytest.fail(f"the C core is not built ({e}): run `pip install -e .` first")


@pytest.fixture(scope="session")
def pure():
    return importlib.import_module("bincache._native._pure")


@pytest.fixture(params=["cffi", "python"])
def backend(request, pure):
    """Each backend in turn, for behaviour both must share (errors, relocation)."""
    if request.param == "python":
        return pure
    return request.getfixturevalue("native")
