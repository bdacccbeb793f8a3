"""Before/after a deploy: per-statement changes with a significance test, and a verdict.

``core`` is pure (statistics and verdict), ``report`` renders it, ``run`` reads the store (and
schedules audits inside ``watch``), ``commands`` is the CLI.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import (
        AuditReport,
        AuditSettings,
        AuditVerdict,
        audit,
        due_audits,
        mann_whitney,
        split,
    )

__all__ = [
    "AuditReport",
    "AuditSettings",
    "AuditVerdict",
    "audit",
    "due_audits",
    "mann_whitney",
    "split",
]


def __getattr__(name: str) -> object:
    """``core`` (and diagnose) loads on first use, not when the CLI imports ``commands``."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.core"), name)
    globals()[name] = value
    return value
