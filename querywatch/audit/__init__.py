"""Before/after a deploy: per-statement changes with a significance test, and a verdict.

``core`` is pure (statistics and verdict), ``report`` renders it, ``run`` reads the store (and
schedules audits inside ``watch``), ``commands`` is the CLI.
"""

from typing import TYPE_CHECKING

from querywatch.lazy import exports

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


# ``core`` (and diagnose) loads on first use, not when the CLI imports ``commands``
__getattr__ = exports(__name__, dict.fromkeys(__all__, "core"))
