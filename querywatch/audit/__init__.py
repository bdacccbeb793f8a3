"""Before/after a deploy: per-statement changes with a significance test, and a verdict.

``core`` is pure (statistics and verdict), ``report`` renders it, ``run`` reads the store (and
schedules audits inside ``watch``), ``commands`` is the CLI.
"""

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
