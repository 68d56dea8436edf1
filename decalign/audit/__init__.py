"""Audit trail of predictions and human reviews."""

from decalign.audit.store import (
    MAX_COMMENT_CHARS,
    SOURCES,
    VERDICTS,
    AuditError,
    AuditTrail,
    default_audit_path,
)

__all__ = ["MAX_COMMENT_CHARS", "SOURCES", "VERDICTS", "AuditError", "AuditTrail", "default_audit_path"]
