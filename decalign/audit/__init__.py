"""Audit: the append-only trail of predictions and reviews (``store``), per-sample flags (``flags``), drift
against the training data (``drift``), the prediction table (``table``), trail rows (``rows``) and the HTML
report (``report``).

The package exports the trail only, so code that just records predictions stays light; import the
analytics from their modules (``from decalign.audit.flags import compute_flags``).
"""

from .store import MAX_COMMENT_CHARS, SOURCES, VERDICTS, AuditError, AuditTrail, default_audit_path

__all__ = ["MAX_COMMENT_CHARS", "SOURCES", "VERDICTS", "AuditError", "AuditTrail", "default_audit_path"]
