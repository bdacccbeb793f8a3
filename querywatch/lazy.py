"""A package's exported names, each imported from its module on first use (PEP 562).

``querywatch --help`` and every command import only what they run (see bench/startup.py): a
package's ``__init__`` names its exports and their modules, and ``exports`` gives it the module
``__getattr__`` that imports one on first use (then keeps it in the package's namespace).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def exports(package: str, where: Mapping[str, str]) -> Callable[[str], object]:
    """The ``__getattr__`` of ``package``: ``where`` maps each exported name to its module."""

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
