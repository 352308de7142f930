"""A package's exported names, imported from the modules that define them when first asked for
(PEP 562), so that importing the package starts none of them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(namespace: dict[str, Any], where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for the module whose globals are ``namespace``: ``where`` maps
    each exported name to the module defining it, relative to the package (``"mirror.base"``).
    A name once imported is kept in ``namespace``; another name is an AttributeError."""
    package, name_of_module = namespace["__package__"], namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {name_of_module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    return __getattr__
